/**
 * The figures `bench` measures, as written by `--json FILE` (schema "skipspec-bench/4"), and a
 * validator that checks a report's structure and the invariants every figure must hold.
 */
import type { Summary } from "./stats.ts";

export const REPORT_SCHEMA = "skipspec-bench/4";

/** A rate to compare decode's weight reads with: bytes moved per pass, GB/s. */
export interface Ceiling {
  bytes: number;
  gbPerSecond: Summary;
}

export const MODES = ["prefill", "decode", "speculate", "self-speculate"] as const;
export type Mode = typeof MODES[number];

export interface MachineInfo {
  deno: string;
  v8: string;
  os: string;
  arch: string;
  /** Logical CPUs (navigator.hardwareConcurrency). */
  cpus: number;
  adapter: {
    vendor: string;
    architecture: string;
    device: string;
    description: string;
    isFallback: boolean;
  };
  features: string[];
  limits: Record<string, number>;
  /** LP_NUM_THREADS as the driver saw it (lavapipe's worker threads; "0" = single-threaded). */
  lavapipeThreads: string | null;
}

export interface ModeFigures {
  mode: Mode;
  /** The draft: a model folder (speculate) or "skip a/b" sub-layers (self-speculate). */
  draft: string | null;
  /** False on untrained (synthetic) weights: acceptance and speed-up there mean nothing. */
  meaningful: boolean;
  tokensPerSecond: Summary;
  msPerToken: Summary;
  /** Each repeat's tokens/s over plain decode's in the same repeat (decode: 1). */
  speedup: Summary | null;
  dispatchesPerToken: number;
  readbacksPerToken: number;
  /** Weight bytes one decode step reads, and the rate they were read at (decode). */
  weightBytesPerToken: number | null;
  weightGBPerSecond: Summary | null;
  acceptanceRate: Summary | null;
  tokensPerRound: Summary | null;
  draftStepsPerRound: Summary | null;
  /** Draft steps recorded per round: the drafted ones and the no-ops after a draft stopped. */
  recordedDraftStepsPerRound: Summary | null;
  readbacksPerRound: Summary | null;
  /** Tokens emitted per round, over every measured round. */
  tokensPerRoundHistogram: { value: number; count: number }[] | null;
  /** Speed-up predicted from measured acceptance and this engine's measured forward costs. */
  predictedSpeedup: number | null;
  /** Speed-up of an engine where verifying k + 1 tokens costs one step. */
  idealSpeedup: number | null;
  /**
   * This engine's speed-up if every draft were accepted, at its best draft steps a round, from
   * the measured forward costs: the most speculation can gain on this device.
   */
  allAcceptedSpeedup: number | null;
}

export interface KernelRow {
  /** Kernel file and variant defines. */
  kernel: string;
  calls: number;
  msPerToken: number;
  share: number;
}

export interface ModelFigures {
  model: string;
  synthetic: boolean;
  architecture: string;
  layers: number;
  parameters: number;
  dtype: string;
  contextLength: number;
  /** Prompt tokens over the prompt set. */
  promptTokens: number;
  modes: ModeFigures[];
  /** GPU time of a forward over 8 tokens over one over 1 token. */
  forward8OverForward1: Summary;
  /** GPU time per kernel of one decode step (null without timestamp-query). */
  kernels: KernelRow[] | null;
}

export interface BenchReport {
  schema: typeof REPORT_SCHEMA;
  date: string;
  machine: MachineInfo;
  settings: {
    newTokens: number;
    repeats: number;
    prompts: number;
    prefillTokens: number;
    modes: Mode[];
  };
  /** `--memcpy`: a plain GPU buffer copy, bytes copied per second. */
  memcpy: Ceiling | null;
  /** `--memcpy`: a kernel streaming a weight texture (the fastest decode's reads can be). */
  weightRead: Ceiling | null;
  models: ModelFigures[];
}

/** Throws a RangeError naming the first field that breaks the schema. */
export function validateReport(report: unknown): asserts report is BenchReport {
  const r = object(report, "report");
  if (r.schema !== REPORT_SCHEMA) fail("report.schema", `is not "${REPORT_SCHEMA}"`);
  if (typeof r.date !== "string" || Number.isNaN(Date.parse(r.date))) fail("report.date", "date");
  const m = object(r.machine, "machine");
  for (const k of ["deno", "v8", "os", "arch"]) string(m[k], `machine.${k}`);
  positive(m.cpus, "machine.cpus");
  const a = object(m.adapter, "machine.adapter");
  for (const k of ["vendor", "architecture", "device", "description"]) {
    string(a[k], `machine.adapter.${k}`);
  }
  if (typeof a.isFallback !== "boolean") fail("machine.adapter.isFallback", "is not a boolean");
  array(m.features, "machine.features").forEach((f, i) => string(f, `machine.features[${i}]`));
  for (const [k, v] of Object.entries(object(m.limits, "machine.limits"))) {
    nonNegative(v, `machine.limits.${k}`);
  }
  const s = object(r.settings, "settings");
  for (const k of ["newTokens", "repeats", "prompts", "prefillTokens"]) {
    positive(s[k], `settings.${k}`);
  }
  array(s.modes, "settings.modes").forEach((mode, i) => oneOf(mode, MODES, `settings.modes[${i}]`));
  for (const key of ["memcpy", "weightRead"]) {
    if (r[key] === null) continue;
    const c = object(r[key], key);
    positive(c.bytes, `${key}.bytes`);
    summary(c.gbPerSecond, `${key}.gbPerSecond`);
  }
  if ((r.memcpy === null) !== (r.weightRead === null)) {
    fail("weightRead", "is measured with memcpy (both or neither)");
  }
  array(r.models, "models").forEach((model, i) => validateModel(model, `models[${i}]`));
}

function validateModel(value: unknown, path: string) {
  const m = object(value, path);
  string(m.model, `${path}.model`);
  if (typeof m.synthetic !== "boolean") fail(`${path}.synthetic`, "is not a boolean");
  string(m.architecture, `${path}.architecture`);
  string(m.dtype, `${path}.dtype`);
  for (const k of ["layers", "parameters", "contextLength", "promptTokens"]) {
    positive(m[k], `${path}.${k}`);
  }
  summary(m.forward8OverForward1, `${path}.forward8OverForward1`);
  if (m.kernels !== null) {
    let share = 0;
    array(m.kernels, `${path}.kernels`).forEach((k, i) => {
      const row = object(k, `${path}.kernels[${i}]`);
      string(row.kernel, `${path}.kernels[${i}].kernel`);
      positive(row.calls, `${path}.kernels[${i}].calls`);
      nonNegative(row.msPerToken, `${path}.kernels[${i}].msPerToken`);
      nonNegative(row.share, `${path}.kernels[${i}].share`);
      share += row.share as number;
    });
    if (Math.abs(share - 1) > 1e-6) fail(`${path}.kernels`, `shares sum to ${share}, not 1`);
  }
  array(m.modes, `${path}.modes`).forEach((mode, i) => validateMode(mode, `${path}.modes[${i}]`));
}

function validateMode(value: unknown, path: string) {
  const m = object(value, path);
  oneOf(m.mode, MODES, `${path}.mode`);
  if (m.draft !== null) string(m.draft, `${path}.draft`);
  if (typeof m.meaningful !== "boolean") fail(`${path}.meaningful`, "is not a boolean");
  summary(m.tokensPerSecond, `${path}.tokensPerSecond`);
  summary(m.msPerToken, `${path}.msPerToken`);
  nonNegative(m.dispatchesPerToken, `${path}.dispatchesPerToken`);
  nonNegative(m.readbacksPerToken, `${path}.readbacksPerToken`);
  const speculative = m.mode === "speculate" || m.mode === "self-speculate";
  const optional = [
    "speedup",
    "weightGBPerSecond",
    "acceptanceRate",
    "tokensPerRound",
    "draftStepsPerRound",
    "recordedDraftStepsPerRound",
    "readbacksPerRound",
  ];
  for (const k of optional) if (m[k] !== null) summary(m[k], `${path}.${k}`);
  for (const k of ["acceptanceRate", "tokensPerRound", "tokensPerRoundHistogram"]) {
    if ((m[k] === null) === speculative) {
      fail(`${path}.${k}`, speculative ? "is missing" : "is set for a non-speculative mode");
    }
  }
  if (speculative) {
    const acceptance = m.acceptanceRate as { min: number; max: number };
    if (acceptance.min < 0 || acceptance.max > 1) {
      fail(`${path}.acceptanceRate`, "is outside [0, 1]");
    }
    array(m.tokensPerRoundHistogram, `${path}.tokensPerRoundHistogram`).forEach((b, i) => {
      const bin = object(b, `${path}.tokensPerRoundHistogram[${i}]`);
      positive(bin.value, `${path}.tokensPerRoundHistogram[${i}].value`);
      positive(bin.count, `${path}.tokensPerRoundHistogram[${i}].count`);
    });
  }
  if (m.weightBytesPerToken !== null) {
    positive(m.weightBytesPerToken, `${path}.weightBytesPerToken`);
  }
  for (const k of ["predictedSpeedup", "idealSpeedup", "allAcceptedSpeedup"]) {
    if (m[k] !== null) positive(m[k], `${path}.${k}`);
  }
}

function summary(value: unknown, path: string) {
  const s = object(value, path);
  const runs = array(s.runs, `${path}.runs`);
  if (runs.length === 0) fail(`${path}.runs`, "is empty");
  runs.forEach((v, i) => nonNegative(v, `${path}.runs[${i}]`));
  for (const k of ["min", "median", "max"]) nonNegative(s[k], `${path}.${k}`);
  const [min, med, max] = [s.min, s.median, s.max] as number[];
  if (!(min <= med && med <= max)) fail(path, `min ${min} <= median ${med} <= max ${max} fails`);
  if (min !== Math.min(...runs as number[]) || max !== Math.max(...runs as number[])) {
    fail(path, "min/max disagree with runs");
  }
}

function fail(path: string, what: string): never {
  throw new RangeError(`bench report: ${path} ${what}`);
}

function object(v: unknown, path: string): Record<string, unknown> {
  if (typeof v !== "object" || v === null || Array.isArray(v)) fail(path, "is not an object");
  return v as Record<string, unknown>;
}

function array(v: unknown, path: string): unknown[] {
  if (!Array.isArray(v)) fail(path, "is not an array");
  return v;
}

function string(v: unknown, path: string) {
  if (typeof v !== "string") fail(path, "is not a string");
}

function nonNegative(v: unknown, path: string) {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0) fail(path, `is not a number >= 0`);
}

function positive(v: unknown, path: string) {
  if (typeof v !== "number" || !Number.isFinite(v) || v <= 0) fail(path, `is not a number > 0`);
}

function oneOf(v: unknown, options: readonly string[], path: string) {
  if (!options.includes(v as string)) fail(path, `is not one of ${options.join(", ")}`);
}
