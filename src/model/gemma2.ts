/**
 * Gemma2ForCausalLM (HF `modeling_gemma2.py`). Its differences from Llama, all visible here:
 * RMSNorm scales by (1 + w) (added once at load); four norms per layer, the post-norms applied to
 * each branch's output before the residual add; embeddings scaled by sqrt(hidden_size); GeGLU
 * with tanh GELU; attention scaled by query_pre_attn_scalar^-1/2, scores soft-capped with tanh,
 * a sliding window on even layers; a tied head with a final tanh soft-cap.
 *   h = h + post_attn_norm(o_proj(attention(rope(qkv(input_norm(h))))))
 *   h = h + post_ffw_norm(down(gelu(gate(pre_ffw_norm(h))) * up(pre_ffw_norm(h))))
 */
import { addRmsnormOp } from "../gpu/ops.ts";
import { attentionCore, embedding, gatedMlpUp, lmHead, projection } from "./blocks.ts";
import type { BuildContext, Network } from "./model.ts";

export async function buildGemma2(b: BuildContext): Promise<Network> {
  const { cfg, weights, act } = b;
  const hidden = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const eps = cfg.rmsNormEps;
  // HF casts sqrt(hidden) to the activation dtype (f32) before multiplying.
  const { table, embed } = await embedding(b, Math.fround(Math.sqrt(hidden)));
  const norm = (name: string) => weights.vector(name, hidden, 1);
  const layers: Network["layers"] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    const window = l % 2 === 0 ? cfg.slidingWindow : 0;
    const postAttnNorm = await norm(`${p}post_attention_layernorm.weight`);
    const postFfwNorm = await norm(`${p}post_feedforward_layernorm.weight`);
    layers.push({
      attn: [
        ...await attentionCore(b, l, {
          norm: await norm(`${p}input_layernorm.weight`),
          window,
          softcap: cfg.attnSoftcap,
        }),
        await projection(
          b,
          `${p}self_attn.o_proj.weight`,
          hidden,
          qDim,
          act.attnOut,
          act.branch,
          "store",
        ),
        addRmsnormOp(b.op, { width: hidden, eps, delta: act.branch, gain: postAttnNorm, h: act.h }),
      ],
      mlp: [
        await gatedMlpUp(b, l, await norm(`${p}pre_feedforward_layernorm.weight`), "glu-gelu"),
        await projection(
          b,
          `${p}mlp.down_proj.weight`,
          hidden,
          cfg.intermediateSize,
          act.act,
          act.branch,
          "store",
        ),
        addRmsnormOp(b.op, { width: hidden, eps, delta: act.branch, gain: postFfwNorm, h: act.h }),
      ],
    });
  }
  const head = await lmHead(b, table, await norm("model.norm.weight"), cfg.finalSoftcap);
  return { embed, layers, ...head, weightBytes: weights.bytesLoaded };
}
