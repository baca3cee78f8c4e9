// Rotary position embedding on q and k, and the K/V cache append, in one dispatch.
// One workgroup per (head, token): heads [0, n_heads) rotate q into q_out; heads
// [n_heads, n_heads + n_kv) rotate k into k_cache and copy v into v_cache at position pos + t.
// Rotation as in HF's rotate_half: pairs (i, i + D/2) with angle pos * inv_freq[i]; the cos/sin
// table is computed once on the CPU in f64 (default or llama3 frequencies).

const WG: u32 = 64u;

struct Params {
  n_heads: u32,
  n_kv: u32,
  head_dim: u32,   // D
  ctx: u32,        // cache capacity in positions
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> qkv: array<f32>;             // (n, (n_heads + 2 n_kv) D)
@group(0) @binding(3) var<storage, read> cos_sin: array<vec2<f32>>;   // (ctx, D/2)
@group(0) @binding(4) var<storage, read_write> q_out: array<f32>;     // (n, n_heads, D)
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;   // (ctx, n_kv, D)
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;   // (ctx, n_kv, D)

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let head = wid.x;
  let t = wid.y;
  let pos = state.pos + t;
  if (t >= state.n || pos >= params.ctx) {
    return;
  }
  let d = params.head_dim;
  let half = d / 2u;
  let width = (params.n_heads + 2u * params.n_kv) * d;
  let src = t * width + head * d;        // q head, or k head when head >= n_heads
  let is_q = head < params.n_heads;
  let kv_head = head - params.n_heads;
  let cache_row = (pos * params.n_kv + kv_head) * d;
  for (var i = lid.x; i < half; i += WG) {
    let cs = cos_sin[pos * half + i];
    let a = qkv[src + i];
    let b = qkv[src + i + half];
    let ra = a * cs.x - b * cs.y;
    let rb = b * cs.x + a * cs.y;
    if (is_q) {
      q_out[(t * params.n_heads + head) * d + i] = ra;
      q_out[(t * params.n_heads + head) * d + i + half] = rb;
    } else {
      k_cache[cache_row + i] = ra;
      k_cache[cache_row + i + half] = rb;
    }
  }
  if (!is_q) {
    let v_src = t * width + (params.n_heads + params.n_kv + kv_head) * d;
    for (var i = lid.x; i < d; i += WG) {
      v_cache[cache_row + i] = qkv[v_src + i];
    }
  }
}
