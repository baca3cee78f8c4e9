/**
 * Bound kernels: each op holds its pipeline, parameters and bind group, built once when the model
 * is built, so encoding a step is only `setPipeline / setBindGroup / dispatch`. Per-step values
 * (position, token count) live in the GPU `state` buffer that kernels read and the sampler
 * advances, which lets one recorded sequence of dispatches serve every step.
 */
import { type Field, uniformBuffer } from "./buffers.ts";
import type { Pipelines } from "./shader.ts";
import type { Defines, KernelName } from "./shader.ts";

export type WeightDType = "F32" | "F16" | "BF16";

/**
 * A weight matrix (rows, cols) on the GPU in rgba32uint textures, bound as read-only storage
 * textures: texel (i, r) holds bytes 16i .. 16i + 15 of row r as stored (8 bf16/f16 or 4 f32
 * weights). On lavapipe that reads weights ~2x faster than a sampled texture and ~5x faster than a
 * storage buffer (kernels/matmul.wgsl). The matrix is split by rows into chunks no taller than a
 * texture; for a gated MLP the gate and up matrices are stacked per chunk: [gate rows; up rows].
 */
export interface WeightMatrix {
  dtype: WeightDType;
  rows: number;
  cols: number;
  chunks: { texture: GPUTexture; rowStart: number; rows: number }[];
}

/** `state` buffer layout, shared by every kernel: { pos, n, out_index, pad } as u32. */
export const STATE_BYTES = 16;

export interface OpContext {
  device: GPUDevice;
  pipelines: Pipelines;
  state: GPUBuffer;
}

/** Dispatches as recorded, to replay without working them out again (Recorder.play). */
export type Tape = readonly (readonly [GPUComputePipeline, GPUBindGroup, number, number, number])[];

/** Counts dispatches as it records them into one compute pass. */
export class Recorder {
  dispatches = 0;
  constructor(readonly pass: GPUComputePassEncoder) {}
  /** A recorder that only counts what would be dispatched (nothing reaches the GPU). */
  static counting(): Recorder {
    const nothing = () => {};
    const pass = { setPipeline: nothing, setBindGroup: nothing, dispatchWorkgroups: nothing };
    return new Recorder(pass as unknown as GPUComputePassEncoder);
  }
  /** The dispatches `record` makes (creating their pipelines), as a tape; nothing reaches the GPU. */
  static tape(record: (rec: Recorder) => void): Tape {
    const rec = new TapeRecorder();
    record(rec);
    return rec.tape;
  }
  dispatch(pipeline: GPUComputePipeline, bindGroup: GPUBindGroup, x: number, y = 1, z = 1) {
    this.pass.setPipeline(pipeline);
    this.pass.setBindGroup(0, bindGroup);
    this.pass.dispatchWorkgroups(x, y, z);
    this.dispatches++;
  }
  /**
   * Replays a tape through dispatch(). Working out a forward's dispatches (variants, defines,
   * pipeline keys) costs ~15-20 us of JS per dispatch; replaying one ~1 us (tiny-llama-ls, 64
   * forwards in a pass) against ~4 us of GPU work per dispatch.
   */
  play(tape: Tape) {
    for (const [pipeline, bindGroup, x, y, z] of tape) this.dispatch(pipeline, bindGroup, x, y, z);
  }
}

class TapeRecorder extends Recorder {
  readonly tape: [GPUComputePipeline, GPUBindGroup, number, number, number][] = [];
  constructor() {
    super(undefined as unknown as GPUComputePassEncoder);
  }
  override dispatch(
    pipeline: GPUComputePipeline,
    bindGroup: GPUBindGroup,
    x: number,
    y = 1,
    z = 1,
  ) {
    this.tape.push([pipeline, bindGroup, x, y, z]);
    this.dispatches++;
  }
}

/** An op recorded for a forward over `n` tokens. */
export interface Op {
  record(rec: Recorder, n: number): void;
}

/** One bind group per pipeline variant, made on first use. */
export class Bound {
  #groups = new Map<GPUComputePipeline, GPUBindGroup>();
  constructor(
    private ctx: OpContext,
    private kernel: KernelName,
    private resources: (GPUBuffer | GPUBufferBinding | GPUTextureView)[],
  ) {}
  get(defines: Defines): [GPUComputePipeline, GPUBindGroup] {
    const pipeline = this.ctx.pipelines.get(this.kernel, defines);
    let group = this.#groups.get(pipeline);
    if (!group) {
      group = this.ctx.device.createBindGroup({
        layout: pipeline.getBindGroupLayout(0),
        entries: this.resources.map((r, binding) => ({
          binding,
          resource: r instanceof GPUBuffer ? { buffer: r } : r,
        })),
      });
      this.#groups.set(pipeline, group);
    }
    return [pipeline, group];
  }
}

function dtypeDefine(dtype: WeightDType): Defines {
  return { [`DTYPE_${dtype}`]: true };
}

const MAX_GROUPS_X = 65535;

/** Tokens per invocation matmul.wgsl has variants for: 1..4 (one quad), 8 (two). */
const MATMUL_TOKENS = [1, 2, 3, 4, 8];

export interface MatmulGeometry {
  /** Output rows per invocation: 4, 8 or 16. */
  rows: number;
  /** Tokens per invocation: 1, 2, 3, 4 or 8. */
  tokens: number;
  /** Invocations per workgroup. */
  wg: number;
  /** false: read x from its storage binding even where a uniform one would hold it. */
  xUniform?: boolean;
}

/**
 * matmul.wgsl's register blocking for a chunk of `rows` output rows (per stream: a GLU chunk
 * stacks as many gate and up rows) of `cols` columns and a forward of `tokens` tokens: rows and
 * tokens per invocation, and invocations per workgroup. More rows per invocation amortise the x
 * loads, more tokens the weight loads: up to 4 tokens take the exact variant, more take blocks of 8
 * (5..7 in one block, the unused columns computed on a copy of the last token and not written).
 * 8 rows per invocation were best on the 1B shapes' projections, whose weights stream from memory;
 * 16 gained at most ~10% on the fixtures' cached ones, and only for n > 1. A GLU invocation reads
 * 2 x ROWS rows: on rows of 2048 columns or more, 4 rows per stream (8 row streams, as the other
 * projections) ran the gate/up matmul 1.4-1.6x faster at 1 token than 8 per stream (Llama-3.2-1B
 * and TinyLlama shapes, paired GPU timestamps; 1.1-1.2x at 2-4 tokens, equal at 8; Gemma-2-2B's
 * 2304 columns ~1.05x), while up to 1024 columns (the fixtures' 128, 576..1024-wide models) 8 per
 * stream stayed equal or ~5% ahead (bench/kernels_bench.ts). lavapipe runs small models on one
 * thread (src/gpu/device.ts), so a chunk of few rows is one workgroup; large models run threaded,
 * and their chunks have 32 workgroups or more to share. Threaded (2 threads), the 1B gate/up kept
 * its order (4 rows per stream 1.4-1.6x ahead of 8 at 1 token, 1.3x at 2) and down's variants
 * stayed within the noise of each other.
 */
export function matmulGeometry(
  rows: number,
  tokens: number,
  shape: { glu: boolean; cols: number } = { glu: false, cols: 0 },
): MatmulGeometry {
  const perInvocation = shape.glu && shape.cols >= GLU_WIDE_COLS ? 4 : 8;
  const wg = Math.ceil(rows / (perInvocation * 8)) >= 64 ? 64 : 8;
  return { rows: perInvocation, tokens: tokens <= 4 ? tokens : 8, wg };
}

/** Columns from which a GLU matmul takes 4 rows per stream (see matmulGeometry). */
export const GLU_WIDE_COLS = 2048;

/** matmul.wgsl's defines for a geometry: the numbers, and the flags its `#if`s test. */
export function matmulDefines(g: MatmulGeometry): Defines {
  if (![4, 8, 16].includes(g.rows)) throw new RangeError(`matmul: ${g.rows} rows per invocation`);
  if (!MATMUL_TOKENS.includes(g.tokens)) {
    throw new RangeError(`matmul: ${g.tokens} tokens per invocation`);
  }
  return {
    ROWS: g.rows,
    TOKENS: g.tokens,
    WG: g.wg,
    [`ROWS_${g.rows}`]: true,
    [`TOKENS_${g.tokens}`]: true,
  };
}

/** h[t] = table[ids[t]] * scale, for t < n. */
export function embedOp(
  ctx: OpContext,
  a: { table: WeightMatrix; ids: GPUBuffer; h: GPUBuffer; scale: number },
): Op {
  const parts = a.table.chunks.map((chunk) => {
    const params = uniformBuffer(ctx.device, [
      ["u32", a.table.cols],
      ["u32", chunk.rowStart],
      ["u32", chunk.rows],
      ["f32", a.scale],
    ], "embed");
    return new Bound(ctx, "embed", [params, a.ids, chunk.texture.createView(), a.h]).get(
      dtypeDefine(a.table.dtype),
    );
  });
  return { record: (rec, n) => parts.forEach(([p, g]) => rec.dispatch(p, g, n)) };
}

export type Epilogue = "store" | "add" | "glu-silu" | "glu-gelu" | "rope-kv";

export interface MatmulArgs {
  w: WeightMatrix;
  /** (n, xStride) input rows. */
  x: GPUBuffer;
  xStride: number;
  /** (n, yStride) output rows; a chunk writes columns [rowStart, rowStart + rows). */
  y: GPUBuffer;
  yStride: number;
  epilogue: Epilogue;
  /** Fused RMSNorm of the input: f32 gain (Gemma's 1 + w already added) and epsilon. */
  norm?: { gain: GPUBuffer; eps: number };
  softcap?: number;
  /** Only the last token's row of x, written to row 0 of y (prefill logits). */
  lastOnly?: boolean;
  /** Overrides of matmulGeometry's choice (benches and tests of the other variants). */
  geometry?: Partial<MatmulGeometry>;
  /**
   * The "rope-kv" epilogue's attention shape and outputs: W stacks the q, k and v heads' rows,
   * y gets the rotated q (n, nHeads, headDim), k and v go into the caches (ctxLen, nKv, headDim)
   * at pos + t, textures of kvWidth texels a row (src/model/kv_cache.ts KvLayout); cosSin is the
   * (ctxLen, headDim / 2) table of (cos, sin) pairs.
   */
  rope?: AttentionShape & {
    ctxLen: number;
    cosSin: GPUBuffer;
    k: GPUTextureView;
    v: GPUTextureView;
    kvWidth: number;
  };
}

/** The rope-kv epilogue's constraints, checked when the op is built. */
function checkRope(a: MatmulArgs): void {
  const r = a.rope;
  if (!r || !a.norm) throw new Error("the rope-kv epilogue needs rope and norm arguments");
  if (r.headDim % 8 !== 0) throw new Error(`head_dim ${r.headDim} is not a multiple of 8`);
  if (a.w.rows !== (r.nHeads + 2 * r.nKv) * r.headDim || a.yStride !== r.nHeads * r.headDim) {
    throw new Error("rope-kv: the weight rows or y stride do not match the attention shape");
  }
  if (a.w.chunks.some((chunk) => chunk.rowStart % r.headDim !== 0)) {
    throw new Error("rope-kv: a weight chunk starts inside a head");
  }
}

/** The largest uniform binding: WebGPU's default maxUniformBufferBindingSize (64 KiB). */
const UNIFORM_BINDING_BYTES = 65536;

/** Bytes of `buffer` a uniform binding can hold (0: none; the buffer lacks UNIFORM usage). */
function uniformBytesOf(ctx: OpContext, buffer: GPUBuffer): number {
  if (!(buffer.usage & GPUBufferUsage.UNIFORM)) return 0;
  const limit = Math.min(UNIFORM_BINDING_BYTES, ctx.device.limits.maxUniformBufferBindingSize);
  return Math.floor(Math.min(limit, buffer.size) / 16) * 16;
}

/** y = epilogue(W · x'), x' = x or rmsnorm(x) * gain. See kernels/matmul.wgsl. */
export function matmulOp(ctx: OpContext, a: MatmulArgs): Op {
  const epilogue = {
    "store": { EPILOGUE_STORE: true },
    "add": { EPILOGUE_ADD: true },
    "glu-silu": { EPILOGUE_GLU: true, ACT_SILU: true },
    "glu-gelu": { EPILOGUE_GLU: true, ACT_GELU_TANH: true },
    "rope-kv": { EPILOGUE_ROPE: true },
  }[a.epilogue] as Defines;
  if (a.epilogue === "rope-kv") checkRope(a);
  // rope-kv pairs each group of 4 rows with its rotation partners: 8 rows per invocation.
  const geometry = a.epilogue === "rope-kv" ? { ...a.geometry, rows: 8 } : a.geometry;
  const glu = a.epilogue.startsWith("glu");
  const base: Defines = { ...dtypeDefine(a.w.dtype), ...epilogue, NORM: a.norm !== undefined };
  // x goes through a uniform binding when the rows a forward reads fit in it, and the norm gain
  // when its buffer can be one (see matmul.wgsl).
  const xUniformBytes = uniformBytesOf(ctx, a.x);
  const gainBytes = a.w.cols * 4;
  const gainUniform = a.norm !== undefined && uniformBytesOf(ctx, a.norm.gain) >= gainBytes;
  if (gainUniform) Object.assign(base, { GAIN_UNIFORM: true, GAIN_VEC4S: gainBytes / 16 });
  const parts = a.w.chunks.map((chunk) => {
    const fields: Field[] = [
      ["u32", chunk.rows],
      ["u32", a.w.cols],
      ["u32", a.xStride],
      ["u32", a.yStride],
      ["u32", chunk.rowStart],
      ["u32", a.lastOnly ? 1 : 0],
      ["f32", a.norm?.eps ?? 0],
      ["f32", a.softcap ?? 0],
      ["u32", a.rope?.nHeads ?? 0],
      ["u32", a.rope?.nKv ?? 0],
      ["u32", a.rope?.headDim ?? 0],
      ["u32", a.rope?.ctxLen ?? 0],
      ["u32", a.rope?.kvWidth ?? 0],
    ];
    const resources: (GPUBuffer | GPUBufferBinding | GPUTextureView)[] = [
      uniformBuffer(ctx.device, fields, "matmul"),
      ctx.state,
      chunk.texture.createView(),
      a.x,
      a.y,
    ];
    if (a.norm) {
      resources.push(gainUniform ? { buffer: a.norm.gain, size: gainBytes } : a.norm.gain);
    }
    if (a.rope) resources.push(a.rope.cosSin, a.rope.k, a.rope.v);
    const throughUniform = resources.with(3, { buffer: a.x, size: xUniformBytes });
    return {
      rows: chunk.rows,
      bound: new Bound(ctx, "matmul", resources),
      uniformBound: new Bound(ctx, "matmul", throughUniform),
    };
  });
  const xFits = (n: number) => geometry?.xUniform !== false && n * a.xStride * 4 <= xUniformBytes;
  return {
    record(rec, n) {
      const tokens = a.lastOnly ? 1 : n;
      const uniform = xFits(n); // lastOnly reads row n - 1
      for (const part of parts) {
        const g = {
          ...matmulGeometry(part.rows, tokens, { glu, cols: a.w.cols }),
          ...geometry,
        };
        const defines = { ...base, ...matmulDefines(g) };
        const [pipeline, group] = uniform
          ? part.uniformBound.get({ ...defines, X_UNIFORM: true, X_VEC4S: xUniformBytes / 16 })
          : part.bound.get(defines);
        const groups = Math.ceil(part.rows / (g.rows * g.wg));
        const x = Math.min(groups, MAX_GROUPS_X);
        rec.dispatch(pipeline, group, x, Math.ceil(groups / x), Math.ceil(tokens / g.tokens));
      }
    },
  };
}

export interface AttentionShape {
  nHeads: number;
  nKv: number;
  headDim: number;
}

/** attention.wgsl's most (query head, token) pairs per workgroup (it spells out u0 .. u7). */
const ATTENTION_MAX_UNITS = 8;

/** Query heads (of one GQA group) and tokens per attention workgroup. */
export interface AttentionBlocking {
  heads: number;
  tokens: number;
}

/**
 * attention.wgsl's blocking for a forward of `tokens` tokens: query heads (of one GQA group) and
 * tokens per workgroup, at most ATTENTION_MAX_UNITS pairs, unless `blocking` sets them (benches);
 * and the merge's output chunks per pair.
 */
function attentionGeometry(a: AttentionShape, tokens: number, blocking?: AttentionBlocking) {
  const group = a.nHeads / a.nKv;
  let heads = Math.min(group, ATTENTION_MAX_UNITS);
  while (group % heads !== 0) heads--;
  const perBlock = Math.max(1, Math.floor(ATTENTION_MAX_UNITS / heads));
  let tokensPerBlock = Math.ceil(tokens / Math.ceil(tokens / perBlock));
  if (blocking) [heads, tokensPerBlock] = [blocking.heads, Math.min(blocking.tokens, tokens)];
  const blocks = Math.ceil(tokens / tokensPerBlock);
  const dv = a.headDim / 4;
  let chunks = Math.max(1, Math.floor(8 / (heads * tokensPerBlock)));
  while (dv % chunks !== 0) chunks--;
  return {
    defines: { HEAD_DIM: a.headDim, HEADS: heads, TOKENS: tokensPerBlock, CHUNKS: chunks },
    groups: [a.nKv * (group / heads), blocks] as const,
  };
}

/** Causal (optionally sliding-window, soft-capped) attention of the new tokens over the cache. */
export function attentionOp(
  ctx: OpContext,
  a: AttentionShape & {
    window: number;
    scale: number;
    softcap: number;
    q: GPUBuffer;
    /** The layer's K and V caches: textures of kvWidth texels a row (KvLayout). */
    k: GPUTextureView;
    v: GPUTextureView;
    kvWidth: number;
    out: GPUBuffer;
    /** Overrides the blocking attentionGeometry picks (benches of the other variants). */
    blocking?: AttentionBlocking;
  },
): Op {
  if (a.headDim > 256) throw new Error(`head_dim ${a.headDim} > 256 is not supported`);
  if (a.headDim % 16 !== 0) throw new Error(`head_dim ${a.headDim} is not a multiple of 16`);
  const params = uniformBuffer(ctx.device, [
    ["u32", a.nHeads],
    ["u32", a.nKv],
    ["u32", a.headDim],
    ["u32", a.window],
    ["f32", a.scale],
    ["f32", a.softcap],
    ["u32", a.kvWidth],
  ], "attention");
  const bound = new Bound(ctx, "attention", [params, ctx.state, a.q, a.k, a.v, a.out]);
  return {
    record(rec, n) {
      const g = attentionGeometry(a, n, a.blocking);
      const [pipeline, group] = bound.get(g.defines);
      rec.dispatch(pipeline, group, g.groups[0], g.groups[1]);
    },
  };
}

/** h += rmsnorm(delta) * gain (Gemma-2's post-norms), per token. */
export function addRmsnormOp(
  ctx: OpContext,
  a: { width: number; eps: number; delta: GPUBuffer; gain: GPUBuffer; h: GPUBuffer },
): Op {
  const params = uniformBuffer(ctx.device, [["u32", a.width], ["f32", a.eps]], "add_rmsnorm");
  const [pipeline, group] = new Bound(ctx, "add_rmsnorm", [
    params,
    ctx.state,
    a.delta,
    a.gain,
    a.h,
  ]).get({});
  return { record: (rec, n) => rec.dispatch(pipeline, group, n) };
}

/** Sampling settings, HF names; temperature 0 is greedy. */
export interface SamplingParams {
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  seed: number;
}

export const GREEDY: SamplingParams = {
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  repetitionPenalty: 1,
  seed: 0,
};

/** Chooses the next token from `logits[row]`, writes it out and advances `state`. */
export function sampleOp(
  ctx: OpContext,
  a: {
    vocab: number;
    logits: GPUBuffer;
    logitsRow?: number;
    presence: GPUBuffer;
    ids: GPUBuffer;
    outTokens: GPUBuffer;
    sampling: SamplingParams;
    markPresence?: boolean;
  },
): Op {
  const s = a.sampling;
  const params = uniformBuffer(ctx.device, [
    ["u32", a.vocab],
    ["u32", a.logitsRow ?? 0],
    ["u32", s.topK],
    ["u32", s.seed >>> 0],
    ["f32", s.temperature],
    ["f32", s.topP],
    ["f32", s.minP],
    ["f32", s.repetitionPenalty],
    ["u32", a.markPresence === false ? 0 : 1],
  ], "sample");
  const [pipeline, group] = new Bound(ctx, "sample", [
    params,
    ctx.state,
    a.logits,
    a.presence,
    a.ids,
    a.outTokens,
  ]).get({ LOGITS_VEC4: a.vocab % 4 === 0 }); // vec4 loads of the logits (logits_processing.wgsl)
  return { record: (rec) => rec.dispatch(pipeline, group, 1) };
}

/** vec4s each invocation of stream_read.wgsl reads (4 KiB; bench/kernels_bench.ts compares). */
export const STREAM_READ_RUN = 256;

/**
 * `bench --memcpy`'s weight-read ceiling: out[i] = XOR of the words of vec4s i * RUN .. of `src`
 * (its first `bytes`, a multiple of 16); `run`: vec4s per invocation. `src` is a storage buffer,
 * or an rgba32uint texture `run` texels wide holding run i in row i (as weights are read). See
 * kernels/stream_read.wgsl.
 */
export function streamReadOp(
  ctx: OpContext,
  a: { src: GPUBuffer | GPUTexture; bytes: number; out: GPUBuffer; run?: number },
): { record(rec: Recorder): void; invocations: number } {
  const run = a.run ?? STREAM_READ_RUN;
  if (a.bytes % 16 !== 0 || a.bytes <= 0) throw new RangeError(`stream_read: ${a.bytes} bytes`);
  if (run % 4 !== 0 || run <= 0) throw new RangeError(`stream_read: runs of ${run} vec4s`);
  const vec4s = a.bytes / 16;
  const invocations = Math.ceil(vec4s / run);
  if (a.out.size < invocations * 4) throw new RangeError("stream_read: out is too small");
  const src = a.src;
  if (src instanceof GPUTexture && (src.width !== run || src.height < invocations)) {
    throw new RangeError(`stream_read: a ${src.width} x ${src.height} texture for runs of ${run}`);
  }
  const params = uniformBuffer(ctx.device, [["u32", vec4s]], "stream_read");
  const [pipeline, group] = new Bound(ctx, "stream_read", [
    params,
    src instanceof GPUTexture ? src.createView() : { buffer: src, size: a.bytes },
    a.out,
  ]).get({ RUN: run, TEXTURE: src instanceof GPUTexture });
  const groups = Math.ceil(invocations / 64);
  const x = Math.min(groups, MAX_GROUPS_X);
  return {
    invocations,
    record: (rec) => rec.dispatch(pipeline, group, x, Math.ceil(groups / x)),
  };
}
