// Verification of one round, after the target's forward over [x_P, d_1 .. d_k] left k + 1 rows of
// logits (row r predicts position P + r + 1). Walks the rows in order:
//   greedy:  accept d_{r+1} while it equals the target's argmax; the first mismatch is replaced by
//            the argmax; if all k pass, the argmax of row k is the bonus token.
//   sampled: accept d_{r+1} with probability min(1, p(d) / q(d)); on the first rejection draw the
//            replacement from norm(max(0, p - q)) and stop; if all k pass, draw the bonus from p.
// p and q are processed by the same rules (logits_processing.wgsl). Then it emits the accepted
// drafts and the target's token (cut at a stop token or the budget) into the round log, rolls back
// to the accepted length (state.pos = P + j + 1: rejected positions are overwritten before they are
// read; their presence marks are cleared), updates the Draft & Verify threshold controller, and
// prepares the next round's first draft step. One workgroup; a no-op after the end of generation.
//
// Variants: SEPARATE_DRAFT (the draft is another model with its own state and ids, fed
// [d_k, bonus] after a fully accepted round because it never saw d_k);
// NEGATIVE_CONTROL_RESAMPLE_FROM_P (deliberately wrong: a rejected draft is replaced by a sample of
// p instead of the residual; only the losslessness test's negative control uses it).

const WG: u32 = 8u;  // one SIMD row on lavapipe (logits_processing.wgsl)
const BETA1: f32 = 0.5;    // acceptance EMA
const BETA2: f32 = 0.9;    // threshold smoothing
const EPSILON: f32 = 0.01; // threshold step

#include "state.wgsl"
#include "speculation.wgsl"

struct RoundLog {
  round: u32,       // spec.rounds when this round ran
  count: u32,       // tokens emitted by this round
  done: u32,
  drafted: u32,
  accepted: u32,
  gamma: f32,       // the threshold after this round's update
  pad0: u32,
  pad1: u32,
  tokens: array<u32, 33>,  // (MAX_DRAFT + 1) emitted tokens, count of them valid
  pad2: array<u32, 7>,
}

@group(0) @binding(0) var<uniform> params: SpecParams;
@group(0) @binding(1) var<storage, read_write> spec: Speculation;
@group(0) @binding(2) var<storage, read_write> state: State;          // the target's
#if LOGITS_VEC4
@group(0) @binding(3) var<storage, read> logits: array<vec4<f32>>;  // (k + 1, V / 4) the target's, in quads
#else
@group(0) @binding(3) var<storage, read> logits: array<f32>;          // (k + 1, V) the target's
#endif
@group(0) @binding(4) var<storage, read_write> presence: array<u32>;  // (V) first position, or ABSENT
@group(0) @binding(5) var<storage, read_write> ids: array<u32>;       // the target's input ids
@group(0) @binding(6) var<storage, read> draft_q: array<f32>;         // (draft_max, V) q rows
@group(0) @binding(7) var<storage, read_write> round_log: array<RoundLog>;  // (log_capacity)
#if SEPARATE_DRAFT
@group(0) @binding(8) var<storage, read_write> draft_state: State;
@group(0) @binding(9) var<storage, read_write> draft_ids: array<u32>;
#endif

#include "logits_processing.wgsl"

var<private> weight_residual: bool;  // token_weight: false -> p, true -> max(0, p - q)
var<private> q_base: u32;

fn token_weight(i: u32) -> f32 {
  let p = kept_weight(row, keep, i);
  if (!weight_residual) {
    return p;
  }
  return max(0.0, p / keep.mass - draft_q[q_base + i]);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  if (share_u32(spec.done, lid) == 1u) {
    return;
  }
  let k = share_u32(spec.drafted, lid);
  let base = share_u32(spec.round_pos, lid);
  let round = share_u32(spec.rounds, lid);
  var accepted = 0u;
  var token = ABSENT;  // the target's own token: the correction or the bonus
  for (var r = 0u; r <= k; r++) {
    row = Row(r * params.vocab, base + r);
    let draft = share_u32(spec.tokens[min(r + 1u, MAX_DRAFT)], lid);
    if (params.temperature <= 0.0) {
      let best = argmax_token(row, lid);
      if (r < k && best == draft) {
        accepted++;
        continue;
      }
      token = best;
      break;
    }
    keep = find_filter(row, lid);
    weight_residual = false;
    if (r < k) {
      let p = kept_weight(row, keep, draft) / keep.mass;
      let q = spec.draft_prob[r];
      let accept = share_u32(select(0u, 1u, random01(STREAM_ACCEPT, round, base + r + 1u) * q < p), lid);
      if (accept == 1u) {
        accepted++;
        continue;
      }
#if NEGATIVE_CONTROL_RESAMPLE_FROM_P
      weight_residual = false;
#else
      weight_residual = true;
#endif
      q_base = r * params.vocab;
    }
    token = pick(random01(STREAM_CORRECT, round, base + r + 1u), lid);
    if (token == ABSENT) {  // p == q up to rounding: the residual is empty, p itself is exact
      weight_residual = false;
      token = pick(random01(STREAM_CORRECT, round, base + r + 1u), lid);
    }
    break;
  }
  if (lid != 0u) {
    return;
  }

  // Emit d_1 .. d_accepted and the target's token, cut after a stop token or at the budget.
  let slot = round % params.log_capacity;
  var count = 0u;
  var done = false;
  for (var e = 0u; e <= accepted && !done; e++) {
    let t = select(token, spec.tokens[e + 1u], e < accepted);
    round_log[slot].tokens[e] = t;
    count++;
    done = is_stop(t) || spec.emitted + count >= spec.budget;
  }
  spec.emitted += count;
  spec.done = select(0u, 1u, done);

  // Roll back: drop the presence marks of the rejected drafts, mark the target's token.
  let next_pos = base + accepted + 1u;  // the target's token sits here; K/V holds [0, next_pos)
  for (var e = accepted + 1u; e <= k; e++) {
    let rejected = spec.tokens[e];
    if (presence[rejected] >= next_pos) {
      presence[rejected] = ABSENT;
    }
  }
  presence[token] = min(presence[token], next_pos);

  // The Draft & Verify threshold controller (shared/docs/algorithms.md).
  if (k > 0u) {
    spec.acceptance = BETA1 * spec.acceptance + (1.0 - BETA1) * f32(accepted) / f32(k);
    if (params.adaptive == 1u) {
      var next = spec.gamma - EPSILON;
      if (spec.acceptance < params.target_acceptance) {
        next = spec.gamma + EPSILON;
      } else if (k == params.draft_max) {
        next = spec.gamma;
      }
      spec.gamma = BETA2 * spec.gamma + (1.0 - BETA2) * next;
    }
  }
  round_log[slot].round = round;
  round_log[slot].count = count;
  round_log[slot].done = spec.done;
  round_log[slot].drafted = k;
  round_log[slot].accepted = accepted;
  round_log[slot].gamma = spec.gamma;
  spec.rounds = round + 1u;
  spec.drafted_total += k;
  spec.accepted_total += accepted;

  // The next round starts from the target's token at next_pos.
  spec.round_pos = next_pos;
  spec.tokens[0] = token;
  spec.drafted = 0u;
  let drafting = !done && spec.budget - spec.emitted >= 2u;
  spec.drafting = select(0u, 1u, drafting);
  state.pos = next_pos;
  ids[0] = token;
#if SEPARATE_DRAFT
  state.n = 0u;  // verify_begin sets the target's input
  if (k == 0u) {  // the draft did not run this round (no room to draft): its cache is as it was
    draft_state.n = 0u;
  } else if (accepted == k) {  // the draft never saw d_k: feed [d_k, token]
    draft_state.pos = next_pos - 1u;
    draft_state.n = select(0u, 2u, drafting);
    draft_ids[0] = spec.tokens[k];
    draft_ids[1] = token;
  } else {
    draft_state.pos = next_pos;
    draft_state.n = select(0u, 1u, drafting);
    draft_ids[0] = token;
  }
#else
  state.n = select(0u, 1u, drafting);  // the draft is the target with sub-layers skipped
#endif
}
