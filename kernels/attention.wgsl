// Causal attention of the n new tokens over the K/V cache, with GQA, an optional sliding window
// and Gemma-2's tanh soft-cap on the scores. Query at position p = pos + t sees keys k with
// k <= p and, with a window w, p - k < w.
//
// One workgroup of WG = 8 invocations (one SIMD row) per (kv head, block of HEADS query heads of
// its group, block of TOKENS tokens): UNITS = HEADS x TOKENS <= 8 (head, token) pairs, so every
// key and value row it loads serves all of them. The lanes split the keys (key = first + lane +
// 8 j), each keeping an online softmax (running max, sum, weighted values) per unit; one barrier,
// then the partial results are merged through workgroup memory.
//
// Why it is written out: on lavapipe (llvmpipe) a kernel costs mostly its storage/workgroup load
// instructions (each one a loop over the lanes with bounds checks), and a private array indexed in
// a loop lives in memory, read and written lane by lane (naga's loop bounding keeps LLVM from
// unrolling). So nothing here is a loop-indexed private array: a head row is a Row struct of
// D/16 4x4 blocks handled by spelled-out code (`if (DM > m)` on constants folds away), the units
// are the variables u0 .. u7 (`if (UNITS > i)`), and the merge spells out the 8 lanes' weights as
// two vec4s. See kernels/matmul.wgsl for the same lesson.
//
// Measured (GPU timestamps, lavapipe on one thread, 2 shared cores, min of runs; the previous
// kernel with loop-indexed arrays qs[pair][m], acc[pair][m], run_max[pair] -> this one, per call):
//   head_dim 32, 4 q / 2 kv heads (tiny-llama-ls), pos 60: n=1 47 -> 31..40 us, n=2 108 -> 31..61,
//     n=3 118 -> 38..67, n=5 295 -> 73..126, n=8 548 -> 101..135 us.
//   head_dim 64, 32 / 8 heads (Llama-3.2-1B), pos 1000: n=1 10.4 -> 2.4..4.8 ms,
//     n=8 80 -> 16..21 ms.
//   head_dim 256, 8 / 4 heads (Gemma-2-2B), pos 1000: n=1 17.0 -> 6.2..8.0 ms,
//     n=8 150 -> 12..24 ms.
// (ranges: the same code in different runs, the cores being shared.) Tried and not kept: at most 4
// units per workgroup (n=1, 2 the same; n >= 3 ~1.5x slower: keys reloaded per token block); 16
// units (u0 .. u15: the pipeline took minutes to compile).
//
// K and V come from read-only storage textures (rgba32float, src/model/kv_cache.ts), which
// lavapipe loads inline, one 16-byte load per lane, where a storage-buffer load is a loop over the
// lanes with a bounds check per lane and component. Measured on tiny-llama with a 755-token
// prompt (bench's kernel table, three interleaved pairs, storage buffers -> textures): attention
// per decode step 2.98 -> 1.74, 2.32 -> 1.41 and 2.25 -> 1.86 ms; decode 153 -> 241, 215 -> 216
// and 178 -> 202 tok/s.
//
// Defines: HEAD_DIM (D, a multiple of 16, <= 256), HEADS (divides the group size n_heads / n_kv),
// TOKENS (HEADS x TOKENS <= 8), CHUNKS (output chunks per unit in the merge; divides D/4).

const DV: u32 = HEAD_DIM / 4u;   // vec4s per head row
const DM: u32 = HEAD_DIM / 16u;  // 4x4 blocks per head row
const NO_SCORE: f32 = -3.0e38;
const WG: u32 = 8u;             // lanes splitting the keys: one SIMD row (the merge spells out 8)
const UNITS: u32 = HEADS * TOKENS;  // (head, token) pairs per workgroup, at most 8

struct Params {
  n_heads: u32,
  n_kv: u32,
  head_dim: u32,   // D (== HEAD_DIM)
  window: u32,     // 0: none
  scale: f32,      // score multiplier (1/sqrt(D), or query_pre_attn_scalar^-1/2)
  softcap: f32,    // > 0: s = tanh(s / softcap) * softcap
  kv_width: u32,   // texels a row of the K/V textures (src/model/kv_cache.ts)
  pad1: u32,
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;          // (n, n_heads, D)
// The K/V caches, (ctx, n_kv, D) flattened into rows of kv_width texels: vec4 i is texel
// (i % kv_width, i / kv_width), and a head row never straddles two rows.
@group(0) @binding(3) var k_cache: texture_storage_2d<rgba32float, read>;
@group(0) @binding(4) var v_cache: texture_storage_2d<rgba32float, read>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;  // (n, n_heads, D)

// Each lane's partial softmax per unit: max and sum at [unit][lane] (lane = vec4 lane / 4,
// component lane % 4), weighted values at [unit][lane][D/4].
var<workgroup> part_max: array<vec4<f32>, UNITS * WG / 4u>;
var<workgroup> part_sum: array<vec4<f32>, UNITS * WG / 4u>;
var<workgroup> part_acc: array<vec4<f32>, UNITS * WG * DV>;

// exp(x) for x <= 0, flushed to 0 below e^-80: denormal results make llvmpipe's arithmetic
// (no flush-to-zero) orders of magnitude slower, and such weights cannot change a softmax sum >= 1.
fn exp_weight(x: f32) -> f32 {
  return select(0.0, exp(x), x > -80.0);
}

// A head row of D floats as D/16 4x4 blocks: dimensions 16 m .. 16 m + 15 are the 4 columns of
// b<m>. Spelled out, never indexed: lavapipe keeps a loop-indexed private array in memory, read
// and written lane by lane. The fields past DM, and every `if (DM > m)` on them, fold away.
struct Row {
  b0: mat4x4<f32>,
  b1: mat4x4<f32>,
  b2: mat4x4<f32>,
  b3: mat4x4<f32>,
  b4: mat4x4<f32>,
  b5: mat4x4<f32>,
  b6: mat4x4<f32>,
  b7: mat4x4<f32>,
  b8: mat4x4<f32>,
  b9: mat4x4<f32>,
  b10: mat4x4<f32>,
  b11: mat4x4<f32>,
  b12: mat4x4<f32>,
  b13: mat4x4<f32>,
  b14: mat4x4<f32>,
  b15: mat4x4<f32>,
}

// Where a head row is read from: the queries, or the layer's K or V cache.
const FROM_Q: u32 = 0u;
const FROM_K: u32 = 1u;
const FROM_V: u32 = 2u;

// Block m (elements 16m .. 16m + 15) of the head row at vec4 offset `at` of `source`. `source` is
// a constant at every call, so the switch folds away once the driver inlines the call.
fn head_block(source: u32, at: u32, m: u32) -> mat4x4<f32> {
  let i = at + 4u * m;
  let x = i % params.kv_width;  // the K/V texel of vec4 i: (x, y) .. (x + 3, y)
  let y = i / params.kv_width;
  switch source {
    case FROM_Q: {
      return mat4x4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]);
    }
    case FROM_K: {
      return mat4x4<f32>(
        textureLoad(k_cache, vec2<u32>(x, y)),
        textureLoad(k_cache, vec2<u32>(x + 1u, y)),
        textureLoad(k_cache, vec2<u32>(x + 2u, y)),
        textureLoad(k_cache, vec2<u32>(x + 3u, y)),
      );
    }
    default: {
      return mat4x4<f32>(
        textureLoad(v_cache, vec2<u32>(x, y)),
        textureLoad(v_cache, vec2<u32>(x + 1u, y)),
        textureLoad(v_cache, vec2<u32>(x + 2u, y)),
        textureLoad(v_cache, vec2<u32>(x + 3u, y)),
      );
    }
  }
}

// The head row at vec4 offset `at` of q, k_cache or v_cache: DM blocks, written out (no loop).
fn head_row(source: u32, at: u32) -> Row {
  var r: Row;
  r.b0 = head_block(source, at, 0u);
  if (DM > 1u) { r.b1 = head_block(source, at, 1u); }
  if (DM > 2u) { r.b2 = head_block(source, at, 2u); }
  if (DM > 3u) { r.b3 = head_block(source, at, 3u); }
  if (DM > 4u) { r.b4 = head_block(source, at, 4u); }
  if (DM > 5u) { r.b5 = head_block(source, at, 5u); }
  if (DM > 6u) { r.b6 = head_block(source, at, 6u); }
  if (DM > 7u) { r.b7 = head_block(source, at, 7u); }
  if (DM > 8u) { r.b8 = head_block(source, at, 8u); }
  if (DM > 9u) { r.b9 = head_block(source, at, 9u); }
  if (DM > 10u) { r.b10 = head_block(source, at, 10u); }
  if (DM > 11u) { r.b11 = head_block(source, at, 11u); }
  if (DM > 12u) { r.b12 = head_block(source, at, 12u); }
  if (DM > 13u) { r.b13 = head_block(source, at, 13u); }
  if (DM > 14u) { r.b14 = head_block(source, at, 14u); }
  if (DM > 15u) { r.b15 = head_block(source, at, 15u); }
  return r;
}

fn block_prod(a: mat4x4<f32>, b: mat4x4<f32>) -> vec4<f32> {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
}

fn row_dot(a: Row, b: Row) -> f32 {
  var p = vec4<f32>(0.0);
  p += block_prod(a.b0, b.b0);
  if (DM > 1u) { p += block_prod(a.b1, b.b1); }
  if (DM > 2u) { p += block_prod(a.b2, b.b2); }
  if (DM > 3u) { p += block_prod(a.b3, b.b3); }
  if (DM > 4u) { p += block_prod(a.b4, b.b4); }
  if (DM > 5u) { p += block_prod(a.b5, b.b5); }
  if (DM > 6u) { p += block_prod(a.b6, b.b6); }
  if (DM > 7u) { p += block_prod(a.b7, b.b7); }
  if (DM > 8u) { p += block_prod(a.b8, b.b8); }
  if (DM > 9u) { p += block_prod(a.b9, b.b9); }
  if (DM > 10u) { p += block_prod(a.b10, b.b10); }
  if (DM > 11u) { p += block_prod(a.b11, b.b11); }
  if (DM > 12u) { p += block_prod(a.b12, b.b12); }
  if (DM > 13u) { p += block_prod(a.b13, b.b13); }
  if (DM > 14u) { p += block_prod(a.b14, b.b14); }
  if (DM > 15u) { p += block_prod(a.b15, b.b15); }
  return p.x + p.y + p.z + p.w;
}

// acc * c + v * w
fn row_update(acc: Row, c: f32, v: Row, w: f32) -> Row {
  var r: Row;
  r.b0 = acc.b0 * c + v.b0 * w;
  if (DM > 1u) { r.b1 = acc.b1 * c + v.b1 * w; }
  if (DM > 2u) { r.b2 = acc.b2 * c + v.b2 * w; }
  if (DM > 3u) { r.b3 = acc.b3 * c + v.b3 * w; }
  if (DM > 4u) { r.b4 = acc.b4 * c + v.b4 * w; }
  if (DM > 5u) { r.b5 = acc.b5 * c + v.b5 * w; }
  if (DM > 6u) { r.b6 = acc.b6 * c + v.b6 * w; }
  if (DM > 7u) { r.b7 = acc.b7 * c + v.b7 * w; }
  if (DM > 8u) { r.b8 = acc.b8 * c + v.b8 * w; }
  if (DM > 9u) { r.b9 = acc.b9 * c + v.b9 * w; }
  if (DM > 10u) { r.b10 = acc.b10 * c + v.b10 * w; }
  if (DM > 11u) { r.b11 = acc.b11 * c + v.b11 * w; }
  if (DM > 12u) { r.b12 = acc.b12 * c + v.b12 * w; }
  if (DM > 13u) { r.b13 = acc.b13 * c + v.b13 * w; }
  if (DM > 14u) { r.b14 = acc.b14 * c + v.b14 * w; }
  if (DM > 15u) { r.b15 = acc.b15 * c + v.b15 * w; }
  return r;
}

fn store_block(b: mat4x4<f32>, at: u32) {
  part_acc[at] = b[0];
  part_acc[at + 1u] = b[1];
  part_acc[at + 2u] = b[2];
  part_acc[at + 3u] = b[3];
}

// Writes a row to part_acc at vec4 offset `at`.
fn store_row(r: Row, at: u32) {
  store_block(r.b0, at + 0u);
  if (DM > 1u) { store_block(r.b1, at + 4u); }
  if (DM > 2u) { store_block(r.b2, at + 8u); }
  if (DM > 3u) { store_block(r.b3, at + 12u); }
  if (DM > 4u) { store_block(r.b4, at + 16u); }
  if (DM > 5u) { store_block(r.b5, at + 20u); }
  if (DM > 6u) { store_block(r.b6, at + 24u); }
  if (DM > 7u) { store_block(r.b7, at + 28u); }
  if (DM > 8u) { store_block(r.b8, at + 32u); }
  if (DM > 9u) { store_block(r.b9, at + 36u); }
  if (DM > 10u) { store_block(r.b10, at + 40u); }
  if (DM > 11u) { store_block(r.b11, at + 44u); }
  if (DM > 12u) { store_block(r.b12, at + 48u); }
  if (DM > 13u) { store_block(r.b13, at + 52u); }
  if (DM > 14u) { store_block(r.b14, at + 56u); }
  if (DM > 15u) { store_block(r.b15, at + 60u); }
}

// The first key a query at position p sees.
fn first_key(p: u32) -> u32 {
  if (params.window > 0u && p + 1u > params.window) {
    return p + 1u - params.window;
  }
  return 0u;
}

// One (query head, token) pair of the workgroup and its online softmax over this lane's keys.
struct Unit {
  q: Row,        // the query row
  acc: Row,      // sum of weight * value row
  run_max: f32,  // running max of the scaled scores
  run_sum: f32,  // sum of weights (relative to run_max)
  p: u32,        // query position
  first: u32,    // first visible key
}

// Unit i = h * TOKENS + t: head head0 + h, token t0 + t (clamped to the last token: blocks past n
// compute a copy and write nothing, so nothing is read past the filled cache).
fn unit(i: u32, head0: u32, t0: u32, n: u32) -> Unit {
  let t = min(t0 + i % TOKENS, n - 1u);
  var u: Unit;
  u.q = head_row(FROM_Q, (t * params.n_heads + head0 + i / TOKENS) * DV);
  u.run_max = NO_SCORE;
  u.p = state.pos + t;
  u.first = first_key(u.p);
  return u;
}

fn step(u: ptr<function, Unit>, key: u32, k: Row, v: Row) {
  var s = row_dot((*u).q, k) * params.scale;
  if (params.softcap > 0.0) {
    s = tanh(clamp(s / params.softcap, -15.0, 15.0)) * params.softcap;
  }
  let visible = key >= (*u).first && key <= (*u).p;
  let new_max = select((*u).run_max, max((*u).run_max, s), visible);
  let correction = exp_weight((*u).run_max - new_max);
  let weight = select(0.0, exp_weight(s - new_max), visible);
  (*u).run_max = new_max;
  (*u).run_sum = (*u).run_sum * correction + weight;
  (*u).acc = row_update((*u).acc, correction, v, weight);
}

fn store_unit(u: Unit, i: u32, lane: u32) {
  let slot = i * WG + lane;
  part_max[slot / 4u][slot % 4u] = u.run_max;
  part_sum[slot / 4u][slot % 4u] = u.run_sum;
  store_row(u.acc, slot * DV);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let lane = lid.x;
  let group = params.n_heads / params.n_kv;
  let head_blocks = group / HEADS;
  let kv_head = wid.x / head_blocks;
  let head0 = kv_head * group + (wid.x % head_blocks) * HEADS;
  let t0 = wid.y * TOKENS;
  let n = state.n;
  // The units, spelled out (u0 .. u<UNITS - 1>); there is no early return before the barrier.
  var u0: Unit;
  var u1: Unit;
  var u2: Unit;
  var u3: Unit;
  var u4: Unit;
  var u5: Unit;
  var u6: Unit;
  var u7: Unit;
  u0 = unit(0u, head0, t0, n);
  if (UNITS > 1u) { u1 = unit(1u, head0, t0, n); }
  if (UNITS > 2u) { u2 = unit(2u, head0, t0, n); }
  if (UNITS > 3u) { u3 = unit(3u, head0, t0, n); }
  if (UNITS > 4u) { u4 = unit(4u, head0, t0, n); }
  if (UNITS > 5u) { u5 = unit(5u, head0, t0, n); }
  if (UNITS > 6u) { u6 = unit(6u, head0, t0, n); }
  if (UNITS > 7u) { u7 = unit(7u, head0, t0, n); }
  // Keys from the first token's first visible key to the last token's position; none for a
  // block past the forward's tokens (all of them in a stopped draft's no-op step), which stores
  // nothing.
  let first = first_key(state.pos + min(t0, n - 1u));
  let last = state.pos + min(t0 + TOKENS - 1u, n - 1u);
  let keys_end = select(first, last + 1u, t0 < n);
  for (var key = first + lane; key < keys_end; key += WG) {
    let row = (key * params.n_kv + kv_head) * DV;
    let k = head_row(FROM_K, row);
    let v = head_row(FROM_V, row);
    step(&u0, key, k, v);
    if (UNITS > 1u) { step(&u1, key, k, v); }
    if (UNITS > 2u) { step(&u2, key, k, v); }
    if (UNITS > 3u) { step(&u3, key, k, v); }
    if (UNITS > 4u) { step(&u4, key, k, v); }
    if (UNITS > 5u) { step(&u5, key, k, v); }
    if (UNITS > 6u) { step(&u6, key, k, v); }
    if (UNITS > 7u) { step(&u7, key, k, v); }
  }
  store_unit(u0, 0u, lane);
  if (UNITS > 1u) { store_unit(u1, 1u, lane); }
  if (UNITS > 2u) { store_unit(u2, 2u, lane); }
  if (UNITS > 3u) { store_unit(u3, 3u, lane); }
  if (UNITS > 4u) { store_unit(u4, 4u, lane); }
  if (UNITS > 5u) { store_unit(u5, 5u, lane); }
  if (UNITS > 6u) { store_unit(u6, 6u, lane); }
  if (UNITS > 7u) { store_unit(u7, 7u, lane); }
  workgroupBarrier();

  // Merge: item = (unit, chunk of D/4 / CHUNKS vec4s), spread over the lanes.
  let per_chunk = DV / CHUNKS;
  for (var item = lane; item < UNITS * CHUNKS; item += WG) {
    let i = item / CHUNKS;
    let t = t0 + i % TOKENS;
    let base = i * (WG / 4u);
    let m_lo = part_max[base];
    let m_hi = part_max[base + 1u];
    let m4 = max(m_lo, m_hi);
    let all_max = max(max(m4.x, m4.y), max(m4.z, m4.w));
    let w_lo = select(vec4(0.0), exp(m_lo - all_max), m_lo - all_max > vec4(-80.0));
    let w_hi = select(vec4(0.0), exp(m_hi - all_max), m_hi - all_max > vec4(-80.0));
    let total = dot(w_lo, part_sum[base]) + dot(w_hi, part_sum[base + 1u]);
    if (t < n) {
      let out_row = (t * params.n_heads + head0 + i / TOKENS) * DV;
      let at = i * WG * DV;
      for (var j = (item % CHUNKS) * per_chunk; j < (item % CHUNKS + 1u) * per_chunk; j++) {
        let o = w_lo.x * part_acc[at + j] + w_lo.y * part_acc[at + DV + j]
          + w_lo.z * part_acc[at + 2u * DV + j] + w_lo.w * part_acc[at + 3u * DV + j]
          + w_hi.x * part_acc[at + 4u * DV + j] + w_hi.y * part_acc[at + 5u * DV + j]
          + w_hi.z * part_acc[at + 6u * DV + j] + w_hi.w * part_acc[at + 7u * DV + j];
        out[out_row + j] = o / total;
      }
    }
  }
}
