/**
 * Acquisition functions for maximising an objective from a GP posterior (mean, variance at a
 * point, in the objective's units). Larger is more worth evaluating.
 */

import type { Prediction } from "./gp.ts";

export type AcquisitionName = "ei" | "ucb";

/** Standard normal density. */
export function normalPdf(z: number): number {
  return Math.exp(-0.5 * z * z) / Math.sqrt(2 * Math.PI);
}

/**
 * Standard normal distribution function, Phi(z) = erfc(-z / sqrt 2) / 2, with erfc from the
 * Chebyshev fit in Numerical Recipes (fractional error below 1.2e-7 everywhere).
 */
export function normalCdf(z: number): number {
  const x = Math.abs(z) / Math.SQRT2;
  const t = 1 / (1 + 0.5 * x);
  const erfcOfX = t * Math.exp(
    -x * x - 1.26551223 +
      t * (1.00002368 +
          t * (0.37409196 +
              t * (0.09678418 +
                  t * (-0.18628806 +
                      t * (0.27886807 +
                          t *
                            (-1.13520398 +
                              t * (1.48851587 + t * (-0.82215223 + t * 0.17087277)))))))),
  );
  return z >= 0 ? 1 - 0.5 * erfcOfX : 0.5 * erfcOfX;
}

/**
 * Expected improvement over `best` (maximisation), E[max(0, f - best - xi)] for f ~ N(mean,
 * variance): with s = sqrt(variance), u = mean - best - xi and z = u / s, EI = u Phi(z) + s phi(z);
 * at variance 0 it is max(0, u).
 */
export function expectedImprovement(prediction: Prediction, best: number, xi = 0): number {
  const improvement = prediction.mean - best - xi;
  const std = Math.sqrt(prediction.variance);
  if (!(std > 0)) return Math.max(0, improvement);
  const z = improvement / std;
  return Math.max(0, improvement * normalCdf(z) + std * normalPdf(z));
}

/** Upper confidence bound, mean + beta * std. */
export function upperConfidenceBound(prediction: Prediction, beta = 2): number {
  return prediction.mean + beta * Math.sqrt(prediction.variance);
}
