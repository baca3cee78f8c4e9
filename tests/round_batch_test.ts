/**
 * How many speculative rounds go into a command buffer (src/generate/round_batch.ts): the tokens
 * a round emits, the fewest rounds that finish a budget with the set coverage (checked against an
 * independent binomial computation), and the streaming limits around it.
 */
import assert from "node:assert/strict";
import {
  COVERAGE,
  FINISH_SLACK,
  roundsToCover,
  roundsToRecord,
  roundTokenDistribution,
} from "../src/generate/round_batch.ts";
import { STREAM_HOLD_MS } from "../src/generate/decode.ts";

const near = (a: number, b: number, what: string) =>
  assert.ok(Math.abs(a - b) < 1e-12, `${what}: ${a} vs ${b}`);

Deno.test("round tokens: P(1 + a tokens) from the step rates, by hand", () => {
  // P(a >= 1) = 0.5, P(a >= 2) = 0.25, P(a >= 3) = 0.25 (g_3 = 1).
  const cases: [number, number[]][] = [
    [1, [0.5, 0.5]],
    [2, [0.5, 0.25, 0.25]],
    [3, [0.5, 0.25, 0, 0.25]],
  ];
  for (const [cap, want] of cases) {
    const got = roundTokenDistribution([0.5, 0.5, 1], cap);
    assert.equal(got.length, cap + 1);
    want.forEach((w, i) => near(got[i], w, `cap ${cap}, a = ${i}`));
  }
  assert.throws(() => roundTokenDistribution([0.5], 2), RangeError);
  assert.throws(() => roundTokenDistribution([0.5], 0), RangeError);
});

Deno.test("rounds to cover: certain rounds need exactly ceil(remaining / tokens)", () => {
  assert.equal(roundsToCover([0, 1], 5, 32), 3); // 2 tokens a round: 4 < 5 <= 6
  assert.equal(roundsToCover([0, 1], 6, 32), 3);
  assert.equal(roundsToCover([0, 0, 1], 7, 32), 3);
  assert.equal(roundsToCover([1], 7, 32), 7); // every draft rejected: 1 token a round
  assert.equal(roundsToCover([1], 7, 6), undefined); // 6 rounds cannot finish 7 tokens
  assert.equal(roundsToCover([0, 1], 0, 32), 0);
  // At the edge of reach (32 rounds of 2 tokens), and far past it (a long budget: no work).
  assert.equal(roundsToCover([0, 1], 64, 32), 32);
  assert.equal(roundsToCover([0, 1], 65, 32), undefined);
  assert.equal(roundsToCover([0.1, 0.2, 0.7], 1e9, 32), undefined);
});

/** P(Binomial(n, p) >= k), summed directly. */
function binomialAtLeast(n: number, p: number, k: number): number {
  let total = 0;
  for (let i = Math.max(0, k); i <= n; i++) {
    let c = 1;
    for (let j = 0; j < i; j++) c = (c * (n - j)) / (j + 1);
    total += c * p ** i * (1 - p) ** (n - i);
  }
  return total;
}

Deno.test("rounds to cover: at cap 1 the fewest n with P(n + Binomial(n, g) >= remaining) >= coverage", () => {
  // A cap-1 round emits 1 token, or 2 when its draft is accepted (probability g): n rounds emit
  // n + Binomial(n, g).
  for (const g of [0.3, 0.65, 0.88, 0.97]) {
    for (const remaining of [1, 2, 9, 17, 33, 47]) {
      let want = 1;
      while (binomialAtLeast(want, g, remaining - want) < COVERAGE) want++;
      const got = roundsToCover(roundTokenDistribution([g], 1), remaining, 64);
      assert.equal(got, want, `g ${g}, ${remaining} tokens`);
      // More than the mean asks for, whenever a shortfall is likely at the mean.
      const atMean = Math.ceil(remaining / (1 + g));
      if (binomialAtLeast(atMean, g, remaining - atMean) < COVERAGE) assert.ok(got! > atMean);
    }
  }
});

Deno.test("rounds to record: the finishing plan within the streaming limit's slack or hold, else the limit", () => {
  const rates = [0.9, 0.9, 0.9, 0.9];
  const plan = (
    remaining: number,
    limit: number,
    maxRounds = 32,
    cap = 1,
    msPerRound?: number,
    tried = cap,
  ) => roundsToRecord({ remaining, rates, cap, tried, limit, capacity: maxRounds, msPerRound });
  const cover = (remaining: number, cap = 1) =>
    roundsToCover(roundTokenDistribution(rates, cap), remaining, 1000)!;
  // Finishing within the limit: exactly the covering rounds.
  assert.equal(plan(20, 16), cover(20));
  assert.ok(cover(20) < 16);
  // Finishing a little past the limit (up to FINISH_SLACK): taken whole.
  const past = [...Array(60).keys()].find((r) => cover(r) > 16 && cover(r) <= 16 * FINISH_SLACK)!;
  assert.ok(past !== undefined);
  assert.equal(plan(past, 16), cover(past));
  // Further past the limit, taken whole when it runs for at most STREAM_HOLD_MS at the speed so
  // far (a small model's rounds), else the limit (a large model's).
  const far = [...Array(80).keys()].find((r) => cover(r) > 16 * FINISH_SLACK && cover(r) <= 30)!;
  assert.ok(far !== undefined);
  const fast = STREAM_HOLD_MS / 40;
  assert.equal(plan(far, 16, 32, 1, fast), cover(far));
  assert.equal(plan(far, 16, 32, 1, STREAM_HOLD_MS / 20), 16);
  assert.equal(plan(far, 16, 32, 1, undefined), 16);
  assert.equal(plan(far, 16, cover(far) - 1, 1, fast), 16); // never past the round log
  // Further: the limit, and never past the round log.
  assert.equal(plan(200, 16), 16);
  assert.equal(plan(200, 64, 32), 32);
  assert.equal(plan(past, 16, 12), 12);
  // A longer cap emits more a round, so fewer rounds finish the same budget; but steps past the
  // longest cap tried so far are planned as never drafted (before any round: as a cap of 1).
  assert.ok(plan(30, 32, 32, 4) < plan(30, 32, 32, 1));
  assert.equal(plan(30, 32, 32, 4, undefined, 2), plan(30, 32, 32, 2));
  assert.equal(plan(30, 32, 32, 4, undefined, 0), plan(30, 32, 32, 1));
  // Nothing left still records a round (the loop only plans while generation goes on).
  assert.equal(plan(0, 8), 1);
});
