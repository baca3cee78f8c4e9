// Rotary position embedding on q and k, and the K/V cache append, in one dispatch.
// One invocation per (head, token), 4 dimensions per step (vec4 loads: on lavapipe each storage
// load is a loop over the SIMD lanes, so one wide load beats four narrow ones): heads
// [0, n_heads) rotate q into q_out; heads [n_heads, n_heads + n_kv) rotate k into k_cache and copy
// v into v_cache at position pos + t. Rotation as in HF's rotate_half: pairs (i, i + D/2) with
// angle pos * inv_freq[i]; the cos/sin table is computed once on the CPU in f64 (default or llama3
// frequencies). D is a multiple of 8.

const WG: u32 = 8u;

struct Params {
  n_heads: u32,
  n_kv: u32,
  head_dim: u32,   // D
  ctx: u32,        // cache capacity in positions
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> qkv: array<vec4<f32>>;             // (n, (n_heads + 2 n_kv) D)
@group(0) @binding(3) var<storage, read> cos_sin: array<vec4<f32>>;         // (ctx, D/2) (cos, sin) pairs
@group(0) @binding(4) var<storage, read_write> q_out: array<vec4<f32>>;     // (n, n_heads, D)
@group(0) @binding(5) var<storage, read_write> k_cache: array<vec4<f32>>;   // (ctx, n_kv, D)
@group(0) @binding(6) var<storage, read_write> v_cache: array<vec4<f32>>;   // (ctx, n_kv, D)

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let heads = params.n_heads + params.n_kv;
  let head = gid.x % heads;
  let t = gid.x / heads;
  let pos = state.pos + t;
  if (t >= state.n || pos >= params.ctx) {
    return;
  }
  let dv = params.head_dim / 4u;       // vec4s per head row
  let half = dv / 2u;
  let width = (params.n_heads + 2u * params.n_kv) * dv;
  let src = t * width + head * dv;     // q head, or k head when head >= n_heads
  let is_q = head < params.n_heads;
  let kv_head = head - params.n_heads;
  var dst = (t * params.n_heads + head) * dv;
  if (!is_q) {
    dst = (pos * params.n_kv + kv_head) * dv;
  }
  for (var i = 0u; i < half; i++) {
    // (cos, sin) of dimensions 4i .. 4i + 3 of the first half.
    let c0 = cos_sin[pos * dv + 2u * i];
    let c1 = cos_sin[pos * dv + 2u * i + 1u];
    let c = vec4<f32>(c0.x, c0.z, c1.x, c1.z);
    let s = vec4<f32>(c0.y, c0.w, c1.y, c1.w);
    let a = qkv[src + i];
    let b = qkv[src + i + half];
    let ra = a * c - b * s;
    let rb = b * c + a * s;
    if (is_q) {
      q_out[dst + i] = ra;
      q_out[dst + i + half] = rb;
    } else {
      k_cache[dst + i] = ra;
      k_cache[dst + i + half] = rb;
    }
  }
  if (!is_q) {
    let v_src = t * width + (params.n_heads + params.n_kv + kv_head) * dv;
    for (var i = 0u; i < dv; i++) {
      v_cache[dst + i] = qkv[v_src + i];
    }
  }
}
