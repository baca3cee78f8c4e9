/**
 * The draft-step cap of speculative rounds (src/generate/step_cap.ts): the per-step rates it
 * estimates from logged rounds, the expected tokens they give, and the cap it picks.
 */
import assert from "node:assert/strict";
import {
  type CappedRound,
  chooseStepCap,
  dispatchCost,
  expectedTokens,
  HISTORY,
  INITIAL_RATE,
  longestCap,
  PRIOR_WEIGHT,
  stepRates,
  timedCost,
  UNTRIED_RATE,
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
  // step j: made / tried = 1: 3/4, 2: 2/3, 3: 0/1, 4: 0/0 (never tried: UNTRIED_RATE).
  const pooled = (5 + PRIOR_WEIGHT * INITIAL_RATE) / (8 + PRIOR_WEIGHT);
  const want = [[3, 4], [2, 3], [0, 1]].map(([m, t]) =>
    (m + PRIOR_WEIGHT * pooled) / (t + PRIOR_WEIGHT)
  );
  const got = stepRates(rounds, 5);
  want.forEach((w, i) => near(got[i], w, `g_${i + 1}`));
  near(got[3], UNTRIED_RATE, "g_4");
  near(got[4], UNTRIED_RATE, "g_5");
  // No history: every step untried.
  for (const g of stepRates([], 3)) near(g, UNTRIED_RATE, "no history");
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
  assert.equal(chooseStepCap(short, 8, dispatchCost(40, 80)), 1);
  // Every draft fills its cap and is accepted: the cap grows one step per command buffer
  // while a step costs little next to verification (an untried step, at an even chance, still
  // pays), up to draft-max; where a step costs more, it stops where an even chance no longer pays.
  const grow = (draftStep: number) => {
    let cap = chooseStepCap([], 8, dispatchCost(draftStep, 80));
    const log: CappedRound[] = [];
    const caps = [cap];
    for (let batch = 0; batch < 12; batch++) {
      for (let r = 0; r < 8; r++) log.push({ cap, drafted: cap, accepted: cap });
      cap = chooseStepCap(log, 8, dispatchCost(draftStep, 80));
      caps.push(cap);
    }
    return { caps, log };
  };
  const { caps, log } = grow(5);
  assert.deepEqual(caps, [1, 2, 3, 4, 5, 6, 7, 8, 8, 8, 8, 8, 8], `caps ${caps}`);
  // 6 steps of 10 and a verification of 80 emit 7 tokens a round: a 7th step at an even chance
  // adds 0.5 for 10 more, 7.5 / 150, no better.
  assert.equal(grow(10).caps.at(-1), 6);
  for (let i = 1; i < caps.length; i++) assert.ok(caps[i] >= caps[i - 1], `caps ${caps}`);
  // The same log when a draft step costs as much as verification: fewer steps pay off.
  assert.ok(chooseStepCap(log, 8, dispatchCost(80, 80)) < 8);
  // Acceptance of one in two per step: each further step must pay for itself.
  const half = Array.from({ length: 64 }, () => {
    let accepted = 0;
    while (accepted < 8 && rand() < 0.5) accepted++;
    return { cap: 8, drafted: Math.min(8, accepted + 1), accepted };
  });
  const cheap = chooseStepCap(half, 8, dispatchCost(5, 80));
  const dear = chooseStepCap(half, 8, dispatchCost(60, 80));
  assert.ok(cheap > dear, `cheap steps ${cheap}, dear steps ${dear}`);
  // Brute force over the caps agrees with the choice.
  const tokens = expectedTokens(stepRates(half, 8));
  const rate = (c: number) => tokens[c - 1] / (c * 5 + 80);
  for (let c = 1; c <= 8; c++) assert.ok(rate(cheap) >= rate(c));
});

Deno.test("timed costs: measured widths as given, wider ones grown by the last measured step", () => {
  const cost = timedCost(0.5, [1.4, 1.8]); // a draft step; verifying 2 and 3 tokens
  near(cost(1), 0.5 + 1.4, "cap 1");
  near(cost(2), 2 * 0.5 + 1.8, "cap 2");
  near(cost(3), 3 * 0.5 + 2.2, "cap 3 (4 tokens, extrapolated)");
  near(cost(5), 5 * 0.5 + 3.0, "cap 5");
  // A verification that got cheaper with width is held flat, never cheaper still.
  near(timedCost(0.5, [1.4, 1.3])(4), 4 * 0.5 + 1.3, "flat");
  near(timedCost(0.5, [1.4])(3), 3 * 0.5 + 1.4, "one width measured");
  assert.throws(() => timedCost(0.5, []), RangeError);
});

Deno.test("timed costs choose the cap a dispatch count misprices", () => {
  // Rounds at a cap of 2, drafts accepted four in five times: lavapipe's measured costs for
  // tiny-llama with tiny-draft (a draft step ~0.45 of a plain step, verifying 3 tokens ~1.3x
  // verifying 2) against its dispatches (14 a draft step, 65 the verification): the counts keep 2,
  // the times go back to 1.
  const fair: CappedRound[] = Array.from({ length: 40 }, (_, i) => ({
    cap: 2,
    drafted: 2,
    accepted: i % 5 === 0 ? 1 : 2,
  }));
  assert.equal(chooseStepCap(fair, 8, dispatchCost(14, 65)), 2);
  assert.equal(chooseStepCap(fair, 8, timedCost(0.45, [1.37, 1.79])), 1);
  // A device where verifying a few more tokens costs about the same (a GPU reading each weight
  // once for all tokens): drafts accepted nine in ten times earn a long cap.
  const accepted: CappedRound[] = Array.from({ length: 64 }, (_, i) => ({
    cap: 8,
    drafted: 8,
    accepted: i % 10 === 0 ? 3 : 8,
  }));
  assert.equal(chooseStepCap(accepted, 8, timedCost(0.3, [1.02, 1.04])), 8);
  assert.equal(chooseStepCap(accepted, 8, timedCost(0.9, [1.5, 2.2])), 1);
});

Deno.test("the cap starts at 1 and reaches at most one step past the longest cap logged", () => {
  const free = dispatchCost(1, 1000); // draft steps nearly free: the longest cap always pays
  assert.equal(chooseStepCap([], 8, free), 1);
  const log: CappedRound[] = [];
  const caps = [];
  for (let batch = 0; batch < 10; batch++) {
    const cap = chooseStepCap(log, 8, free);
    caps.push(cap);
    for (let r = 0; r < 8; r++) log.push({ cap, drafted: cap, accepted: cap });
  }
  assert.deepEqual(caps, [1, 2, 3, 4, 5, 6, 7, 8, 8, 8]);
  assert.equal(longestCap(log), 8);
  assert.equal(longestCap([]), 0);
});

Deno.test("step rates shrunk toward a given rate instead of the pooled one", () => {
  const rounds: CappedRound[] = Array.from(
    { length: 8 },
    () => ({ cap: 1, drafted: 1, accepted: 1 }),
  );
  const [g1, g2] = stepRates(rounds, 2, { rate: 0.5, weight: 4 });
  near(g1, (8 + 4 * 0.5) / (8 + 4), "g_1 toward 1/2");
  near(g2, UNTRIED_RATE, "g_2 untried");
  assert.ok(g1 < stepRates(rounds, 2)[0]);
});
