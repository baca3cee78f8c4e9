// Residual add of a normalised branch output (Gemma-2's post-attention and post-feedforward
// norms): h[t, :] += delta[t, :] * rsqrt(mean(delta[t, :]^2) + eps) * gain. One workgroup per token.

const WG: u32 = 64u;

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
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      partial[lid.x] += partial[lid.x + stride];
    }
    workgroupBarrier();
  }
  if (t >= state.n) {
    return;
  }
  let inv_rms = inverseSqrt(partial[0] / f32(params.width) + params.eps);
  for (var c = lid.x; c < params.width; c += WG) {
    h[row + c] += delta[row + c] * inv_rms * gain[c];
  }
}
