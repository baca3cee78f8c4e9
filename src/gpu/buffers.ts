/** Buffer helpers: storage buffers, small uniform parameter blocks, and readback. */

export const STORAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/**
 * A storage buffer; with `uniform`, one that may also be bound as a uniform range (matmul reads
 * its input x through one when it fits: kernels/matmul.wgsl X_UNIFORM).
 */
export function storageBuffer(
  device: GPUDevice,
  bytes: number,
  label: string,
  { uniform = false } = {},
): GPUBuffer {
  const usage = uniform ? STORAGE | GPUBufferUsage.UNIFORM : STORAGE;
  return device.createBuffer({ label, size: Math.max(16, align4(bytes)), usage });
}

export function align4(bytes: number): number {
  return Math.ceil(bytes / 4) * 4;
}

import { asDeviceLost, mapForRead, throwIfGpuError } from "./device.ts";

/** A field of a uniform block: a u32 or an f32, written in declaration order. */
export type Field = ["u32" | "f32", number];

/** A uniform buffer holding the given fields (padded to 16 bytes), as the kernel's `Params`. */
export function uniformBuffer(device: GPUDevice, fields: Field[], label: string): GPUBuffer {
  const words = Math.ceil(fields.length / 4) * 4;
  const data = new DataView(new ArrayBuffer(words * 4));
  fields.forEach(([type, value], i) => {
    if (type === "u32") data.setUint32(i * 4, value, true);
    else data.setFloat32(i * 4, value, true);
  });
  const buffer = device.createBuffer({
    label,
    size: data.byteLength,
    usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  device.queue.writeBuffer(buffer, 0, data.buffer);
  return buffer;
}

/**
 * Reads `bytes` from `source` at `offset` (one round trip: costs >= 10 ms in Deno 2.9). With
 * `encoder`, the copy is appended to that encoder's work, which is submitted with it.
 */
export function readBuffer(
  device: GPUDevice,
  source: GPUBuffer,
  bytes: number,
  offset = 0,
  encoder = device.createCommandEncoder(),
): Promise<ArrayBuffer> {
  return readRanges(device, source, [{ offset, bytes }], encoder);
}

/**
 * Reads several ranges of `source` in one round trip, concatenated in order (e.g. a ring buffer's
 * tail and head). Every range but the last must be a multiple of 4 bytes long.
 */
export async function readRanges(
  device: GPUDevice,
  source: GPUBuffer,
  ranges: { offset: number; bytes: number }[],
  encoder = device.createCommandEncoder(),
): Promise<ArrayBuffer> {
  try {
    let bytes = 0;
    for (const r of ranges) {
      if (bytes % 4 !== 0) {
        throw new RangeError("readRanges: a range before the last is not whole words");
      }
      bytes += r.bytes;
    }
    const staging = device.createBuffer({
      size: align4(bytes),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    let at = 0;
    for (const r of ranges) {
      encoder.copyBufferToBuffer(source, r.offset, staging, at, align4(r.bytes));
      at += r.bytes;
    }
    device.queue.submit([encoder.finish()]);
    await mapForRead(staging);
    const copy = staging.getMappedRange().slice(0, bytes);
    staging.unmap();
    staging.destroy();
    throwIfGpuError();
    return copy;
  } catch (e) {
    throw asDeviceLost(e);
  }
}

export async function readF32(device: GPUDevice, source: GPUBuffer, count: number, offset = 0) {
  return new Float32Array(await readBuffer(device, source, count * 4, offset));
}

export async function readU32(device: GPUDevice, source: GPUBuffer, count: number, offset = 0) {
  return new Uint32Array(await readBuffer(device, source, count * 4, offset));
}
