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
 * worth), which also stands in for steps never tried, so a cap that keeps being filled and
 * accepted is extended one step at a time. Costs are in dispatches, which scale with the
 * sub-layers a step runs. They were chosen when a dispatch's fixed cost dominated lavapipe's
 * steps; with today's kernels it is ~2-3 us of a ~40 us average, so the proxy is rough: it prices a
 * verification alike at every width, where on lavapipe verifying 3 tokens costs ~1.4x verifying 2,
 * and a draft model's step (tiny-draft: a fifth of the target's dispatches) at about half of what it
 * costs. Pricing caps in GPU time measured inside the rounds (timestamps around each round's draft
 * steps and verification) was tried and gained nothing measurable over five interleaved pairs
 * (README, "The latest round").
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
/** Rounds of history the estimate uses (drafting changes as the threshold adapts). */
export const HISTORY = 64;

/** The conditional rates g_1..g_max estimated from `rounds` (see the module comment). */
export function stepRates(rounds: CappedRound[], max: number): number[] {
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
  const rates = [];
  for (let j = 1; j <= max; j++) {
    rates.push((made[j] + PRIOR_WEIGHT * pooled) / (tried[j] + PRIOR_WEIGHT));
  }
  return rates;
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

/**
 * The cap in 1..draftMax with the most expected tokens per dispatch, given the dispatches of one
 * draft step and of the verification (target forward and the verify kernels).
 */
export function chooseStepCap(
  rounds: CappedRound[],
  draftMax: number,
  draftStepDispatches: number,
  verifyDispatches: number,
): number {
  const tokens = expectedTokens(stepRates(rounds, draftMax));
  let best = 1;
  let bestRate = -Infinity;
  for (let cap = 1; cap <= draftMax; cap++) {
    const rate = tokens[cap - 1] / (cap * draftStepDispatches + verifyDispatches);
    if (rate > bestRate) [best, bestRate] = [cap, rate];
  }
  return best;
}
