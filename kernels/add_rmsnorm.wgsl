// Residual add of a normalised branch output (Gemma-2's post-attention and post-feedforward
// norms): h[t, :] += delta[t, :] * rsqrt(mean(delta[t, :]^2) + eps) * gain. One workgroup per token.

// One SIMD row per token (WG = 8 lanes on lavapipe): each lane sums the squares of its columns,
// then one barrier, and every lane adds the 8 partial sums itself. A 64-lane workgroup with a
// tree reduction took 7 barriers, each a switch of lavapipe's coroutines per SIMD row.
const WG: u32 = 8u;

struct Params {
  width: u32,   // C
  eps: f32,
  pad0: u32,
  pad1: u32,
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> delta: array<f32>;      // (n, C)
@group(0) @binding(3) var<storage, read> gain: array<f32>;       // (C), holds 1 + w
@group(0) @binding(4) var<storage, read_write> h: array<f32>;    // (n, C)

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.x;
  let row = t * params.width;
  var ss = 0.0;
  for (var c = lid.x; c < params.width; c += WG) {
    let v = delta[row + c];
    ss += v * v;
  }
  partial[lid.x] = ss;
  workgroupBarrier();
  if (t >= state.n) {
    return;
  }
  let sum = (partial[0] + partial[1]) + (partial[2] + partial[3]) +
    ((partial[4] + partial[5]) + (partial[6] + partial[7]));
  let inv_rms = inverseSqrt(sum / f32(params.width) + params.eps);
  for (var c = lid.x; c < params.width; c += WG) {
    h[row + c] += delta[row + c] * inv_rms * gain[c];
  }
}
