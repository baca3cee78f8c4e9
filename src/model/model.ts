/**
 * A loaded model: its resolved config, weights and ops on the GPU, activation buffers, K/V cache
 * and the `state` buffer ({ pos, n, out_index }) that its kernels read. The layer loop is explicit
 * and a skip set is plain data: a skipped sub-layer's ops are simply not recorded, so its branch
 * adds nothing to the residual stream and (for attention) writes no K/V.
 */
import { GpuError, InputError, ModelError } from "../errors.ts";
import { readJson } from "../files.ts";
import { readF32, storageBuffer } from "../gpu/buffers.ts";
import { type Gpu, openGpu } from "../gpu/device.ts";
import { type Op, type OpContext, Recorder, STATE_BYTES, type Tape } from "../gpu/ops.ts";
import { Pipelines } from "../gpu/shader.ts";
import { type Architecture, type ModelConfig, resolveConfig } from "./config.ts";
import { buildGemma2 } from "./gemma2.ts";
import { KvCache, kvLayerBytes } from "./kv_cache.ts";
import { buildLlama } from "./llama.ts";
import { cosSinTable, inverseFrequencies } from "./rope.ts";
import { loadSafetensorsIndex, readTensorPieces } from "./safetensors.ts";
import { meanMatrixBytes, parameterCount, WeightLoader, type WeightSource } from "./weights.ts";

/** Sub-layers to skip, by 0-based layer index. */
export interface SkipSet {
  attn: number[];
  mlp: number[];
}

export const NO_SKIP: SkipSet = { attn: [], mlp: [] };

/** Activation buffers, sized for `maxBatch` tokens; widths in f32 elements. */
export interface Activations {
  maxBatch: number;
  /** (maxBatch) u32 token ids of the current forward; ids[0] is the next input when decoding. */
  ids: GPUBuffer;
  /** (maxBatch, hidden): the residual stream. */
  h: GPUBuffer;
  /** (maxBatch, n_heads * head_dim): rotated queries, then attention output. */
  q: GPUBuffer;
  attnOut: GPUBuffer;
  /** (maxBatch, hidden): a branch output before its post-norm (Gemma-2). */
  branch: GPUBuffer;
  /** (maxBatch, intermediate): the gated MLP activation. */
  act: GPUBuffer;
  /** (logitRows, vocab). */
  logits: GPUBuffer;
  logitRows: number;
}

/** The ops of one architecture's forward pass, built once. */
export interface Network {
  embed: Op;
  layers: { attn: Op[]; mlp: Op[] }[];
  /** Logits for every token of the forward (rows 0..n-1), or for the last token only (row 0). */
  logitsAll: Op;
  logitsLast: Op;
  /** Bytes of weights one decode step reads. */
  weightBytes: number;
}

export interface BuildContext {
  op: OpContext;
  cfg: ModelConfig;
  weights: WeightLoader;
  act: Activations;
  kv: KvCache;
  cosSin: GPUBuffer;
  contextLength: number;
}

const BUILDERS: Record<Architecture, (b: BuildContext) => Promise<Network>> = {
  LlamaForCausalLM: buildLlama,
  Gemma2ForCausalLM: buildGemma2,
};

export type LogitsMode = "all" | "last" | "none";

export interface LoadOptions {
  /** K/V capacity in tokens; default min(max_position_embeddings, 4096). */
  contextLength?: number;
  /** Most tokens in one forward (prefill runs in chunks of this). */
  maxBatch?: number;
  /** Called with (bytes loaded, bytes total). */
  onProgress?: (loaded: number, total: number) => void;
}

/** Forward tapes a model keeps (see recordForward). */
const MAX_TAPES = 256;

export class Model {
  #tapes = new Map<string, Tape>();
  private constructor(
    readonly dir: string,
    readonly gpu: Gpu,
    readonly cfg: ModelConfig,
    readonly contextLength: number,
    readonly ctx: OpContext,
    readonly act: Activations,
    readonly kv: KvCache,
    readonly net: Network,
    /** Parameters of every tensor loaded, and the embedding table's storage dtype. */
    readonly parameters: number,
    readonly dtype: string,
  ) {}

  get device(): GPUDevice {
    return this.gpu.device;
  }
  get state(): GPUBuffer {
    return this.ctx.state;
  }

  /** Loads a model folder: config.json and safetensors. */
  static async load(dir: string, options: LoadOptions = {}): Promise<Model> {
    const cfg = resolveConfig(await readJson(`${dir}/config.json`, ModelError));
    const tensors = await loadSafetensorsIndex(dir);
    return await Model.create({ name: dir, cfg, tensors, read: readTensorPieces }, options);
  }

  /** Builds a model from any weight source (a folder, or a synthetic shape for benchmarks). */
  static async create(source: WeightSource, options: LoadOptions = {}): Promise<Model> {
    const { name: dir, cfg, tensors } = source;
    const gpu = await openGpu({ meanMatrixBytes: meanMatrixBytes(tensors) });
    const device = gpu.device;
    const contextLength = options.contextLength ?? Math.min(cfg.maxPositions, 4096);
    if (!Number.isInteger(contextLength) || contextLength < 2 || contextLength > cfg.maxPositions) {
      throw new InputError(
        `context length ${contextLength} is outside 2..${cfg.maxPositions} (max_position_embeddings)`,
      );
    }
    // Before any work that scales with the context: K/V bytes per layer, or the one-line error.
    const kvLayout = KvCache.check(cfg, contextLength, device.limits.maxTextureDimension2D);
    const maxBatch = Math.min(options.maxBatch ?? 128, contextLength);
    const state = storageBuffer(device, STATE_BYTES, "state");
    const ctx: OpContext = { device, pipelines: new Pipelines(device), state };
    const inv = inverseFrequencies(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling);
    const table = cosSinTable(contextLength, inv);
    const cosSin = storageBuffer(device, table.byteLength, "cos_sin");
    device.queue.writeBuffer(cosSin, 0, table);
    let total = 0;
    for (const t of tensors.values()) total += t.byteLength;
    const weights = new WeightLoader(
      device,
      tensors,
      (loaded) => options.onProgress?.(loaded, total),
      source.read,
    );
    device.pushErrorScope("out-of-memory");
    const act = allocateActivations(device, cfg, maxBatch, gpu.maxBinding);
    const kv = new KvCache(device, state, cfg, contextLength, kvLayout);
    const net = await BUILDERS[cfg.architecture]({
      op: ctx,
      cfg,
      weights,
      act,
      kv,
      cosSin,
      contextLength,
    });
    const oom = await device.popErrorScope();
    if (oom) {
      const kvBytes = 2 * cfg.numLayers * kvLayerBytes(kvLayout);
      throw new GpuError(
        `the GPU ran out of memory loading ${dir} (${total} bytes of weights, ${kvBytes} of K/V ` +
          `for a context of ${contextLength}; try a smaller --context): ${oom.message}`,
      );
    }
    const dtype = tensors.get("model.embed_tokens.weight")!.dtype; // builders load it or fail
    return new Model(
      dir,
      gpu,
      cfg,
      contextLength,
      ctx,
      act,
      kv,
      net,
      parameterCount(tensors),
      dtype,
    );
  }

  /**
   * Records a forward over the `n` tokens in `ids` at `state.pos` (both already on the GPU). Its
   * dispatches depend only on (n, skip, logits), the GPU state doing the rest, so they are worked
   * out once per combination and replayed from a tape after that.
   */
  recordForward(rec: Recorder, n: number, skip: SkipSet, logits: LogitsMode) {
    const key = `${n} ${logits} ${skip.attn.join()} ${skip.mlp.join()}`;
    let tape = this.#tapes.get(key);
    if (!tape) {
      if (this.#tapes.size >= MAX_TAPES) this.#tapes.clear(); // tune-skip tries many skip sets
      tape = Recorder.tape((r) => this.#recordOps(r, n, skip, logits));
      this.#tapes.set(key, tape);
    }
    rec.play(tape);
  }

  #recordOps(rec: Recorder, n: number, skip: SkipSet, logits: LogitsMode) {
    const skipAttn = new Set(skip.attn);
    const skipMlp = new Set(skip.mlp);
    this.net.embed.record(rec, n);
    for (const [l, layer] of this.net.layers.entries()) {
      if (!skipAttn.has(l)) { for (const op of layer.attn) op.record(rec, n); }
      if (!skipMlp.has(l)) { for (const op of layer.mlp) op.record(rec, n); }
    }
    if (logits === "all") this.net.logitsAll.record(rec, n);
    if (logits === "last") this.net.logitsLast.record(rec, n);
  }

  /** Sets the GPU state for a forward of `ids` starting at `startPos`. */
  writeInput(ids: number[], startPos: number) {
    if (ids.length < 1 || ids.length > this.act.maxBatch) {
      throw new RangeError(`a forward takes 1..${this.act.maxBatch} tokens, got ${ids.length}`);
    }
    if (startPos + ids.length > this.contextLength) {
      throw new InputError(
        `${startPos + ids.length} tokens exceed the context length ${this.contextLength}`,
      );
    }
    this.device.queue.writeBuffer(this.act.ids, 0, new Uint32Array(ids));
    this.device.queue.writeBuffer(this.state, 0, new Uint32Array([startPos, ids.length, 0, 0]));
  }

  /**
   * forward(tokens, startPosition, skip): runs the tokens through the model, writing their K/V at
   * startPosition.., and leaves logits on the GPU in `act.logits`. Returns the dispatch count.
   */
  forward(
    ids: number[],
    startPos: number,
    skip: SkipSet = NO_SKIP,
    logits: LogitsMode = "all",
  ): number {
    if (logits === "all" && ids.length > this.act.logitRows) {
      throw new RangeError(`all-token logits hold ${this.act.logitRows} rows, got ${ids.length}`);
    }
    this.writeInput(ids, startPos);
    const encoder = this.device.createCommandEncoder();
    const rec = new Recorder(encoder.beginComputePass());
    this.recordForward(rec, ids.length, skip, logits);
    rec.pass.end();
    this.device.queue.submit([encoder.finish()]);
    return rec.dispatches;
  }

  /** Reads `rows` rows of logits back (tests and tools; never in the decode loop). */
  readLogits(rows = 1): Promise<Float32Array> {
    return readF32(this.device, this.act.logits, rows * this.cfg.vocabSize);
  }

  destroy() {
    this.kv.destroy();
  }
}

function allocateActivations(
  device: GPUDevice,
  cfg: ModelConfig,
  maxBatch: number,
  maxBinding: number,
): Activations {
  // Matmul inputs among them (h, attn_out, act) can also be read as uniforms.
  const f32 = (width: number, label: string) =>
    storageBuffer(device, maxBatch * width * 4, label, { uniform: true });
  const qDim = cfg.numHeads * cfg.headDim;
  const logitRows = Math.max(1, Math.min(maxBatch, Math.floor(maxBinding / (cfg.vocabSize * 4))));
  return {
    maxBatch,
    ids: storageBuffer(device, maxBatch * 4, "ids"),
    h: f32(cfg.hiddenSize, "h"),
    q: f32(qDim, "q"),
    attnOut: f32(qDim, "attn_out"),
    branch: f32(cfg.hiddenSize, "branch"),
    act: f32(cfg.intermediateSize, "act"),
    logits: storageBuffer(device, logitRows * cfg.vocabSize * 4, "logits"),
    logitRows,
  };
}
