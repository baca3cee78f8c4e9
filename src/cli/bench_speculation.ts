/**
 * Speculation figures for `skipspec bench`, measured in one run per target model: plain decode,
 * `speculate` with tiny-draft and `self-speculate` with the model's skip.json, greedy on the same
 * prompt. Besides the measured speed-ups it reports two predictions from the measured acceptance:
 * `predicted` uses this engine's own measured forward costs (draft step, verification of k + 1
 * tokens, plain step), `ideal` an engine where verifying k + 1 tokens costs one step and a draft
 * step costs the share of sub-layers it keeps. measured / predicted shows what the loop itself
 * (sampling kernels, no-op steps, readbacks) costs beyond the forwards.
 */
import { decode } from "../generate/decode.ts";
import { type DraftSource, speculate, type SpeculationStats } from "../generate/speculate.ts";
import { GREEDY } from "../gpu/ops.ts";
import { Model, NO_SKIP } from "../model/model.ts";
import { defaultSkipSetPath, readSkipSet, skipCount } from "../model/skip.ts";
import { forwardMs, median } from "../generate/timing.ts";

export interface SpeculationRow {
  model: string;
  mode: "decode" | "speculate" | "self-speculate";
  draft: string;
  tokensPerSecond: number;
  speedup: number;
  acceptanceRate?: number;
  tokensPerRound?: number;
  draftStepsPerRound?: number;
  readbacksPerRound?: number;
  /** From measured acceptance and this engine's measured forward costs. */
  predictedSpeedup?: number;
  /** From measured acceptance with verify = one step and draft = share of sub-layers kept. */
  idealSpeedup?: number;
}

export async function benchSpeculation(
  dir: string,
  draftDir: string,
  prompt: number[],
  newTokens: number,
  repeats: number,
): Promise<SpeculationRow[]> {
  const target = await Model.load(dir);
  const draftModel = await Model.load(draftDir, { contextLength: target.contextLength });
  const skip = await readSkipSet(defaultSkipSetPath(dir), target.cfg.numLayers);
  const name = dir.split("/").pop()!;
  const options = { maxNewTokens: newTokens, sampling: GREEDY, stopTokens: [] };
  const plain = () => decode(target, prompt, { ...options, skip: NO_SKIP });
  const drafts: [SpeculationRow["mode"], string, DraftSource][] = [
    ["speculate", draftDir.split("/").pop()!, { kind: "model", model: draftModel }],
    ["self-speculate", `skip ${skipCount(skip)}/${2 * target.cfg.numLayers}`, {
      kind: "self",
      skip,
    }],
  ];
  // Warm up (pipeline compilation), then interleave the modes so drift hits them alike.
  await plain();
  for (const [, , draft] of drafts) await speculate(target, prompt, { ...options, draft });
  const decodeTps: number[] = [];
  const specStats: SpeculationStats[][] = drafts.map(() => []);
  for (let r = 0; r < repeats; r++) {
    decodeTps.push((await plain()).stats.decodeTokensPerSecond);
    for (const [i, [, , draft]] of drafts.entries()) {
      specStats[i].push((await speculate(target, prompt, { ...options, draft })).stats);
    }
  }
  const baseline = median(decodeTps);
  const step = await forwardMs(target, 1, NO_SKIP, repeats);
  const rows: SpeculationRow[] = [{
    model: name,
    mode: "decode",
    draft: "-",
    tokensPerSecond: baseline,
    speedup: 1,
  }];
  for (const [i, [mode, label, draft]] of drafts.entries()) {
    const runs = specStats[i];
    const pick = (f: (s: SpeculationStats) => number) => median(runs.map(f));
    const tokensPerRound = pick((s) => s.tokensPerRound);
    const draftSteps = pick((s) => s.draftStepsPerRound);
    const k = Math.max(1, Math.round(draftSteps));
    const draftStep = draft.kind === "self"
      ? await forwardMs(target, 1, skip, repeats)
      : await forwardMs(draftModel, 1, NO_SKIP, repeats);
    const verify = await forwardMs(target, k + 1, NO_SKIP, repeats);
    const keptShare = draft.kind === "self"
      ? 1 - skipCount(skip) / (2 * target.cfg.numLayers)
      : draftStep / step;
    const tps = pick((s) => s.decodeTokensPerSecond);
    rows.push({
      model: name,
      mode,
      draft: label,
      tokensPerSecond: tps,
      speedup: tps / baseline,
      acceptanceRate: pick((s) => s.acceptanceRate),
      tokensPerRound,
      draftStepsPerRound: draftSteps,
      readbacksPerRound: pick((s) => s.readbacks / s.rounds),
      predictedSpeedup: (tokensPerRound * step) / (draftSteps * draftStep + verify),
      idealSpeedup: tokensPerRound / (1 + draftSteps * keptShare),
    });
  }
  target.destroy();
  draftModel.destroy();
  return rows;
}
