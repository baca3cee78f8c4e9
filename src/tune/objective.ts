/**
 * What tune-skip optimises. A skip set S is scored by running greedy self-speculation with S on
 * the calibration prompts and combining the measured tokens and draft steps per round with a cost
 * model of this device (shared/docs/algorithms.md):
 *
 *   predicted speed-up = tokens per round / (draft steps per round * c(S) + v(k))
 *
 * c(S) = a draft step's cost over a full step (embedding, head and sampler, plus the kept
 * sub-layers' measured costs), v(k) = the cost of verifying k + 1 tokens over one step, both
 * measured once per run. Greedy speculation and the cost model are fixed for a run, so the score is
 * deterministic: the same S always gets the same value. `tokens-per-second` measures wall-clock
 * self-speculation against plain decoding instead (noisy, the reference papers' way).
 */
import { decode } from "../generate/decode.ts";
import { speculate, type SpeculateOptions } from "../generate/speculate.ts";
import { forwardTimes, median } from "../generate/timing.ts";
import { GREEDY } from "../gpu/ops.ts";
import { type Model, NO_SKIP, type SkipSet } from "../model/model.ts";

/** Per-forward costs of this model on this device, in milliseconds. */
export interface CostModel {
  /** A full one-token forward. */
  stepMs: number;
  /** One attention / MLP sub-layer of a one-token forward (mean over layers). */
  attnMs: number;
  mlpMs: number;
  /** What every step pays whatever it skips: embedding, final norm and head. */
  baseMs: number;
  /** verifyRatio[n] = forward(n tokens) / forward(1 token), n = 1..draftMax + 1. */
  verifyRatio: number[];
}

export async function measureCostModel(
  model: Model,
  draftMax: number,
  repeats = 5,
): Promise<CostModel> {
  const layers = [...Array(model.cfg.numLayers).keys()];
  const widths = Array.from({ length: draftMax }, (_, i) => i + 2);
  // Each round times all of them back to back (forwardTimes), so their ratios are sound on a
  // machine whose speed drifts; every figure is the median over the rounds.
  const times = await forwardTimes([
    { model, n: 1, skip: NO_SKIP },
    { model, n: 1, skip: { attn: layers, mlp: [] } },
    { model, n: 1, skip: { attn: [], mlp: layers } },
    { model, n: 1, skip: { attn: layers, mlp: layers } },
    ...widths.map((n) => ({ model, n, skip: NO_SKIP })),
  ], repeats);
  const of = (f: (round: number[]) => number) => median(times.map(f));
  return {
    ...subLayerCosts({
      stepMs: of(([step]) => step),
      noAttnMs: of(([, noAttn]) => noAttn),
      noMlpMs: of(([, , noMlp]) => noMlp),
      noLayersMs: of(([, , , none]) => none),
    }, layers.length),
    verifyRatio: [0, 1, ...widths.map((_, i) => of((round) => round[4 + i] / round[0]))],
  };
}

/**
 * The per-sub-layer split of a step from four timed one-token forwards: the full model, without
 * any attention, without any MLP, and without either (the base every draft step pays: embedding,
 * final norm, head). The two savings are scaled to add up to step - base, so a draft step's cost
 * is exact with no sub-layers and with all of them, and proportional to the savings in between.
 * On lavapipe they add up to 0.99-1.02x of step - base when timed with the base, but the models
 * logged by earlier runs, which did not time it, summed them to 1.04x and 1.13x of the whole step
 * (noise, and the first forward of a round running after a 9-token one), which put the base at
 * zero: drafts that keep few sub-layers looked almost free.
 */
export function subLayerCosts(
  t: { stepMs: number; noAttnMs: number; noMlpMs: number; noLayersMs: number },
  layers: number,
): Omit<CostModel, "verifyRatio"> {
  const baseMs = Math.min(t.stepMs, Math.max(0, t.noLayersMs));
  const attnSaving = Math.max(0, t.stepMs - t.noAttnMs);
  const mlpSaving = Math.max(0, t.stepMs - t.noMlpMs);
  const savings = attnSaving + mlpSaving;
  // Neither saving measurable (noise): split evenly.
  const attnShare = savings > 0 ? attnSaving / savings : 0.5;
  const perLayers = (t.stepMs - baseMs) / layers;
  return {
    stepMs: t.stepMs,
    attnMs: perLayers * attnShare,
    mlpMs: perLayers * (1 - attnShare),
    baseMs,
  };
}

/** A draft step's cost with `skip` over a full step's. */
export function draftCostRatio(cost: CostModel, skip: SkipSet, layers: number): number {
  const kept = cost.baseMs + (layers - skip.attn.length) * cost.attnMs +
    (layers - skip.mlp.length) * cost.mlpMs;
  return kept / cost.stepMs;
}

/** What greedy self-speculation with one skip set did on the calibration prompts. */
export interface Calibration {
  tokens: number;
  rounds: number;
  drafted: number;
  accepted: number;
}

export async function calibrate(
  model: Model,
  prompts: number[][],
  skip: SkipSet,
  options: Pick<SpeculateOptions, "maxNewTokens" | "draftMax" | "stopTokens">,
): Promise<Calibration & { tokensPerSecond: number }> {
  const total = { tokens: 0, rounds: 0, drafted: 0, accepted: 0, ms: 0 };
  for (const prompt of prompts) {
    const { stats } = await speculate(model, prompt, {
      ...options,
      sampling: GREEDY,
      draft: { kind: "self", skip },
    });
    total.tokens += stats.generatedTokens;
    total.rounds += stats.rounds;
    total.drafted += stats.drafted;
    total.accepted += stats.accepted;
    total.ms += stats.decodeMs;
  }
  return { ...total, tokensPerSecond: total.tokens / (total.ms / 1000) };
}

export function predictedSpeedup(
  c: Calibration,
  cost: CostModel,
  skip: SkipSet,
  layers: number,
): number {
  return roundSpeedup(
    c.tokens / c.rounds,
    c.drafted / c.rounds,
    draftCostRatio(cost, skip, layers),
    cost.verifyRatio,
  );
}

/**
 * Speed-up over plain decoding of rounds that emit `tokensPerRound` tokens for `draftSteps` draft
 * steps, where a draft step costs `draftRatio` plain steps and verifying n tokens costs
 * `verifyRatio[n]` (n = 1..; a round verifies its rounded draft steps + 1 tokens).
 */
export function roundSpeedup(
  tokensPerRound: number,
  draftSteps: number,
  draftRatio: number,
  verifyRatio: number[],
): number {
  const k = Math.min(verifyRatio.length - 2, Math.max(0, Math.round(draftSteps)));
  return tokensPerRound / (draftSteps * draftRatio + verifyRatio[k + 1]);
}

/**
 * The speed-up if every draft were accepted, at the best number of draft steps a round the costs
 * cover (1..verifyRatio.length - 2): the most speculation can gain on this device with this draft,
 * whatever its acceptance.
 */
export function speedupIfAllAccepted(
  draftRatio: number,
  verifyRatio: number[],
): { speedup: number; draftSteps: number } {
  let best = { speedup: 0, draftSteps: 0 };
  for (let k = 1; k + 1 < verifyRatio.length; k++) {
    const speedup = roundSpeedup(k + 1, k, draftRatio, verifyRatio);
    if (speedup > best.speedup) best = { speedup, draftSteps: k };
  }
  return best;
}

/** Plain greedy decoding's tok/s over the calibration prompts (median of `repeats`). */
export async function decodeTokensPerSecond(
  model: Model,
  prompts: number[][],
  maxNewTokens: number,
  repeats = 3,
): Promise<number> {
  const runs = [];
  for (let r = 0; r < repeats; r++) {
    let tokens = 0;
    let ms = 0;
    for (const prompt of prompts) {
      const { stats } = await decode(model, prompt, {
        maxNewTokens,
        sampling: GREEDY,
        skip: NO_SKIP,
        stopTokens: [],
      });
      tokens += stats.generatedTokens - 1;
      ms += stats.decodeMs;
    }
    runs.push(tokens / (ms / 1000));
  }
  return median(runs);
}
