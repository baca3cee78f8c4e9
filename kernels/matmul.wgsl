// y[t, r] = epilogue(sum_c W[r, c] * x'[t, c]) for the n tokens of this forward: the matrix-vector
// product of decoding (TOKENS = 1) and the small-N product of prefill and verification.
//
// Register blocking, no workgroup barriers: each invocation owns ROWS output rows and TOKENS
// tokens, so every weight block it loads serves TOKENS tokens and every x block serves ROWS rows.
// That is what counts on lavapipe (llvmpipe), where each storage-buffer load instruction is a loop
// over the 8 SIMD lanes with a bounds check per lane and component (the same cost whether the
// address is uniform or not), while arithmetic is cheap: a kernel's cost is mostly its count of
// load instructions, about rows * C / 8 for the weights plus (TOKENS x loads per 8 columns) per
// invocation. Weights are loads from a read-only storage texture, rgba32uint (a texel: one 16-byte
// word of a row as stored). lavapipe runs a sampled texture's texel fetch as a call into a generic
// sampling function that gathers the mip level's offsets and strides lane by lane, but a storage
// texture's load inline: a bounds check, then one 16-byte load per lane. Measured: a kernel
// streaming 4 MiB reads 6.5 GB/s from a storage texture against 3.3 from a sampled one and 1.3
// from a storage buffer; tiny-llama's matmuls take 0.58-0.73x the time they took sampled (GPU
// timestamps, 3 bench runs: decode step 4.0-5.0 -> 2.9-3.3 ms). A sampled texture had been ~1.2x
// faster than a storage buffer (1.20x on the Llama-3.2-1B gate/up, 1.25x on down).
// src/gpu/ops.ts (matmulGeometry) picks ROWS, TOKENS and WG per shape; bench/kernels_bench.ts
// measures the alternatives.
//
// The code is straight-line over rows and tokens. lavapipe does not unroll WGSL loops (naga's loop
// bounding hides the trip count), and a private array indexed in a loop, such as acc[row][token],
// lives in memory, read and written lane by lane. So rows come in groups of 4 spelled out under
// #if (g0 .. g3), a group's 4 weight rows are the rows of two 4x4 matrices, and the tokens are the
// columns of x blocks and accumulators (Cols: vec4 for 1 token, matTx4 for 2..4; 8 tokens are two
// quads), so a block's arithmetic is matrix products with no index at all.
// Measured (GPU timestamps, lavapipe on one thread, bf16, min of runs on 2 shared cores; the
// loop/array kernel before -> this one, per call):
//   tiny-llama n = 1: gate/up GLU 384x2 x 128 (norm) 238 -> 97 us, qkv 256 x 128 (norm) 118 -> ~45
//          us, o/down (add) 88 -> 36 us; decode forward 7.2 -> 3.05 ms of kernel time.
//   tiny-llama n = 8: gate/up 739 -> 239 us, qkv 582 -> ~120 us, o/down 603 -> 81 us; forward
//          34 -> 8.3 ms of kernel time (1.7 ms of it attention).
//   llama-3.2-1b shapes, n = 1: lm head chunk 32064 x 2048 96 -> 90 ms, gate/up 8192x2 x 2048
//          110 -> 68 ms, o/down 21 -> 13 ms, qkv 13.4 -> 8.8 ms.
// Tried and not kept: x staged in workgroup memory (its loads cost as much as storage loads);
// scalar dot-product accumulators instead of matrix products (same speed within noise); 16 rows
// per invocation (~10% faster on the fixtures' cached weights for n > 1, ~1.5x slower on the 1B
// shapes streaming from memory) and 32 (spills); tokens in blocks of 4 for n = 5..8 (slower).
//
// Variants (defines):
//   DTYPE_*         weight storage (weight_dtype.wgsl)
//   ROWS            output rows per invocation: 4, 8 (flag ROWS_8) or 16 (flag ROWS_16)
//   TOKENS          tokens per invocation: 1..4 (flag TOKENS_<n>, one quad) or 8 (TOKENS_8, two
//                   quads); gid.z selects the block of tokens
//   WG              invocations per workgroup
//   X_UNIFORM       x is read through a uniform binding of its first X_VEC4S vec4s (at most 64
//                   KiB, the WebGPU default limit) when the forward's rows of x fit (src/gpu/ops.ts
//                   matmulOp). Every invocation reads the same x, and on lavapipe a uniform load
//                   is far cheaper than a storage load (a per-lane loop): on a 2048 x 2048 bf16
//                   matrix, measured 2.1x faster at 8 tokens, 1.1x at 1 token.
//   NORM            x' = rmsnorm(x) * gain, fused: the row pass also sums x^2 (RMSNorm + matmul in
//                   one dispatch; gain is f32 and already holds Gemma's 1 + w)
//   GAIN_UNIFORM    the gain is read through a uniform binding of GAIN_VEC4S vec4s (C / 4) when
//                   its buffer allows: every block reads 2 vec4s of it, and on lavapipe a uniform
//                   load costs ~0.8 cycles per lane and component against ~2.5 for storage
//   EPILOGUE_STORE  y = acc, then the optional tanh soft-cap (Gemma-2 final logits)
//   EPILOGUE_ADD    y += acc (residual add fused into the output projection)
//   EPILOGUE_GLU    the chunk stacks [gate rows; up rows]; y = act(gate . x') * (up . x')
//                   with ACT_SILU (SwiGLU) or ACT_GELU_TANH (GeGLU)
//   EPILOGUE_ROPE   the q/k/v projection with RoPE and the K/V append fused (ROWS_8 only): W
//                   stacks the q, k and v heads' rows; y is q (n, n_heads, D). In the q and k
//                   heads an invocation's two groups are dimensions 4b .. 4b + 3 of a head and
//                   their rotation partners D/2 + 4b .., so it rotates what it computed (HF's
//                   rotate_half, angle (pos + t) * inv_freq[i] from the cos/sin table) and writes
//                   q to y, k to k_cache[pos + t]; v rows go to v_cache[pos + t] as computed
//                   (the caches are write-only storage textures, src/model/kv_cache.ts).
//                   Tokens at or past the cache capacity are not written. A weight chunk starts
//                   at a head boundary (src/model/weights.ts planChunks' alignment).
#include "weight_dtype.wgsl"

struct Params {
  rows: u32,        // output rows held by this weight chunk
  cols: u32,        // C, the input width, a multiple of 8
  x_stride: u32,    // floats between token rows of x
  y_stride: u32,    // floats between token rows of y
  row_offset: u32,  // first output column this chunk writes
  last_only: u32,   // 1: read only the last token's row of x, write row 0 of y
  eps: f32,         // RMSNorm epsilon (NORM)
  softcap: f32,     // > 0: y = tanh(y / softcap) * softcap (EPILOGUE_STORE)
  n_heads: u32,     // EPILOGUE_ROPE: query heads, K/V heads, head_dim D (a multiple of 8) and
  n_kv: u32,        //   the cache capacity in positions
  head_dim: u32,
  ctx: u32,
  kv_width: u32,    // EPILOGUE_ROPE: texels a row of the K/V textures (src/model/kv_cache.ts)
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
// W: (rows, C), or (2 rows, C) for GLU, a 16-byte word a texel
@group(0) @binding(2) var w: texture_storage_2d<rgba32uint, read>;
#if X_UNIFORM
@group(0) @binding(3) var<uniform> x: array<vec4<f32>, X_VEC4S>;  // the first X_VEC4S of (n, x_stride)
#else
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;    // (n, x_stride), x_stride % 4 == 0
#endif
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (n, y_stride); EPILOGUE_ADD adds
#if NORM
#if GAIN_UNIFORM
@group(0) @binding(5) var<uniform> gain: array<vec4<f32>, GAIN_VEC4S>; // (C)
#else
@group(0) @binding(5) var<storage, read> gain: array<vec4<f32>>; // (C)
#endif
#endif
#if EPILOGUE_ROPE
@group(0) @binding(6) var<storage, read> cos_sin: array<vec4<f32>>;       // (ctx, D/2) (cos, sin) pairs
// The K/V caches, (ctx, n_kv, D) flattened into rows of kv_width texels: vec4 i is texel
// (i % kv_width, i / kv_width).
@group(0) @binding(7) var k_cache: texture_storage_2d<rgba32float, write>;
@group(0) @binding(8) var v_cache: texture_storage_2d<rgba32float, write>;
#endif

// Tokens are matrix columns: a Cols holds, for each token of a quad (up to 4 tokens), 4 values:
// 4 consecutive inputs x[t, 4q .. 4q + 3], or the outputs of a group of 4 rows. TOKENS = 8 is two
// quads (mat4x4 each; the second quad's code is under #if TOKENS_8).
#if TOKENS_3
alias Cols = mat3x4<f32>;
#elif TOKENS_2
alias Cols = mat2x4<f32>;
#elif TOKENS_1
alias Cols = vec4<f32>;
#else
alias Cols = mat4x4<f32>;
#endif

// x[t, 4q .. 4q + 3] for the tokens t of a quad; x_at: their rows' vec4 offsets.
fn x_cols(x_at: vec4<u32>, q: u32) -> Cols {
#if TOKENS_3
  return Cols(x[x_at.x + q], x[x_at.y + q], x[x_at.z + q]);
#elif TOKENS_2
  return Cols(x[x_at.x + q], x[x_at.y + q]);
#elif TOKENS_1
  return x[x_at.x + q];
#else
  return Cols(x[x_at.x + q], x[x_at.y + q], x[x_at.z + q], x[x_at.w + q]);
#endif
}

#if NORM
// Per token (vector component): the sum of squares of its column.
fn squares(c: Cols) -> vec4<f32> {
#if TOKENS_3
  return vec4<f32>(dot(c[0], c[0]), dot(c[1], c[1]), dot(c[2], c[2]), 0.0);
#elif TOKENS_2
  return vec4<f32>(dot(c[0], c[0]), dot(c[1], c[1]), 0.0, 0.0);
#elif TOKENS_1
  return vec4<f32>(dot(c, c), 0.0, 0.0, 0.0);
#else
  return vec4<f32>(dot(c[0], c[0]), dot(c[1], c[1]), dot(c[2], c[2]), dot(c[3], c[3]));
#endif
}

// Every column times g (the RMSNorm gain of these 4 inputs).
fn scaled(c: Cols, g: vec4<f32>) -> Cols {
#if TOKENS_3
  return Cols(c[0] * g, c[1] * g, c[2] * g);
#elif TOKENS_2
  return Cols(c[0] * g, c[1] * g);
#elif TOKENS_1
  return c * g;
#else
  return Cols(c[0] * g, c[1] * g, c[2] * g, c[3] * g);
#endif
}
#endif

// Column t of a quad's accumulator: a group's 4 outputs for token t. Selects, not an index:
// lavapipe keeps a dynamically indexed matrix in memory.
fn column(c: Cols, t: u32) -> vec4<f32> {
#if TOKENS_3
  return select(select(c[0], c[1], t == 1u), c[2], t == 2u);
#elif TOKENS_2
  return select(c[0], c[1], t == 1u);
#elif TOKENS_1
  return c;
#else
  return select(select(c[0], c[1], t == 1u), select(c[2], c[3], t == 3u), t >= 2u);
#endif
}

fn activation(g: f32) -> f32 {
#if ACT_SILU
  return g / (1.0 + exp(-g));
#elif ACT_GELU_TANH
  let inner = 0.7978845608028654 * (g + 0.044715 * g * g * g);
  return 0.5 * g * (1.0 + tanh(clamp(inner, -15.0, 15.0)));
#else
  return g;
#endif
}

// A block of 8 columns of 4 rows (at: the rows' texture rows) as two 4x4 matrices whose rows are
// the weight rows, so that W . X is one matrix product for a whole quad of tokens.
fn weights4(at: vec4<u32>, word: u32) -> array<mat4x4<f32>, 2> {
  let r0 = weight_block(w, at.x, word);
  let r1 = weight_block(w, at.y, word);
  let r2 = weight_block(w, at.z, word);
  let r3 = weight_block(w, at.w, word);
  return array<mat4x4<f32>, 2>(
    transpose(mat4x4<f32>(r0[0], r1[0], r2[0], r3[0])),
    transpose(mat4x4<f32>(r0[1], r1[1], r2[1], r3[1])),
  );
}

// One block of 8 columns of x' for the invocation's tokens: lo = columns 0..3, hi = 4..7.
struct XBlock {
  lo: Cols,
  hi: Cols,
#if TOKENS_8
  lo_b: Cols,  // the second quad
  hi_b: Cols,
#endif
}

// 4 output rows of an invocation: their texture rows and accumulators (GLU: gate and up).
struct Group {
  at: vec4<u32>,
  acc: Cols,
#if TOKENS_8
  acc_b: Cols,
#endif
#if EPILOGUE_GLU
  up_at: vec4<u32>,
  up: Cols,
#if TOKENS_8
  up_b: Cols,
#endif
#endif
}

// The group of rows r .. r + 3 (clamped to valid rows: no branches around the loads).
fn group(r: u32) -> Group {
  var g: Group;
  g.at = min(vec4<u32>(r) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(params.rows - 1u));
#if EPILOGUE_GLU
  g.up_at = g.at + params.rows;  // the up rows follow the gate rows
#endif
  return g;
}

fn step(g: ptr<function, Group>, word: u32, x: XBlock) {
  let m = weights4((*g).at, word);
  (*g).acc += m[0] * x.lo + m[1] * x.hi;
#if TOKENS_8
  (*g).acc_b += m[0] * x.lo_b + m[1] * x.hi_b;
#endif
#if EPILOGUE_GLU
  let u = weights4((*g).up_at, word);
  (*g).up += u[0] * x.lo + u[1] * x.hi;
#if TOKENS_8
  (*g).up_b += u[0] * x.lo_b + u[1] * x.hi_b;
#endif
#endif
}

// Writes a quad of a group: rows r .. r + 3 (those < rows), tokens t0 .. t0 + 3 (those < n and
// < TOKENS); scale: 1 / rms per token.
fn finish(acc: Cols, up: Cols, r: u32, t0: u32, n: u32, scale: vec4<f32>) {
  for (var t = 0u; t < min(TOKENS, 4u); t++) {
    if (t0 + t >= n) {
      break;
    }
    let out_row = (t0 + t) * params.y_stride + params.row_offset;
    let a4 = column(acc, t) * scale[t];
#if EPILOGUE_GLU
    let u4 = column(up, t) * scale[t];
#endif
    for (var i = 0u; i < 4u; i++) {
      if (r + i < params.rows) {
        let a = a4[i];
        let o = out_row + r + i;
#if EPILOGUE_ADD
        y[o] += a;
#elif EPILOGUE_GLU
        y[o] = activation(a) * u4[i];
#else
        if (params.softcap > 0.0) {
          y[o] = tanh(clamp(a / params.softcap, -15.0, 15.0)) * params.softcap;
        } else {
          y[o] = a;
        }
#endif
      }
    }
  }
}

#if EPILOGUE_ROPE
// The K/V texel of flat vec4 index i. A texture row holds whole positions, so a head row's
// texels share a row.
fn kv_texel(i: u32) -> vec2<u32> {
  return vec2<u32>(i % params.kv_width, i / params.kv_width);
}

// The first rows of an invocation's two groups, which start at `first` (a multiple of 8, chunk
// rows): in a q or k head, dimensions 4b .. 4b + 3 and D/2 + 4b .. (b = the invocation's place in
// the head); in the v heads, 8 consecutive rows.
fn rope_rows(first: u32) -> vec2<u32> {
  let d = params.head_dim;
  let within = (params.row_offset + first) % d;  // chunks start at head boundaries
  if (params.row_offset + first >= (params.n_heads + params.n_kv) * d) {
    return vec2<u32>(first, first + 4u);
  }
  let r = first - within + within / 2u;
  return vec2<u32>(r, r + d / 2u);
}

// Writes a quad of tokens t0 .. t0 + 3 (those < n and < TOKENS) of the invocation's groups: lo
// holds rows `rows.x` .., hi rows `rows.y` .. (see rope_rows); scale: 1 / rms per token.
fn finish_rope(lo: Cols, hi: Cols, rows: vec2<u32>, t0: u32, n: u32, scale: vec4<f32>) {
  let d = params.head_dim;
  let dv = d / 4u;                                 // vec4s per head row
  let first = params.row_offset + rows.x;          // global row of lo's first row
  let head = first / d;                            // q heads, then k heads, then v heads
  let i = (first % d) / 4u;                        // lo's vec4 within the head row
  for (var t = 0u; t < min(TOKENS, 4u); t++) {
    let pos = state.pos + t0 + t;
    if (t0 + t >= n || pos >= params.ctx) {
      break;
    }
    let a = column(lo, t) * scale[t];
    let b = column(hi, t) * scale[t];
    if (head >= params.n_heads + params.n_kv) {    // v: rows.x .. rows.x + 7 as computed
      let at = kv_texel((pos * params.n_kv + head - params.n_heads - params.n_kv) * dv + i);
      textureStore(v_cache, at, a);
      textureStore(v_cache, at + vec2<u32>(1u, 0u), b);
      continue;
    }
    // (cos, sin) of the 4 rotation pairs (i .. i + 3 of the first half) at this position.
    let c0 = cos_sin[pos * dv + 2u * i];
    let c1 = cos_sin[pos * dv + 2u * i + 1u];
    let c = vec4<f32>(c0.x, c0.z, c1.x, c1.z);
    let s = vec4<f32>(c0.y, c0.w, c1.y, c1.w);
    let ra = a * c - b * s;
    let rb = b * c + a * s;
    let half = dv / 2u;
    if (head < params.n_heads) {
      let at = ((t0 + t) * params.y_stride + head * d) + 4u * i;
      for (var j = 0u; j < 4u; j++) {
        y[at + j] = ra[j];
        y[at + 4u * half + j] = rb[j];
      }
    } else {
      let at = kv_texel((pos * params.n_kv + head - params.n_heads) * dv + i);
      textureStore(k_cache, at, ra);
      textureStore(k_cache, at + vec2<u32>(half, 0u), rb);
    }
  }
}
#endif

struct Scales {
  a: vec4<f32>,
  b: vec4<f32>,
}

fn finish_group(g: Group, r: u32, t0: u32, n: u32, s: Scales) {
#if EPILOGUE_GLU
  finish(g.acc, g.up, r, t0, n, s.a);
#if TOKENS_8
  finish(g.acc_b, g.up_b, r, t0 + 4u, n, s.b);
#endif
#else
  finish(g.acc, g.acc, r, t0, n, s.a);
#if TOKENS_8
  finish(g.acc_b, g.acc_b, r, t0 + 4u, n, s.b);
#endif
#endif
}

// The vec4 offsets of the x rows of tokens t .. t + 3 (clamped to valid tokens).
fn x_rows(x_first: u32, t: u32, n: u32) -> vec4<u32> {
  let tokens = min(vec4<u32>(t) + vec4<u32>(0u, 1u, 2u, 3u), vec4<u32>(n - 1u));
  return ((vec4<u32>(x_first) + tokens) * params.x_stride) / 4u;
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let first_row = (gid.x + gid.y * groups.x * WG) * ROWS;  // within this chunk
  let t0 = gid.z * TOKENS;                                  // first token of this block
  var n = state.n;
  var x_first = 0u;                                         // x row of token 0
  if (params.last_only == 1u) {
    // The last token's row, or none in a forward of no tokens (a stopped draft's no-op step).
    x_first = max(n, 1u) - 1u;
    n = min(n, 1u);
  }
  if (first_row >= params.rows || t0 >= n) {
    return;
  }
  let blocks = params.cols / 8u;
  let x_at = x_rows(x_first, t0, n);
#if TOKENS_8
  let x_at_b = x_rows(x_first, t0 + 4u, n);
#endif
  // The row groups are spelled out (no loop over them, no array of them): lavapipe keeps
  // loop-indexed private arrays in memory, read and written lane by lane.
#if EPILOGUE_ROPE
  let rows01 = rope_rows(first_row);
#else
  let rows01 = vec2<u32>(first_row, first_row + 4u);
#endif
  var g0 = group(rows01.x);
#if ROWS_8
  var g1 = group(rows01.y);
#endif
#if ROWS_16
  var g1 = group(first_row + 4u);
  var g2 = group(first_row + 8u);
  var g3 = group(first_row + 12u);
#endif
  var ss: Scales;  // sums of squares per token (NORM)
  for (var block = 0u; block < blocks; block++) {
    var xb: XBlock;
    xb.lo = x_cols(x_at, 2u * block);
    xb.hi = x_cols(x_at, 2u * block + 1u);
#if TOKENS_8
    xb.lo_b = x_cols(x_at_b, 2u * block);
    xb.hi_b = x_cols(x_at_b, 2u * block + 1u);
#endif
#if NORM
    let g_lo = gain[2u * block];
    let g_hi = gain[2u * block + 1u];
    ss.a += squares(xb.lo) + squares(xb.hi);
    xb.lo = scaled(xb.lo, g_lo);
    xb.hi = scaled(xb.hi, g_hi);
#if TOKENS_8
    ss.b += squares(xb.lo_b) + squares(xb.hi_b);
    xb.lo_b = scaled(xb.lo_b, g_lo);
    xb.hi_b = scaled(xb.hi_b, g_hi);
#endif
#endif
    let word = block * WORDS_PER_BLOCK;
    step(&g0, word, xb);
#if ROWS_8
    step(&g1, word, xb);
#endif
#if ROWS_16
    step(&g1, word, xb);
    step(&g2, word, xb);
    step(&g3, word, xb);
#endif
  }
#if NORM
  let s = Scales(
    inverseSqrt(ss.a / f32(params.cols) + params.eps),
    inverseSqrt(ss.b / f32(params.cols) + params.eps),
  );
#else
  let s = Scales(vec4<f32>(1.0), vec4<f32>(1.0));
#endif
#if EPILOGUE_ROPE
  finish_rope(g0.acc, g1.acc, rows01, t0, n, s.a);
#if TOKENS_8
  finish_rope(g0.acc_b, g1.acc_b, rows01, t0 + 4u, n, s.b);
#endif
#else
  finish_group(g0, first_row, t0, n, s);
#if ROWS_8
  finish_group(g1, first_row + 4u, t0, n, s);
#endif
#endif
#if ROWS_16
  finish_group(g1, first_row + 4u, t0, n, s);
  finish_group(g2, first_row + 8u, t0, n, s);
  finish_group(g3, first_row + 12u, t0, n, s);
#endif
}
