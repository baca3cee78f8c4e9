/**
 * The GP surrogate and the acquisition functions against numbers computed here by hand: explicit
 * 2x2 / 3x3 inverses and determinants, and tabulated normal-distribution values.
 */
import assert from "node:assert/strict";
import { fitGp, type GpHyper } from "../src/tune/gp.ts";
import {
  expectedImprovement,
  normalCdf,
  normalPdf,
  upperConfidenceBound,
} from "../src/tune/acquisition.ts";
import { mulberry32 } from "../src/tune/bo.ts";

function assertClose(actual: number, expected: number, tolerance: number, what: string) {
  assert.ok(
    Math.abs(actual - expected) <= tolerance,
    `${what}: got ${actual}, expected ${expected} (tolerance ${tolerance})`,
  );
}

/** Matern-5/2 correlation at scaled distance s. */
const matern52 = (s: number) =>
  (1 + Math.sqrt(5) * s + (5 * s * s) / 3) * Math.exp(-Math.sqrt(5) * s);

/** Inverse and determinant of a symmetric 3x3 matrix by cofactors. */
function inverse3(m: number[][]): { inverse: number[][]; determinant: number } {
  const [[a, b, c], [, d, e], [, , f]] = m; // symmetric: m[1][0] = b, m[2][0] = c, m[2][1] = e
  const cofactors = [
    [d * f - e * e, c * e - b * f, b * e - c * d],
    [c * e - b * f, a * f - c * c, b * c - a * e],
    [b * e - c * d, b * c - a * e, a * d - b * b],
  ];
  const determinant = a * cofactors[0][0] + b * cofactors[0][1] + c * cofactors[0][2];
  return { inverse: cofactors.map((row) => row.map((v) => v / determinant)), determinant };
}

const times = (m: number[][], v: number[]) =>
  m.map((row) => row[0] * v[0] + row[1] * v[1] + row[2] * v[2]);
const dot3 = (a: number[], b: number[]) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];

// Three points of D = 3 bits; Hamming distances 0-1: 1, 0-2: 3, 1-2: 2.
const X3 = [[0, 0, 0], [1, 0, 0], [1, 1, 1]];
const Y3 = [1, 2, 4];
const HYPER3: GpHyper = { signalVariance: 1.5, lengthscale: 0.5, noiseVariance: 0.1 };

/** The 3-point case by hand: standardised targets, K, its inverse and determinant. */
function handCase3() {
  const { signalVariance: s2, lengthscale: l, noiseVariance: noise } = HYPER3;
  // Matern-5/2 on the normalised Euclidean distance sqrt(h / 3).
  const k = (h: number) => s2 * matern52(Math.sqrt(h / 3) / l);
  const K = [
    [k(0) + noise, k(1), k(3)],
    [k(1), k(0) + noise, k(2)],
    [k(3), k(2), k(0) + noise],
  ];
  const yMean = 7 / 3;
  const yStd = Math.sqrt(((1 - yMean) ** 2 + (2 - yMean) ** 2 + (4 - yMean) ** 2) / 3);
  const yStandard = Y3.map((v) => (v - yMean) / yStd);
  return { k, K, yMean, yStd, yStandard, ...inverse3(K) };
}

Deno.test("GP posterior mean and variance match the closed form (Matern-5/2, 3 points)", () => {
  const gp = fitGp(X3, Y3, { hyper: HYPER3 });
  const { k, inverse, yMean, yStd, yStandard } = handCase3();
  // x* = [0, 1, 0] differs from the training points in 1, 2 and 2 bits.
  const cross = [k(1), k(2), k(2)];
  const expectedMean = yMean + yStd * dot3(cross, times(inverse, yStandard));
  const expectedVariance = yStd * yStd *
    (HYPER3.signalVariance - dot3(cross, times(inverse, cross)));
  const prediction = gp.predict([0, 1, 0]);
  assertClose(prediction.mean, expectedMean, 1e-9, "mean");
  assertClose(prediction.variance, expectedVariance, 1e-9, "variance");
  assert.equal(gp.jitter, 0);
  // At a training point the mean is pulled towards its target and the variance shrinks.
  const atTraining = gp.predict([1, 1, 1]);
  const crossAt = [k(3), k(2), k(0)];
  assertClose(
    atTraining.mean,
    yMean + yStd * dot3(crossAt, times(inverse, yStandard)),
    1e-9,
    "mean at x2",
  );
  assertClose(
    atTraining.variance,
    yStd * yStd * (HYPER3.signalVariance - dot3(crossAt, times(inverse, crossAt))),
    1e-9,
    "variance at x2",
  );
});

Deno.test("GP posterior matches the closed form (exponential kernel, 2 points)", () => {
  // D = 2, y = [0, 2]: mean 1, population std 1, standardised [-1, 1]. Points 2 bits apart
  // (distance 1) correlate e^-1; [1, 0] is 1 bit (distance 0.5) from both.
  const hyper = { signalVariance: 1, lengthscale: 1, noiseVariance: 0.5 };
  const gp = fitGp([[0, 0], [1, 1]], [0, 2], { kernel: "exponential", hyper });
  const c = Math.exp(-1);
  const middle = gp.predict([1, 0]);
  assertClose(middle.mean, 1, 1e-12, "mean between the points");
  // K^-1 [1, 1] = [1, 1] / (1.5 + c), so k*^T K^-1 k* = 2 e^-1 / (1.5 + c).
  assertClose(middle.variance, 1 - (2 * Math.exp(-1)) / (1.5 + c), 1e-12, "variance between");
  // At [1, 1]: k* = [c, 1]; K^-1 = [[1.5, -c], [-c, 1.5]] / (2.25 - c^2).
  const det = 2.25 - c * c;
  const weights = [(1.5 * c - c) / det, (-c * c + 1.5) / det]; // k*^T K^-1
  const atPoint = gp.predict([1, 1]);
  assertClose(atPoint.mean, 1 + (weights[0] * -1 + weights[1] * 1), 1e-12, "mean at [1, 1]");
  assertClose(atPoint.variance, 1 - (weights[0] * c + weights[1] * 1), 1e-12, "variance at [1, 1]");
});

Deno.test("GP log marginal likelihood equals the direct computation with K^-1 and det K", () => {
  const gp = fitGp(X3, Y3, { hyper: HYPER3 });
  const { inverse, determinant, yStandard } = handCase3();
  const expected = -0.5 * dot3(yStandard, times(inverse, yStandard)) - 0.5 * Math.log(determinant) -
    1.5 * Math.log(2 * Math.PI);
  assertClose(gp.logMarginalLikelihood(), expected, 1e-9, "log marginal likelihood");
});

/** 30 random points of 12 bits and a smooth objective over them (with interactions). */
function smoothDataset() {
  const rng = mulberry32(3);
  const X = Array.from(
    { length: 30 },
    () => Array.from({ length: 12 }, (): number => (rng() < 0.5 ? 1 : 0)),
  );
  const y = X.map((x) =>
    x.reduce((sum, bit, i) => sum + bit * Math.sin(i + 1), 0) + 0.3 * x[0] * x[5]
  );
  return { X, y };
}

Deno.test("fitted hyperparameters maximise the log marginal likelihood", () => {
  const { X, y } = smoothDataset();
  const fitted = fitGp(X, y);
  const best = fitted.logMarginalLikelihood();
  for (const signalVariance of [0.3, 1, 3]) {
    for (const lengthscale of [0.15, 0.45, 1.1, 2.7]) {
      for (const noiseVariance of [1e-5, 1e-3, 0.01, 0.1]) {
        const other = fitGp(X, y, { hyper: { signalVariance, lengthscale, noiseVariance } });
        assert.ok(
          other.logMarginalLikelihood() <= best + 1e-6,
          `hyper ${JSON.stringify(other.hyper)} beats the fit ${JSON.stringify(fitted.hyper)}: ` +
            `${other.logMarginalLikelihood()} > ${best}`,
        );
      }
    }
  }
  // Nearly noiseless data: the fit interpolates its training points.
  const range = Math.max(...y) - Math.min(...y);
  for (const [i, x] of X.entries()) {
    assertClose(fitted.predict(x).mean, y[i], 0.02 * range, `mean at training point ${i}`);
  }
});

Deno.test("GP: constant targets, duplicate inputs (jitter) and malformed data", () => {
  const flat = fitGp([[0, 1], [1, 0], [1, 1]], [5, 5, 5]);
  const prediction = flat.predict([0, 0]);
  assertClose(prediction.mean, 5, 1e-9, "mean of constant targets");
  assert.ok(Number.isFinite(prediction.variance) && prediction.variance >= 0);

  // Two copies of one point with (almost) no noise: K is singular until jitter is added.
  const hyper = { signalVariance: 1, lengthscale: 1, noiseVariance: 1e-300 };
  const duplicated = fitGp([[0, 1, 1], [0, 1, 1], [1, 0, 0]], [1, 1.5, 3], { hyper });
  assert.ok(duplicated.jitter > 0, "jitter was needed");
  const atCopy = duplicated.predict([0, 1, 1]);
  assertClose(atCopy.mean, 1.25, 1e-3, "mean at the duplicated point is the average");
  assert.ok(atCopy.variance >= 0 && atCopy.variance < 1e-3);

  assert.throws(() => fitGp([[0, 1]], [1, 2]), /1 inputs but 2 targets/);
  assert.throws(() => fitGp([[0, 1], [1]], [1, 2]), /input 1 has 1 bits, expected 2/);
  assert.throws(() => fitGp([[0, 2]], [1]), /not a 0\/1 vector/);
  assert.throws(() => fitGp([[0, 1]], [NaN]), /not a finite number/);
  assert.throws(() => fitGp([[0, 1]], [1], { hyper: { ...hyper, lengthscale: 0 } }), /lengthscale/);
});

// --- acquisition ---------------------------------------------------------------------------------

// Phi at 1, -1, 2, -3 (tabulated).
const PHI_1 = 0.8413447460685429;
const PHI_MINUS_1 = 0.15865525393145707;

Deno.test("normal distribution function matches tabulated values", () => {
  assertClose(normalCdf(0), 0.5, 1e-7, "Phi(0)");
  assertClose(normalCdf(1), PHI_1, 1e-7, "Phi(1)");
  assertClose(normalCdf(-1), PHI_MINUS_1, 1e-7, "Phi(-1)");
  assertClose(normalCdf(2), 0.9772498680518208, 1e-7, "Phi(2)");
  assertClose(normalCdf(-3), 0.0013498980316301, 1e-9, "Phi(-3)");
  assertClose(normalPdf(0), 1 / Math.sqrt(2 * Math.PI), 1e-15, "phi(0)");
});

Deno.test("expected improvement matches its closed form, including variance 0", () => {
  const phi1 = Math.exp(-0.5) / Math.sqrt(2 * Math.PI);
  // std 2 throughout: EI = u Phi(u / 2) + 2 phi(u / 2), u = mean - best - xi.
  assertClose(
    expectedImprovement({ mean: 1, variance: 4 }, 1),
    2 / Math.sqrt(2 * Math.PI),
    1e-7,
    "u = 0",
  );
  assertClose(
    expectedImprovement({ mean: 3, variance: 4 }, 1),
    2 * PHI_1 + 2 * phi1,
    1e-6,
    "u = 2",
  );
  assertClose(
    expectedImprovement({ mean: -1, variance: 4 }, 1),
    -2 * PHI_MINUS_1 + 2 * phi1,
    1e-6,
    "u = -2",
  );
  assertClose(
    expectedImprovement({ mean: 3, variance: 4 }, 0, 1),
    2 * PHI_1 + 2 * phi1,
    1e-6,
    "xi = 1",
  );
  // Variance 0: the improvement itself, or 0; and the small-variance limit agrees.
  assert.equal(expectedImprovement({ mean: 3, variance: 0 }, 1), 2);
  assert.equal(expectedImprovement({ mean: 0, variance: 0 }, 1), 0);
  assert.equal(expectedImprovement({ mean: 3, variance: 0 }, 1, 0.5), 1.5);
  assertClose(expectedImprovement({ mean: 3, variance: 1e-16 }, 1), 2, 1e-7, "limit above best");
  assertClose(expectedImprovement({ mean: 0, variance: 1e-16 }, 1), 0, 1e-7, "limit below best");
  // Never negative, even far below the best.
  assert.ok(expectedImprovement({ mean: -50, variance: 1 }, 0) >= 0);
});

Deno.test("UCB is mean + beta * std", () => {
  assert.equal(upperConfidenceBound({ mean: 1, variance: 4 }), 5);
  assert.equal(upperConfidenceBound({ mean: 1, variance: 4 }, 0.5), 2);
  assert.equal(upperConfidenceBound({ mean: -1, variance: 0 }, 3), -1);
});
