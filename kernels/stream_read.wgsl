// The weight-read ceiling of `bench --memcpy`: how fast a kernel can stream bytes out of GPU
// memory on this device, the rate decode's weight reads can approach at best. A buffer copy runs
// in the driver, not in a shader: on lavapipe this kernel streams a read-only storage texture at
// or above a (single-threaded) copy's speed, and a storage buffer far below it, since every
// storage load is a loop over the SIMD lanes with a bounds check per lane and component (see
// matmul.wgsl).
//
// out[i] = XOR of the u32 words of vec4s i * RUN .. (i + 1) * RUN of the source (those below
// params.vec4s), for every invocation i < ceil(vec4s / RUN). Each invocation streams one
// contiguous run, as matmul streams its rows, 4 loads per iteration (the fastest of the layouts
// measured: contiguous or lane-interleaved runs, 8 or 64 invocations per workgroup); the XOR keeps
// every load live.
//
// Defines:
//   RUN      vec4s per invocation (a multiple of 4)
//   TEXTURE  the source is a read-only rgba32uint storage texture of RUN texels per row, run i in
//            row i (how decode reads weights: src/gpu/ops.ts WeightMatrix); else a storage buffer

struct Params {
  vec4s: u32,  // length of the source in vec4<u32>
}

@group(0) @binding(0) var<uniform> params: Params;
#if TEXTURE
@group(0) @binding(1) var src: texture_storage_2d<rgba32uint, read>; // (ceil(vec4s / RUN), RUN)
#else
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;  // (vec4s)
#endif
@group(0) @binding(2) var<storage, read_write> out: array<u32>;  // (ceil(vec4s / RUN))

// vec4 k of run i.
fn load(i: u32, k: u32) -> vec4<u32> {
#if TEXTURE
  return textureLoad(src, vec2<u32>(k, i));
#else
  return src[i * RUN + k];
#endif
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * 64u;
  let first = i * RUN;
  if (first >= params.vec4s) {
    return;
  }
  let count = min(RUN, params.vec4s - first);
  var acc = vec4<u32>(0u);
  var k = 0u;
  for (; k + 4u <= count; k += 4u) {
    acc ^= load(i, k) ^ load(i, k + 1u) ^ load(i, k + 2u) ^ load(i, k + 3u);
  }
  for (; k < count; k++) {
    acc ^= load(i, k);
  }
  out[i] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
