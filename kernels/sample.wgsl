// Chooses the next token on the GPU from one row of logits, so decoding never reads logits back.
// Logits processing in the order HF transformers applies it: repetition penalty -> temperature ->
// top-k -> top-p -> min-p -> sample; temperature 0 is greedy (argmax after the penalty, lowest id
// on ties). Top-k and top-p thresholds are found exactly by a bitwise search over the
// order-preserving u32 image of the logits (32 counting passes), with no sort; tokens tied at a
// threshold are all kept. Randomness is a hash of (seed, output index): same seed, same tokens.
// Then the step advances: the token becomes the next input, pos += n, n = 1.
// One workgroup of WG invocations; invocation i owns the contiguous ids [i * chunk, (i+1) * chunk).

const WG: u32 = 256u;

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
@group(0) @binding(2) var<storage, read> logits: array<f32>;           // (rows, V)
@group(0) @binding(3) var<storage, read_write> presence: array<u32>;   // (V) 1: in the context
@group(0) @binding(4) var<storage, read_write> ids: array<u32>;        // ids[0]: next input token
@group(0) @binding(5) var<storage, read_write> out_tokens: array<u32>; // (max_new) chosen tokens

var<workgroup> scratch: array<f32, WG>;
var<workgroup> scratch_index: array<u32, WG>;
var<workgroup> owner: u32;
var<workgroup> residual: f32;
var<workgroup> choice: u32;

fn processed(i: u32) -> f32 {
  var l = logits[params.logits_row * params.vocab + i];
  if (params.repetition_penalty != 1.0 && presence[i] != 0u) {
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

fn reduce_sum(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  scratch[lid] = v;
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      scratch[lid] += scratch[lid + stride];
    }
  }
  return workgroupUniformLoad(&scratch[0]);
}

fn reduce_max(v: f32, lid: u32) -> f32 {
  workgroupBarrier();
  scratch[lid] = v;
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    workgroupBarrier();
    if (lid < stride) {
      scratch[lid] = max(scratch[lid], scratch[lid + stride]);
    }
  }
  return workgroupUniformLoad(&scratch[0]);
}

fn pcg(v: u32) -> u32 {
  let s = v * 747796405u + 2891336453u;
  let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
  return (w >> 22u) ^ w;
}

fn uniform01(index: u32) -> f32 {
  return f32(pcg(params.seed ^ pcg(index + 0x9e3779b9u)) >> 8u) * (1.0 / 16777216.0);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>) {
  let lid = lid3.x;
  let vocab = params.vocab;
  let chunk = (vocab + WG - 1u) / WG;
  let begin = min(lid * chunk, vocab);
  let end = min(begin + chunk, vocab);

  if (params.temperature <= 0.0) {
    // Greedy: argmax, lowest id on ties.
    var best = -3.4e38;
    var best_id = 0xffffffffu;
    for (var i = begin; i < end; i++) {
      let l = processed(i);
      if (l > best || best_id == 0xffffffffu) {
        best = l;
        best_id = i;
      }
    }
    scratch[lid] = best;
    scratch_index[lid] = best_id;
    for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
      workgroupBarrier();
      if (lid < stride) {
        let other = scratch[lid + stride];
        let other_id = scratch_index[lid + stride];
        if (other_id != 0xffffffffu && (other > scratch[lid] || (other == scratch[lid] && other_id < scratch_index[lid]) || scratch_index[lid] == 0xffffffffu)) {
          scratch[lid] = other;
          scratch_index[lid] = other_id;
        }
      }
    }
    workgroupBarrier();
    if (lid == 0u) {
      choice = scratch_index[0];
    }
  } else {
    var local_max = -3.4e38;
    for (var i = begin; i < end; i++) {
      local_max = max(local_max, processed(i));
    }
    let m = reduce_max(local_max, lid);

    // top-k: the largest key T with count(key >= T) >= k.
    var k_key = 0u;
    if (params.top_k > 0u && params.top_k < vocab) {
      for (var bit = 31i; bit >= 0i; bit--) {
        let candidate = k_key | (1u << u32(bit));
        var count = 0.0;
        for (var i = begin; i < end; i++) {
          count += select(0.0, 1.0, order_key(processed(i)) >= candidate);
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
        let l = processed(i);
        kept += select(0.0, exp(l - m), order_key(l) >= k_key);
      }
      let wanted_mass = params.top_p * reduce_sum(kept, lid);
      for (var bit = 31i; bit >= 0i; bit--) {
        let candidate = p_key | (1u << u32(bit));
        let threshold = max(candidate, k_key);
        var mass = 0.0;
        for (var i = begin; i < end; i++) {
          let l = processed(i);
          mass += select(0.0, exp(l - m), order_key(l) >= threshold);
        }
        if (reduce_sum(mass, lid) >= wanted_mass) {
          p_key = candidate;
        }
      }
      p_key = max(p_key, k_key);
    }

    // min-p keeps p_i >= min_p * p_max, i.e. exp(l_i - m) >= min_p. Then sample from the rest.
    var mass = 0.0;
    for (var i = begin; i < end; i++) {
      let l = processed(i);
      let e = exp(l - m);
      mass += select(0.0, e, order_key(l) >= p_key && e >= params.min_p);
    }
    workgroupBarrier();
    scratch[lid] = mass;
    workgroupBarrier();
    if (lid == 0u) {
      var total = 0.0;
      for (var j = 0u; j < WG; j++) {
        total += scratch[j];
      }
      var u = uniform01(state.out_index) * total;
      owner = WG;
      var last_nonempty = 0u;
      for (var j = 0u; j < WG; j++) {
        if (scratch[j] > 0.0) {
          last_nonempty = j;
          if (owner == WG) {
            if (u < scratch[j]) {
              owner = j;
            } else {
              u -= scratch[j];
            }
          }
        }
      }
      if (owner == WG) {  // rounding left u at the very end: take the last kept token
        owner = last_nonempty;
        u = scratch[last_nonempty];
      }
      residual = u;
    }
    workgroupBarrier();
    if (lid == owner) {
      var u = residual;
      var picked = 0xffffffffu;
      for (var i = begin; i < end; i++) {
        let l = processed(i);
        let e = exp(l - m);
        if (order_key(l) >= p_key && e >= params.min_p) {
          picked = i;
          if (u < e) {
            break;
          }
          u -= e;
        }
      }
      choice = picked;
    }
    workgroupBarrier();
  }

  if (lid == 0u) {
    let token = choice;
    out_tokens[state.out_index] = token;
    ids[0] = token;
    if (params.mark_presence == 1u) {
      presence[token] = 1u;
    }
    state.out_index += 1u;
    state.pos += state.n;
    state.n = 1u;
  }
}
