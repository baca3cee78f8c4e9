// Sets up the round's verification after drafting: the target's input becomes
// [x_P, d_1 .. d_k] at position P (n = k + 1); after the end of generation, n = 0, which makes the
// recorded verification forward a no-op. In self-speculation the target's state and ids are the
// draft's, so this also rewinds the draft's advance.

#include "state.wgsl"
#include "speculation.wgsl"

@group(0) @binding(0) var<uniform> params: SpecParams;
@group(0) @binding(1) var<storage, read> spec: Speculation;
@group(0) @binding(2) var<storage, read_write> state: State;     // the target's
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;  // the target's input ids

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_id) lid: vec3<u32>) {
  let k = min(spec.drafted, params.draft_max);
  if (spec.done == 0u && lid.x <= k) {
    ids[lid.x] = spec.tokens[lid.x];
  }
  if (lid.x == 0u) {
    state.pos = spec.round_pos;
    state.n = select(k + 1u, 0u, spec.done == 1u);
  }
}
