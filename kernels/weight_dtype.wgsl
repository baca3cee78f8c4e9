// Weight decoding, included by kernels that read model weights. Weights are read in blocks of 8
// consecutive elements (one vec4<u32> of half-precision pairs, or two vec4<f32>), so a matrix's
// column count must be a multiple of 8 (true of every real model). A matrix lives in read-only
// rgba32uint storage textures, one 16-byte word of a row per texel (src/gpu/ops.ts WeightMatrix;
// why storage textures: matmul.wgsl). Half-precision
// weights stay half on the GPU, element 2i in the low half of word i; a bf16 is the top 16 bits of
// an f32, so widening is a shift and a bitcast (exact).

#if DTYPE_F32
alias WeightWord = vec4<f32>;
const WORDS_PER_BLOCK: u32 = 2u;  // words per 8 elements
fn decode_block(w: array<WeightWord, 2>) -> array<vec4<f32>, 2> {
  return array<vec4<f32>, 2>(w[0], w[1]);
}
#elif DTYPE_F16
alias WeightWord = vec4<u32>;
const WORDS_PER_BLOCK: u32 = 1u;
fn decode_block(w: array<WeightWord, 2>) -> array<vec4<f32>, 2> {
  let q = w[0];
  return array<vec4<f32>, 2>(
    vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y)),
    vec4<f32>(unpack2x16float(q.z), unpack2x16float(q.w)),
  );
}
#elif DTYPE_BF16
alias WeightWord = vec4<u32>;
const WORDS_PER_BLOCK: u32 = 1u;
fn decode_block(w: array<WeightWord, 2>) -> array<vec4<f32>, 2> {
  let q = w[0];
  let lo = bitcast<vec4<f32>>(vec4<u32>(q.x << 16u, q.x & 0xffff0000u, q.y << 16u, q.y & 0xffff0000u));
  let hi = bitcast<vec4<f32>>(vec4<u32>(q.z << 16u, q.z & 0xffff0000u, q.w << 16u, q.w & 0xffff0000u));
  return array<vec4<f32>, 2>(lo, hi);
}
#endif

// The 8 weights of texture row `row` from word `word` on (block-aligned: a multiple of
// WORDS_PER_BLOCK).
alias WeightTexture = texture_storage_2d<rgba32uint, read>;
fn weight_block(t: WeightTexture, row: u32, word: u32) -> array<vec4<f32>, 2> {
  return decode_block(array<WeightWord, 2>(
    bitcast<WeightWord>(textureLoad(t, vec2<u32>(word, row))),
    bitcast<WeightWord>(textureLoad(t, vec2<u32>(word + WORDS_PER_BLOCK - 1u, row))),
  ));
}
