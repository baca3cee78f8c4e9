/**
 * `bench --memcpy`: the rate of a plain GPU buffer-to-buffer copy, the ceiling to compare decode's
 * weight-read rate with. Timed as (k copies - 1 copy) / (k - 1) of wall-clock around
 * onSubmittedWorkDone, so the fixed submission and wait costs cancel out.
 */
import type { Gpu } from "../gpu/device.ts";
import { summarize, type Summary } from "./stats.ts";

const COPIES = 9;

export async function measureMemcpy(
  gpu: Gpu,
  repeats: number,
): Promise<{ bytes: number; gbPerSecond: Summary }> {
  const { device } = gpu;
  const bytes = Math.min(256 << 20, Math.floor(gpu.maxBufferSize / 4) * 4);
  const usage = GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | GPUBufferUsage.STORAGE;
  const src = device.createBuffer({ size: bytes, usage, label: "memcpy src" });
  const dst = device.createBuffer({ size: bytes, usage, label: "memcpy dst" });
  const timed = async (copies: number) => {
    const encoder = device.createCommandEncoder();
    for (let i = 0; i < copies; i++) encoder.copyBufferToBuffer(src, 0, dst, 0, bytes);
    const start = performance.now();
    device.queue.submit([encoder.finish()]);
    await device.queue.onSubmittedWorkDone();
    return performance.now() - start;
  };
  await timed(1); // first touch of the pages
  const rates = [];
  for (let r = 0; r < repeats; r++) {
    const ms = ((await timed(COPIES)) - (await timed(1))) / (COPIES - 1);
    rates.push(bytes / Math.max(ms, 1e-3) / 1e6);
  }
  src.destroy();
  dst.destroy();
  return { bytes, gbPerSecond: summarize(rates) };
}
