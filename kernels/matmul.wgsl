// y[t, r] = epilogue(sum_c W[r, c] * x'[t, c]) for the n tokens of this forward: the matrix-vector
// product of decoding (TOKENS = 1) and the small-N product of prefill and verification
// (TOKENS = 8): each invocation owns one output row and reads it once for TOKENS tokens. No
// workgroup barriers: on lavapipe a workgroup's barriers and count dominate these small products.
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
  cols: u32,        // C, the input width, a multiple of 8
  x_stride: u32,    // floats between token rows of x
  y_stride: u32,    // floats between token rows of y
  row_offset: u32,  // first output column this chunk writes
  last_only: u32,   // 1: read only the last token's row of x, write row 0 of y
  eps: f32,         // RMSNorm epsilon (NORM)
  softcap: f32,     // > 0: y = tanh(y / softcap) * softcap (EPILOGUE_STORE)
}

#include "state.wgsl"

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> state: State;
@group(0) @binding(2) var<storage, read> w: array<WeightWord>;   // (rows, C), or (2 rows, C) for GLU
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;    // (n, x_stride), x_stride % 4 == 0
#if EPILOGUE_ADD
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (n, y_stride), accumulated into
#else
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (n, y_stride)
#endif
#if NORM
@group(0) @binding(5) var<storage, read> gain: array<vec4<f32>>; // (C)
#endif

// The 8 weights of row `row`, columns [8 block, 8 block + 8).
fn weight_block(row: u32, block: u32) -> array<vec4<f32>, 2> {
  let i = (row * (params.cols / 8u) + block) * WORDS_PER_BLOCK;
  return decode_block(array<WeightWord, 2>(w[i], w[i + WORDS_PER_BLOCK - 1u]));
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
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let r = gid.x + gid.y * groups.x * WG;  // output row within this chunk
  let t0 = gid.z * TOKENS;                // first token of this block
  let cols = params.cols;
  var n = state.n;
  var x_first = 0u;                       // token row of x that token 0 reads
  if (params.last_only == 1u) {
    x_first = n - 1u;
    n = 1u;
  }
  if (r >= params.rows || t0 >= n) {
    return;
  }
  let tokens = min(TOKENS, n - t0);
  var acc_a: array<f32, TOKENS>;
  var acc_b: array<f32, TOKENS>;
  var ss: array<f32, TOKENS>;
  for (var block = 0u; block < cols / 8u; block++) {
    let wa = weight_block(r, block);
#if EPILOGUE_GLU
    let wb = weight_block(r + params.rows, block);  // the up row
#endif
#if NORM
    let g = array<vec4<f32>, 2>(gain[2u * block], gain[2u * block + 1u]);
#endif
    for (var t = 0u; t < TOKENS; t++) {
      if (t < tokens) {
        let xi = ((x_first + t0 + t) * params.x_stride) / 4u + 2u * block;
        for (var part = 0u; part < 2u; part++) {
          let xv = x[xi + part];
#if NORM
          ss[t] += dot(xv, xv);
          let xn = xv * g[part];
#else
          let xn = xv;
#endif
          acc_a[t] += dot(wa[part], xn);
#if EPILOGUE_GLU
          acc_b[t] += dot(wb[part], xn);
#endif
        }
      }
    }
  }
  for (var t = 0u; t < tokens; t++) {
    var a = acc_a[t];
    var b = acc_b[t];
#if NORM
    let inv_rms = inverseSqrt(ss[t] / f32(cols) + params.eps);
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
}
