/**
 * CPU reference for kernels/sample.wgsl, written the obvious (sort-based) way with HF transformers'
 * semantics and order: repetition penalty -> temperature -> top-k -> top-p -> min-p. Plus a
 * chi-squared goodness-of-fit test for comparing GPU draws against the reference distribution.
 */

/** Sampling settings, HF names; unset fields are off. Temperature 0 is greedy. */
export interface ReferenceSampling {
  temperature?: number;
  topK?: number;
  topP?: number;
  minP?: number;
  repetitionPenalty?: number;
}

/** HF RepetitionPenaltyLogitsProcessor: for context tokens, l / r if l > 0, else l * r. */
export function applyRepetitionPenalty(
  logits: ArrayLike<number>,
  presence: ArrayLike<number> | undefined,
  penalty: number,
): Float64Array {
  const out = Float64Array.from(logits);
  if (!presence || penalty === 1) return out;
  for (let i = 0; i < out.length; i++) {
    if (presence[i]) out[i] = out[i] > 0 ? out[i] / penalty : out[i] * penalty;
  }
  return out;
}

/** Index of the largest value; the lowest index on ties. */
export function argmax(values: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < values.length; i++) if (values[i] > values[best]) best = i;
  return best;
}

function softmax(logits: Float64Array): Float64Array {
  let m = -Infinity;
  for (const l of logits) m = Math.max(m, l);
  const out = logits.map((l) => Math.exp(l - m));
  const total = out.reduce((a, b) => a + b, 0);
  return out.map((e) => e / total);
}

/** Token ids sorted by value, ascending (stable: lower id first on ties). */
function ascending(values: Float64Array): number[] {
  return [...values.keys()].sort((a, b) => values[a] - values[b]);
}

/** The probability of each token after all processing; one-hot at the argmax when greedy. */
export function processedDistribution(
  logits: ArrayLike<number>,
  s: ReferenceSampling,
  presence?: ArrayLike<number>,
): Float64Array {
  const l = applyRepetitionPenalty(logits, presence, s.repetitionPenalty ?? 1);
  const vocab = l.length;
  const temperature = s.temperature ?? 1;
  if (temperature === 0) {
    const out = new Float64Array(vocab);
    out[argmax(l)] = 1;
    return out;
  }
  for (let i = 0; i < vocab; i++) l[i] /= temperature;

  // TopKLogitsWarper: remove scores < the k-th largest score (ties at the k-th are kept).
  const topK = s.topK ?? 0;
  if (topK > 0) {
    const kth = ascending(l).map((i) => l[i])[vocab - Math.min(topK, vocab)];
    for (let i = 0; i < vocab; i++) if (l[i] < kth) l[i] = -Infinity;
  }

  // TopPLogitsWarper: sort ascending, remove tokens whose cumulative probability <= 1 - top_p,
  // always keeping the most likely token.
  const topP = s.topP ?? 1;
  if (topP < 1) {
    const order = ascending(l);
    const probs = softmax(l);
    let cumulative = 0;
    order.forEach((id, rank) => {
      cumulative += probs[id];
      if (cumulative <= 1 - topP && rank < vocab - 1) l[id] = -Infinity;
    });
  }

  // MinPLogitsWarper: remove tokens with prob < min_p * max prob, probs from the filtered logits.
  const minP = s.minP ?? 0;
  if (minP > 0) {
    const probs = softmax(l);
    const threshold = minP * Math.max(...probs);
    const best = argmax(l);
    for (let i = 0; i < vocab; i++) if (probs[i] < threshold && i !== best) l[i] = -Infinity;
  }
  return softmax(l);
}

export interface ChiSquared {
  statistic: number;
  /** Pooled bins minus one. */
  df: number;
  pValue: number;
}

/**
 * Pearson's chi-squared goodness of fit of `counts` (draws per token) against `probs`. Bins with an
 * expected count below 5 are pooled: taken in order of decreasing expected count, grouped until a
 * group reaches 5, a short last group joining the previous one. A draw of a token with probability
 * 0 makes the statistic infinite (p = 0). The p-value is the exact upper tail, Q(df / 2, x / 2).
 */
export function chiSquared(counts: ArrayLike<number>, probs: ArrayLike<number>): ChiSquared {
  let n = 0;
  for (let i = 0; i < counts.length; i++) n += counts[i];
  const bins: { observed: number; expected: number }[] = [];
  const small: number[] = [];
  let impossible = false;
  for (let i = 0; i < probs.length; i++) {
    const expected = n * probs[i];
    if (expected >= 5) bins.push({ observed: counts[i], expected });
    else if (expected > 0) small.push(i);
    else if (counts[i] > 0) impossible = true;
  }
  small.sort((a, b) => probs[b] - probs[a]);
  let pool = { observed: 0, expected: 0 };
  for (const i of small) {
    pool.observed += counts[i];
    pool.expected += n * probs[i];
    if (pool.expected >= 5) {
      bins.push(pool);
      pool = { observed: 0, expected: 0 };
    }
  }
  if (pool.expected > 0) {
    const last = bins[bins.length - 1];
    if (last) {
      last.observed += pool.observed;
      last.expected += pool.expected;
    } else bins.push(pool);
  }
  const df = bins.length - 1;
  if (impossible) return { statistic: Infinity, df, pValue: 0 };
  const statistic = bins.reduce((x, b) => x + (b.observed - b.expected) ** 2 / b.expected, 0);
  return { statistic, df, pValue: df > 0 ? chiSquaredSurvival(statistic, df) : 1 };
}

/** P(X >= x) for X ~ chi-squared(df): the regularized upper incomplete gamma Q(df / 2, x / 2). */
export function chiSquaredSurvival(x: number, df: number): number {
  return upperGammaQ(df / 2, x / 2);
}

const LANCZOS = [
  0.99999999999980993,
  676.5203681218851,
  -1259.1392167224028,
  771.32342877765313,
  -176.61502916214059,
  12.507343278686905,
  -0.13857109526572012,
  9.9843695780195716e-6,
  1.5056327351493116e-7,
];

/** ln Γ(z) for z > 0 (Lanczos, g = 7). */
function lnGamma(z: number): number {
  z -= 1;
  let sum = LANCZOS[0];
  for (let i = 1; i < LANCZOS.length; i++) sum += LANCZOS[i] / (z + i);
  const t = z + 7.5;
  return 0.5 * Math.log(2 * Math.PI) + (z + 0.5) * Math.log(t) - t + Math.log(sum);
}

/** Q(a, x) = Γ(a, x) / Γ(a): series for x < a + 1, else Lentz's continued fraction (NR 6.2). */
function upperGammaQ(a: number, x: number): number {
  if (x <= 0) return 1;
  const front = Math.exp(-x + a * Math.log(x) - lnGamma(a));
  if (x < a + 1) {
    let term = 1 / a;
    let sum = term;
    for (let n = 1; n < 10000 && Math.abs(term) > Math.abs(sum) * 1e-16; n++) {
      term *= x / (a + n);
      sum += term;
    }
    return Math.max(0, 1 - front * sum);
  }
  const tiny = 1e-300;
  let b = x + 1 - a;
  let c = 1 / tiny;
  let d = 1 / b;
  let h = d;
  for (let i = 1; i < 10000; i++) {
    const an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (Math.abs(d) < tiny) d = tiny;
    c = b + an / c;
    if (Math.abs(c) < tiny) c = tiny;
    d = 1 / d;
    const delta = d * c;
    h *= delta;
    if (Math.abs(delta - 1) < 1e-16) break;
  }
  return front * h;
}
