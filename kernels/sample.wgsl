// Chooses the next token on the GPU from one row of logits, so decoding never reads logits back
// (rules in logits_processing.wgsl). Randomness is a hash of (seed, output index): same seed, same
// tokens. Then the step advances: the token becomes the next input, pos += n, n = 1.
// One workgroup of WG invocations.

const WG: u32 = 8u;  // one SIMD row on lavapipe (logits_processing.wgsl)

struct Params {
  vocab: u32,               // V
  logits_row: u32,          // row of `logits` to sample from
  top_k: u32,               // 0: off
  seed: u32,
  temperature: f32,         // 0: greedy
  top_p: f32,               // 1: off
  min_p: f32,               // 0: off
  repetition_penalty: f32,  // 1: off
  mark_presence: u32,       // 1: the chosen token joins the context for the repetition penalty
  pad0: u32,
  pad1: u32,
  pad2: u32,
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read_write> state: State;
#if LOGITS_VEC4
@group(0) @binding(2) var<storage, read> logits: array<vec4<f32>>;  // (rows, V / 4) quads
#else
@group(0) @binding(2) var<storage, read> logits: array<f32>;           // (rows, V)
#endif
@group(0) @binding(3) var<storage, read_write> presence: array<u32>;   // (V) first position, or ABSENT
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;        // ids[0]: next input token
@group(0) @binding(5) var<storage, read_write> out_tokens: array<u32>; // (max_new) chosen tokens

#include "logits_processing.wgsl"


fn token_weight(i: u32) -> f32 {
  return kept_weight(row, keep, i);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  // The logits are those of the forward's last token, at position pos + n - 1.
  let position = state.pos + state.n;
  row = Row(params.logits_row * params.vocab, position - 1u);
  var token: u32;
  if (params.temperature <= 0.0) {
    token = argmax_token(row, lid);
  } else {
    keep = find_filter(row, lid);
    token = pick(random01(state.out_index, 0u, 0u), lid);
  }
  if (lid == 0u) {
    out_tokens[state.out_index] = token;
    ids[0] = token;
    if (params.mark_presence == 1u) {
      presence[token] = min(presence[token], position);
    }
    state.out_index += 1u;
    state.pos += state.n;
    state.n = 1u;
  }
}
