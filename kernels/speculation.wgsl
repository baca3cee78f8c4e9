// The state of a speculative decoding run, shared by draft_sample, verify_begin and verify and kept
// on the GPU for the whole generation (src/generate/speculate.ts mirrors this layout). A round:
// draft up to draft_max tokens from tokens[0] (the last emitted token, at round_pos, not yet in the
// target's K/V), verify [tokens[0], d_1..d_k] in one target forward, emit the accepted drafts plus
// one target token, roll back to the accepted length.

const MAX_DRAFT: u32 = 32u;

struct Speculation {
  round_pos: u32,       // P: position of tokens[0]; the target's K/V holds [0, P)
  drafted: u32,         // k: drafts made this round so far
  drafting: u32,        // 1 while this round's draft continues
  done: u32,            // 1 once a stop token or the budget ended generation
  emitted: u32,         // tokens emitted by all rounds
  budget: u32,          // most tokens to emit (max new tokens, capped by the context)
  rounds: u32,          // verifications run
  drafted_total: u32,
  accepted_total: u32,
  gamma: f32,           // draft-exit threshold on the draft token's probability
  acceptance: f32,      // EMA of the per-round acceptance rate (the controller's AR)
  step_cap: u32,        // draft steps recorded per round (<= draft_max), set by the host
  tokens: array<u32, 33>,      // (MAX_DRAFT + 1) [x_P, d_1 .. d_k]
  draft_prob: array<f32, 32>,  // (MAX_DRAFT) q(d_i) under the draft
}

/** Settings shared by the speculation kernels (uniform). */
struct SpecParams {
  vocab: u32,                // V
  draft_max: u32,            // K <= MAX_DRAFT
  top_k: u32,                // sampling settings, as in sample.wgsl
  seed: u32,
  temperature: f32,
  top_p: f32,
  min_p: f32,
  repetition_penalty: f32,
  adaptive: u32,             // 1: gamma follows the Draft & Verify controller
  target_acceptance: f32,    // the controller's alpha
  log_capacity: u32,         // slots in the round log ring
  n_stop: u32,               // stop tokens in `stop` (<= 8)
  stop: array<vec4<u32>, 2>,
}

/** Random streams: one per purpose, keyed further by round and position. */
const STREAM_DRAFT: u32 = 1u;
const STREAM_ACCEPT: u32 = 2u;
const STREAM_CORRECT: u32 = 3u;

fn is_stop(token: u32) -> bool {
  for (var i = 0u; i < params.n_stop; i++) {
    if (params.stop[i / 4u][i % 4u] == token) {
      return true;
    }
  }
  return false;
}
