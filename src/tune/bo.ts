/**
 * Bayesian optimisation over constrained binary vectors, independent of what the objective is.
 *
 * A point is D bits (for skip sets: one per sub-layer, 1 = skipped). The search space fixes some
 * bits to 0 and bounds the number of ones. `suggest` proposes the next point to evaluate from the
 * history of evaluated points: random points first, then the maximiser of an acquisition function
 * (expected improvement by default) over a GP surrogate, found by local search with single-bit
 * flips and swaps. It never proposes a point already in the history. `runSearch` drives the loop
 * and can resume from a prior history; with a per-trial random stream, a resumed run proposes what
 * the uninterrupted run would have (given the same objective values).
 */

import { expectedImprovement, upperConfidenceBound } from "./acquisition.ts";
import type { AcquisitionName } from "./acquisition.ts";
import { fitGp, type KernelName } from "./gp.ts";

/** Uniform numbers in [0, 1). */
export type Rng = () => number;

/** mulberry32: a small seeded 32-bit generator, uniform in [0, 1). */
export function mulberry32(seed: number): Rng {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A well-mixed 32-bit seed for trial `index` of a run seeded with `seed`. */
export function trialSeed(seed: number, index: number): number {
  let h = (seed >>> 0) ^ Math.imul(index + 1, 0x9e3779b1);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** An evaluated point: x (D bits) and its objective value y (larger is better). */
export interface Trial {
  x: number[];
  y: number;
}

/** Identity of a point for de-duplication: its bits as a string, e.g. "0110". */
export function pointKey(x: readonly number[]): string {
  return x.join("");
}

function randomInt(rng: Rng, below: number): number {
  return Math.min(below - 1, Math.floor(rng() * below));
}

// --- the search space ---------------------------------------------------------------------------

export interface SearchSpaceOptions {
  /** Bits per point (D = 2L for L layers). */
  dims: number;
  /** Indices whose bit is always 0 (sub-layers never skipped). */
  fixedZero?: readonly number[];
  /** Bounds on the fraction of all D bits that are 1; defaults 0 and 1. */
  minFraction?: number;
  maxFraction?: number;
}

/** D bits, some fixed to 0, with minOnes <= (number of ones) <= maxOnes. */
export class SearchSpace {
  readonly dims: number;
  /** Sorted indices fixed to 0. */
  readonly fixedZero: readonly number[];
  /** Sorted indices that may be 1. */
  readonly freeIndices: readonly number[];
  readonly minOnes: number;
  readonly maxOnes: number;

  /** Throws an Error with a one-line message when the constraints cannot be met. */
  constructor(opts: SearchSpaceOptions) {
    const { dims, minFraction = 0, maxFraction = 1 } = opts;
    if (!Number.isInteger(dims) || dims < 1) {
      throw new Error(`the search space needs at least one bit, got ${dims}`);
    }
    const fixed = new Set(opts.fixedZero ?? []);
    for (const index of fixed) {
      if (!Number.isInteger(index) || index < 0 || index >= dims) {
        throw new Error(`never-skipped index ${index} is outside 0..${dims - 1}`);
      }
    }
    if (!(0 <= minFraction && minFraction <= maxFraction && maxFraction <= 1)) {
      throw new Error(
        `skip fraction bounds must satisfy 0 <= min <= max <= 1, got min ${minFraction}, max ${maxFraction}`,
      );
    }
    this.dims = dims;
    this.fixedZero = [...fixed].sort((a, b) => a - b);
    this.freeIndices = Array.from({ length: dims }, (_, i) => i).filter((i) => !fixed.has(i));
    // A tolerance so that e.g. 0.3 * 10 counts as 3, not 3.0000000000000004.
    this.minOnes = Math.ceil(minFraction * dims - 1e-9);
    this.maxOnes = Math.min(Math.floor(maxFraction * dims + 1e-9), this.freeIndices.length);
    const percent = (fraction: number) => `${+(fraction * 100).toFixed(2)}%`;
    if (this.minOnes > Math.floor(maxFraction * dims + 1e-9)) {
      throw new Error(
        `no whole number of the ${dims} sub-layers lies between ${percent(minFraction)} and ${
          percent(maxFraction)
        }`,
      );
    }
    if (this.minOnes > this.maxOnes) {
      throw new Error(
        `at least ${this.minOnes} of ${dims} sub-layers must be skipped (${
          percent(minFraction)
        }), but only ${this.freeIndices.length} may be (${this.fixedZero.length} are never skipped)`,
      );
    }
  }

  /** Whether x has D bits of 0/1, zeros at the fixed indices and an allowed number of ones. */
  contains(x: readonly number[]): boolean {
    if (x.length !== this.dims || x.some((bit) => bit !== 0 && bit !== 1)) return false;
    if (this.fixedZero.some((i) => x[i] !== 0)) return false;
    const ones = countOnes(x);
    return this.minOnes <= ones && ones <= this.maxOnes;
  }

  /**
   * A random point of the space: the number of ones uniform in [minOnes, maxOnes], then which free
   * bits are 1 uniform among those subsets.
   */
  randomPoint(rng: Rng): number[] {
    const ones = this.minOnes + randomInt(rng, this.maxOnes - this.minOnes + 1);
    const free = [...this.freeIndices];
    const x = new Array<number>(this.dims).fill(0);
    for (let k = 0; k < ones; k++) { // partial Fisher-Yates: free[k] is the k-th chosen index
      const pick = k + randomInt(rng, free.length - k);
      [free[k], free[pick]] = [free[pick], free[k]];
      x[free[k]] = 1;
    }
    return x;
  }

  /**
   * Points of the space one move away from x (x must be in the space): each single free-bit flip
   * that keeps the count of ones in bounds, and each swap of a free 1 with a free 0. With
   * `maxSwaps` and an rng, at most maxSwaps swaps, drawn at random.
   */
  neighbours(x: readonly number[], limit?: { maxSwaps: number; rng: Rng }): number[][] {
    const ones = this.freeIndices.filter((i) => x[i] === 1);
    const zeros = this.freeIndices.filter((i) => x[i] === 0);
    const moved = (changes: number[]) => {
      const y = [...x];
      for (const i of changes) y[i] = 1 - y[i];
      return y;
    };
    const result: number[][] = [];
    if (ones.length > this.minOnes) { for (const i of ones) result.push(moved([i])); }
    if (ones.length < this.maxOnes) { for (const i of zeros) result.push(moved([i])); }
    const swapCount = ones.length * zeros.length;
    if (limit === undefined || swapCount <= limit.maxSwaps) {
      for (const i of ones) for (const j of zeros) result.push(moved([i, j]));
    } else {
      const drawn = new Set<number>(); // swap number s = (index in ones) * zeros.length + (in zeros)
      while (drawn.size < limit.maxSwaps) drawn.add(randomInt(limit.rng, swapCount));
      for (const s of drawn) {
        result.push(moved([ones[Math.floor(s / zeros.length)], zeros[s % zeros.length]]));
      }
    }
    return result;
  }
}

function countOnes(x: readonly number[]): number {
  return x.reduce((sum, bit) => sum + bit, 0);
}

// --- one suggestion -----------------------------------------------------------------------------

export type SearchMethod = "bo" | "random";

export interface SuggestOptions {
  /** "bo" (default) or "random": random unseen points throughout, through the same code path. */
  method?: SearchMethod;
  /** Random points before the GP is used; default 10, at least 2. */
  initialRandom?: number;
  /** Acquisition function; default "ei". */
  acquisition?: AcquisitionName;
  /** EI's margin, in the objective's units; default 0. */
  xi?: number;
  /** UCB's weight on the standard deviation; default 2. */
  beta?: number;
  /** GP kernel; default "matern52". */
  kernel?: KernelName;
  /** Local searches started from the best evaluated points; default 5. */
  bestStarts?: number;
  /** Local searches started from random points; default 5. */
  randomStarts?: number;
  /** Most hill-climbing moves per local search; default 20. */
  maxSteps?: number;
  /** Most swap moves looked at per step (drawn at random beyond that); default D. */
  maxSwaps?: number;
  /**
   * Most acquisition evaluations (GP predictions, each O(n^2)) per suggestion, shared equally by
   * the local searches; default 10000.
   */
  maxEvaluations?: number;
  /**
   * Most history points the GP is fitted to (its cost is cubic in this): beyond it, the best half
   * by y and the most recent of the rest; default 200.
   */
  maxGpPoints?: number;
}

const DEFAULTS = {
  method: "bo",
  initialRandom: 10,
  acquisition: "ei",
  xi: 0,
  beta: 2,
  kernel: "matern52",
  bestStarts: 5,
  randomStarts: 5,
  maxSteps: 20,
  maxEvaluations: 10000,
  maxGpPoints: 200,
} as const;

/** Tries at drawing an unseen random point before walking the space from one. */
const RANDOM_TRIES = 64;

/** How a point was proposed: at random, or by maximising the acquisition over the GP. */
export type Phase = "random" | "bo";

/**
 * The next point to evaluate: a point of `space` not in `history`, or null when every point of the
 * space has been evaluated. Throws on a malformed history (wrong length, non-binary x, y not
 * finite).
 */
export function suggest(
  history: readonly Trial[],
  space: SearchSpace,
  rng: Rng,
  opts: SuggestOptions = {},
): number[] | null {
  return propose(history, space, rng, opts)?.x ?? null;
}

/** `suggest`, also saying how the point was found. */
export function propose(
  history: readonly Trial[],
  space: SearchSpace,
  rng: Rng,
  opts: SuggestOptions = {},
): { x: number[]; phase: Phase } | null {
  const o = { ...DEFAULTS, ...definedOnly(opts) };
  for (const [index, trial] of history.entries()) {
    if (trial.x.length !== space.dims || trial.x.some((bit) => bit !== 0 && bit !== 1)) {
      throw new Error(`trial ${index} is not a vector of ${space.dims} bits`);
    }
    if (!Number.isFinite(trial.y)) {
      throw new Error(`trial ${index} has no finite objective value (${trial.y})`);
    }
  }
  const seen = new Set(history.map((trial) => pointKey(trial.x)));
  const randomProposal = () => {
    const x = randomUnseenPoint(space, seen, rng);
    return x && { x, phase: "random" as const };
  };
  if (o.method === "random" || history.length < Math.max(2, o.initialRandom)) {
    return randomProposal();
  }
  const training = gpTrainingSet(history, o.maxGpPoints);
  const gp = fitGp(training.map((trial) => trial.x), training.map((trial) => trial.y), {
    kernel: o.kernel,
  });
  const bestY = Math.max(...history.map((trial) => trial.y));
  const score = (x: number[]) => {
    const prediction = gp.predict(x);
    return o.acquisition === "ei"
      ? expectedImprovement(prediction, bestY, o.xi)
      : upperConfidenceBound(prediction, o.beta);
  };
  const starts = [
    ...[...history].sort((a, b) => b.y - a.y).map((trial) => trial.x).filter((x) =>
      space.contains(x)
    ).slice(0, o.bestStarts),
    ...Array.from({ length: o.randomStarts }, () => space.randomPoint(rng)),
  ];
  const x = maximiseUnseen(score, starts, space, seen, rng, {
    maxSteps: o.maxSteps,
    maxSwaps: o.maxSwaps ?? space.dims,
    evaluationsPerStart: Math.ceil(o.maxEvaluations / Math.max(1, starts.length)),
  });
  return x ? { x, phase: "bo" } : randomProposal();
}

/** opts without its undefined entries, so that they do not hide the defaults. */
function definedOnly<T extends object>(opts: T): Partial<T> {
  return Object.fromEntries(Object.entries(opts).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** At most `cap` trials: all when few enough, else the best half by y plus the most recent. */
function gpTrainingSet(history: readonly Trial[], cap: number): readonly Trial[] {
  if (history.length <= cap) return history;
  const byValue = history.map((_, i) => i).sort((a, b) => history[b].y - history[a].y);
  const kept = new Set(byValue.slice(0, Math.ceil(cap / 2)));
  for (let i = history.length - 1; kept.size < cap; i--) kept.add(i);
  return [...kept].sort((a, b) => a - b).map((i) => history[i]);
}

/**
 * Hill-climbs `score` from each start (moving to the best neighbour while it improves) and returns
 * the best-scoring unseen point met on the way, or null when none was met. Seen points may be
 * walked through but are never returned. A climb stops after maxSteps moves, or once it has scored
 * evaluationsPerStart new points.
 */
function maximiseUnseen(
  score: (x: number[]) => number,
  starts: number[][],
  space: SearchSpace,
  seen: ReadonlySet<string>,
  rng: Rng,
  limits: { maxSteps: number; maxSwaps: number; evaluationsPerStart: number },
): number[] | null {
  const scores = new Map<string, number>();
  const bestUnseen: { x: number[] | null; score: number } = { x: null, score: -Infinity };
  const scoreOf = (x: number[]) => {
    const key = pointKey(x);
    let value = scores.get(key);
    if (value === undefined) {
      value = score(x);
      scores.set(key, value);
      if (!seen.has(key) && (bestUnseen.x === null || value > bestUnseen.score)) {
        Object.assign(bestUnseen, { x, score: value });
      }
    }
    return value;
  };
  for (const start of starts) {
    const budgetEnd = scores.size + limits.evaluationsPerStart;
    let current = { x: start, score: scoreOf(start) };
    for (let step = 0; step < limits.maxSteps && scores.size < budgetEnd; step++) {
      let next = current;
      for (const candidate of space.neighbours(current.x, { maxSwaps: limits.maxSwaps, rng })) {
        if (scores.size >= budgetEnd) break;
        const value = scoreOf(candidate);
        if (value > next.score) next = { x: candidate, score: value };
      }
      if (next === current) break;
      current = next;
    }
  }
  return bestUnseen.x;
}

/**
 * A random point not in `seen`: a few independent draws, then a breadth-first walk over
 * neighbours from a random point (the move graph of the space is connected, so the walk finds an
 * unseen point whenever there is one). Null when every point of the space is in `seen`.
 */
function randomUnseenPoint(
  space: SearchSpace,
  seen: ReadonlySet<string>,
  rng: Rng,
): number[] | null {
  for (let attempt = 0; attempt < RANDOM_TRIES; attempt++) {
    const x = space.randomPoint(rng);
    if (!seen.has(pointKey(x))) return x;
  }
  const start = space.randomPoint(rng);
  const visited = new Set([pointKey(start)]);
  const queue = [start];
  for (let head = 0; head < queue.length; head++) {
    for (const neighbour of space.neighbours(queue[head])) {
      const key = pointKey(neighbour);
      if (!seen.has(key)) return neighbour;
      if (!visited.has(key)) {
        visited.add(key);
        queue.push(neighbour);
      }
    }
  }
  return null;
}

// --- the search loop ----------------------------------------------------------------------------

export interface RunSearchOptions extends SuggestOptions {
  /** Total trials, the prior history included. */
  trials: number;
  /** Seed of the per-trial random streams; default 0. */
  seed?: number;
  /** Trials already evaluated (resuming): counted in `trials`, never evaluated again. */
  history?: readonly Trial[];
  /** Called after each new evaluation (awaited), e.g. to save the history. */
  onTrial?: (
    trial: Trial & { index: number; phase: Phase },
    history: readonly Trial[],
  ) => void | Promise<void>;
  /** Aborting stops the search after the evaluation in progress. */
  signal?: AbortSignal;
}

export interface SearchResult {
  /** Every trial, the prior history first, in evaluation order. */
  history: Trial[];
  /** The trial with the largest y (the first of equals); undefined when there is none. */
  best: Trial | undefined;
  /** True when the search stopped because every point of the space had been evaluated. */
  exhausted: boolean;
}

/**
 * Evaluates `objective` (to be maximised) at suggested points until the history holds `trials`
 * trials, the space is exhausted, or `signal` is aborted. Trial i draws from its own random stream
 * seeded by (seed, i).
 */
export async function runSearch(
  objective: (x: number[]) => number | Promise<number>,
  space: SearchSpace,
  opts: RunSearchOptions,
): Promise<SearchResult> {
  const history: Trial[] = (opts.history ?? []).map((trial) => ({ x: [...trial.x], y: trial.y }));
  let exhausted = false;
  while (history.length < opts.trials && !opts.signal?.aborted) {
    const index = history.length;
    const proposal = propose(history, space, mulberry32(trialSeed(opts.seed ?? 0, index)), opts);
    if (proposal === null) {
      exhausted = true;
      break;
    }
    const { x, phase } = proposal;
    const y = await objective(x);
    if (!Number.isFinite(y)) {
      throw new Error(`the objective returned ${y} for trial ${index}, not a finite number`);
    }
    history.push({ x, y });
    await opts.onTrial?.({ index, x, y, phase }, history);
  }
  return { history, best: bestTrial(history), exhausted };
}

/** The trial with the largest y (the first of equals); undefined for an empty history. */
export function bestTrial(history: readonly Trial[]): Trial | undefined {
  return history.reduce<Trial | undefined>(
    (best, t) => best && best.y >= t.y ? best : t,
    undefined,
  );
}
