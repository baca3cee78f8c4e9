// The per-step state every kernel reads (src/gpu/ops.ts STATE_BYTES): the position of the first
// token of this forward (= K/V cache length), the token count n, and the sampler's output index.
struct State { pos: u32, n: u32, out_index: u32, pad: u32 }
