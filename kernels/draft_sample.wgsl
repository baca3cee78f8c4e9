// One draft step's token choice, after the draft forward left its logits in row 0: picks the draft
// token (the argmax when greedy, a sample of q otherwise, q processed exactly like the target's p),
// records it and q(d), and decides on the GPU whether drafting goes on. Drafting stops when
// q(d) < gamma (adaptive draft exit), at draft_max (or the steps the host recorded), when one more
// draft could not be emitted within the budget, or after a stop token; stopping sets the draft's state.n = 0, which turns the rest of
// the round's recorded draft steps into no-ops. Under sampling the whole row q is kept for the
// verifier's residual max(0, p - q).
// One workgroup of WG invocations; a no-op unless this round is drafting.

const WG: u32 = 8u;  // one SIMD row on lavapipe (logits_processing.wgsl)

#include "state.wgsl"
#include "speculation.wgsl"

@group(0) @binding(0) var<uniform> params: SpecParams;
@group(0) @binding(1) var<storage, read_write> spec: Speculation;
@group(0) @binding(2) var<storage, read_write> state: State;          // the draft's
#if LOGITS_VEC4
@group(0) @binding(3) var<storage, read> logits: array<vec4<f32>>;  // (1, V / 4) the draft's last row, in quads
#else
@group(0) @binding(3) var<storage, read> logits: array<f32>;          // (1, V) the draft's last row
#endif
@group(0) @binding(4) var<storage, read_write> presence: array<u32>;  // (V) first position, or ABSENT
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;       // the draft's input; ids[0] next
@group(0) @binding(6) var<storage, read_write> draft_q: array<f32>;   // (draft_max, V) q rows (sampling)

#include "logits_processing.wgsl"


fn token_weight(i: u32) -> f32 {
  return kept_weight(row, keep, i);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  if (share_u32(spec.drafting, lid) == 0u) {
    return;
  }
  let i = spec.drafted;         // this is draft d_{i+1}, at position P + i + 1
  let position = spec.round_pos + i + 1u;
  row = Row(0u, position - 1u);
  var token: u32;
  var prob: f32;
  if (params.temperature <= 0.0) {
    token = argmax_token(row, lid);
    prob = argmax_probability(row, lid);
  } else {
    keep = find_filter(row, lid);
    token = pick(random01(STREAM_DRAFT, spec.rounds, position), lid);
    prob = kept_weight(row, keep, token) / keep.mass;
    for (var t = chunk_begin(lid); t < chunk_end(lid); t++) {
      draft_q[i * params.vocab + t] = kept_weight(row, keep, t) / keep.mass;
    }
  }
  storageBarrier();  // every invocation is done reading presence before it is marked below
  if (lid == 0u) {
    spec.tokens[i + 1u] = token;
    spec.draft_prob[i] = prob;
    spec.drafted = i + 1u;
    presence[token] = min(presence[token], position);
    ids[0] = token;
    state.pos += state.n;
    state.n = 1u;
    // A round emits at most drafted + 1 tokens: keep one for the target's own token.
    let room = spec.budget - spec.emitted - 1u;
    let last_step = i + 1u >= params.draft_max || i + 1u >= spec.step_cap;
    if (prob < spec.gamma || last_step || i + 1u >= room || is_stop(token)) {
      spec.drafting = 0u;
      state.n = 0u;
    }
  }
}
