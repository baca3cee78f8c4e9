/** Timing helpers shared by bench and tune-skip's cost model. */
import { median } from "../bench/stats.ts";
export { median };
import { Recorder } from "../gpu/ops.ts";
import { GpuTimer } from "../gpu/profile.ts";
import type { Model, SkipSet } from "../model/model.ts";

const timers = new WeakMap<GPUDevice, GpuTimer | null>();

/** The device's timestamp timer (one per device), or undefined without `timestamp-query`. */
export function timerFor(model: Model): GpuTimer | undefined {
  let timer = timers.get(model.device);
  if (timer === undefined) {
    timer = GpuTimer.for(model.gpu) ?? null;
    timers.set(model.device, timer);
  }
  return timer ?? undefined;
}

/**
 * Milliseconds of one forward of `n` tokens, median of `repeats`: GPU time from timestamp queries
 * where the device has them; else the difference between a submission of 24 forwards and one of 4,
 * over 20, so the fixed cost of a submission and of waiting for it (Deno sleeps ~10 ms in
 * onSubmittedWorkDone) cancels out.
 */
export async function forwardMs(model: Model, n: number, skip: SkipSet, repeats: number) {
  model.writeInput(Array.from({ length: n }, (_, i) => i + 1), 8);
  const timer = timerFor(model);
  const record = (rec: Recorder) => model.recordForward(rec, n, skip, "all");
  if (timer) {
    await timer.passMs(record); // compiles the pipelines
    const times = [];
    for (let i = 0; i < repeats; i++) times.push(await timer.passMs(record));
    return Math.max(1e-3, median(times));
  }
  const timed = (forwards: number) => wallClockMs(model, record, forwards);
  await timed(4);
  const times = [];
  for (let i = 0; i < repeats; i++) times.push(((await timed(24)) - (await timed(4))) / 20);
  return Math.max(1e-3, median(times));
}

/** Wall-clock ms of one submitted pass recording `record` `times` times, until the queue drains. */
async function wallClockMs(model: Model, record: (rec: Recorder) => void, times = 1) {
  const encoder = model.device.createCommandEncoder();
  const rec = new Recorder(encoder.beginComputePass());
  for (let i = 0; i < times; i++) record(rec);
  rec.pass.end();
  const start = performance.now();
  model.device.queue.submit([encoder.finish()]);
  await model.device.queue.onSubmittedWorkDone();
  return performance.now() - start;
}

/**
 * Ms of one pass of what `record` records: GPU time where the device has timestamp queries,
 * else wall-clock (which then includes Deno's ~10 ms wait for the queue).
 */
export function passMs(model: Model, record: (rec: Recorder) => void): Promise<number> {
  const timer = timerFor(model);
  return timer ? timer.passMs(record) : wallClockMs(model, record);
}
