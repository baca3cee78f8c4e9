/**
 * Building blocks both architectures share: the fused q/k/v projection with RoPE and K/V append,
 * attention, the gated MLP's fused gate/up, and the LM head. Each returns ops bound to one layer's
 * weights; the architecture files compose them in their own order.
 */
import {
  attentionOp,
  embedOp,
  type Epilogue,
  matmulOp,
  type Op,
  type WeightMatrix,
} from "../gpu/ops.ts";
import type { BuildContext } from "./model.ts";

/** norm -> q/k/v projection with RoPE and the K/V append (one dispatch) -> attention into act.attnOut. */
export async function attentionCore(
  b: BuildContext,
  layer: number,
  a: { norm: GPUBuffer; window: number; softcap: number },
): Promise<Op[]> {
  const { cfg, act } = b;
  const p = `model.layers.${layer}.self_attn.`;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const qkvWeights = await b.weights.matrix(
    [
      [`${p}q_proj.weight`, qDim],
      [`${p}k_proj.weight`, kvDim],
      [`${p}v_proj.weight`, kvDim],
    ],
    cfg.hiddenSize,
    { rowAlign: cfg.headDim },
  );
  const shape = { nHeads: cfg.numHeads, nKv: cfg.numKvHeads, headDim: cfg.headDim };
  const k = b.kv.keys[layer].createView();
  const v = b.kv.values[layer].createView();
  const kvWidth = b.kv.layout.width;
  return [
    matmulOp(b.op, {
      w: qkvWeights,
      x: act.h,
      xStride: cfg.hiddenSize,
      y: act.q,
      yStride: qDim,
      epilogue: "rope-kv",
      norm: { gain: a.norm, eps: cfg.rmsNormEps },
      rope: { ...shape, ctxLen: b.contextLength, cosSin: b.cosSin, k, v, kvWidth },
    }),
    attentionOp(b.op, {
      ...shape,
      window: a.window,
      scale: cfg.attentionScale,
      softcap: a.softcap,
      q: act.q,
      k,
      v,
      kvWidth,
      out: act.attnOut,
    }),
  ];
}

/** A plain projection y (n, rows) = W (rows, cols) x (n, cols), stored or added into y. */
export async function projection(
  b: BuildContext,
  name: string,
  rows: number,
  cols: number,
  x: GPUBuffer,
  y: GPUBuffer,
  epilogue: Epilogue,
): Promise<Op> {
  const w = await b.weights.matrix([[name, rows]], cols);
  return matmulOp(b.op, { w, x, xStride: cols, y, yStride: rows, epilogue });
}

/** norm -> fused gate/up projection -> act(gate) * up into act.act. */
export async function gatedMlpUp(
  b: BuildContext,
  layer: number,
  norm: GPUBuffer,
  activation: "glu-silu" | "glu-gelu",
): Promise<Op> {
  const { cfg, act } = b;
  const p = `model.layers.${layer}.mlp.`;
  const w = await b.weights.matrix(
    [[`${p}gate_proj.weight`, cfg.intermediateSize], [`${p}up_proj.weight`, cfg.intermediateSize]],
    cfg.hiddenSize,
    { glu: true },
  );
  return matmulOp(b.op, {
    w,
    x: act.h,
    xStride: cfg.hiddenSize,
    y: act.act,
    yStride: cfg.intermediateSize,
    epilogue: activation,
    norm: { gain: norm, eps: cfg.rmsNormEps },
  });
}

/** The embedding table as a matrix (vocab, hidden) and its lookup op. */
export async function embedding(b: BuildContext, scale: number) {
  const { cfg, act } = b;
  const table = await b.weights.matrix(
    [["model.embed_tokens.weight", cfg.vocabSize]],
    cfg.hiddenSize,
  );
  return { table, embed: embedOp(b.op, { table, ids: act.ids, h: act.h, scale }) };
}

/** Final norm and LM head (tied to the embedding table, or `lm_head.weight`). */
export async function lmHead(
  b: BuildContext,
  table: WeightMatrix,
  norm: GPUBuffer,
  softcap: number,
): Promise<{ logitsAll: Op; logitsLast: Op }> {
  const { cfg, act } = b;
  const w = cfg.tieWordEmbeddings
    ? table
    : await b.weights.matrix([["lm_head.weight", cfg.vocabSize]], cfg.hiddenSize);
  const common = {
    w,
    x: act.h,
    xStride: cfg.hiddenSize,
    y: act.logits,
    yStride: cfg.vocabSize,
    epilogue: "store" as const,
    norm: { gain: norm, eps: cfg.rmsNormEps },
    softcap,
  };
  return {
    logitsAll: matmulOp(b.op, common),
    logitsLast: matmulOp(b.op, { ...common, lastOnly: true }),
  };
}
