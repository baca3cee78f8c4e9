import assert from "node:assert/strict";
import { readU32, storageBuffer } from "../src/gpu/buffers.ts";
import { openGpu } from "../src/gpu/device.ts";
import { ABSENT } from "../src/generate/decode.ts";
import { GREEDY, Recorder, sampleOp, type SamplingParams, STATE_BYTES } from "../src/gpu/ops.ts";
import { Pipelines } from "../src/gpu/shader.ts";
import { mulberry32 } from "./reference/cpu_ops.ts";
import {
  applyRepetitionPenalty,
  argmax,
  chiSquared,
  chiSquaredSurvival,
  processedDistribution,
} from "./reference/sampling.ts";

// --- helpers ---------------------------------------------------------------------------------

/** Draws per chi-squared configuration; each configuration is one command buffer. */
const DRAWS = 4000;
const VERBOSE = Deno.env.get("SAMPLING_TEST_VERBOSE") === "1";

let opened: Promise<{ device: GPUDevice; pipelines: Pipelines }> | undefined;
function gpu() {
  opened ??= openGpu().then(({ device }) => ({ device, pipelines: new Pipelines(device) }));
  return opened;
}

/** `count` logits ~ N(0, scale²) (Box-Muller), reproducible from `seed`. */
function randomLogits(count: number, seed: number, scale = 1.5): Float32Array {
  const random = mulberry32(seed);
  return Float32Array.from(
    { length: count },
    () => scale * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random()),
  );
}

function sampling(s: Partial<SamplingParams>): SamplingParams {
  return { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: 1, ...s };
}

interface Run {
  /** Logits (rows, vocab); the sampler reads row `row`. */
  logits: Float32Array;
  vocab: number;
  row?: number;
  sampling: SamplingParams;
  /** Draws recorded into one command buffer. */
  count: number;
  /** Flags: 1 for tokens in the context. */
  presence?: Uint32Array;
  /** The raw presence buffer (first positions), instead of flags. */
  presencePositions?: Uint32Array<ArrayBuffer>;
  markPresence?: boolean;
  /** Initial { pos, n, out_index, pad }. */
  state?: number[];
}

const UNWRITTEN = 0xffffffff;

/** The GPU's presence buffer for context flags: position 0 for flagged tokens, else ABSENT. */
function presencePositions(
  flags: Uint32Array | undefined,
  vocab: number,
): Uint32Array<ArrayBuffer> {
  return flags
    ? Uint32Array.from(flags, (f) => f ? 0 : ABSENT)
    : new Uint32Array(vocab).fill(ABSENT);
}

/** Records `count` sampler dispatches in one pass and reads back every buffer it writes. */
async function runSampler(r: Run) {
  const { device, pipelines } = await gpu();
  const initial = Uint32Array.from(r.state ?? [0, 1, 0, 0]);
  const outLength = initial[2] + r.count;
  const state = storageBuffer(device, STATE_BYTES, "state");
  const logits = storageBuffer(device, r.logits.byteLength, "logits");
  const presence = storageBuffer(device, r.vocab * 4, "presence");
  const ids = storageBuffer(device, 4, "ids");
  const outTokens = storageBuffer(device, outLength * 4, "out_tokens");
  device.queue.writeBuffer(state, 0, initial);
  device.queue.writeBuffer(logits, 0, new Float32Array(r.logits));
  device.queue.writeBuffer(
    presence,
    0,
    r.presencePositions ?? presencePositions(r.presence, r.vocab),
  );
  device.queue.writeBuffer(ids, 0, new Uint32Array([UNWRITTEN]));
  device.queue.writeBuffer(outTokens, 0, new Uint32Array(outLength).fill(UNWRITTEN));
  const op = sampleOp({ device, pipelines, state }, {
    vocab: r.vocab,
    logits,
    logitsRow: r.row,
    presence,
    ids,
    outTokens,
    sampling: r.sampling,
    markPresence: r.markPresence,
  });
  const encoder = device.createCommandEncoder();
  const rec = new Recorder(encoder.beginComputePass());
  for (let i = 0; i < r.count; i++) op.record(rec, 1);
  rec.pass.end();
  device.queue.submit([encoder.finish()]);
  const result = {
    outTokens: await readU32(device, outTokens, outLength),
    tokens: new Uint32Array(0),
    state: [...await readU32(device, state, 4)],
    presence: await readU32(device, presence, r.vocab),
    ids: await readU32(device, ids, 1),
  };
  result.tokens = result.outTokens.slice(initial[2]);
  for (const b of [state, logits, presence, ids, outTokens]) b.destroy();
  return result;
}

/** The tokens of `count` draws from one row of logits. */
async function draw(r: Run): Promise<Uint32Array> {
  return (await runSampler({ markPresence: false, ...r })).tokens;
}

function histogram(tokens: Uint32Array, vocab: number): Float64Array {
  const counts = new Float64Array(vocab);
  for (const t of tokens) {
    assert.ok(t < vocab, `token ${t} is outside the vocabulary of ${vocab}`);
    counts[t]++;
  }
  return counts;
}

/** Presence flags: every `stride`-th token plus the `top` most likely ones. */
function presenceOf(logits: Float32Array, stride: number, top: number): Uint32Array {
  const presence = Uint32Array.from(logits, (_, i) => i % stride === 0 ? 1 : 0);
  const byValue = [...logits.keys()].sort((a, b) => logits[b] - logits[a]);
  for (const id of byValue.slice(0, top)) presence[id] = 1;
  return presence;
}

const support = (p: Float64Array) => p.filter((x) => x > 0).length;

// --- chi-squared configurations ----------------------------------------------------------------

interface Config {
  name: string;
  vocab: number;
  /** (rows, vocab) logits; the sampler reads `row`. */
  logits: Float32Array;
  row: number;
  sampling: SamplingParams;
  presence?: Uint32Array;
}

/** A configuration whose logits come from `seed`; `presence` is computed from the sampled row. */
function config(
  c: Pick<Config, "name" | "vocab" | "sampling"> & {
    seed: number;
    rows?: number;
    row?: number;
    presence?: (row: Float32Array) => Uint32Array;
  },
): Config {
  const { seed, rows = 1, row = 0 } = c;
  const logits = randomLogits(rows * c.vocab, seed);
  const presence = c.presence?.(logits.subarray(row * c.vocab, (row + 1) * c.vocab));
  return { name: c.name, vocab: c.vocab, sampling: c.sampling, logits, row, presence };
}

const CONFIGS = {
  temperature: config({
    name: "temperature 0.7",
    vocab: 1000,
    seed: 11,
    sampling: sampling({ temperature: 0.7, seed: 101 }),
  }),
  topK: config({
    name: "top-k 20 (vocab 333, logits row 2 of 3)",
    vocab: 333,
    seed: 12,
    rows: 3,
    row: 2,
    sampling: sampling({ topK: 20, seed: 102 }),
  }),
  topP: config({
    name: "top-p 0.9",
    vocab: 1000,
    seed: 21, // the cumulative probability is >= 2e-4 from 0.9 at every token: f32 can't flip it
    sampling: sampling({ topP: 0.9, seed: 103 }),
  }),
  minP: config({
    name: "min-p 0.05 (vocab 3001)",
    vocab: 3001,
    seed: 14,
    sampling: sampling({ minP: 0.05, seed: 104 }),
  }),
  repetition: config({
    name: "repetition penalty 1.3 and a presence set",
    vocab: 1000,
    seed: 15,
    sampling: sampling({ repetitionPenalty: 1.3, seed: 105 }),
    presence: (logits) => presenceOf(logits, 7, 5),
  }),
  combined: config({
    name: "repetition penalty, temperature, top-k, top-p and min-p combined (vocab 3001)",
    vocab: 3001,
    seed: 16,
    sampling: sampling({
      repetitionPenalty: 1.3,
      temperature: 0.8,
      topK: 100,
      topP: 0.9,
      minP: 0.15,
      seed: 106,
    }),
    presence: (logits) => presenceOf(logits, 5, 3),
  }),
  /** For the negative control: the temperature 0.7 logits, drawn at temperature 1. */
  hotter: config({
    name: "temperature 1.0",
    vocab: 1000,
    seed: 11,
    sampling: sampling({ temperature: 1, seed: 107 }),
  }),
};

function reference(c: Config, s: Partial<SamplingParams> = c.sampling): Float64Array {
  const row = c.logits.subarray(c.row * c.vocab, (c.row + 1) * c.vocab);
  return processedDistribution(row, s, c.presence);
}

/** GPU draws per configuration, made once and shared by the tests that need them. */
const drawn = new Map<Config, Promise<Uint32Array>>();
function drawsOf(c: Config): Promise<Uint32Array> {
  let tokens = drawn.get(c);
  if (!tokens) {
    tokens = draw({
      logits: c.logits,
      vocab: c.vocab,
      row: c.row,
      sampling: c.sampling,
      count: DRAWS,
      presence: c.presence,
    });
    drawn.set(c, tokens);
  }
  return tokens;
}

async function assertMatches(c: Config) {
  const probs = reference(c);
  const counts = histogram(await drawsOf(c), c.vocab);
  counts.forEach((n, id) => {
    assert.ok(n === 0 || probs[id] > 0, `${c.name}: drew token ${id} (${n}x), probability 0`);
  });
  const fit = chiSquared(counts, probs);
  if (VERBOSE) console.log(`${c.name}: support ${support(probs)}`, fit);
  assert.ok(fit.df >= 5, `${c.name}: only ${fit.df + 1} bins`);
  assert.ok(fit.pValue > 0.001, `${c.name}: chi² ${fit.statistic} df ${fit.df} p ${fit.pValue}`);
}

// --- tests -------------------------------------------------------------------------------------

Deno.test("the chi-squared p-value matches textbook critical values", () => {
  for (
    const [x, df, p] of [
      [3.841459, 1, 0.05],
      [6.634897, 1, 0.01],
      [18.307038, 10, 0.05],
      [23.209251, 10, 0.01],
      [124.342113, 100, 0.05],
      [2, 2, Math.exp(-1)],
    ]
  ) {
    assert.ok(Math.abs(chiSquaredSurvival(x, df) - p) < 1e-6 * Math.max(1, p / 1e-3), `${x} ${df}`);
  }
  assert.equal(chiSquaredSurvival(0, 3), 1);
  // Counts exactly as expected fit perfectly; a draw of an impossible token fits not at all.
  const probs = [0.5, 0.25, 0.125, 0.125, 0];
  assert.deepEqual(chiSquared([400, 200, 100, 100, 0], probs), {
    statistic: 0,
    df: 3,
    pValue: 1,
  });
  assert.equal(chiSquared([400, 200, 100, 99, 1], probs).pValue, 0);
  // Bins under 5 expected are pooled: 100 tokens of 1 expected each become 20 bins.
  const pooled = chiSquared(new Array(100).fill(1), new Array(100).fill(0.01));
  assert.equal(pooled.df, 19);
});

Deno.test("the same seed gives the same tokens and different seeds give different sequences", async () => {
  const logits = randomLogits(1000, 21, 1);
  const run = (seed: number) =>
    draw({ logits, vocab: 1000, sampling: sampling({ seed }), count: 256 });
  const [a, again, b, c] = await Promise.all([run(42), run(42), run(43), run(2 ** 31 + 42)]);
  assert.deepEqual(again, a);
  assert.ok(new Set(a).size > 150, `only ${new Set(a).size} distinct tokens in 256 draws`);
  for (const other of [b, c]) {
    const same = a.filter((t, i) => other[i] === t).length;
    assert.ok(same < 26, `${same} of 256 draws agree across seeds`);
  }
});

Deno.test("temperature 0 picks the CPU argmax for vocab sizes 333, 1000 and 3001", async () => {
  for (const vocab of [333, 1000, 3001]) {
    const cases: Float32Array[] = [randomLogits(vocab, vocab + 1)];
    const last = randomLogits(vocab, vocab + 2);
    last[vocab - 1] = 100; // in the last, partly filled chunk
    const negative = randomLogits(vocab, vocab + 3).map((l) => l - 1000); // all far below 0
    const first = randomLogits(vocab, vocab + 4);
    first[0] = 100;
    cases.push(last, negative, first);
    for (const logits of cases) {
      const { tokens } = await runSampler({ logits, vocab, sampling: GREEDY, count: 1 });
      assert.equal(tokens[0], argmax(logits), `vocab ${vocab}`);
    }
    // Row 1 of a two-row buffer.
    const two = randomLogits(2 * vocab, vocab + 5);
    const { tokens } = await runSampler({ logits: two, vocab, row: 1, sampling: GREEDY, count: 1 });
    assert.equal(tokens[0], argmax(two.subarray(vocab)), `vocab ${vocab}, row 1`);
  }
});

Deno.test("temperature 0 breaks ties toward the lowest id", async () => {
  const ties: [number, number[]][] = [
    [1000, [900, 17]], // in different invocations' chunks
    [1000, [5, 4]], // in the same chunk
    [1000, [999, 512, 256]], // chunks of lids 249, 128, 64: the tree meets 512 before 256
    [333, [332, 200, 2]],
    [3001, [3000, 2999, 1500]],
    [3001, [11, 12, 13]],
  ];
  for (const [vocab, ids] of ties) {
    const logits = randomLogits(vocab, vocab + ids[0]);
    for (const id of ids) logits[id] = 50;
    const { tokens } = await runSampler({ logits, vocab, sampling: GREEDY, count: 1 });
    assert.equal(tokens[0], Math.min(...ids), `vocab ${vocab}, tied ${ids}`);
  }
});

Deno.test("temperature 0 over quads of logits: ties within, across and past quads, tiny vocabularies, large values", async () => {
  // The greedy pass reads quads of ids 4q .. 4q + 3 (vec4 loads when V % 4 == 0), lane l taking
  // quads l, l + 8, ...: ties in one quad, in one column of different quads (same or other lane),
  // and a last quad only partly inside the vocabulary.
  for (const vocab of [1, 2, 3, 4, 5, 7, 8, 31, 33, 64, 333, 1024, 1026, 1027]) {
    const cases: [string, Float32Array, number][] = [];
    const random = randomLogits(vocab, vocab + 61);
    cases.push(["random", random, argmax(random)]);
    cases.push(["all equal", new Float32Array(vocab).fill(0.5), 0]);
    const tiedSets = [
      [vocab - 1, vocab - 2], // the last quad, maybe partial
      [vocab - 1, 1], // first and last quads
      [33, 1], // column 1 of quads 0 and 8: the same lane
      [37, 5], // column 1 of quads 1 and 9: lane 1
      [6, 5, 7], // one quad
      [36, 3], // quad 9, column 0 and quad 0, column 3
    ];
    for (const ids of tiedSets.map((t) => t.filter((id) => id >= 0 && id < vocab))) {
      if (ids.length === 0) continue;
      const logits = randomLogits(vocab, vocab + ids[0]);
      for (const id of ids) logits[id] = 50;
      cases.push([`tied ${ids}`, logits, Math.min(...ids)]);
    }
    // Large magnitudes, no infinities: the largest of ~1e30 values, and all far below zero.
    const huge = randomLogits(vocab, vocab + 62).map((l) => l * 1e30);
    cases.push(["1e30", huge, argmax(huge)]);
    const low = randomLogits(vocab, vocab + 63).map((l) => l * 1e3 - 3e38);
    cases.push(["-3e38", low, argmax(low)]);
    for (const [name, logits, expected] of cases) {
      const { tokens } = await runSampler({ logits, vocab, sampling: GREEDY, count: 1 });
      assert.equal(tokens[0], expected, `vocab ${vocab}, ${name}`);
    }
  }
});

Deno.test("temperature 0 with a repetition penalty picks the argmax of the penalized logits", async () => {
  const penalty = 1.3;
  for (const vocab of [1000, 999]) { // whole quads, and a partial last quad
    // Positive logits are divided: the raw best (5) falls below the runner-up (4.5).
    const positive = randomLogits(vocab, 31);
    positive[100] = 5;
    positive[700] = 4.5;
    // Negative logits are multiplied: all below 0, the raw best (-1) falls below -1.2.
    const negative = randomLogits(vocab, 32).map((l) => -Math.abs(l) - 2);
    negative[300] = -1;
    negative[40] = -1.2;
    for (const [logits, best] of [[positive, 100], [negative, 300]] as const) {
      const presence = presenceOf(logits, 3, 1);
      const expected = argmax(applyRepetitionPenalty(logits, presence, penalty));
      assert.notEqual(expected, best, "the penalty should change the argmax");
      const { tokens } = await runSampler({
        logits,
        vocab,
        sampling: { ...GREEDY, repetitionPenalty: penalty },
        count: 1,
        presence,
      });
      assert.equal(tokens[0], expected);
    }
  }
  const vocab = 1000;
  // With markPresence, each chosen token is penalized in the following steps.
  const logits = randomLogits(vocab, 33);
  const presence = new Uint32Array(vocab);
  const steps = 8;
  const { tokens } = await runSampler({
    logits,
    vocab,
    sampling: { ...GREEDY, repetitionPenalty: 3 },
    count: steps,
    presence,
    markPresence: true,
  });
  const expected: number[] = [];
  for (let i = 0; i < steps; i++) {
    const token = argmax(applyRepetitionPenalty(logits, presence, 3));
    expected.push(token);
    presence[token] = 1;
  }
  assert.ok(new Set(expected).size > 1, "the penalty should change the greedy sequence");
  assert.deepEqual([...tokens], expected);
});

Deno.test("the repetition penalty counts only tokens at positions up to the sampled row's", async () => {
  // presence holds each token's first position; the forward's last token is at pos + n - 1.
  const vocab = 64;
  const logits = new Float32Array(vocab).fill(-5);
  logits[10] = 3; // penalized to 1 when present
  logits[20] = 2;
  const presence = new Uint32Array(vocab).fill(ABSENT);
  presence[10] = 7;
  const sampler = (pos: number) =>
    runSampler({
      logits,
      vocab,
      sampling: { ...GREEDY, repetitionPenalty: 3 },
      count: 1,
      state: [pos, 1, 0, 0],
      presencePositions: presence,
    });
  assert.equal((await sampler(6)).tokens[0], 10, "token 10 comes after position 6: not penalized");
  assert.equal((await sampler(7)).tokens[0], 20, "token 10 is at position 7: penalized");
  assert.equal((await sampler(30)).tokens[0], 20);
});

Deno.test("top-k 1 with temperature 1 always picks the greedy token", async () => {
  for (const vocab of [333, 1000, 3001]) {
    const logits = randomLogits(vocab, vocab + 41, 1);
    const tokens = await draw({ logits, vocab, sampling: sampling({ topK: 1 }), count: 64 });
    assert.deepEqual(new Set(tokens), new Set([argmax(logits)]), `vocab ${vocab}`);
  }
  // HF keeps every token tied with the k-th largest logit, and so does the kernel.
  const logits = randomLogits(1000, 42, 1);
  logits[123] = logits[876] = 10;
  const tokens = await draw({ logits, vocab: 1000, sampling: sampling({ topK: 1 }), count: 200 });
  assert.deepEqual([...new Set(tokens)].sort((a, b) => a - b), [123, 876]);
});

Deno.test("the combined configuration exercises every filter", () => {
  const c = CONFIGS.combined;
  const s = c.sampling;
  const sizes = [
    reference(c, { ...s, topK: 0, topP: 1, minP: 0 }),
    reference(c, { ...s, topP: 1, minP: 0 }),
    reference(c, { ...s, minP: 0 }),
    reference(c, s),
  ].map(support);
  for (let i = 1; i < sizes.length; i++) assert.ok(sizes[i] < sizes[i - 1], `${sizes}`);
  const unpenalized = reference(c, { ...s, repetitionPenalty: 1 });
  assert.notDeepEqual(unpenalized, reference(c));
});

for (const c of Object.values(CONFIGS)) {
  if (c === CONFIGS.hotter) continue;
  Deno.test(`GPU draws with ${c.name} match the CPU distribution (chi-squared)`, () =>
    assertMatches(c));
}

Deno.test("the chi-squared check has power: it rejects draws from a different distribution", async () => {
  // Temperature 1.0 draws against the temperature 0.7 distribution of the same logits.
  const hot = histogram(await drawsOf(CONFIGS.hotter), 1000);
  const tooHot = chiSquared(hot, reference(CONFIGS.temperature));
  if (VERBOSE) console.log("temperature 1.0 vs 0.7:", tooHot);
  assert.ok(tooHot.pValue < 1e-6, `p ${tooHot.pValue}`);
  // Top-p 0.9 draws against the distribution without top-p.
  const c = CONFIGS.topP;
  const nucleus = histogram(await drawsOf(c), c.vocab);
  const noTopP = chiSquared(nucleus, reference(c, { ...c.sampling, topP: 1 }));
  if (VERBOSE) console.log("top-p 0.9 vs no top-p:", noTopP);
  assert.ok(noTopP.pValue < 1e-6, `p ${noTopP.pValue}`);
});

Deno.test("markPresence records the first position of each chosen token and the state advances", async () => {
  const vocab = 1000;
  const logits = randomLogits(vocab, 51, 1);
  for (const s of [sampling({ seed: 9 }), GREEDY]) {
    const r = await runSampler({ logits, vocab, sampling: s, count: 3, state: [7, 3, 2, 0] });
    // pos: 7 + 3, then + 1, + 1; n = 1; out_index 2 -> 5; pad untouched.
    assert.deepEqual(r.state, [12, 1, 5, 0]);
    assert.deepEqual([...r.outTokens.slice(0, 2)], [UNWRITTEN, UNWRITTEN]);
    assert.ok(r.tokens.every((t) => t < vocab));
    assert.equal(r.ids[0], r.tokens[2]);
    // Each chosen token is marked with the position of its first occurrence: 10, 11, 12.
    const expected = new Uint32Array(vocab).fill(ABSENT);
    r.tokens.forEach((t, i) => expected[t] = Math.min(expected[t], 10 + i));
    assert.deepEqual(r.presence, expected);
  }
  // markPresence: false leaves the presence flags as they were.
  const presence = presenceOf(logits, 4, 0);
  const r = await runSampler({
    logits,
    vocab,
    sampling: sampling({ seed: 9 }),
    count: 3,
    presence,
    markPresence: false,
  });
  assert.deepEqual(r.presence, presencePositions(presence, vocab));
  assert.deepEqual(r.state, [3, 1, 3, 0]);
  assert.equal(r.ids[0], r.tokens[2]);
});
