/**
 * How many speculative rounds to record into the next command buffer (one readback each).
 *
 * A readback costs at least ~10 ms in Deno, while a round recorded past the end of generation
 * runs as a no-op that still pays its dispatches (on lavapipe ~2 ms for tiny-llama-ls's round of
 * ~57 dispatches, against ~6 ms for a real one). So the command buffer that can finish the
 * generation should hold enough rounds to finish it with high probability, not just the mean:
 * planned at the mean tokens per round, about half the generations fell a round or two short and
 * paid one or two more readbacks of a round each (~17-24 ms apiece, a tenth of a 48-token
 * generation).
 *
 * A round at cap S emits 1 + a tokens, a the number of its drafts accepted: P(a >= j) = g_1 ...
 * g_j for j <= S (the step rates of step_cap.ts), so its distribution is known, and so is the
 * distribution of the tokens of n rounds (a convolution). The plan is the fewest rounds that emit
 * the remaining tokens with probability at least COVERAGE. Streaming still bounds each command
 * buffer to `limit` rounds (growing from the first, so text appears soon); a plan that finishes
 * the generation is taken whole, rather than leaving its last rounds a readback of their own, when
 * it is at most a quarter past the limit or runs for at most STREAM_HOLD_MS (decode's bound on
 * text held back) at the speed measured so far, up to the round log's capacity (twice the
 * streaming limit's cap of 32 in speculate.ts). On tiny-llama-ls a first command buffer of 8
 * rounds at a cap of 1 leaves 32-35 of 48 tokens, planned at 19-24 rounds (three prompts): past
 * the limit's 20, a third readback (~10 ms) would follow for the last rounds; the demo's 128 tokens
 * took 8, 16, 32 and 10 rounds with a round log of 32.
 * Stop tokens only end a generation earlier, into no-op rounds.
 *
 * The plan depends only on finished rounds, so sampled speculation stays lossless.
 */

import { STREAM_HOLD_MS } from "./decode.ts";

/** The chance the planned rounds emit every remaining token. */
export const COVERAGE = 0.9;
/**
 * What the plan's step rates are shrunk toward (step_cap.ts stepRates), in place of the pooled
 * rate the step cap uses: a few rounds all accepted would otherwise plan on near-certain drafts
 * (tiny-llama-ls: 8 rounds at a cap of 1 all accepted, then 17 rounds planned for the other 32
 * tokens, which took 18, and a third readback for the last round; 19 planned with this prior).
 */
export const PLAN_PRIOR = { rate: 0.5, weight: 4 };
/** How far past the streaming limit a plan that finishes the generation may go. */
export const FINISH_SLACK = 1.25;

/** P(a round emits 1 + a tokens) for a = 0..cap, from the step rates g_1..g_cap. */
export function roundTokenDistribution(rates: number[], cap: number): number[] {
  if (cap < 1 || cap > rates.length) throw new RangeError(`cap ${cap} outside 1..${rates.length}`);
  const dist = [];
  let reach = 1; // P(a >= j)
  for (let j = 0; j < cap; j++) {
    const next = reach * rates[j];
    dist.push(reach - next);
    reach = next;
  }
  dist.push(reach);
  return dist;
}

/**
 * The fewest rounds, at most `most`, whose tokens reach `remaining` with probability >= coverage
 * (rounds drawn independently from `dist`, the tokens of a round being 1 + index); undefined
 * when even that many may fall short.
 */
export function roundsToCover(
  dist: number[],
  remaining: number,
  most: number,
  coverage = COVERAGE,
): number | undefined {
  if (remaining <= 0) return 0;
  // A round emits at most dist.length tokens: beyond reach, nothing to compute (long budgets).
  if (most * dist.length < remaining) return undefined;
  // short[s]: P(the rounds so far emitted s tokens), for s < remaining (the rest has covered).
  let short = new Float64Array(remaining);
  short[0] = 1;
  for (let n = 1; n <= most; n++) {
    const next = new Float64Array(remaining);
    for (let s = 0; s < remaining; s++) {
      if (short[s] === 0) continue;
      for (let a = 0; a < dist.length && s + 1 + a < remaining; a++) {
        next[s + 1 + a] += short[s] * dist[a];
      }
    }
    short = next;
    if (1 - short.reduce((sum, p) => sum + p, 0) >= coverage) return n;
  }
  return undefined;
}

/** The next command buffer's rounds (see the module comment); at least 1. */
export function roundsToRecord(o: {
  /** Wall-clock ms per round so far (undefined before the first). */
  msPerRound?: number;
  /** Tokens still to generate. */
  remaining: number;
  /** The step rates g_1.. (step_cap.ts stepRates) and the cap the rounds are recorded with. */
  rates: number[];
  cap: number;
  /**
   * The longest cap of the rounds logged so far (0 before any). Steps past it are planned as
   * never drafted: their rates are a guess (step_cap.ts UNTRIED_RATE), and a plan that falls short
   * pays a readback (tiny-llama-ls, when the pooled rate stood in for them: 12 rounds at a first
   * cap of 2, planned at 2.7 tokens a round from 8 rounds at a cap of 1 all accepted, emitted 26
   * tokens, and two readbacks of a few rounds followed).
   */
  tried: number;
  /** This command buffer's streaming limit, and the most rounds one may hold (the round log). */
  limit: number;
  capacity: number;
}): number {
  const held = o.msPerRound ? Math.floor(STREAM_HOLD_MS / o.msPerRound) : 0;
  const most = Math.min(Math.max(Math.floor(o.limit * FINISH_SLACK), held), o.capacity);
  const cap = Math.max(1, Math.min(o.cap, o.tried));
  const finishing = roundsToCover(roundTokenDistribution(o.rates, cap), o.remaining, most);
  return Math.max(1, finishing ?? Math.min(o.limit, o.capacity));
}
