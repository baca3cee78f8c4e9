/**
 * `bench --memcpy`: the two ceilings to compare decode's weight-read rate with, in bytes per
 * second: a plain GPU buffer-to-buffer copy (done by the driver), and the fastest a kernel streams
 * bytes out of a weight texture (kernels/stream_read.wgsl), which is what decode's kernels do.
 * Each is timed as (k passes - 1 pass) / (k - 1) of wall-clock around onSubmittedWorkDone, so the
 * fixed submission and wait costs cancel out.
 */
import type { Gpu } from "../gpu/device.ts";
import {
  type OpContext,
  Recorder,
  STATE_BYTES,
  STREAM_READ_RUN,
  streamReadOp,
} from "../gpu/ops.ts";
import { Pipelines } from "../gpu/shader.ts";
import { TEXEL_BYTES, weightTexture } from "../model/weights.ts";
import type { Ceiling } from "./report.ts";
import { summarize, type Summary } from "./stats.ts";

const COPIES = 9;

/** Median-of-`repeats` GB/s of `pass` over `bytes`, from (COPIES passes - 1) / (COPIES - 1). */
async function rate(
  device: GPUDevice,
  bytes: number,
  repeats: number,
  pass: (encoder: GPUCommandEncoder, times: number) => void,
): Promise<Summary> {
  const timed = async (times: number) => {
    const encoder = device.createCommandEncoder();
    pass(encoder, times);
    const start = performance.now();
    device.queue.submit([encoder.finish()]);
    await device.queue.onSubmittedWorkDone();
    return performance.now() - start;
  };
  await timed(1); // first touch of the pages, pipeline compiles
  const rates = [];
  for (let r = 0; r < repeats; r++) {
    const ms = ((await timed(COPIES)) - (await timed(1))) / (COPIES - 1);
    rates.push(bytes / Math.max(ms, 1e-3) / 1e6);
  }
  return summarize(rates);
}

/**
 * The weight-read ceiling: stream_read over an rgba32uint texture laid out as weights are (rows of
 * texels), as tall as a texture may be and at most 64 MiB.
 */
export async function measureWeightRead(gpu: Gpu, repeats: number): Promise<Ceiling> {
  const { device } = gpu;
  const rowBytes = STREAM_READ_RUN * TEXEL_BYTES;
  const rows = Math.min(device.limits.maxTextureDimension2D, (64 << 20) / rowBytes);
  const bytes = rows * rowBytes;
  const pattern = new Uint32Array(bytes / 4).map((_, i) => Math.imul(i, 2654435761));
  const src = weightTexture(device, STREAM_READ_RUN, rows, "stream_read src", pattern);
  const usage = GPUBufferUsage.STORAGE;
  const out = device.createBuffer({ size: rows * 4, usage, label: "out" });
  const state = device.createBuffer({ size: STATE_BYTES, usage, label: "state" });
  const ctx: OpContext = { device, pipelines: new Pipelines(device), state };
  const op = streamReadOp(ctx, { src, bytes, out });
  const gbPerSecond = await rate(device, bytes, repeats, (encoder, times) => {
    const rec = new Recorder(encoder.beginComputePass());
    for (let i = 0; i < times; i++) op.record(rec);
    rec.pass.end();
  });
  for (const b of [src, out, state]) b.destroy();
  return { bytes, gbPerSecond };
}

export async function measureMemcpy(gpu: Gpu, repeats: number): Promise<Ceiling> {
  const { device } = gpu;
  const bytes = Math.min(256 << 20, Math.floor(gpu.maxBufferSize / 4) * 4);
  const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | GPUBufferUsage.STORAGE;
  const src = device.createBuffer({ size: bytes, usage, label: "memcpy src" });
  const dst = device.createBuffer({ size: bytes, usage, label: "memcpy dst" });
  const gbPerSecond = await rate(device, bytes, repeats, (encoder, times) => {
    for (let i = 0; i < times; i++) encoder.copyBufferToBuffer(src, 0, dst, 0, bytes);
  });
  src.destroy();
  dst.destroy();
  return { bytes, gbPerSecond };
}
