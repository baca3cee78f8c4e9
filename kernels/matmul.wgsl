// y[t, r] = epilogue(sum_c W[r, c] * x'[t, c]) for the n tokens of this forward: the matrix-vector
// product of decoding (TOKENS = 1) and the small-N product of prefill and verification.
//
// Register blocking, no workgroup barriers: each invocation owns ROWS output rows and TOKENS
// tokens, so every weight block it loads serves TOKENS tokens and every x block serves ROWS rows.
// That is what counts on lavapipe (llvmpipe), where each storage-buffer load instruction is a loop
// over the 8 SIMD lanes with a bounds check per lane and component (the same cost whether the
// address is uniform or not), while arithmetic is cheap: a kernel's cost is mostly its count of
// load instructions, about rows * C / 8 for the weights plus (TOKENS x loads per 8 columns) per
// invocation. src/gpu/ops.ts (matmulOp) picks ROWS and WG per shape; bench/kernels_bench.ts
// measures the alternatives.
//
// Variants (defines):
//   DTYPE_*         weight storage (weight_dtype.wgsl)
//   ROWS            output rows per invocation (rows r0 .. r0 + ROWS - 1)
//   TOKENS          tokens per invocation (gid.z selects the block of tokens)
//   WG              invocations per workgroup
//   NORM            x' = rmsnorm(x) * gain, fused: the row pass also sums x^2 (RMSNorm + matmul in
//                   one dispatch; gain is f32 and already holds Gemma's 1 + w)
//   EPILOGUE_STORE  y = acc, then the optional tanh soft-cap (Gemma-2 final logits)
//   EPILOGUE_ADD    y += acc (residual add fused into the output projection)
//   EPILOGUE_GLU    the chunk stacks [gate rows; up rows]; y = act(gate . x') * (up . x')
//                   with ACT_SILU (SwiGLU) or ACT_GELU_TANH (GeGLU)
#include "weight_dtype.wgsl"

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
@group(0) @binding(4) var<storage, read_write> y: array<f32>;    // (n, y_stride); EPILOGUE_ADD adds
#if NORM
@group(0) @binding(5) var<storage, read> gain: array<vec4<f32>>; // (C)
#endif

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

// The 8 weights at word offset i (block-aligned).
fn weight_block(i: u32) -> array<vec4<f32>, 2> {
  return decode_block(array<WeightWord, 2>(w[i], w[i + WORDS_PER_BLOCK - 1u]));
}

@compute @workgroup_size(WG)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let first_row = (gid.x + gid.y * groups.x * WG) * ROWS;  // within this chunk
  let t0 = gid.z * TOKENS;                                  // first token of this block
  var n = state.n;
  var x_first = 0u;                                         // x row of token 0
  if (params.last_only == 1u) {
    x_first = n - 1u;
    n = 1u;
  }
  if (first_row >= params.rows || t0 >= n) {
    return;
  }
  let blocks = params.cols / 8u;
  let row_words = blocks * WORDS_PER_BLOCK;
  // Loads are clamped to valid rows and tokens (no branches around them: a masked load costs
  // nearly as much as a real one); only the writes check.
  var w_at: array<u32, ROWS>;
  for (var i = 0u; i < ROWS; i++) {
    w_at[i] = min(first_row + i, params.rows - 1u) * row_words;
  }
  var x_at: array<u32, TOKENS>;
  for (var t = 0u; t < TOKENS; t++) {
    x_at[t] = ((x_first + min(t0 + t, n - 1u)) * params.x_stride) / 4u;
  }
  var acc: array<array<f32, TOKENS>, ROWS>;
#if EPILOGUE_GLU
  let up_words = params.rows * row_words;  // the up rows follow the gate rows
  var acc_up: array<array<f32, TOKENS>, ROWS>;
#endif
#if NORM
  var ss: array<f32, TOKENS>;
#endif
  for (var block = 0u; block < blocks; block++) {
#if NORM
    let g0 = gain[2u * block];
    let g1 = gain[2u * block + 1u];
#endif
    var xs: array<array<vec4<f32>, 2>, TOKENS>;
    for (var t = 0u; t < TOKENS; t++) {
      var x0 = x[x_at[t] + 2u * block];
      var x1 = x[x_at[t] + 2u * block + 1u];
#if NORM
      ss[t] += dot(x0, x0) + dot(x1, x1);
      x0 *= g0;
      x1 *= g1;
#endif
      xs[t] = array<vec4<f32>, 2>(x0, x1);
    }
    let word = block * WORDS_PER_BLOCK;
    for (var i = 0u; i < ROWS; i++) {
      let wa = weight_block(w_at[i] + word);
#if EPILOGUE_GLU
      let wb = weight_block(up_words + w_at[i] + word);
#endif
      for (var t = 0u; t < TOKENS; t++) {
        acc[i][t] += dot(wa[0], xs[t][0]) + dot(wa[1], xs[t][1]);
#if EPILOGUE_GLU
        acc_up[i][t] += dot(wb[0], xs[t][0]) + dot(wb[1], xs[t][1]);
#endif
      }
    }
  }
  for (var t = 0u; t < TOKENS; t++) {
    if (t0 + t >= n) {
      break;
    }
#if NORM
    let inv_rms = inverseSqrt(ss[t] / f32(params.cols) + params.eps);
#else
    let inv_rms = 1.0;
#endif
    let out_row = (t0 + t) * params.y_stride + params.row_offset;
    for (var i = 0u; i < ROWS; i++) {
      let r = first_row + i;
      if (r < params.rows) {
        let a = acc[i][t] * inv_rms;
#if EPILOGUE_ADD
        y[out_row + r] += a;
#elif EPILOGUE_GLU
        y[out_row + r] = activation(a) * (acc_up[i][t] * inv_rms);
#else
        if (params.softcap > 0.0) {
          y[out_row + r] = tanh(clamp(a / params.softcap, -15.0, 15.0)) * params.softcap;
        } else {
          y[out_row + r] = a;
        }
#endif
      }
    }
  }
}
