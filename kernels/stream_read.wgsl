// The storage-read ceiling of `bench --memcpy`: how fast a kernel can stream bytes out of a storage
// buffer on this device, the rate decode's weight reads can approach at best (a buffer copy runs in
// the driver, not in a shader, and can be much faster: on lavapipe every storage load is a loop over
// the SIMD lanes with a bounds check per lane and component, see matmul.wgsl).
//
// out[i] = XOR of the u32 words of src[i * RUN .. (i + 1) * RUN) (vec4s below params.vec4s), for
// every invocation i < ceil(vec4s / RUN). Each invocation streams one contiguous run, as matmul
// streams its rows, 4 vec4 loads per iteration (the fastest of the layouts measured: contiguous
// or lane-interleaved runs, 8 or 64 invocations per workgroup); the XOR keeps every load live.
//
// Defines: RUN, vec4s per invocation (a multiple of 4).

struct Params {
  vec4s: u32,  // length of src in vec4<u32>
}

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;  // (vec4s)
@group(0) @binding(2) var<storage, read_write> out: array<u32>;  // (ceil(vec4s / RUN))

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
  let i = gid.x + gid.y * groups.x * 64u;
  let first = i * RUN;
  if (first >= params.vec4s) {
    return;
  }
  let end = min(first + RUN, params.vec4s);
  var acc = vec4<u32>(0u);
  var at = first;
  for (; at + 4u <= end; at += 4u) {
    acc ^= src[at] ^ src[at + 1u] ^ src[at + 2u] ^ src[at + 3u];
  }
  for (; at < end; at++) {
    acc ^= src[at];
  }
  out[i] = acc.x ^ acc.y ^ acc.z ^ acc.w;
}
