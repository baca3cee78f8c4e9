// Causal attention of the n new tokens over the K/V cache, with GQA, an optional sliding window
// and Gemma-2's tanh soft-cap on the scores. One workgroup per (query head, token); keys go in
// tiles of WG with an online softmax, so any context length runs in fixed workgroup memory.
// Query at position p = pos + t sees keys k with k <= p and, with a window w, p - k < w.

const WG: u32 = 64u;
const MAX_HEAD_DIM: u32 = 256u;
const DIMS_PER_THREAD: u32 = MAX_HEAD_DIM / WG;

struct Params {
  n_heads: u32,
  n_kv: u32,
  head_dim: u32,   // D <= 256
  window: u32,     // 0: none
  scale: f32,      // score multiplier (1/sqrt(D), or query_pre_attn_scalar^-1/2)
  softcap: f32,    // > 0: s = tanh(s / softcap) * softcap
  pad0: u32,
  pad1: u32,
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> q: array<f32>;          // (n, n_heads, D)
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;    // (ctx, n_kv, D)
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;    // (ctx, n_kv, D)
@group(0) @binding(5) var<storage, read_write> out: array<f32>;  // (n, n_heads * D)

var<workgroup> q_shared: array<f32, MAX_HEAD_DIM>;
var<workgroup> weights: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let head = wid.x;
  let t = wid.y;
  let n = state.n;
  let d = params.head_dim;
  let kv_head = head / (params.n_heads / params.n_kv);
  let p = state.pos + t;
  var first = 0u;
  if (params.window > 0u && p + 1u > params.window) {
    first = p + 1u - params.window;
  }
  let q_row = (t * params.n_heads + head) * d;
  for (var i = lid.x; i < d; i += WG) {
    q_shared[i] = select(0.0, q[q_row + i], t < n);
  }
  workgroupBarrier();

  var running_max = -3.0e38;
  var running_sum = 0.0;
  var acc: array<f32, DIMS_PER_THREAD>;
  // Tiles are counted from 0 so the loop bound is the same for every invocation (barriers).
  let tiles = (p + 1u - first + WG - 1u) / WG;
  for (var tile = 0u; tile < tiles; tile++) {
    let key = first + tile * WG + lid.x;
    var s = -3.0e38;
    if (key <= p) {
      let k_row = (key * params.n_kv + kv_head) * d;
      var dot = 0.0;
      for (var i = 0u; i < d; i++) {
        dot += q_shared[i] * k_cache[k_row + i];
      }
      s = dot * params.scale;
      if (params.softcap > 0.0) {
        s = tanh(clamp(s / params.softcap, -15.0, 15.0)) * params.softcap;
      }
    }
    weights[lid.x] = s;
    workgroupBarrier();
    var tile_max = -3.0e38;
    for (var j = 0u; j < WG; j++) {
      tile_max = max(tile_max, weights[j]);
    }
    let new_max = max(running_max, tile_max);
    let correction = exp(running_max - new_max);
    workgroupBarrier();
    weights[lid.x] = select(0.0, exp(s - new_max), key <= p);
    workgroupBarrier();
    running_sum *= correction;
    for (var k = 0u; k < DIMS_PER_THREAD; k++) {
      acc[k] *= correction;
    }
    for (var j = 0u; j < WG; j++) {
      let wj = weights[j];
      running_sum += wj;
      let v_row = ((first + tile * WG + j) * params.n_kv + kv_head) * d;
      if (wj != 0.0) {
        for (var k = 0u; k < DIMS_PER_THREAD; k++) {
          let i = lid.x + k * WG;
          if (i < d) {
            acc[k] += wj * v_cache[v_row + i];
          }
        }
      }
    }
    running_max = new_max;
    workgroupBarrier();
  }
  if (t >= n) {
    return;
  }
  for (var k = 0u; k < DIMS_PER_THREAD; k++) {
    let i = lid.x + k * WG;
    if (i < d) {
      out[t * params.n_heads * d + head * d + i] = acc[k] / running_sum;
    }
  }
}
