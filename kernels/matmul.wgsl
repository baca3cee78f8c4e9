// y[t, r] = epilogue(sum_c W[r, c] * x'[t, c]) for the n tokens of this forward: the matrix-vector
// product of decoding (TOKENS = 1) and the small-N product of prefill and verification
// (TOKENS = 8): each workgroup reads its weight row once for TOKENS tokens.
//
// Variants (defines):
//   DTYPE_*         weight storage (weight_dtype.wgsl)
//   NORM            x' = rmsnorm(x) * gain, fused: the row pass also sums x^2 (RMSNorm + matmul in
//                   one dispatch; gain is f32 and already holds Gemma's 1 + w)
//   EPILOGUE_STORE  y = acc, then the optional tanh soft-cap (Gemma-2 final logits)
//   EPILOGUE_ADD    y += acc (residual add fused into the output projection)
//   EPILOGUE_GLU    the chunk stacks [gate rows; up rows]; y = act(gate . x') * (up . x')
//                   with ACT_SILU (SwiGLU) or ACT_GELU_TANH (GeGLU)
#include "weight_dtype.wgsl"

const WG: u32 = 64u;

struct Params {
  rows: u32,        // output rows held by this weight chunk
  cols: u32,        // C, the input width
  x_stride: u32,    // floats between token rows of x
  y_stride: u32,    // floats between token rows of y
  row_offset: u32,  // first output column this chunk writes
  last_only: u32,   // 1: read only the last token's row of x, write row 0 of y
  eps: f32,         // RMSNorm epsilon (NORM)
  softcap: f32,     // > 0: y = tanh(y / softcap) * softcap (EPILOGUE_STORE)
}

struct State { pos: u32, n: u32, out_index: u32, pad: u32 }

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> w: array<WeightWord>;   // (rows, C), or (2 rows, C) for GLU
@group(0) @binding(3) var<storage, read> x: array<f32>;          // (n, x_stride)
#if EPILOGUE_ADD
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (n, y_stride), accumulated into
#else
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (n, y_stride)
#endif
#if NORM
@group(0) @binding(5) var<storage, read> gain: array<f32>;       // (C)
#endif

var<workgroup> partial_a: array<f32, WG * TOKENS>;
var<workgroup> partial_b: array<f32, WG * TOKENS>;
var<workgroup> partial_ss: array<f32, WG * TOKENS>;

fn weight(i: u32) -> f32 {
  return decode_weight(w[i / WEIGHTS_PER_WORD], i % WEIGHTS_PER_WORD);
}

fn activation(g: f32) -> f32 {
#if ACT_SILU
  return g / (1.0 + exp(-g));
#elif ACT_GELU_TANH
  let inner = 0.7978845608028654 * (g + 0.044715 * g * g * g);
  return 0.5 * g * (1.0 + tanh(clamp(inner, -15.0, 15.0)));
#else
  return g;
#endif
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>,
        @builtin(local_invocation_id) lid: vec3<u32>) {
  let r = wid.x + wid.y * groups.x;      // output row within this chunk
  let t0 = wid.z * TOKENS;               // first token of this block
  let cols = params.cols;
  var n = state.n;
  var x_first = 0u;                      // token row of x that token 0 reads
  if (params.last_only == 1u) {
    x_first = n - 1u;
    n = 1u;
  }
  let in_range = r < params.rows;

  var acc_a: array<f32, TOKENS>;
  var acc_b: array<f32, TOKENS>;
  var ss: array<f32, TOKENS>;
  if (in_range) {
    let row_a = r * cols;
    let row_b = (r + params.rows) * cols;  // the up row, for GLU
    for (var c = lid.x; c < cols; c += WG) {
      let wa = weight(row_a + c);
#if EPILOGUE_GLU
      let wb = weight(row_b + c);
#endif
#if NORM
      let g = gain[c];
#endif
      for (var t = 0u; t < TOKENS; t++) {
        if (t0 + t < n) {
          let xv = x[(x_first + t0 + t) * params.x_stride + c];
#if NORM
          ss[t] += xv * xv;
          let xn = xv * g;
#else
          let xn = xv;
#endif
          acc_a[t] += wa * xn;
#if EPILOGUE_GLU
          acc_b[t] += wb * xn;
#endif
        }
      }
    }
  }
  for (var t = 0u; t < TOKENS; t++) {
    partial_a[t * WG + lid.x] = acc_a[t];
    partial_b[t * WG + lid.x] = acc_b[t];
    partial_ss[t * WG + lid.x] = ss[t];
  }
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride >>= 1u) {
    if (lid.x < stride) {
      for (var t = 0u; t < TOKENS; t++) {
        let i = t * WG + lid.x;
        partial_a[i] += partial_a[i + stride];
        partial_b[i] += partial_b[i + stride];
        partial_ss[i] += partial_ss[i + stride];
      }
    }
    workgroupBarrier();
  }
  let t = lid.x;
  if (!in_range || t >= TOKENS || t0 + t >= n) {
    return;
  }
  var a = partial_a[t * WG];
  var b = partial_b[t * WG];
#if NORM
  let inv_rms = inverseSqrt(partial_ss[t * WG] / f32(cols) + params.eps);
  a *= inv_rms;
  b *= inv_rms;
#endif
  let out = (t0 + t) * params.y_stride + params.row_offset + r;
#if EPILOGUE_ADD
  y[out] += a;
#elif EPILOGUE_GLU
  y[out] = activation(a) * b;
#else
  if (params.softcap > 0.0) {
    a = tanh(clamp(a / params.softcap, -15.0, 15.0)) * params.softcap;
  }
  y[out] = a;
#endif
}
