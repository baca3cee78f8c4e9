// Logits processing and token choice shared by the kernels that pick tokens on the GPU (sample,
// draft_sample, verify), so plain decoding, drafting and verification apply exactly the same rules,
// in the order HF transformers applies them: repetition penalty -> temperature -> top-k -> top-p ->
// min-p -> sample; temperature 0 is greedy (argmax after the penalty, lowest id on ties).
// Top-k and top-p thresholds are found exactly by a bitwise search over the order-preserving u32
// image of the logits (32 counting passes), with no sort; tokens tied at a threshold are all kept.
//
// The including kernel declares: `const WG: u32` (its workgroup size), `params` with fields vocab,
// top_k, temperature, top_p, min_p, repetition_penalty and seed, the bindings `logits` (rows, V)
// and `presence` (V), and `fn token_weight(i: u32) -> f32`, the unnormalised weight `pick` draws
// from. Invocation `lid` owns the contiguous ids [lid * chunk, (lid + 1) * chunk).
//
// presence[t] is the first position at which token t occurs in the context (0xffffffff: nowhere),
// so one buffer serves every row of a verification: the row predicting position p + 1 penalises
// exactly the tokens at positions <= p, drafted ones included.

const ABSENT: u32 = 0xffffffffu;

/** One row of logits and the last context position its repetition penalty counts. */
struct Row {
  base: u32,         // row * V
  context_end: u32,  // tokens at positions <= context_end are in the context
}

/** The tokens top-k, top-p and min-p keep: order_key(l) >= key and exp(l - m) >= min_p. */
struct Filter {
  m: f32,     // the largest processed logit
  key: u32,   // order_key threshold from top-k and top-p
  mass: f32,  // sum of exp(l - m) over the kept tokens
}

/** The row being processed and what its filter keeps (set by the kernel; `token_weight` reads them). */
var<private> row: Row;
var<private> keep: Filter;

var<workgroup> scratch: array<f32, WG>;
var<workgroup> scratch_index: array<u32, WG>;
var<workgroup> pick_owner: u32;
var<workgroup> pick_residual: f32;
var<workgroup> pick_choice: u32;
var<workgroup> shared_u32: u32;
var<workgroup> shared_f32: f32;

/** Invocation 0's value, made workgroup-uniform (for control flow around barriers). */
fn share_u32(v: u32, lid: u32) -> u32 {
  workgroupBarrier();
  if (lid == 0u) {
    shared_u32 = v;
  }
  return workgroupUniformLoad(&shared_u32);
}

fn share_f32(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  if (lid == 0u) {
    shared_f32 = v;
  }
  return workgroupUniformLoad(&shared_f32);
}

fn chunk_begin(lid: u32) -> u32 {
  return min(lid * ((params.vocab + WG - 1u) / WG), params.vocab);
}

fn chunk_end(lid: u32) -> u32 {
  return min(chunk_begin(lid) + (params.vocab + WG - 1u) / WG, params.vocab);
}

fn processed(row: Row, i: u32) -> f32 {
  var l = logits[row.base + i];
  if (params.repetition_penalty != 1.0 && presence[i] <= row.context_end) {
    l = select(l * params.repetition_penalty, l / params.repetition_penalty, l > 0.0);
  }
  if (params.temperature > 0.0) {
    l = l / params.temperature;
  }
  return l;
}

// Order-preserving map f32 -> u32: a < b  <=>  order_key(a) < order_key(b).
fn order_key(f: f32) -> u32 {
  let b = bitcast<u32>(f);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

// Workgroup reductions in two levels (WG partials -> GROUPS sums -> 1): three barriers instead
// of a log2(WG)-level tree, because each barrier is costly on CPU Vulkan drivers (lavapipe).
const GROUPS: u32 = 16u;
var<workgroup> group_partial: array<f32, GROUPS>;
var<workgroup> group_index: array<u32, GROUPS>;

fn reduce_sum(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  scratch[lid] = v;
  workgroupBarrier();
  if (lid < GROUPS) {
    var total = 0.0;
    for (var j = lid; j < WG; j += GROUPS) {
      total += scratch[j];
    }
    group_partial[lid] = total;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var total = 0.0;
    for (var j = 0u; j < GROUPS; j++) {
      total += group_partial[j];
    }
    scratch[0] = total;
  }
  return workgroupUniformLoad(&scratch[0]);
}

fn reduce_max(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  scratch[lid] = v;
  workgroupBarrier();
  if (lid < GROUPS) {
    var best = -3.4e38;
    for (var j = lid; j < WG; j += GROUPS) {
      best = max(best, scratch[j]);
    }
    group_partial[lid] = best;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var best = -3.4e38;
    for (var j = 0u; j < GROUPS; j++) {
      best = max(best, group_partial[j]);
    }
    scratch[0] = best;
  }
  return workgroupUniformLoad(&scratch[0]);
}

/** Whether (value a, id a) beats (value b, id b): larger value, then lower id; ABSENT loses. */
fn beats(a: f32, a_id: u32, b: f32, b_id: u32) -> bool {
  return a_id != ABSENT && (b_id == ABSENT || a > b || (a == b && a_id < b_id));
}

/** The id of the largest processed logit, lowest id on ties. */
fn argmax_token(row: Row, lid: u32) -> u32 {
  var best = -3.4e38;
  var best_id = ABSENT;
  for (var i = chunk_begin(lid); i < chunk_end(lid); i++) {
    let l = processed(row, i);
    if (l > best || best_id == ABSENT) {
      best = l;
      best_id = i;
    }
  }
  workgroupBarrier();
  scratch[lid] = best;
  scratch_index[lid] = best_id;
  workgroupBarrier();
  if (lid < GROUPS) {
    var group_best = -3.4e38;
    var group_best_id = ABSENT;
    for (var j = lid; j < WG; j += GROUPS) {
      if (beats(scratch[j], scratch_index[j], group_best, group_best_id)) {
        group_best = scratch[j];
        group_best_id = scratch_index[j];
      }
    }
    group_partial[lid] = group_best;
    group_index[lid] = group_best_id;
  }
  workgroupBarrier();
  if (lid == 0u) {
    var winner = ABSENT;
    var winner_value = -3.4e38;
    for (var j = 0u; j < GROUPS; j++) {
      if (beats(group_partial[j], group_index[j], winner_value, winner)) {
        winner_value = group_partial[j];
        winner = group_index[j];
      }
    }
    scratch_index[0] = winner;
  }
  return workgroupUniformLoad(&scratch_index[0]);
}

/** The softmax probability (at the processed logits) of the row's largest logit. */
fn argmax_probability(row: Row, lid: u32) -> f32 {
  var local_max = -3.4e38;
  for (var i = chunk_begin(lid); i < chunk_end(lid); i++) {
    local_max = max(local_max, processed(row, i));
  }
  let m = reduce_max(local_max, lid);
  var sum = 0.0;
  for (var i = chunk_begin(lid); i < chunk_end(lid); i++) {
    sum += exp(processed(row, i) - m);
  }
  return 1.0 / reduce_sum(sum, lid);
}

/** What top-k, top-p and min-p keep of a row (temperature > 0). */
fn find_filter(row: Row, lid: u32) -> Filter {
  let begin = chunk_begin(lid);
  let end = chunk_end(lid);
  var local_max = -3.4e38;
  for (var i = begin; i < end; i++) {
    local_max = max(local_max, processed(row, i));
  }
  let m = reduce_max(local_max, lid);

  // top-k: the largest key T with count(key >= T) >= k.
  var k_key = 0u;
  if (params.top_k > 0u && params.top_k < params.vocab) {
    for (var bit = 31i; bit >= 0i; bit--) {
      let candidate = k_key | (1u << u32(bit));
      var count = 0.0;
      for (var i = begin; i < end; i++) {
        count += select(0.0, 1.0, order_key(processed(row, i)) >= candidate);
      }
      if (reduce_sum(count, lid) >= f32(params.top_k)) {
        k_key = candidate;
      }
    }
  }

  // top-p: among the top-k survivors, the largest key T whose mass(key >= T) reaches p.
  var p_key = k_key;
  if (params.top_p < 1.0) {
    p_key = 0u;
    var kept = 0.0;
    for (var i = begin; i < end; i++) {
      let l = processed(row, i);
      kept += select(0.0, exp(l - m), order_key(l) >= k_key);
    }
    let wanted_mass = params.top_p * reduce_sum(kept, lid);
    for (var bit = 31i; bit >= 0i; bit--) {
      let candidate = p_key | (1u << u32(bit));
      let threshold = max(candidate, k_key);
      var mass = 0.0;
      for (var i = begin; i < end; i++) {
        let l = processed(row, i);
        mass += select(0.0, exp(l - m), order_key(l) >= threshold);
      }
      if (reduce_sum(mass, lid) >= wanted_mass) {
        p_key = candidate;
      }
    }
    p_key = max(p_key, k_key);
  }

  var keep = Filter(m, p_key, 0.0);
  var mass = 0.0;
  for (var i = begin; i < end; i++) {
    mass += kept_weight(row, keep, i);
  }
  keep.mass = reduce_sum(mass, lid);
  return keep;
}

/** exp(l_i - m) if `keep` keeps token i, else 0. */
fn kept_weight(row: Row, keep: Filter, i: u32) -> f32 {
  let l = processed(row, i);
  let e = exp(l - keep.m);
  return select(0.0, e, order_key(l) >= keep.key && e >= params.min_p);
}

/**
 * Draws a token with probability token_weight(i) / sum(token_weight): u01 in [0, 1) picks the
 * invocation whose chunk holds the point, which then scans its chunk. Returns ABSENT only when
 * every weight is 0.
 */
fn pick(u01: f32, lid: u32) -> u32 {
  let begin = chunk_begin(lid);
  let end = chunk_end(lid);
  var mass = 0.0;
  for (var i = begin; i < end; i++) {
    mass += token_weight(i);
  }
  workgroupBarrier();
  scratch[lid] = mass;
  workgroupBarrier();
  if (lid == 0u) {
    var total = 0.0;
    for (var j = 0u; j < WG; j++) {
      total += scratch[j];
    }
    var u = u01 * total;
    pick_owner = WG;
    var last_nonempty = WG;
    for (var j = 0u; j < WG; j++) {
      if (scratch[j] > 0.0) {
        last_nonempty = j;
        if (pick_owner == WG) {
          if (u < scratch[j]) {
            pick_owner = j;
          } else {
            u -= scratch[j];
          }
        }
      }
    }
    if (pick_owner == WG) {  // rounding left u at the very end: take the last token with weight
      pick_owner = last_nonempty;
      u = select(0.0, scratch[min(last_nonempty, WG - 1u)], last_nonempty < WG);
    }
    pick_residual = u;
    pick_choice = ABSENT;
  }
  workgroupBarrier();
  if (lid == pick_owner) {
    var u = pick_residual;
    var picked = ABSENT;
    for (var i = begin; i < end; i++) {
      let e = token_weight(i);
      if (e > 0.0) {
        picked = i;
        if (u < e) {
          break;
        }
        u -= e;
      }
    }
    pick_choice = picked;
  }
  return workgroupUniformLoad(&pick_choice);
}

fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

/** A uniform number in [0, 1) from (seed, a, b, c): a different stream for every triple. */
fn random01(a: u32, b: u32, c: u32) -> f32 {
  let h = pcg(params.seed ^ pcg(a ^ pcg(b ^ pcg(c + 0x9e3779b9u))));
  return f32(h >> 8u) * (1.0 / 16777216.0);
}
