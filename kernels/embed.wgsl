// Embedding lookup: h[t, :] = E[ids[t], :] * scale, for the token ids of this forward.
// Large tables are split by rows across textures (src/gpu/ops.ts WeightMatrix); one dispatch per
// chunk, each writes only the tokens whose id falls in its rows.
#include "weight_dtype.wgsl"

struct Params {
  hidden: u32,      // C, a multiple of 8
  row_start: u32,   // first vocabulary row held by this chunk
  rows: u32,        // rows in this chunk
  scale: f32,       // 1 for Llama, sqrt(hidden) for Gemma-2
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> ids: array<u32>;            // (T)
@group(0) @binding(2) var table: texture_storage_2d<rgba32uint, read>; // (rows, C) this chunk
@group(0) @binding(3) var<storage, read_write> h: array<f32>;        // (T, C)

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  let t = wid.x;
  let id = ids[t];
  if (id < params.row_start || id >= params.row_start + params.rows) {
    return;
  }
  let blocks = params.hidden / 8u;
  let row = id - params.row_start;
  for (var block = lid.x; block < blocks; block += 64u) {
    let v = weight_block(table, row, block * WORDS_PER_BLOCK);
    let out = t * params.hidden + 8u * block;
    for (var k = 0u; k < 4u; k++) {
      h[out + k] = v[0][k] * params.scale;
      h[out + 4u + k] = v[1][k] * params.scale;
    }
  }
}
