// Logits processing and token choice shared by the kernels that pick tokens on the GPU (sample,
// draft_sample, verify), so plain decoding, drafting and verification apply exactly the same rules,
// in the order HF transformers applies them: repetition penalty -> temperature -> top-k -> top-p ->
// min-p -> sample; temperature 0 is greedy (argmax after the penalty, lowest id on ties).
// Top-k and top-p thresholds are found exactly by a search over the order-preserving u32 image of
// the logits, 4 bits per pass (8 passes, each tallying 16 thresholds with vec4 arithmetic), with
// no sort; tokens tied at a threshold are all kept.
//
// The including kernel declares: `const WG: u32` (its workgroup size), `params` with fields vocab,
// top_k, temperature, top_p, min_p, repetition_penalty and seed, the bindings `logits` (rows, V;
// array<vec4<f32>> under LOGITS_VEC4, which the host sets when V % 4 == 0) and `presence` (V),
// and `fn token_weight(i: u32) -> f32`, the unnormalised weight `pick` draws from. The max and
// argmax pass (`peak`) reads quads of logits, invocation `lid` taking quads lid, lid + WG, ...;
// the other passes give invocation `lid` the contiguous ids [lid * chunk, (lid + 1) * chunk).
//
// Speed on lavapipe (one CPU thread; see matmul.wgsl's header): WG = 8, one SIMD row, because
// every barrier and every workgroup-memory reduction costs per SIMD row of the workgroup, and the
// loads are as many instructions whatever the workgroup size; the greedy pass is one loop of vec4
// loads with vec4 arithmetic (per-column best, id and online softmax sum), no private arrays.
// Measured (GPU timestamps, vocab 1024, min of runs; WG 256 with scalar chunk loops -> this):
//   greedy:   sample 151 -> 13 us, draft_sample (argmax and q(d)) 165 -> 25 us,
//             verify of 9 rows 1800 -> 120 us;
//   sampled:  temperature 1: sample 182 -> 31 us, draft_sample 263 -> 41 us, verify 2170 -> 200 us;
//             with top-k 40, top-p 0.9: sample 2320 -> 424 us, verify 22600 -> 3350 us with
//             32 one-bit passes per threshold; 4-bit passes: sample 158 us, verify 1200 us.
// Most of it is WG 256 -> 8 (the vec4 pass alone, at WG 256, changed little).
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

#if LOGITS_VEC4
fn logit(i: u32) -> f32 {
  return logits[i >> 2u][i & 3u];
}

/** Logits row_base + 4q .. + 4q + 3 (row_base % 4 == 0). */
fn logit4(row_base: u32, q: u32) -> vec4<f32> {
  return logits[(row_base >> 2u) + q];
}
#else
fn logit(i: u32) -> f32 {
  return logits[i];
}

/** Logits row_base + 4q .. + 4q + 3, ids past the row clamped to its last one. */
fn logit4(row_base: u32, q: u32) -> vec4<f32> {
  let i = row_base + 4u * q;
  let last = row_base + params.vocab - 1u;
  return vec4(logits[i], logits[min(i + 1u, last)], logits[min(i + 2u, last)], logits[min(i + 3u, last)]);
}
#endif

fn processed(row: Row, i: u32) -> f32 {
  var l = logit(row.base + i);
  if (params.repetition_penalty != 1.0 && presence[i] <= row.context_end) {
    l = select(l * params.repetition_penalty, l / params.repetition_penalty, l > 0.0);
  }
  if (params.temperature > 0.0) {
    l = l / params.temperature;
  }
  return l;
}

/** processed() of ids 4q .. 4q + 3 (ids past the row: the last one's). */
fn processed4(row: Row, q: u32) -> vec4<f32> {
  var l = logit4(row.base, q);
  if (params.repetition_penalty != 1.0) {
    let i = 4u * q;
    let last = params.vocab - 1u;
    let first_position = vec4(presence[i], presence[min(i + 1u, last)], presence[min(i + 2u, last)],
                              presence[min(i + 3u, last)]);
    let r = params.repetition_penalty;
    l = select(l, select(l * r, l / r, l > vec4(0.0)), first_position <= vec4(row.context_end));
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

// Workgroup reductions: each lane's partial to workgroup memory, invocation 0 combines the WG
// partials (WG is small: one SIMD row on lavapipe).
fn reduce_sum(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  scratch[lid] = v;
  workgroupBarrier();
  if (lid == 0u) {
    var total = 0.0;
    for (var j = 0u; j < WG; j++) {
      total += scratch[j];
    }
    shared_f32 = total;
  }
  return workgroupUniformLoad(&shared_f32);
}

/** Whether (value a, id a) beats (value b, id b): larger value, then lower id; ABSENT loses. */
fn beats(a: f32, a_id: u32, b: f32, b_id: u32) -> bool {
  return a_id != ABSENT && (b_id == ABSENT || a > b || (a == b && a_id < b_id));
}

/**
 * The largest processed logit of a row, its id (lowest on ties) and the softmax normaliser
 * sum(exp(l - max)): one pass of vec4 loads, each invocation a strided set of quads.
 */
struct Peak {
  id: u32,
  value: f32,  // the largest processed logit
  sum: f32,    // sum over the row of exp(l - value) (with_sum), else 0
}

var<workgroup> lane_peaks: array<vec4<u32>, WG>;  // (id, bits of value, of max, of sum) per lane
var<workgroup> row_peak: vec4<u32>;

/**
 * Each lane keeps per column c (ids = c mod 4) the best (value, id) and the running max m and sum
 * s = sum exp(l - m) (online softmax), all vec4 arithmetic; ids within a column only grow, so
 * `>` keeps the lowest id. Quad components past the vocabulary are masked out.
 */
fn peak(row: Row, lid: u32, with_sum: bool) -> Peak {
  let quads = (params.vocab + 3u) / 4u;
  var best = vec4(-3.4e38);
  var best_id = vec4(ABSENT);
  var m = vec4(-3.4e38);
  var s = vec4(0.0);
  for (var q = lid; q < quads; q += WG) {
    let l = processed4(row, q);
    let ids = vec4(4u * q) + vec4(0u, 1u, 2u, 3u);
    let valid = ids < vec4(params.vocab);
    let take = valid & ((l > best) | (best_id == vec4(ABSENT)));
    best = select(best, l, take);
    best_id = select(best_id, ids, take);
    if (with_sum) {
      let m_next = max(m, select(vec4(-3.4e38), l, valid));
      s = s * exp(m - m_next) + select(vec4(0.0), exp(l - m_next), valid);
      m = m_next;
    }
  }
  // The lane's best of its 4 columns, and its sum relative to its max.
  var id = best_id.x;
  var value = best.x;
  if (beats(best.y, best_id.y, value, id)) {
    value = best.y;
    id = best_id.y;
  }
  if (beats(best.z, best_id.z, value, id)) {
    value = best.z;
    id = best_id.z;
  }
  if (beats(best.w, best_id.w, value, id)) {
    value = best.w;
    id = best_id.w;
  }
  let lane_max = max(max(m.x, m.y), max(m.z, m.w));
  let lane_sum = dot(s, exp(m - vec4(lane_max)));
  workgroupBarrier();
  lane_peaks[lid] = vec4(id, bitcast<u32>(value), bitcast<u32>(lane_max), bitcast<u32>(lane_sum));
  workgroupBarrier();
  if (lid == 0u) {
    var total_max = -3.4e38;
    for (var j = 0u; j < WG; j++) {
      let p = lane_peaks[j];
      let v = bitcast<f32>(p.y);
      if (beats(v, p.x, value, id)) {
        value = v;
        id = p.x;
      }
      total_max = max(total_max, bitcast<f32>(p.z));
    }
    var total = 0.0;
    for (var j = 0u; j < WG; j++) {
      let p = lane_peaks[j];
      total += bitcast<f32>(p.w) * exp(bitcast<f32>(p.z) - total_max);
    }
    row_peak = vec4(id, bitcast<u32>(value), bitcast<u32>(total * exp(total_max - value)), 0u);
  }
  let p = workgroupUniformLoad(&row_peak);
  return Peak(p.x, bitcast<f32>(p.y), bitcast<f32>(p.z));
}

/** The id of the largest processed logit, lowest id on ties. */
fn argmax_token(row: Row, lid: u32) -> u32 {
  return peak(row, lid, false).id;
}

/** The softmax probability (at the processed logits) of the row's largest logit. */
fn argmax_probability(row: Row, lid: u32) -> f32 {
  return 1.0 / peak(row, lid, true).sum;
}

fn order_key4(f: vec4<f32>) -> vec4<u32> {
  let b = bitcast<vec4<u32>>(f);
  return select(b | vec4(0x80000000u), ~b, (b & vec4(0x80000000u)) != vec4(0u));
}

var<workgroup> lane_tallies: array<mat4x4<f32>, WG>;
var<workgroup> row_tally: mat4x4<f32>;

/** One token's weight w added to the thresholds its key reaches: column c, component j is T_4c+j. */
fn tally_token(key: u32, w: f32, t0: vec4<u32>, t1: vec4<u32>, t2: vec4<u32>, t3: vec4<u32>)
    -> mat4x4<f32> {
  let k = vec4(key);
  let z = vec4(0.0);
  return mat4x4(select(z, vec4(w), k >= t0), select(z, vec4(w), k >= t1),
                select(z, vec4(w), k >= t2), select(z, vec4(w), k >= t3));
}

/**
 * For the 16 thresholds T_b = prefix | (b << shift), b = 0..15 (shift a multiple of 4, prefix's
 * bits below shift + 4 clear): the sum over the row's tokens with order_key >= T_b and >= floor
 * of 1 (masses false: counts) or exp(l - m) (masses true). Result column c, component j: b = 4c + j.
 */
fn tally(row: Row, lid: u32, prefix: u32, shift: u32, floor: u32, m: f32, masses: bool)
    -> mat4x4<f32> {
  let t0 = vec4(prefix) | (vec4(0u, 1u, 2u, 3u) << vec4(shift));
  let t1 = vec4(prefix) | (vec4(4u, 5u, 6u, 7u) << vec4(shift));
  let t2 = vec4(prefix) | (vec4(8u, 9u, 10u, 11u) << vec4(shift));
  let t3 = vec4(prefix) | (vec4(12u, 13u, 14u, 15u) << vec4(shift));
  let quads = (params.vocab + 3u) / 4u;
  var acc = mat4x4<f32>();
  for (var q = lid; q < quads; q += WG) {
    let l = processed4(row, q);
    let keys = order_key4(l);
    let valid = vec4(4u * q) + vec4(0u, 1u, 2u, 3u) < vec4(params.vocab);
    var w = vec4(1.0);
    if (masses) {
      w = exp(l - m);
    }
    w = select(vec4(0.0), w, valid & (keys >= vec4(floor)));
    acc += tally_token(keys.x, w.x, t0, t1, t2, t3) + tally_token(keys.y, w.y, t0, t1, t2, t3) +
           tally_token(keys.z, w.z, t0, t1, t2, t3) + tally_token(keys.w, w.w, t0, t1, t2, t3);
  }
  workgroupBarrier();
  lane_tallies[lid] = acc;
  workgroupBarrier();
  if (lid == 0u) {
    var total = mat4x4<f32>();
    for (var j = 0u; j < WG; j++) {
      total += lane_tallies[j];
    }
    row_tally = total;
  }
  return workgroupUniformLoad(&row_tally);
}

/**
 * The largest b in 0..15 whose tally reaches `wanted`, given that tallies do not grow with b
 * (each T_b's set holds the next one's, and float sums of such terms in one order keep that) and
 * that T_0 reaches it: the count of tallies that reach it, minus 1.
 */
fn last_reaching(t: mat4x4<f32>, wanted: f32) -> u32 {
  let w = vec4(wanted);
  let n = select(vec4(0u), vec4(1u), t[0] >= w) + select(vec4(0u), vec4(1u), t[1] >= w) +
          select(vec4(0u), vec4(1u), t[2] >= w) + select(vec4(0u), vec4(1u), t[3] >= w);
  return n.x + n.y + n.z + n.w - 1u;
}

/**
 * What top-k, top-p and min-p keep of a row (temperature > 0). Each threshold is the largest key
 * T whose tally reaches the target, found 4 bits at a time (8 passes of 16 thresholds each).
 */
fn find_filter(row: Row, lid: u32) -> Filter {
  let m = max(peak(row, lid, false).value, -3.4e38);

  // top-k: the largest key T with count(key >= T) >= k (T = 0 counts all V >= k).
  var k_key = 0u;
  if (params.top_k > 0u && params.top_k < params.vocab) {
    for (var shift = 28i; shift >= 0i; shift -= 4i) {
      let counts = tally(row, lid, k_key, u32(shift), 0u, m, false);
      k_key |= last_reaching(counts, f32(params.top_k)) << u32(shift);
    }
  }

  // top-p: among the top-k survivors, the largest key T whose mass(key >= max(T, k_key)) reaches
  // p times their mass (T = 0: all of it, the first pass's T_0).
  var p_key = k_key;
  if (params.top_p < 1.0) {
    p_key = 0u;
    var wanted_mass = 0.0;
    for (var shift = 28i; shift >= 0i; shift -= 4i) {
      let mass = tally(row, lid, p_key, u32(shift), k_key, m, true);
      if (shift == 28i) {
        wanted_mass = params.top_p * mass[0].x;
      }
      p_key |= last_reaching(mass, wanted_mass) << u32(shift);
    }
    p_key = max(p_key, k_key);
  }

  var keep = Filter(m, p_key, 0.0);
  var mass = 0.0;
  for (var i = chunk_begin(lid); i < chunk_end(lid); i++) {
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
