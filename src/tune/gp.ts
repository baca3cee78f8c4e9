/**
 * A Gaussian-process surrogate for objectives over binary vectors (skip sets: one bit per
 * sub-layer, 1 = skipped).
 *
 * The kernel depends only on the Hamming distance h (bits that differ) of two D-bit vectors, with
 * one lengthscale l: k(a, b) = signalVariance * corr(distance / l), where
 * - "matern52" (default): corr(s) = (1 + sqrt5 s + 5 s^2 / 3) exp(-sqrt5 s) on the normalised
 *   Euclidean distance sqrt(h / D), i.e. the usual Matern-5/2 of the vectors as points of R^D;
 * - "exponential": corr(s) = exp(-s) on the normalised Hamming distance h / D (a product of
 *   per-bit kernels).
 * Both distances lie in [0, 1]. (Matern-5/2 of h / D itself is not a positive definite kernel on
 * binary vectors: its covariance matrices can have negative eigenvalues.)
 *
 * The objective values are standardised inside the GP (mean 0, population std 1), so the
 * hyperparameters live in those units; predictions come back in the original units.
 *
 * Hyperparameters are fitted by maximising the log marginal likelihood, deterministically: the
 * signal variance has a closed-form maximiser given the lengthscale and the noise-to-signal ratio,
 * and those two are searched on a log-space grid and then refined by a coordinate pattern search.
 * The Cholesky factorisation and its triangular solves come from ml-matrix.
 */

import { CholeskyDecomposition, Matrix } from "ml-matrix";

export type KernelName = "matern52" | "exponential";

/** Hyperparameters, in the standardised units of the objective (data variance 1). */
export interface GpHyper {
  /** Prior variance of the latent function, k(x, x). */
  signalVariance: number;
  /** Lengthscale in units of the kernel's normalised distance (0 = equal, 1 = every bit differs). */
  lengthscale: number;
  /** Variance of the observation noise, added to the diagonal. */
  noiseVariance: number;
}

export interface GpOptions {
  /** Kernel shape; default "matern52". */
  kernel?: KernelName;
  /** Use these hyperparameters instead of fitting them. */
  hyper?: GpHyper;
}

/** The posterior of the latent function at one point, in the objective's units. */
export interface Prediction {
  mean: number;
  /** Variance of the latent function (observation noise not included); never negative. */
  variance: number;
}

export interface Gp {
  readonly kernel: KernelName;
  readonly hyper: Readonly<GpHyper>;
  /** Diagonal jitter actually added on top of noiseVariance so that the Cholesky succeeded. */
  readonly jitter: number;
  /** Bits per input vector (D). */
  readonly dims: number;
  predict(x: readonly number[]): Prediction;
  /** log p(y_std | X, hyper) of the standardised targets, natural log. */
  logMarginalLikelihood(): number;
}

/** The kernel's distance between two D-bit vectors that differ in h bits, in [0, 1]. */
export function kernelDistance(kernel: KernelName, differingBits: number, dims: number): number {
  const fraction = differingBits / Math.max(dims, 1);
  return kernel === "matern52" ? Math.sqrt(fraction) : fraction;
}

/** Correlation at scaled distance s = distance / lengthscale, s >= 0; corr(0) = 1. */
export function kernelCorrelation(kernel: KernelName, scaledDistance: number): number {
  const s = scaledDistance;
  switch (kernel) {
    case "matern52": {
      const t = Math.sqrt(5) * s;
      return (1 + t + (t * t) / 3) * Math.exp(-t);
    }
    case "exponential":
      return Math.exp(-s);
  }
}

/** Number of positions where the equally long vectors a and b differ. */
export function hammingDistance(a: readonly number[], b: readonly number[]): number {
  let differing = 0;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) differing++;
  return differing;
}

/**
 * Fits a GP to observations y[i] = f(X[i]) + noise. X: n vectors of D bits (0/1), n >= 1.
 * Without opts.hyper the hyperparameters maximise the log marginal likelihood.
 */
export function fitGp(
  X: readonly (readonly number[])[],
  y: readonly number[],
  opts: GpOptions = {},
): Gp {
  const kernel = opts.kernel ?? "matern52";
  const data = prepareData(X, y);
  const hyper = opts.hyper ?? fitHyper(data, kernel);
  return new BinaryGp(data, kernel, hyper);
}

// --- data ----------------------------------------------------------------------------------------

/** Validated, standardised training data with its pairwise Hamming distances. */
interface TrainingData {
  X: readonly (readonly number[])[];
  dims: number;
  /** Mean and population standard deviation of y (std 1 when y has no spread). */
  yMean: number;
  yStd: number;
  /** (y - yMean) / yStd, length n. */
  yStandard: Float64Array;
  /** distances[i][j]: Hamming distance between X[i] and X[j], n x n. */
  distances: Int32Array[];
}

function prepareData(X: readonly (readonly number[])[], y: readonly number[]): TrainingData {
  const n = X.length;
  if (n === 0) throw new Error("fitGp needs at least one observation");
  if (y.length !== n) throw new Error(`fitGp got ${n} inputs but ${y.length} targets`);
  const dims = X[0].length;
  for (const [i, x] of X.entries()) {
    if (x.length !== dims) throw new Error(`input ${i} has ${x.length} bits, expected ${dims}`);
    if (x.some((bit) => bit !== 0 && bit !== 1)) throw new Error(`input ${i} is not a 0/1 vector`);
    if (!Number.isFinite(y[i])) throw new Error(`target ${i} is not a finite number: ${y[i]}`);
  }
  const yMean = y.reduce((sum, v) => sum + v, 0) / n;
  const spread = Math.sqrt(y.reduce((sum, v) => sum + (v - yMean) ** 2, 0) / n);
  const yStd = spread > 1e-12 * Math.max(1, Math.abs(yMean)) ? spread : 1;
  const yStandard = Float64Array.from(y, (v) => (v - yMean) / yStd);
  const distances = X.map((a) => Int32Array.from(X, (b) => hammingDistance(a, b)));
  return { X, dims, yMean, yStd, yStandard, distances };
}

/** corr(distance(h) / lengthscale) for every Hamming distance h = 0..D. */
function correlationByDistance(
  kernel: KernelName,
  dims: number,
  lengthscale: number,
): Float64Array {
  return Float64Array.from(
    { length: dims + 1 },
    (_, h) => kernelCorrelation(kernel, kernelDistance(kernel, h, dims) / lengthscale),
  );
}

// --- the factorised covariance -----------------------------------------------------------------

/** Jitter added to the diagonal, relative to the signal variance, tried in order. */
const JITTER_STEPS = [0, 1e-10, 1e-8, 1e-6, 1e-4];

/**
 * Cholesky of K = signalVariance * C + (noiseVariance + jitter) I with C[i][j] = corr(distance),
 * raising the jitter until K is numerically positive definite.
 */
function factorise(
  data: TrainingData,
  correlation: Float64Array,
  signalVariance: number,
  noiseVariance: number,
): { cholesky: CholeskyDecomposition; jitter: number } {
  const n = data.X.length;
  for (const step of JITTER_STEPS) {
    const jitter = step * signalVariance;
    const K = new Matrix(n, n);
    for (let i = 0; i < n; i++) {
      const row = data.distances[i];
      for (let j = 0; j < n; j++) K.set(i, j, signalVariance * correlation[row[j]]);
      K.set(i, i, K.get(i, i) + noiseVariance + jitter);
    }
    const cholesky = new CholeskyDecomposition(K);
    if (cholesky.isPositiveDefinite()) return { cholesky, jitter };
  }
  throw new Error("GP covariance is not positive definite even with jitter");
}

/** log det K = 2 * sum(log diag(L)). */
function logDeterminant(cholesky: CholeskyDecomposition): number {
  const L = cholesky.lowerTriangularMatrix;
  let sum = 0;
  for (let i = 0; i < L.rows; i++) sum += Math.log(L.get(i, i));
  return 2 * sum;
}

/** K^-1 v for a vector v (length n), via the library's triangular solves. */
function solveVector(cholesky: CholeskyDecomposition, v: Float64Array): Float64Array {
  return Float64Array.from(cholesky.solve(Matrix.columnVector(Array.from(v))).getColumn(0));
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i] * b[i];
  return sum;
}

const LOG_2PI = Math.log(2 * Math.PI);

// --- the GP --------------------------------------------------------------------------------------

class BinaryGp implements Gp {
  readonly dims: number;
  readonly jitter: number;
  readonly hyper: Readonly<GpHyper>;
  readonly #data: TrainingData;
  readonly #correlation: Float64Array;
  readonly #cholesky: CholeskyDecomposition;
  /** K^-1 y_std, length n. */
  readonly #alpha: Float64Array;
  /** K^-1, n x n row-major, computed at the first prediction. */
  #inverse?: Float64Array;
  readonly #logMarginalLikelihood: number;

  constructor(data: TrainingData, readonly kernel: KernelName, hyper: GpHyper) {
    for (const [name, value] of Object.entries(hyper)) {
      if (!(value > 0) || !Number.isFinite(value)) {
        throw new Error(`GP hyperparameter ${name} must be a positive number, got ${value}`);
      }
    }
    this.#data = data;
    this.dims = data.dims;
    this.hyper = { ...hyper };
    this.#correlation = correlationByDistance(kernel, data.dims, hyper.lengthscale);
    const { cholesky, jitter } = factorise(
      data,
      this.#correlation,
      hyper.signalVariance,
      hyper.noiseVariance,
    );
    this.#cholesky = cholesky;
    this.jitter = jitter;
    this.#alpha = solveVector(cholesky, data.yStandard);
    const n = data.X.length;
    this.#logMarginalLikelihood = -0.5 * dot(data.yStandard, this.#alpha) -
      0.5 * logDeterminant(cholesky) - 0.5 * n * LOG_2PI;
  }

  logMarginalLikelihood(): number {
    return this.#logMarginalLikelihood;
  }

  predict(x: readonly number[]): Prediction {
    const data = this.#data;
    if (x.length !== this.dims) {
      throw new Error(`GP input has ${x.length} bits, expected ${this.dims}`);
    }
    // k*[i] = k(x, X[i]) in standardised units.
    const cross = Float64Array.from(
      data.X,
      (xi) => this.hyper.signalVariance * this.#correlation[hammingDistance(x, xi)],
    );
    const n = cross.length;
    const inverse = this.#inverse ??= Float64Array.from(
      this.#cholesky.solve(Matrix.eye(n)).to2DArray().flat(),
    );
    let explained = 0; // k*^T K^-1 k*
    for (let i = 0; i < n; i++) {
      let row = 0;
      for (let j = 0, at = i * n; j < n; j++, at++) row += inverse[at] * cross[j];
      explained += cross[i] * row;
    }
    const meanStandard = dot(cross, this.#alpha);
    const varianceStandard = Math.max(0, this.hyper.signalVariance - explained);
    return {
      mean: data.yMean + data.yStd * meanStandard,
      variance: data.yStd * data.yStd * varianceStandard,
    };
  }
}

// --- hyperparameter fitting ----------------------------------------------------------------------

const LENGTHSCALE_GRID = [0.1, 0.25, 0.6, 1.5, 4];
const NOISE_RATIO_GRID = [1e-6, 1e-3, 0.03, 0.5];
const LENGTHSCALE_BOUNDS = [0.01, 20] as const;
const NOISE_RATIO_BOUNDS = [1e-8, 10] as const;
/** Floor on the fitted signal variance (data variance is 1), for targets with no spread. */
const MIN_SIGNAL_VARIANCE = 1e-6;
/** Most passes of the refinement after the grid (each pass: 4 likelihood evaluations). */
const MAX_REFINE_PASSES = 24;

/**
 * Maximises the log marginal likelihood over (lengthscale, noise ratio g = noise / signal), with
 * the signal variance at its closed-form maximiser s2 = y^T (C + g I)^-1 y / n; the profile is
 * -n/2 log s2 - 1/2 log det(C + g I) - n/2 - n/2 log 2 pi.
 */
function fitHyper(data: TrainingData, kernel: KernelName): GpHyper {
  const n = data.X.length;
  const profile = (logLengthscale: number, logNoiseRatio: number) => {
    const correlation = correlationByDistance(kernel, data.dims, Math.exp(logLengthscale));
    const { cholesky } = factorise(data, correlation, 1, Math.exp(logNoiseRatio));
    const quadratic = dot(data.yStandard, solveVector(cholesky, data.yStandard));
    const signalVariance = Math.max(quadratic / n, MIN_SIGNAL_VARIANCE);
    const logLikelihood = -0.5 * n * Math.log(signalVariance) - 0.5 * logDeterminant(cholesky) -
      0.5 * quadratic / signalVariance - 0.5 * n * LOG_2PI;
    return { logLikelihood, signalVariance };
  };

  let best = { logLengthscale: 0, logNoiseRatio: 0, logLikelihood: -Infinity };
  for (const lengthscale of LENGTHSCALE_GRID) {
    for (const noiseRatio of NOISE_RATIO_GRID) {
      const point = { logLengthscale: Math.log(lengthscale), logNoiseRatio: Math.log(noiseRatio) };
      const { logLikelihood } = profile(point.logLengthscale, point.logNoiseRatio);
      if (logLikelihood > best.logLikelihood) best = { ...point, logLikelihood };
    }
  }

  // Coordinate pattern search in log space: try a step either way along each coordinate, keep
  // any gain, halve the step after a pass without one.
  const bounds = {
    logLengthscale: LENGTHSCALE_BOUNDS.map(Math.log),
    logNoiseRatio: NOISE_RATIO_BOUNDS.map(Math.log),
  };
  let step = Math.log(2);
  for (let pass = 0; pass < MAX_REFINE_PASSES && step > Math.log(1.05); pass++) {
    let improved = false;
    for (const coordinate of ["logLengthscale", "logNoiseRatio"] as const) {
      for (const direction of [1, -1]) {
        const [low, high] = bounds[coordinate];
        const moved = Math.min(high, Math.max(low, best[coordinate] + direction * step));
        const candidate = { ...best, [coordinate]: moved };
        const { logLikelihood } = profile(candidate.logLengthscale, candidate.logNoiseRatio);
        if (logLikelihood > best.logLikelihood) {
          best = { ...candidate, logLikelihood };
          improved = true;
        }
      }
    }
    if (!improved) step /= 2;
  }

  const { signalVariance } = profile(best.logLengthscale, best.logNoiseRatio);
  return {
    signalVariance,
    lengthscale: Math.exp(best.logLengthscale),
    noiseVariance: Math.exp(best.logNoiseRatio) * signalVariance,
  };
}
