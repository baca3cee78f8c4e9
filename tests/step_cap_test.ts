/**
 * The draft-step cap of speculative rounds (src/generate/step_cap.ts): the per-step rates it
 * estimates from logged rounds, the expected tokens they give, and the cap it picks.
 */
import assert from "node:assert/strict";
import {
  type CappedRound,
  chooseStepCap,
  expectedTokens,
  HISTORY,
  INITIAL_RATE,
  PRIOR_WEIGHT,
  stepRates,
} from "../src/generate/step_cap.ts";
import { mulberry32 } from "./reference/cpu_ops.ts";

const near = (a: number, b: number, what: string) =>
  assert.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`);

Deno.test("step rates: counted by hand on a small log, cut-off rounds say nothing past their cap", () => {
  const rounds: CappedRound[] = [
    { cap: 4, drafted: 1, accepted: 1 }, // step 1 made; step 2 tried (the draft stopped): not made
    { cap: 4, drafted: 3, accepted: 2 }, // steps 1, 2 made; step 3 tried, rejected
    { cap: 2, drafted: 2, accepted: 2 }, // steps 1, 2 made; cut off by its cap
    { cap: 4, drafted: 2, accepted: 0 }, // step 1 tried, rejected
  ];
  // step j: made / tried = 1: 3/4, 2: 2/3, 3: 0/1, 4: 0/0.
  const pooled = (5 + PRIOR_WEIGHT * INITIAL_RATE) / (8 + PRIOR_WEIGHT);
  const want = [[3, 4], [2, 3], [0, 1], [0, 0]].map(([m, t]) =>
    (m + PRIOR_WEIGHT * pooled) / (t + PRIOR_WEIGHT)
  );
  const got = stepRates(rounds, 4);
  want.forEach((w, i) => near(got[i], w, `g_${i + 1}`));
  // No history: every step at the initial rate.
  for (const g of stepRates([], 3)) near(g, INITIAL_RATE, "prior");
});

Deno.test("expected tokens: 1 + the running products of the step rates", () => {
  const e = expectedTokens([0.5, 0.5, 1]);
  [1.5, 1.75, 2].forEach((w, i) => near(e[i], w, `cap ${i + 1}`));
});

Deno.test("only the last HISTORY rounds count", () => {
  const old = Array.from({ length: 200 }, () => ({ cap: 3, drafted: 0, accepted: 0 }));
  const recent = Array.from({ length: HISTORY }, () => ({ cap: 3, drafted: 3, accepted: 3 }));
  assert.deepEqual(stepRates([...old, ...recent], 3), stepRates(recent, 3));
});

Deno.test("the cap: short when drafts stop early, long when they keep being accepted, matched to cost", () => {
  const rand = mulberry32(7);
  // Drafts that stop after one token (the threshold exits): recording more steps is waste.
  const short = Array.from(
    { length: 40 },
    () => ({ cap: 4, drafted: 1, accepted: rand() < 0.9 ? 1 : 0 }),
  );
  assert.equal(chooseStepCap(short, 8, 40, 80), 1);
  // Every draft fills its cap and is accepted: the cap grows one step per command buffer
  // while a step costs little next to verification, up to draft-max.
  let cap = chooseStepCap([], 8, 10, 80);
  const log: CappedRound[] = [];
  const caps = [cap];
  for (let batch = 0; batch < 12; batch++) {
    for (let r = 0; r < 8; r++) log.push({ cap, drafted: cap, accepted: cap });
    cap = chooseStepCap(log, 8, 10, 80);
    caps.push(cap);
  }
  assert.equal(caps[caps.length - 1], 8, `caps ${caps}`);
  for (let i = 1; i < caps.length; i++) assert.ok(caps[i] >= caps[i - 1], `caps ${caps}`);
  // The same log when a draft step costs as much as verification: fewer steps pay off.
  assert.ok(chooseStepCap(log, 8, 80, 80) < 8);
  // Acceptance of one in two per step: each further step must pay for itself.
  const half = Array.from({ length: 64 }, () => {
    let accepted = 0;
    while (accepted < 8 && rand() < 0.5) accepted++;
    return { cap: 8, drafted: Math.min(8, accepted + 1), accepted };
  });
  const cheap = chooseStepCap(half, 8, 5, 80);
  const dear = chooseStepCap(half, 8, 60, 80);
  assert.ok(cheap > dear, `cheap steps ${cheap}, dear steps ${dear}`);
  // Brute force over the caps agrees with the choice.
  const tokens = expectedTokens(stepRates(half, 8));
  const rate = (c: number) => tokens[c - 1] / (c * 5 + 80);
  for (let c = 1; c <= 8; c++) assert.ok(rate(cheap) >= rate(c));
});
