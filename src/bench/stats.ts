/** Summary statistics of repeated measurements, as `bench` reports every figure. */

export interface Summary {
  min: number;
  median: number;
  max: number;
  /** Every measurement, in run order. */
  runs: number[];
}

export function median(values: number[]): number {
  if (values.length === 0) throw new RangeError("median of no values");
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

export function summarize(runs: number[]): Summary {
  if (runs.length === 0) throw new RangeError("summary of no runs");
  if (runs.some((v) => !Number.isFinite(v))) throw new RangeError(`non-finite run in [${runs}]`);
  return { min: Math.min(...runs), median: median(runs), max: Math.max(...runs), runs: [...runs] };
}

/** Run-by-run ratios a[i] / b[i] (e.g. each repeat's speed-up over the decode of that repeat). */
export function pairedRatios(a: number[], b: number[]): number[] {
  if (a.length !== b.length) throw new RangeError(`paired runs differ: ${a.length} vs ${b.length}`);
  return a.map((v, i) => v / b[i]);
}

/** Counts of each integer value, ascending (e.g. tokens emitted per speculative round). */
export function histogram(values: number[]): { value: number; count: number }[] {
  const counts = new Map<number, number>();
  for (const v of values) counts.set(v, (counts.get(v) ?? 0) + 1);
  return [...counts].sort((a, b) => a[0] - b[0]).map(([value, count]) => ({ value, count }));
}
