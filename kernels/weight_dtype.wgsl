// Weight element decoding, included by kernels that read model weights.
// Half-precision weights stay half on the GPU: two per u32 word, element 2i in the low half.
// A bf16 is the top 16 bits of an f32, so widening is a shift and a bitcast (exact).

#if DTYPE_F32
alias WeightWord = f32;
const WEIGHTS_PER_WORD: u32 = 1u;
fn decode_weight(word: f32, lane: u32) -> f32 {
  return word;
}
#elif DTYPE_F16
alias WeightWord = u32;
const WEIGHTS_PER_WORD: u32 = 2u;
fn decode_weight(word: u32, lane: u32) -> f32 {
  let pair = unpack2x16float(word);
  return select(pair.x, pair.y, lane == 1u);
}
#elif DTYPE_BF16
alias WeightWord = u32;
const WEIGHTS_PER_WORD: u32 = 2u;
fn decode_weight(word: u32, lane: u32) -> f32 {
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, lane == 1u));
}
#endif
