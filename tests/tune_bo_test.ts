/**
 * The search loop: constraint handling, de-duplication, resuming, and BO against random search
 * on cheap synthetic objectives with a known optimum (found here by enumeration).
 */
import assert from "node:assert/strict";
import {
  mulberry32,
  pointKey,
  propose,
  runSearch,
  SearchSpace,
  type SuggestOptions,
} from "../src/tune/bo.ts";

const VERBOSE = Deno.env.get("TUNE_TEST_VERBOSE") === "1";

const countOnes = (x: readonly number[]) => x.reduce((sum, bit) => sum + bit, 0);

// --- search space ------------------------------------------------------------------------------

Deno.test("random points keep fixed bits at 0 and the number of ones within bounds", () => {
  // 16 bits, 4 never set, between 25% and 50% of 16 set: 4..8 ones.
  const space = new SearchSpace({
    dims: 16,
    fixedZero: [0, 7, 8, 15],
    minFraction: 0.25,
    maxFraction: 0.5,
  });
  assert.deepEqual([space.minOnes, space.maxOnes], [4, 8]);
  const rng = mulberry32(1);
  const countsSeen = new Set<number>();
  for (let i = 0; i < 2000; i++) {
    const x = space.randomPoint(rng);
    assert.ok(space.contains(x), `random point ${pointKey(x)} outside the space`);
    assert.ok([0, 7, 8, 15].every((j) => x[j] === 0));
    countsSeen.add(countOnes(x));
    for (const neighbour of space.neighbours(x)) {
      assert.ok(space.contains(neighbour), `neighbour ${pointKey(neighbour)} outside the space`);
      const changed = neighbour.filter((bit, j) => bit !== x[j]).length;
      assert.ok(changed === 1 || changed === 2);
    }
  }
  assert.deepEqual([...countsSeen].sort((a, b) => a - b), [4, 5, 6, 7, 8]);
  // The upper bound is also capped by the free bits.
  assert.equal(new SearchSpace({ dims: 4, fixedZero: [0, 1, 2] }).maxOnes, 1);
});

Deno.test("impossible constraints throw one-line errors", () => {
  const oneLine = (pattern: RegExp) => (error: unknown) =>
    error instanceof Error && pattern.test(error.message) && !error.message.includes("\n");
  assert.throws(
    () => new SearchSpace({ dims: 4, fixedZero: [0, 1, 2, 3], minFraction: 0.5, maxFraction: 1 }),
    oneLine(/at least 2 of 4 sub-layers must be skipped .* but only 0 may be \(4 are never/),
  );
  assert.throws(
    () => new SearchSpace({ dims: 10, minFraction: 0.31, maxFraction: 0.39 }),
    oneLine(/no whole number of the 10 sub-layers lies between 31% and 39%/),
  );
  assert.throws(
    () => new SearchSpace({ dims: 10, minFraction: 0.6, maxFraction: 0.4 }),
    oneLine(/0 <= min <= max <= 1/),
  );
  assert.throws(() => new SearchSpace({ dims: 4, fixedZero: [4] }), oneLine(/outside 0\.\.3/));
  assert.throws(() => new SearchSpace({ dims: 0 }), oneLine(/at least one bit/));
  // Exactly feasible: 30% of 10 is 3, despite 0.3 * 10 = 3.0000000000000004.
  const tight = new SearchSpace({ dims: 10, minFraction: 0.3, maxFraction: 0.3 });
  assert.deepEqual([tight.minOnes, tight.maxOnes], [3, 3]);
});

// --- the loop ----------------------------------------------------------------------------------

/** A cheap objective over 12 bits with interactions. */
function smallObjective(x: number[]): number {
  return x.reduce((sum, bit, i) => sum + bit * Math.cos(i * 1.7), 0) + (x[2] & x[9]) * 1.5;
}

Deno.test("the search never repeats a point and stops when the space is exhausted", async () => {
  // 6 bits, bit 0 fixed, 1..3 ones of the other 5: 5 + 10 + 10 = 25 points.
  const space = new SearchSpace({ dims: 6, fixedZero: [0], minFraction: 0.1, maxFraction: 0.5 });
  for (const method of ["bo", "random"] as const) {
    const result = await runSearch(smallObjective, space, {
      trials: 40,
      seed: 3,
      method,
      initialRandom: 5,
    });
    const keys = result.history.map((trial) => pointKey(trial.x));
    assert.equal(new Set(keys).size, keys.length, `${method}: a point was evaluated twice`);
    assert.ok(result.history.every((trial) => space.contains(trial.x)));
    assert.equal(result.history.length, 25, `${method}: every point, then stop`);
    assert.equal(result.exhausted, true);
    assert.equal(result.best?.y, Math.max(...result.history.map((trial) => trial.y)));
  }
});

Deno.test("resuming from a prior history evaluates only new points, as the full run would", async () => {
  const space = new SearchSpace({ dims: 12, fixedZero: [0, 11], maxFraction: 0.5 });
  const options = { seed: 7, initialRandom: 6 };
  const phases: string[] = [];
  const full = await runSearch(smallObjective, space, {
    ...options,
    trials: 24,
    onTrial: (trial, history) => {
      assert.equal(history.length, trial.index + 1);
      assert.deepEqual(history[trial.index], { x: trial.x, y: trial.y });
      phases.push(trial.phase);
    },
  });
  assert.deepEqual(phases, [...Array(6).fill("random"), ...Array(18).fill("bo")]);

  const firstPart = await runSearch(smallObjective, space, { ...options, trials: 10 });
  const evaluated: number[][] = [];
  const resumed = await runSearch(
    (x) => {
      evaluated.push(x);
      return smallObjective(x);
    },
    space,
    { ...options, trials: 24, history: firstPart.history },
  );
  assert.equal(evaluated.length, 14, "only the missing trials are evaluated");
  const priorKeys = new Set(firstPart.history.map((trial) => pointKey(trial.x)));
  assert.ok(evaluated.every((x) => !priorKeys.has(pointKey(x))), "a prior point was repeated");
  assert.deepEqual(resumed.history, full.history, "the resumed run differs from the full run");

  // A prior history at or over the budget evaluates nothing.
  const done = await runSearch(
    () => {
      throw new Error("evaluated");
    },
    space,
    { ...options, trials: 5, history: firstPart.history },
  );
  assert.equal(done.history.length, 10);
});

Deno.test("a malformed history or objective value is a clear error", async () => {
  const space = new SearchSpace({ dims: 4 });
  const rng = mulberry32(1);
  assert.throws(
    () => propose([{ x: [0, 1], y: 1 }], space, rng),
    /trial 0 is not a vector of 4 bits/,
  );
  assert.throws(() => propose([{ x: [0, 1, 0, 1], y: NaN }], space, rng), /no finite objective/);
  await assert.rejects(
    () => runSearch(() => Infinity, space, { trials: 3 }),
    /objective returned Infinity for trial 0/,
  );
  // Aborting stops after the evaluation in progress.
  const controller = new AbortController();
  const stopped = await runSearch(smallObjective, new SearchSpace({ dims: 12 }), {
    trials: 20,
    signal: controller.signal,
    onTrial: (trial) => {
      if (trial.index === 3) controller.abort();
    },
  });
  assert.equal(stopped.history.length, 4);
});

// --- BO against random search ------------------------------------------------------------------

interface Benchmark {
  name: string;
  space: SearchSpace;
  objective: (x: number[]) => number;
  /** The value to reach, and what it is relative to the optimum. */
  target: number;
  targetMeaning: string;
}

/** Every point of the space (feasible assignments of the free bits). */
function allPoints(space: SearchSpace): number[][] {
  const points: number[][] = [];
  const free = space.freeIndices;
  for (let mask = 0; mask < 1 << free.length; mask++) {
    const x = new Array<number>(space.dims).fill(0);
    free.forEach((index, bit) => x[index] = (mask >> bit) & 1);
    if (space.contains(x)) points.push(x);
  }
  return points;
}

function gaussian(rng: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rng())) * Math.cos(2 * Math.PI * rng());
}

/** 16 bits, a weighted sum plus 16 random pairwise interactions; target: the exact optimum. */
function pairwiseBenchmark(): Benchmark {
  const dims = 16;
  const rng = mulberry32(7);
  const weights = Array.from({ length: dims }, () => gaussian(rng));
  const pairs = Array.from(
    { length: 16 },
    () => [Math.floor(rng() * dims), Math.floor(rng() * dims), gaussian(rng)] as const,
  );
  const objective = (x: number[]) =>
    weights.reduce((sum, w, i) => sum + w * x[i], 0) +
    pairs.reduce((sum, [i, j, v]) => sum + v * x[i] * x[j], 0);
  const space = new SearchSpace({ dims });
  const optimum = Math.max(...allPoints(space).map(objective));
  return { name: "pairwise", space, objective, target: optimum - 1e-9, targetMeaning: "optimum" };
}

/**
 * 16 bits in 4 deceptive traps of 4 bits: a block scores 4 when it equals a hidden pattern, else
 * 3 - (bits matching it), so every local slope leads away from the pattern. Optimum 16, the
 * deceptive local optimum 12; target 13 (81% of the optimum: at least one trap solved).
 */
function trapBenchmark(): Benchmark {
  const dims = 16;
  const rng = mulberry32(5);
  const pattern = Array.from({ length: dims }, () => (rng() < 0.5 ? 1 : 0));
  const objective = (x: number[]) => {
    let total = 0;
    for (let start = 0; start < dims; start += 4) {
      let matching = 0;
      for (let i = start; i < start + 4; i++) matching += x[i] === pattern[i] ? 1 : 0;
      total += matching === 4 ? 4 : 3 - matching;
    }
    return total;
  };
  return {
    name: "trap",
    space: new SearchSpace({ dims }),
    objective,
    target: 13,
    targetMeaning: "13 of 16",
  };
}

/**
 * A self-speculation model over L = 8 layers (bit l: attention of layer l, bit 8 + l: its MLP),
 * first and last layer never skipped, 25%..50% of sub-layers skipped (3498 skip sets). Skipping
 * saves cost (MLP twice attention) and lowers acceptance a = exp(-damage); the objective is the
 * expected tokens per round over its cost for 4 drafts, (1 - a^5) / (1 - a) / (1 + 4 c).
 * Target: the exact optimum.
 */
function skipBenchmark(): Benchmark {
  const layers = 8;
  const dims = 2 * layers;
  const rng = mulberry32(11);
  const cost = Array.from({ length: dims }, (_, i) => (i < layers ? 1 : 2) * (0.8 + 0.4 * rng()));
  const damage = Array.from({ length: dims }, (_, i) => {
    const layer = i % layers;
    const atEdge = layer === 1 || layer === layers - 2;
    return (0.05 + 0.3 * rng()) * (atEdge ? 3 : 1) * (i < layers ? 0.6 : 1);
  });
  const totalCost = cost.reduce((sum, c) => sum + c, 0);
  const objective = (x: number[]) => {
    const acceptance = Math.exp(-x.reduce((sum, bit, i) => sum + bit * damage[i], 0));
    const draftCost = 1 - x.reduce((sum, bit, i) => sum + bit * cost[i], 0) / totalCost;
    return (1 - acceptance ** 5) / (1 - acceptance) / (1 + 4 * draftCost);
  };
  const space = new SearchSpace({
    dims,
    fixedZero: [0, layers - 1, layers, dims - 1],
    minFraction: 0.25,
    maxFraction: 0.5,
  });
  const optimum = Math.max(...allPoints(space).map(objective));
  return {
    name: "skip model",
    space,
    objective,
    target: optimum - 1e-12,
    targetMeaning: "optimum",
  };
}

const SEEDS = 10;
const BUDGET = 80;

/** Evaluations until the target is reached (stopping there), or Infinity within BUDGET. */
async function evaluationsToTarget(benchmark: Benchmark, seed: number, options: SuggestOptions) {
  const controller = new AbortController();
  let reachedAt = Infinity;
  await runSearch(benchmark.objective, benchmark.space, {
    ...options,
    trials: BUDGET,
    seed,
    signal: controller.signal,
    onTrial: (trial) => {
      if (trial.y >= benchmark.target) {
        reachedAt = trial.index + 1;
        controller.abort();
      }
    },
  });
  return reachedAt;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return (sorted[(sorted.length - 1) >> 1] + sorted[sorted.length >> 1]) / 2;
}

for (const makeBenchmark of [skipBenchmark, pairwiseBenchmark, trapBenchmark]) {
  const benchmark = makeBenchmark();
  Deno.test(`BO reaches the ${benchmark.name} target in fewer evaluations than random search`, async () => {
    const evaluations = { bo: [] as number[], random: [] as number[] };
    for (const method of ["bo", "random"] as const) {
      for (let seed = 1; seed <= SEEDS; seed++) {
        evaluations[method].push(await evaluationsToTarget(benchmark, seed, { method }));
      }
    }
    const summary = `${benchmark.name} (${benchmark.targetMeaning}), evaluations over ${SEEDS} ` +
      `seeds, budget ${BUDGET}: BO median ${median(evaluations.bo)} ${
        JSON.stringify(evaluations.bo)
      }, random median ${median(evaluations.random)} ${JSON.stringify(evaluations.random)}`;
    if (VERBOSE) console.log(summary);
    assert.ok(median(evaluations.bo) <= BUDGET, `BO misses the target in the median: ${summary}`);
    assert.ok(median(evaluations.bo) < median(evaluations.random), summary);
  });
}

Deno.test("UCB acquisition also searches without repeats and finds the skip-model optimum", async () => {
  const benchmark = skipBenchmark();
  const result = await runSearch(benchmark.objective, benchmark.space, {
    trials: 60,
    seed: 2,
    acquisition: "ucb",
  });
  const keys = new Set(result.history.map((trial) => pointKey(trial.x)));
  assert.equal(keys.size, 60);
  assert.ok(result.history.every((trial) => benchmark.space.contains(trial.x)));
  assert.ok(result.best!.y >= benchmark.target, `UCB best ${result.best!.y} < ${benchmark.target}`);
});
