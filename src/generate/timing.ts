/** Timing helpers shared by bench and tune-skip's cost model. */
import { Recorder } from "../gpu/ops.ts";
import type { Model, SkipSet } from "../model/model.ts";

/** Milliseconds of one forward of `n` tokens (median of `repeats`, 10 forwards each). */
export async function forwardMs(model: Model, n: number, skip: SkipSet, repeats: number) {
  const once = async () => {
    model.writeInput(Array.from({ length: n }, (_, i) => i + 1), 8);
    const encoder = model.device.createCommandEncoder();
    const rec = new Recorder(encoder.beginComputePass());
    for (let i = 0; i < 10; i++) model.recordForward(rec, n, skip, "all");
    rec.pass.end();
    const start = performance.now();
    model.device.queue.submit([encoder.finish()]);
    await model.device.queue.onSubmittedWorkDone();
    return (performance.now() - start) / 10;
  };
  await once();
  const times = [];
  for (let i = 0; i < repeats; i++) times.push(await once());
  return median(times);
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}
