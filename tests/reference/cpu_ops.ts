/**
 * Plain-loop CPU references for the WGSL kernels in kernels/ (embed, matmul, rope_kv, attention,
 * add_rmsnorm), plus the seeded random inputs and the bf16/f16 weight encoders the kernel tests
 * use. Inputs are f32 arrays; sums run in f64 (JS numbers) and results are stored as f32. Weights
 * are passed already decoded, i.e. the rounded values the GPU sees after widening bf16/f16.
 *
 * Tensors are flat, row-major. Shape names follow the kernels: n new tokens, C width, H query
 * heads, KV key/value heads, D head dim, ctx cache capacity in positions.
 */
import type { Epilogue, WeightDType } from "../../src/gpu/ops.ts";

// --- seeded random inputs --------------------------------------------------------------------

/** mulberry32, the project's seeded PRNG (one implementation, in src/tune/bo.ts). */
export { mulberry32 } from "../../src/tune/bo.ts";

/** A 32-bit seed from a label (FNV-1a), so every test case draws its own reproducible inputs. */
export function seedFrom(label: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < label.length; i++) {
    h ^= label.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

/** (length) uniform values in [lo, hi), rounded to f32. */
export function randomF32(
  rng: () => number,
  length: number,
  lo = -1,
  hi = 1,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(length);
  for (let i = 0; i < length; i++) out[i] = lo + (hi - lo) * rng();
  return out;
}

/** (length) uniform integers in [0, max). */
export function randomU32(
  rng: () => number,
  length: number,
  max: number,
): Uint32Array<ArrayBuffer> {
  const out = new Uint32Array(length);
  for (let i = 0; i < length; i++) out[i] = Math.min(max - 1, Math.floor(rng() * max));
  return out;
}

// --- weight encodings ------------------------------------------------------------------------

const scratch = new DataView(new ArrayBuffer(4));

function f32Bits(x: number): number {
  scratch.setFloat32(0, x, true);
  return scratch.getUint32(0, true);
}

/** x rounded to f32, then to bf16 (round to nearest, ties to even); NaN stays a quiet NaN. */
export function f32ToBf16Bits(x: number): number {
  const bits = f32Bits(x);
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) {
    return ((bits >>> 16) & 0x8000) | 0x7fc0;
  }
  // Adding 0x7fff + lsb carries into the kept half exactly when the dropped half is above the
  // midpoint, or at it with an odd kept half. Overflow past the largest finite rounds to infinity.
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

/** m rounded to an integer, ties to even. */
function roundHalfEven(m: number): number {
  const floor = Math.floor(m);
  const frac = m - floor;
  if (frac > 0.5) return floor + 1;
  if (frac < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

/** x rounded to f32, then to IEEE binary16 (round to nearest, ties to even, with subnormals). */
export function f32ToF16Bits(x: number): number {
  const f = Math.fround(x);
  if (Number.isNaN(f)) return 0x7e00;
  const sign = f < 0 || Object.is(f, -0) ? 0x8000 : 0;
  const a = Math.abs(f);
  if (a >= 65520) return sign | 0x7c00; // halfway between 65504 and 2^16 and above: infinity
  if (a < 2 ** -14) {
    // Subnormal: a multiple of 2^-24. A result of 1024 units is the smallest normal, 0x0400.
    return sign | roundHalfEven(a * 2 ** 24);
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--;
  if (2 ** (e + 1) <= a) e++;
  let mantissa = roundHalfEven((a / 2 ** e - 1) * 1024); // exact in f64
  if (mantissa === 1024) {
    mantissa = 0;
    e++;
  }
  if (e > 15) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | mantissa;
}

/** Decoding is the weight loader's own (exact widening); the encoders above are test-only. */
import { bf16ToF32 as bf16BitsToF32, f16ToF32 as f16BitsToF32 } from "../../src/model/weights.ts";
export { bf16BitsToF32, f16BitsToF32 };

export const DTYPE_SIZE: Record<WeightDType, number> = { F32: 4, F16: 2, BF16: 2 };

/**
 * `values` stored as `dtype` (little-endian, as in safetensors) and the values decoded back: the
 * CPU references must use `decoded`, which is what the GPU computes with.
 */
export function encodeWeights(
  dtype: WeightDType,
  values: Float32Array,
): { bytes: Uint8Array<ArrayBuffer>; decoded: Float32Array<ArrayBuffer> } {
  const bytes = new Uint8Array(values.length * DTYPE_SIZE[dtype]);
  const view = new DataView(bytes.buffer);
  const decoded = new Float32Array(values.length);
  for (let i = 0; i < values.length; i++) {
    if (dtype === "F32") {
      view.setFloat32(i * 4, values[i], true);
      decoded[i] = values[i];
    } else if (dtype === "BF16") {
      const bits = f32ToBf16Bits(values[i]);
      view.setUint16(i * 2, bits, true);
      decoded[i] = bf16BitsToF32(bits);
    } else {
      const bits = f32ToF16Bits(values[i]);
      view.setUint16(i * 2, bits, true);
      decoded[i] = f16BitsToF32(bits);
    }
  }
  return { bytes, decoded };
}

// --- kernels ---------------------------------------------------------------------------------

/** embed.wgsl: h (n, C) with h[t] = table[ids[t]] * scale; table (vocab, C), ids (n). */
export function embedRef(
  table: Float32Array,
  cols: number,
  ids: ArrayLike<number>,
  scale: number,
): Float32Array<ArrayBuffer> {
  const h = new Float32Array(ids.length * cols);
  for (let t = 0; t < ids.length; t++) {
    for (let c = 0; c < cols; c++) h[t * cols + c] = table[ids[t] * cols + c] * scale;
  }
  return h;
}

/** x[row, :cols] * rsqrt(mean(x^2) + eps) * gain, in f64; x row at `offset`, gain (cols). */
function rmsnormRow(
  x: Float32Array,
  offset: number,
  cols: number,
  gain: Float32Array,
  eps: number,
): Float64Array {
  let ss = 0;
  for (let c = 0; c < cols; c++) ss += x[offset + c] * x[offset + c];
  const inv = 1 / Math.sqrt(ss / cols + eps);
  const out = new Float64Array(cols);
  for (let c = 0; c < cols; c++) out[c] = x[offset + c] * inv * gain[c];
  return out;
}

export function silu(g: number): number {
  return g / (1 + Math.exp(-g));
}

export function geluTanh(g: number): number {
  return 0.5 * g * (1 + Math.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
}

export interface MatmulRefArgs {
  /** (rows, cols) decoded weights; for a GLU epilogue (2 rows, cols): gate rows, then up rows. */
  w: Float32Array;
  rows: number;
  cols: number;
  /** (n, xStride) input rows; only the first `cols` of each row are read. */
  x: Float32Array;
  xStride: number;
  /** (yRows, yStride) output before the op; a copy is updated and returned. */
  y: Float32Array;
  yStride: number;
  n: number;
  epilogue: Epilogue;
  /** Fused RMSNorm: x' = x * rsqrt(mean(x^2) + eps) * gain, gain (cols). */
  norm?: { gain: Float32Array; eps: number };
  /** > 0 with "store": y = tanh(y / softcap) * softcap. */
  softcap?: number;
  /** Only x's last token row (n - 1) is read; its result goes to row 0 of y. */
  lastOnly?: boolean;
}

/**
 * matmul.wgsl: y[t, r] = epilogue(sum_c W[r, c] x'[t, c]). Columns r >= rows of y and rows of y
 * past the tokens are left as they were.
 */
export function matmulRef(a: MatmulRefArgs): Float32Array<ArrayBuffer> {
  const y = new Float32Array(a.y);
  const glu = a.epilogue === "glu-silu" || a.epilogue === "glu-gelu";
  // lastOnly: the last token's row, none when there are no tokens.
  const tokens = a.lastOnly ? (a.n > 0 ? [a.n - 1] : []) : Array.from({ length: a.n }, (_, t) => t);
  tokens.forEach((src, dst) => {
    const xr = a.norm
      ? rmsnormRow(a.x, src * a.xStride, a.cols, a.norm.gain, a.norm.eps)
      : Float64Array.from(a.x.subarray(src * a.xStride, src * a.xStride + a.cols));
    const dot = (row: number) => {
      let sum = 0;
      for (let c = 0; c < a.cols; c++) sum += a.w[row * a.cols + c] * xr[c];
      return sum;
    };
    for (let r = 0; r < a.rows; r++) {
      const out = dst * a.yStride + r;
      const acc = dot(r);
      if (a.epilogue === "add") {
        y[out] = y[out] + acc;
      } else if (glu) {
        const act = a.epilogue === "glu-silu" ? silu(acc) : geluTanh(acc);
        y[out] = act * dot(a.rows + r);
      } else {
        const cap = a.softcap ?? 0;
        y[out] = cap > 0 ? Math.tanh(acc / cap) * cap : acc;
      }
    }
  });
  return y;
}

/**
 * HF-style rotate_half table: (ctx, D/2) pairs [cos, sin] of pos * theta^(-2i/D), as f32.
 * The kernels only consume the table; any angles do.
 */
export function ropeTable(ctx: number, headDim: number, theta = 10000): Float32Array<ArrayBuffer> {
  const half = headDim / 2;
  const table = new Float32Array(ctx * half * 2);
  for (let p = 0; p < ctx; p++) {
    for (let i = 0; i < half; i++) {
      const angle = p * Math.pow(theta, (-2 * i) / headDim);
      table[(p * half + i) * 2] = Math.cos(angle);
      table[(p * half + i) * 2 + 1] = Math.sin(angle);
    }
  }
  return table;
}

export interface RopeKvRefArgs {
  nHeads: number;
  nKv: number;
  headDim: number;
  /** Cache capacity in positions. */
  ctx: number;
  pos: number;
  n: number;
  /** (n, (H + 2 KV) D): q heads, then k heads, then v heads per token. */
  qkv: Float32Array;
  /** (ctx, D/2, 2) [cos, sin] pairs. */
  cosSin: Float32Array;
  /** (n, H, D) before the op. */
  q: Float32Array;
  /** (ctx, KV, D) caches before the op. */
  kCache: Float32Array;
  vCache: Float32Array;
}

/**
 * rope_kv.wgsl: q heads rotated into q_out[t]; k heads rotated into k_cache[pos + t], v heads
 * copied into v_cache[pos + t]. Rotation pairs (i, i + D/2): (a c - b s, b c + a s).
 */
export function ropeKvRef(a: RopeKvRefArgs): {
  q: Float32Array<ArrayBuffer>;
  kCache: Float32Array<ArrayBuffer>;
  vCache: Float32Array<ArrayBuffer>;
} {
  const q = new Float32Array(a.q);
  const kCache = new Float32Array(a.kCache);
  const vCache = new Float32Array(a.vCache);
  const d = a.headDim;
  const half = d / 2;
  const width = (a.nHeads + 2 * a.nKv) * d;
  const rotate = (src: number, p: number, dst: Float32Array, out: number) => {
    for (let i = 0; i < half; i++) {
      const c = a.cosSin[(p * half + i) * 2];
      const s = a.cosSin[(p * half + i) * 2 + 1];
      const x0 = a.qkv[src + i];
      const x1 = a.qkv[src + i + half];
      dst[out + i] = x0 * c - x1 * s;
      dst[out + i + half] = x1 * c + x0 * s;
    }
  };
  for (let t = 0; t < a.n; t++) {
    const p = a.pos + t;
    if (p >= a.ctx) continue;
    for (let h = 0; h < a.nHeads; h++) {
      rotate(t * width + h * d, p, q, (t * a.nHeads + h) * d);
    }
    for (let h = 0; h < a.nKv; h++) {
      const row = (p * a.nKv + h) * d;
      rotate(t * width + (a.nHeads + h) * d, p, kCache, row);
      const v = t * width + (a.nHeads + a.nKv + h) * d;
      for (let i = 0; i < d; i++) vCache[row + i] = a.qkv[v + i];
    }
  }
  return { q, kCache, vCache };
}

export interface AttentionRefArgs {
  nHeads: number;
  nKv: number;
  headDim: number;
  /** 0: none; else query at p sees keys k with p - k < window. */
  window: number;
  scale: number;
  /** > 0: s = tanh(s / softcap) * softcap. */
  softcap: number;
  pos: number;
  n: number;
  /** (n, H, D) */
  q: Float32Array;
  /** (ctx, KV, D), positions [0, pos + n) filled. */
  kCache: Float32Array;
  vCache: Float32Array;
}

/**
 * attention.wgsl: out (n, H D). Query t (position p = pos + t) of head h attends, with GQA head
 * kv = h / (H / KV), to the keys k <= p (and p - k < window) with softmax(scale q.k, softcapped).
 */
export function attentionRef(a: AttentionRefArgs): Float32Array<ArrayBuffer> {
  const d = a.headDim;
  const out = new Float32Array(a.n * a.nHeads * d);
  const group = a.nHeads / a.nKv;
  for (let t = 0; t < a.n; t++) {
    const p = a.pos + t;
    const first = a.window > 0 ? Math.max(0, p + 1 - a.window) : 0;
    for (let h = 0; h < a.nHeads; h++) {
      const kv = Math.floor(h / group);
      const qRow = (t * a.nHeads + h) * d;
      const scores: number[] = [];
      for (let k = first; k <= p; k++) {
        const kRow = (k * a.nKv + kv) * d;
        let dot = 0;
        for (let i = 0; i < d; i++) dot += a.q[qRow + i] * a.kCache[kRow + i];
        let s = dot * a.scale;
        if (a.softcap > 0) s = Math.tanh(s / a.softcap) * a.softcap;
        scores.push(s);
      }
      const max = Math.max(...scores);
      const weights = scores.map((s) => Math.exp(s - max));
      const sum = weights.reduce((x, y) => x + y, 0);
      for (let i = 0; i < d; i++) {
        let acc = 0;
        for (let j = 0; j < weights.length; j++) {
          acc += weights[j] * a.vCache[((first + j) * a.nKv + kv) * d + i];
        }
        out[(t * a.nHeads + h) * d + i] = acc / sum;
      }
    }
  }
  return out;
}

/**
 * add_rmsnorm.wgsl: h (n, C) += delta * rsqrt(mean(delta^2) + eps) * gain per token;
 * delta (n, C), gain (C). Rows of h past n are left as they were.
 */
export function addRmsnormRef(
  h: Float32Array,
  delta: Float32Array,
  gain: Float32Array,
  width: number,
  n: number,
  eps: number,
): Float32Array<ArrayBuffer> {
  const out = new Float32Array(h);
  for (let t = 0; t < n; t++) {
    const normed = rmsnormRow(delta, t * width, width, gain, eps);
    for (let c = 0; c < width; c++) out[t * width + c] = h[t * width + c] + normed[c];
  }
  return out;
}

/** stream_read.wgsl: per run of `run` vec4s (4 words each), the XOR of its words. */
export function streamReadRef(words: Uint32Array, run: number): Uint32Array<ArrayBuffer> {
  const runWords = run * 4;
  const out = new Uint32Array(Math.ceil(words.length / runWords));
  for (let i = 0; i < words.length; i++) out[Math.floor(i / runWords)] ^= words[i];
  return out;
}
