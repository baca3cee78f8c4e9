// Embedding lookup: h[t, :] = E[ids[t], :] * scale, for the token ids of this forward.
// Large tables are split by rows across bindings; one dispatch per chunk, each writes only the
// tokens whose id falls in its rows.
#include "weight_dtype.wgsl"

struct Params {
  hidden: u32,      // C
  row_start: u32,   // first vocabulary row held by this chunk
  rows: u32,        // rows in this chunk
  scale: f32,       // 1 for Llama, sqrt(hidden) for Gemma-2
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;            // (T)
@group(0) @binding(2) var<storage, read> table: array<WeightWord>;   // (rows, C) this chunk
@group(0) @binding(3) var<storage, read_write> h: array<f32>;        // (T, C)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.x;
  let id = ids[t];
  if (id < params.row_start || id >= params.row_start + params.rows) {
    return;
  }
  let base = (id - params.row_start) * params.hidden;
  for (var c = lid.x; c < params.hidden; c += 64u) {
    let i = base + c;
    h[t * params.hidden + c] = decode_weight(table[i / WEIGHTS_PER_WORD], i % WEIGHTS_PER_WORD) * params.scale;
  }
}
