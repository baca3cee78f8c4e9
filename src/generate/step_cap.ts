/**
 * How many draft steps to record per speculative round.
 *
 * A round is recorded before the GPU decides how far to draft, so it holds a fixed number of draft
 * steps, the cap S; the GPU stops drafting at the cap, and the steps after a draft stopped on its
 * own run as no-ops that still pay their dispatches. Too large a cap pays for no-op steps, too
 * small a one cuts off drafts that would have been accepted. The cap for the next command buffer
 * maximises the expected tokens per round over the round's cost:
 *
 *   E[tokens | S] = 1 + sum_{j=1..S} P(A_j),  P(A_j) = g_1 * ... * g_j,
 *   cost(S)       = S * draftStep + verify,
 *
 * where A_j is "the j-th draft was made and accepted" and g_j = P(A_j | A_{j-1}) is estimated from
 * the logged rounds: of the rounds whose first j - 1 drafts were accepted and whose cap allowed a
 * j-th, the share that drafted and accepted it (a round cut off by its cap says nothing about the
 * steps beyond it). Each g_j is shrunk toward the pooled rate over all j (PRIOR_WEIGHT rounds'
 * worth); a step no round could draft counts at UNTRIED_RATE, and the cap goes at most one step
 * past the longest logged, so a longer cap is tried where even an uninformed guess says it pays,
 * and extended one step at a time while it keeps being filled and accepted.
 *
 * Costs are GPU milliseconds where the device has timestamp queries (`timedCost`): a draft step
 * and verifications of 2 and 3 tokens, timed back to back once per pair of models in a process
 * (src/generate/timing.ts roundTimes), wider verifications extrapolated from those two. Without
 * timestamps they are dispatch counts (`dispatchCost`), which scale with the sub-layers a step runs
 * but price a verification alike at every width and a small draft model's step by its few
 * dispatches. On lavapipe that is far off: verifying 3 tokens costs ~1.3x verifying 2, and a
 * tiny-draft step ~0.45 of a target step with a fifth of its dispatches, so dispatch counts chose a
 * cap of 4 for `speculate`'s first rounds on tiny-llama (8-12 ms a round against ~4.5 ms at the cap
 * of 1 it settled on) and of 2 for `self-speculate` on tiny-llama-ls, where 1 decodes faster.
 * (Pricing caps by timestamps around each round's draft steps and verification inside the loop
 * was tried in an earlier round: it had to try a longer cap for a whole command buffer to price
 * it, and gained nothing measurable.)
 *
 * The cap only depends on rounds already finished, never on the round it applies to, so sampled
 * speculation stays lossless whatever it picks.
 */

/** What the loop logged about one round. */
export interface CappedRound {
  /** Draft steps recorded for the round (the most it could draft). */
  cap: number;
  drafted: number;
  accepted: number;
}

/** Weight of the pooled rate in each step's estimate, in rounds. */
export const PRIOR_WEIGHT = 2;
/** The pooled rate before any round was logged. */
export const INITIAL_RATE = 0.8;
/**
 * The rate of a step no logged round could draft: uninformed, as likely accepted as not. The
 * pooled rate stood in for it before; after rounds that filled a cap of 1, all accepted, it
 * counted a second draft as near certain, and the next command buffer (tiny-llama-ls: most of a
 * 48-token generation) ran at a cap of 2 whose rounds emitted 2.2 tokens against 1.9 at a cap of
 * 1, for 1.4x the time.
 */
export const UNTRIED_RATE = 0.5;
/** Rounds of history the estimate uses (drafting changes as the threshold adapts). */
export const HISTORY = 64;

/**
 * The conditional rates g_1..g_max estimated from `rounds` (see the module comment); `toward`
 * shrinks each toward a fixed rate with its own weight instead of toward the pooled rate.
 */
export function stepRates(
  rounds: CappedRound[],
  max: number,
  toward?: { rate: number; weight: number },
): number[] {
  const made = new Array<number>(max + 1).fill(0);
  const tried = new Array<number>(max + 1).fill(0);
  for (const r of rounds.slice(-HISTORY)) {
    // Step j was possible when drafts 1..j-1 were accepted and the cap allowed a j-th.
    for (let j = 1; j <= Math.min(max, r.cap, r.accepted + 1); j++) {
      tried[j]++;
      if (r.accepted >= j) made[j]++;
    }
  }
  const totalMade = made.reduce((s, v) => s + v, 0);
  const totalTried = tried.reduce((s, v) => s + v, 0);
  const pooled = (totalMade + PRIOR_WEIGHT * INITIAL_RATE) / (totalTried + PRIOR_WEIGHT);
  const { rate, weight } = toward ?? { rate: pooled, weight: PRIOR_WEIGHT };
  const rates = [];
  for (let j = 1; j <= max; j++) {
    rates.push(tried[j] > 0 ? (made[j] + weight * rate) / (tried[j] + weight) : UNTRIED_RATE);
  }
  return rates;
}

/** The longest cap of the last HISTORY rounds (0 before any). */
export function longestCap(rounds: CappedRound[]): number {
  return rounds.slice(-HISTORY).reduce((most, r) => Math.max(most, r.cap), 0);
}

/** Expected tokens per round for caps 1..max: 1 + sum of P(A_j) up to the cap. */
export function expectedTokens(rates: number[]): number[] {
  const out = [];
  let reach = 1;
  let sum = 1;
  for (const g of rates) {
    reach *= g;
    sum += reach;
    out.push(sum);
  }
  return out;
}

/** The cost of a round that records `cap` draft steps, in a unit shared by every cap. */
export type RoundCost = (cap: number) => number;

/**
 * Costs in dispatches: `cap` draft steps and one verification (target forward and the verify
 * kernels), whatever its width.
 */
export function dispatchCost(draftStepDispatches: number, verifyDispatches: number): RoundCost {
  return (cap) => cap * draftStepDispatches + verifyDispatches;
}

/**
 * Costs in measured time: `cap` draft steps of `draftStepMs` and the verification of cap + 1
 * tokens, `verifyMs[i]` for i + 2 tokens; wider ones than measured grow by the last measured step
 * in width (not less than flat).
 */
export function timedCost(draftStepMs: number, verifyMs: number[]): RoundCost {
  if (verifyMs.length === 0) throw new RangeError("timedCost: no verification time");
  const last = verifyMs.length - 1;
  const growth = last > 0 ? Math.max(0, verifyMs[last] - verifyMs[last - 1]) : 0;
  return (cap) =>
    cap * draftStepMs +
    (cap - 1 <= last ? verifyMs[cap - 1] : verifyMs[last] + (cap - 1 - last) * growth);
}

/**
 * The cap in 1..draftMax with the most expected tokens per unit of `cost`, at most one step past
 * the longest cap of the recent rounds (1 before any): a step never drafted has no rate of its
 * own, only a guess, and a draft that stops on its own can fall well short of one (tiny-llama-ls:
 * after 8 rounds at a cap of 1, all accepted, timed costs with the pooled rate as that guess jumped
 * to a cap of 5, whose rounds emitted 2.4 tokens where the estimate was 5.3), so each further step
 * is tried before it is counted on.
 */
export function chooseStepCap(rounds: CappedRound[], draftMax: number, cost: RoundCost): number {
  const reach = Math.min(draftMax, longestCap(rounds) + 1);
  const tokens = expectedTokens(stepRates(rounds, draftMax));
  let best = 1;
  let bestRate = -Infinity;
  for (let cap = 1; cap <= reach; cap++) {
    const rate = tokens[cap - 1] / cost(cap);
    if (rate > bestRate) [best, bestRate] = [cap, rate];
  }
  return best;
}
