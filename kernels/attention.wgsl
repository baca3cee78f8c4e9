// Causal attention of the n new tokens over the K/V cache, with GQA, an optional sliding window
// and Gemma-2's tanh soft-cap on the scores. Query at position p = pos + t sees keys k with
// k <= p and, with a window w, p - k < w.
//
// One workgroup per (kv head, block of HEADS query heads of its group, block of TOKENS tokens):
// every key and value row it loads serves HEADS x TOKENS (head, token) pairs, whose queries and
// accumulators live in registers. The WG invocations split the keys (key = first + lane + WG j),
// each keeping an online softmax (running max, sum, weighted values) per pair; one barrier, then
// the partial results are merged through workgroup memory. On lavapipe a storage load costs about
// the same whether it serves one pair or many, so this register blocking, not the thread count,
// sets the speed; see bench/kernels_bench.ts.
//
// Head rows are held as D/16 4x4 matrices: whole-matrix arithmetic keeps the per-dimension loops
// 4x shorter, which measured 2-4x faster on lavapipe than vec4 rows (bench/kernels_bench.ts).
//
// Defines: HEAD_DIM (D, a multiple of 16), HEADS (divides the group size n_heads / n_kv),
// TOKENS, WG (lanes splitting the keys), CHUNKS (output chunks per pair in the merge; divides D/4).

const DV: u32 = HEAD_DIM / 4u;       // vec4s per head row
const DM: u32 = HEAD_DIM / 16u;      // 4x4 matrices per head row
const PAIRS: u32 = HEADS * TOKENS;   // (head, token) pairs per workgroup; pair = h * TOKENS + t
const NO_SCORE: f32 = -3.0e38;

struct Params {
  n_heads: u32,
  n_kv: u32,
  head_dim: u32,   // D (== HEAD_DIM)
  window: u32,     // 0: none
  scale: f32,      // score multiplier (1/sqrt(D), or query_pre_attn_scalar^-1/2)
  softcap: f32,    // > 0: s = tanh(s / softcap) * softcap
  pad0: u32,
  pad1: u32,
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> q: array<vec4<f32>>;          // (n, n_heads, D)
@group(0) @binding(3) var<storage, read> k_cache: array<vec4<f32>>;    // (ctx, n_kv, D)
@group(0) @binding(4) var<storage, read> v_cache: array<vec4<f32>>;    // (ctx, n_kv, D)
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;  // (n, n_heads, D)

// Each lane's partial softmax per pair: [pair][lane] for the max and sum, [pair][lane][D/4].
var<workgroup> part_max: array<f32, PAIRS * WG>;
var<workgroup> part_sum: array<f32, PAIRS * WG>;
var<workgroup> part_acc: array<vec4<f32>, PAIRS * WG * DV>;

// exp(x) for x <= 0, flushed to 0 below e^-80: denormal results make llvmpipe's arithmetic
// (no flush-to-zero) orders of magnitude slower, and such weights cannot change a softmax sum >= 1.
fn exp_weight(x: f32) -> f32 {
  return select(0.0, exp(x), x > -80.0);
}

// sum of a .* b over a 4x4 block.
fn block_dot(a: mat4x4<f32>, b: mat4x4<f32>) -> f32 {
  let p = a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
  return p.x + p.y + p.z + p.w;
}

// Row block m (dimensions 16 m .. 16 m + 15) of a K or V cache row starting at vec4 index `at`.
fn k_block(at: u32, m: u32) -> mat4x4<f32> {
  let i = at + 4u * m;
  return mat4x4<f32>(k_cache[i], k_cache[i + 1u], k_cache[i + 2u], k_cache[i + 3u]);
}
fn v_block(at: u32, m: u32) -> mat4x4<f32> {
  let i = at + 4u * m;
  return mat4x4<f32>(v_cache[i], v_cache[i + 1u], v_cache[i + 2u], v_cache[i + 3u]);
}

// The first key a query at position p sees.
fn first_key(p: u32) -> u32 {
  if (params.window > 0u && p + 1u > params.window) {
    return p + 1u - params.window;
  }
  return 0u;
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
  // Token rows are clamped to the last token (blocks past n compute a copy and write nothing),
  // so nothing is read past the filled cache; there is no early return before the barrier.
  var p: array<u32, TOKENS>;       // query positions
  var first: array<u32, TOKENS>;   // their first visible keys
  for (var t = 0u; t < TOKENS; t++) {
    p[t] = state.pos + min(t0 + t, n - 1u);
    first[t] = first_key(p[t]);
  }
  var qs: array<array<mat4x4<f32>, DM>, PAIRS>;
  for (var h = 0u; h < HEADS; h++) {
    for (var t = 0u; t < TOKENS; t++) {
      let row = ((p[t] - state.pos) * params.n_heads + head0 + h) * DV;
      for (var m = 0u; m < DM; m++) {
        let i = row + 4u * m;
        qs[h * TOKENS + t][m] = mat4x4<f32>(q[i], q[i + 1u], q[i + 2u], q[i + 3u]) * params.scale;
      }
    }
  }

  var run_max: array<f32, PAIRS>;
  var run_sum: array<f32, PAIRS>;
  var acc: array<array<mat4x4<f32>, DM>, PAIRS>;
  for (var i = 0u; i < PAIRS; i++) {
    run_max[i] = NO_SCORE;
  }
  let last = p[TOKENS - 1u];
  for (var key = first[0] + lane; key <= last; key += WG) {
    let row = (key * params.n_kv + kv_head) * DV;
    var ks: array<mat4x4<f32>, DM>;
    var vs: array<mat4x4<f32>, DM>;
    for (var m = 0u; m < DM; m++) {
      ks[m] = k_block(row, m);
      vs[m] = v_block(row, m);
    }
    for (var h = 0u; h < HEADS; h++) {
      for (var t = 0u; t < TOKENS; t++) {
        let pair = h * TOKENS + t;
        var s = 0.0;
        for (var m = 0u; m < DM; m++) {
          s += block_dot(qs[pair][m], ks[m]);
        }
        if (params.softcap > 0.0) {
          s = tanh(clamp(s / params.softcap, -15.0, 15.0)) * params.softcap;
        }
        let visible = key >= first[t] && key <= p[t];
        let new_max = select(run_max[pair], max(run_max[pair], s), visible);
        let correction = exp_weight(run_max[pair] - new_max);
        let weight = select(0.0, exp_weight(s - new_max), visible);
        run_max[pair] = new_max;
        run_sum[pair] = run_sum[pair] * correction + weight;
        for (var m = 0u; m < DM; m++) {
          acc[pair][m] = acc[pair][m] * correction + vs[m] * weight;
        }
      }
    }
  }

  for (var pair = 0u; pair < PAIRS; pair++) {
    let slot = pair * WG + lane;
    part_max[slot] = run_max[pair];
    part_sum[slot] = run_sum[pair];
    for (var m = 0u; m < DM; m++) {
      for (var c = 0u; c < 4u; c++) {
        part_acc[slot * DV + 4u * m + c] = acc[pair][m][c];
      }
    }
  }
  workgroupBarrier();

  // Merge: item = (pair, chunk of D/4 / CHUNKS vec4s), spread over the lanes.
  let per_chunk = DV / CHUNKS;
  for (var item = lane; item < PAIRS * CHUNKS; item += WG) {
    let pair = item / CHUNKS;
    let h = pair / TOKENS;
    let t = pair % TOKENS;
    var all_max = NO_SCORE;
    for (var l = 0u; l < WG; l++) {
      all_max = max(all_max, part_max[pair * WG + l]);
    }
    var weights: array<f32, WG>;
    var total = 0.0;
    for (var l = 0u; l < WG; l++) {
      weights[l] = exp_weight(part_max[pair * WG + l] - all_max);
      total += weights[l] * part_sum[pair * WG + l];
    }
    if (t0 + t < n) {
      let out_row = ((t0 + t) * params.n_heads + head0 + h) * DV;
      for (var j = 0u; j < per_chunk; j++) {
        let i = (item % CHUNKS) * per_chunk + j;
        var o = vec4<f32>(0.0);
        for (var l = 0u; l < WG; l++) {
          o += weights[l] * part_acc[(pair * WG + l) * DV + i];
        }
        out[out_row + i] = o / total;
      }
    }
  }
}
