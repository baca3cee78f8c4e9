/**
 * Measures one model for `bench`: prefill alone, plain decode, `speculate` with a draft model and
 * `self-speculate` with a skip set, greedy, over a prompt set. Every mode is warmed up (pipeline
 * compilation), then the modes are interleaved repeat by repeat so drift hits them alike, and each
 * speed-up is the ratio to plain decode's tokens/s in the same repeat. Also: forward(8)/forward(1)
 * and a per-kernel table of one decode step from timestamp queries.
 */
import { decode, type GenerationStats, initialPresence } from "../generate/decode.ts";
import {
  DEFAULT_DRAFT_MAX,
  type DraftSource,
  speculate,
  type SpeculationResult,
} from "../generate/speculate.ts";
import { forwardTimes, passMs, timerFor } from "../generate/timing.ts";
import { storageBuffer } from "../gpu/buffers.ts";
import { GREEDY, type Recorder, sampleOp } from "../gpu/ops.ts";
import type { KernelTime } from "../gpu/profile.ts";
import { type Model, NO_SKIP, type SkipSet } from "../model/model.ts";
import { skipCount } from "../model/skip.ts";
import { roundSpeedup, speedupIfAllAccepted } from "../tune/objective.ts";
import type { KernelRow, Mode, ModeFigures, ModelFigures } from "./report.ts";
import { histogram, median, pairedRatios, summarize } from "./stats.ts";

export interface BenchTarget {
  model: Model;
  synthetic: boolean;
  /** Token ids of each prompt of the set. */
  prompts: number[][];
  /** For `speculate`: a draft model sharing the target's vocabulary. */
  draft?: { label: string; model: Model };
  /** For `self-speculate`. */
  skip?: SkipSet;
}

export interface BenchOptions {
  newTokens: number;
  repeats: number;
  prefillTokens: number;
  modes: Mode[];
  progress: (message: string) => void;
}

const WARMUP_TOKENS = 8;
const KERNEL_TABLE_STEPS = 3;

/** Totals of one mode's runs over the prompt set in one repeat. */
interface RepeatTotals {
  decoded: number;
  decodeMs: number;
  generated: number;
  dispatches: number;
  readbacks: number;
  rounds: number;
  drafted: number;
  accepted: number;
  draftSteps: number;
  recordedDraftSteps: number;
  emittedPerRound: number[];
}

export async function benchModel(t: BenchTarget, o: BenchOptions): Promise<ModelFigures> {
  const { model } = t;
  const generating = o.modes.filter((m) => m !== "prefill");
  const drafts = new Map<Mode, DraftSource>();
  if (generating.includes("speculate") && t.draft) {
    drafts.set("speculate", { kind: "model", model: t.draft.model });
  }
  if (generating.includes("self-speculate") && t.skip) {
    drafts.set("self-speculate", { kind: "self", skip: t.skip });
  }
  const runModes: Mode[] = generating.length ? ["decode", ...drafts.keys()] : [];
  const run = (mode: Mode, prompt: number[], maxNewTokens: number) => {
    const options = { maxNewTokens, sampling: GREEDY, stopTokens: [] };
    const draft = drafts.get(mode);
    return draft
      ? speculate(model, prompt, { ...options, draft })
      : decode(model, prompt, { ...options, skip: NO_SKIP });
  };

  for (const mode of runModes) {
    o.progress(`warm-up ${mode}`);
    await run(mode, t.prompts[0], Math.min(WARMUP_TOKENS, o.newTokens));
  }
  const totals = new Map<Mode, RepeatTotals[]>(runModes.map((m) => [m, []]));
  for (let r = 0; r < o.repeats; r++) {
    for (const mode of runModes) {
      o.progress(`${mode}, repeat ${r + 1}/${o.repeats}`);
      const sum = emptyTotals();
      for (const prompt of t.prompts) addRun(sum, await run(mode, prompt, o.newTokens));
      totals.get(mode)!.push(sum);
    }
  }

  o.progress("forward(8) / forward(1)");
  // The 1-token forward first, so that it runs after another (forwardTimes), as decode steps do.
  const ratios = (await forwardTimes([
    { model, n: 1, skip: NO_SKIP },
    { model, n: 8, skip: NO_SKIP },
  ], o.repeats)).map(([one, eight]) => eight / one);

  const modes: ModeFigures[] = [];
  if (o.modes.includes("prefill")) {
    o.progress("prefill");
    modes.push(await benchPrefill(t, o));
  }
  const decodeTps = (totals.get("decode") ?? []).map(tokensPerSecond);
  for (const mode of runModes) {
    if (mode === "decode" && !o.modes.includes("decode")) continue;
    const runs = totals.get(mode)!;
    const tps = runs.map(tokensPerSecond);
    const figures = generationFigures(mode, t, runs, pairedRatios(tps, decodeTps));
    const draft = drafts.get(mode);
    if (draft) Object.assign(figures, await predictions(t, draft, figures, o.repeats));
    modes.push(figures);
  }

  o.progress("per-kernel GPU time");
  const kernels = await kernelTable(model, t.prompts[0].length);
  const cfg = model.cfg;
  return {
    model: model.dir,
    synthetic: t.synthetic,
    architecture: cfg.architecture,
    layers: cfg.numLayers,
    parameters: model.parameters,
    dtype: model.dtype,
    contextLength: model.contextLength,
    promptTokens: t.prompts.reduce((n, p) => n + p.length, 0),
    modes,
    forward8OverForward1: summarize(ratios),
    kernels,
  };
}

function emptyTotals(): RepeatTotals {
  return {
    decoded: 0,
    decodeMs: 0,
    generated: 0,
    dispatches: 0,
    readbacks: 0,
    rounds: 0,
    drafted: 0,
    accepted: 0,
    draftSteps: 0,
    recordedDraftSteps: 0,
    emittedPerRound: [],
  };
}

function addRun(sum: RepeatTotals, result: { stats: GenerationStats } | SpeculationResult) {
  const s = result.stats;
  const decoded = s.generatedTokens - 1;
  sum.decoded += decoded;
  sum.decodeMs += s.decodeMs;
  sum.generated += s.generatedTokens;
  sum.dispatches += s.dispatchesPerToken * decoded;
  sum.readbacks += s.readbacks;
  if ("rounds" in result) {
    const spec = result.stats;
    sum.rounds += spec.rounds;
    sum.drafted += spec.drafted;
    sum.accepted += spec.accepted;
    sum.draftSteps += spec.draftStepsPerRound * spec.rounds;
    sum.recordedDraftSteps += spec.recordedDraftStepsPerRound * spec.rounds;
    sum.emittedPerRound.push(...result.rounds.map((round) => round.emitted));
  }
}

const tokensPerSecond = (s: RepeatTotals) => s.decoded / (s.decodeMs / 1000);

function generationFigures(
  mode: Mode,
  t: BenchTarget,
  runs: RepeatTotals[],
  speedups: number[],
): ModeFigures {
  const tps = runs.map(tokensPerSecond);
  const sum = (f: (s: RepeatTotals) => number) => runs.reduce((a, s) => a + f(s), 0);
  const speculative = mode !== "decode";
  const perRound = (f: (s: RepeatTotals) => number) =>
    speculative ? summarize(runs.map((s) => f(s) / s.rounds)) : null;
  const weightBytes = mode === "decode" ? t.model.net.weightBytes : null;
  return {
    mode,
    draft: mode === "speculate"
      ? t.draft!.label
      : mode === "self-speculate"
      ? `skip ${skipCount(t.skip!)}/${2 * t.model.cfg.numLayers}`
      : null,
    meaningful: !(speculative && t.synthetic),
    tokensPerSecond: summarize(tps),
    msPerToken: summarize(tps.map((v) => 1000 / v)),
    speedup: summarize(speedups),
    dispatchesPerToken: sum((s) => s.dispatches) / sum((s) => s.decoded),
    readbacksPerToken: sum((s) => s.readbacks) / sum((s) => s.generated),
    weightBytesPerToken: weightBytes,
    weightGBPerSecond: weightBytes === null
      ? null
      : summarize(tps.map((v) => (v * weightBytes) / 1e9)),
    acceptanceRate: speculative
      ? summarize(runs.map((s) => s.accepted / Math.max(1, s.drafted)))
      : null,
    tokensPerRound: perRound((s) => s.emittedPerRound.reduce((a, b) => a + b, 0)),
    draftStepsPerRound: perRound((s) => s.draftSteps),
    recordedDraftStepsPerRound: perRound((s) => s.recordedDraftSteps),
    readbacksPerRound: perRound((s) => s.readbacks),
    tokensPerRoundHistogram: speculative ? histogram(runs.flatMap((s) => s.emittedPerRound)) : null,
    predictedSpeedup: null,
    idealSpeedup: null,
    allAcceptedSpeedup: null,
  };
}

/**
 * Three predictions from the measured costs: `predicted` from the measured acceptance and this
 * engine's measured forwards (draft step, verification of k + 1 tokens, plain step), `ideal` for
 * an engine where verifying k + 1 tokens costs one step and a draft step the share of sub-layers it
 * keeps (or the draft model's measured cost), and `allAccepted`, this engine's speed-up if every
 * draft were accepted, at its best draft steps a round (verifications of 2..DEFAULT_DRAFT_MAX + 1
 * tokens timed): what speculation can gain on this device at most, whatever the acceptance, so it
 * holds on synthetic weights too. measured / predicted shows what the loop itself costs.
 * The forwards are timed back to back in each of PREDICTION_ROUNDS_PER_REPEAT x `repeats` rounds
 * (forwardTimes: one command buffer) and each round gives a prediction (the median is reported),
 * so a machine whose speed drifts, as shared VMs do, moves them all together instead of skewing
 * their ratios.
 */
async function predictions(
  t: BenchTarget,
  draft: DraftSource,
  f: ModeFigures,
  repeats: number,
): Promise<Pick<ModeFigures, "predictedSpeedup" | "idealSpeedup" | "allAcceptedSpeedup">> {
  const tokensPerRound = f.tokensPerRound!.median;
  const draftSteps = f.draftStepsPerRound!.median;
  const widths = Array.from({ length: DEFAULT_DRAFT_MAX }, (_, i) => i + 2);
  const times = await forwardTimes([
    { model: t.model, n: 1, skip: NO_SKIP },
    draft.kind === "self"
      ? { model: t.model, n: 1, skip: draft.skip }
      : { model: draft.model, n: 1, skip: NO_SKIP },
    ...widths.map((n) => ({ model: t.model, n, skip: NO_SKIP })),
  ], PREDICTION_ROUNDS_PER_REPEAT * repeats);
  // Per round: a draft step and verifications of n = 1.. tokens, in plain steps.
  const rounds = times.map(([stepMs, draftMs, ...verifyMs]) => ({
    draftRatio: draftMs / stepMs,
    verifyRatio: [0, 1, ...verifyMs.map((ms) => ms / stepMs)],
  }));
  const keptShare = draft.kind === "self"
    ? 1 - skipCount(draft.skip) / (2 * t.model.cfg.numLayers)
    : median(rounds.map((r) => r.draftRatio));
  return {
    predictedSpeedup: median(
      rounds.map((r) => roundSpeedup(tokensPerRound, draftSteps, r.draftRatio, r.verifyRatio)),
    ),
    idealSpeedup: tokensPerRound / (1 + draftSteps * keptShare),
    allAcceptedSpeedup: median(
      rounds.map((r) => speedupIfAllAccepted(r.draftRatio, r.verifyRatio).speedup),
    ),
  };
}

/** Rounds of the prediction's forward timings per bench repeat (a round is ~3.5 plain steps). */
const PREDICTION_ROUNDS_PER_REPEAT = 3;

/** Prefill alone: GPU time of one forward over `prefillTokens` tokens (K/V written, last logits). */
async function benchPrefill(t: BenchTarget, o: BenchOptions): Promise<ModeFigures> {
  const { model } = t;
  const all = t.prompts.flat();
  const n = Math.min(o.prefillTokens, model.act.maxBatch, model.contextLength - 1);
  const ids = Array.from({ length: n }, (_, i) => all[i % all.length]);
  let dispatches = 0;
  const record = (rec: Recorder) => {
    model.recordForward(rec, n, NO_SKIP, "last");
    dispatches = rec.dispatches;
  };
  const once = () => {
    model.writeInput(ids, 0);
    return passMs(model, record);
  };
  await once();
  const ms = [];
  for (let r = 0; r < o.repeats; r++) ms.push(await once());
  const tps = ms.map((v) => n / (v / 1000));
  return {
    mode: "prefill",
    draft: null,
    meaningful: true,
    tokensPerSecond: summarize(tps),
    msPerToken: summarize(ms.map((v) => v / n)),
    speedup: null,
    dispatchesPerToken: dispatches / n,
    readbacksPerToken: 0,
    weightBytesPerToken: null,
    weightGBPerSecond: null,
    acceptanceRate: null,
    tokensPerRound: null,
    draftStepsPerRound: null,
    recordedDraftStepsPerRound: null,
    readbacksPerRound: null,
    tokensPerRoundHistogram: null,
    predictedSpeedup: null,
    idealSpeedup: null,
    allAcceptedSpeedup: null,
  };
}

/** GPU time per kernel variant of a decode step: forward of one token, last logits, greedy pick. */
async function kernelTable(model: Model, position: number): Promise<KernelRow[] | null> {
  const timer = timerFor(model);
  if (!timer) return null;
  const vocab = model.cfg.vocabSize;
  const presence = storageBuffer(model.device, vocab * 4, "bench presence");
  model.device.queue.writeBuffer(presence, 0, initialPresence([], vocab));
  const outTokens = storageBuffer(model.device, 16, "bench out");
  const sample = sampleOp(model.ctx, {
    vocab,
    logits: model.act.logits,
    presence,
    ids: model.act.ids,
    outTokens,
    sampling: GREEDY,
  });
  const steps: KernelTime[][] = [];
  for (let i = 0; i < KERNEL_TABLE_STEPS; i++) {
    model.writeInput([1], Math.min(position, model.contextLength - 1));
    steps.push(
      await timer.kernelMs((rec) => {
        model.recordForward(rec, 1, NO_SKIP, "last");
        sample.record(rec, 1);
      }),
    );
  }
  presence.destroy();
  outTokens.destroy();
  const rows = steps[0].map((k) => {
    const ms = median(steps.map((s) => s.find((x) => x.kernel === k.kernel)?.ms ?? 0));
    return { kernel: kernelName(k.kernel), calls: k.calls, msPerToken: ms, share: 0 };
  });
  const sum = rows.reduce((a, r) => a + r.msPerToken, 0) || 1;
  for (const row of rows) row.share = row.msPerToken / sum;
  return rows.sort((a, b) => b.msPerToken - a.msPerToken);
}

/** `matmul[["NORM",true],["ROWS",8]]` -> `matmul NORM ROWS=8` (src/gpu/shader.ts labels). */
export function kernelName(label: string): string {
  const open = label.indexOf("[");
  if (open < 0) return label;
  try {
    const defines = JSON.parse(label.slice(open)) as [string, number | boolean][];
    const parts = defines.filter(([, v]) => v !== false).map(([k, v]) =>
      v === true ? k : `${k}=${v}`
    );
    return [label.slice(0, open), ...parts].join(" ");
  } catch {
    return label;
  }
}
