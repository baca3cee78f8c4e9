/**
 * Speculative decoding (src/generate/speculate.ts and the draft_sample / verify_begin / verify
 * kernels): greedy speculation equals greedy decoding token for token, sampled speculation keeps
 * the target distribution (chi-squared, with a negative control), rollback leaves the K/V cache as
 * a fresh forward would, stops are exact, and the threshold controller follows the rule.
 */
import assert from "node:assert/strict";
import { decode } from "../src/generate/decode.ts";
import {
  type DraftSource,
  speculate,
  type SpeculateOptions,
  type SpeculationStats,
  ThresholdController,
} from "../src/generate/speculate.ts";
import { readU32, storageBuffer } from "../src/gpu/buffers.ts";
import { GREEDY, Recorder, type SamplingParams, STATE_BYTES } from "../src/gpu/ops.ts";
import {
  allocateSpecBuffers,
  destroySpecBuffers,
  draftSampleOp,
  ROUND_LOG,
  SPEC,
  verifyBeginOp,
  verifyOp,
} from "../src/gpu/speculation_ops.ts";
import { Model, NO_SKIP, type SkipSet } from "../src/model/model.ts";
import { ModelTokenizer } from "../src/model/tokenizer.ts";
import { mulberry32 } from "./reference/cpu_ops.ts";
import { chiSquared, processedDistribution } from "./reference/sampling.ts";

const VERBOSE = Deno.env.get("SPECULATE_TEST_VERBOSE") === "1";
const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;

const models = new Map<string, Promise<Model>>();
/** One loaded model per fixture, shared by the tests (generation resets all its state). */
function model(name: string): Promise<Model> {
  if (!models.has(name)) models.set(name, Model.load(fixture(name)));
  return models.get(name)!;
}

async function promptIds(name: string, text: string): Promise<number[]> {
  return (await ModelTokenizer.load(fixture(name))).encode(text);
}

/** A prompt past Gemma-2's 64-token sliding window (the long reference prompt). */
const LONG_PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n" +
  "Speak, speak.\n\nFirst Citizen:\nYou are all resolved rather to die than to famish?\n\n" +
  "All:\nResolved. resolved.\n\nFirst Citizen:\nFirst, you know Caius Marcius is chief enemy " +
  "to the people.\n\nAll:\nWe know't, we know't.\n\nFirst Citizen:\nLet us kill him";

async function greedyDecode(
  m: Model,
  ids: number[],
  maxNewTokens: number,
  stopTokens: number[] = [],
) {
  return await decode(m, ids, { maxNewTokens, sampling: GREEDY, skip: NO_SKIP, stopTokens });
}

function greedySpeculate(
  m: Model,
  ids: number[],
  draft: DraftSource,
  opts: Partial<SpeculateOptions> = {},
) {
  return speculate(m, ids, {
    maxNewTokens: 32,
    sampling: GREEDY,
    draft,
    stopTokens: [],
    ...opts,
  });
}

// --- greedy equality --------------------------------------------------------------------------

interface GreedyCase {
  target: string;
  prompt: string;
  draft: "self" | "tiny-draft";
  skip?: SkipSet;
  draftMax: number;
  adaptive: boolean;
  newTokens: number;
}

const SKIP_LS: SkipSet = { attn: [2, 4, 5, 7, 9, 10], mlp: [3, 5, 6, 8, 9, 10] };
const SKIP_LIGHT: SkipSet = { attn: [5, 9], mlp: [7] };
const SKIP_HEAVY: SkipSet = { attn: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], mlp: [2, 4, 6, 8, 10] };

const GREEDY_CASES: GreedyCase[] = [
  {
    target: "tiny-llama-ls",
    prompt: "ROMEO:\n",
    draft: "self",
    skip: SKIP_LS,
    draftMax: 8,
    adaptive: true,
    newTokens: 40,
  },
  {
    target: "tiny-llama-ls",
    prompt: "ROMEO:\n",
    draft: "self",
    skip: SKIP_HEAVY,
    draftMax: 1,
    adaptive: true,
    newTokens: 24,
  },
  {
    target: "tiny-llama-ls",
    prompt: LONG_PROMPT,
    draft: "self",
    skip: SKIP_LIGHT,
    draftMax: 5,
    adaptive: false,
    newTokens: 32,
  },
  {
    target: "tiny-llama",
    prompt: "JULIET:\nO Romeo, Romeo!",
    draft: "self",
    skip: SKIP_LIGHT,
    draftMax: 8,
    adaptive: true,
    newTokens: 32,
  },
  {
    target: "tiny-llama",
    prompt: "ROMEO:\n",
    draft: "self",
    skip: SKIP_HEAVY,
    draftMax: 3,
    adaptive: false,
    newTokens: 24,
  },
  {
    target: "tiny-gemma2",
    prompt: "ROMEO:\n",
    draft: "self",
    skip: SKIP_LIGHT,
    draftMax: 8,
    adaptive: true,
    newTokens: 32,
  },
  {
    target: "tiny-gemma2",
    prompt: LONG_PROMPT,
    draft: "self",
    skip: SKIP_LS,
    draftMax: 4,
    adaptive: true,
    newTokens: 40,
  },
  {
    target: "tiny-gemma2",
    prompt: LONG_PROMPT,
    draft: "self",
    skip: SKIP_HEAVY,
    draftMax: 1,
    adaptive: false,
    newTokens: 16,
  },
  {
    target: "tiny-llama",
    prompt: "ROMEO:\n",
    draft: "tiny-draft",
    draftMax: 8,
    adaptive: true,
    newTokens: 40,
  },
  {
    target: "tiny-llama",
    prompt: LONG_PROMPT,
    draft: "tiny-draft",
    draftMax: 1,
    adaptive: false,
    newTokens: 24,
  },
  {
    target: "tiny-gemma2",
    prompt: LONG_PROMPT,
    draft: "tiny-draft",
    draftMax: 4,
    adaptive: true,
    newTokens: 40,
  },
];

for (const c of GREEDY_CASES) {
  const what = c.draft === "self"
    ? `self-speculate skip attn [${c.skip!.attn}] mlp [${c.skip!.mlp}]`
    : "speculate with tiny-draft";
  const prompt = c.prompt.length > 40 ? "the long prompt" : JSON.stringify(c.prompt);
  Deno.test(`greedy ${what} on ${c.target}, ${prompt}, draft-max ${c.draftMax}${c.adaptive ? "" : ", fixed gamma"} equals greedy decode`, async () => {
    const target = await model(c.target);
    const ids = await promptIds(c.target, c.prompt);
    const expected = await greedyDecode(target, ids, c.newTokens);
    const draft: DraftSource = c.draft === "self"
      ? { kind: "self", skip: c.skip! }
      : { kind: "model", model: await model(c.draft) };
    const got = await greedySpeculate(target, ids, draft, {
      maxNewTokens: c.newTokens,
      draftMax: c.draftMax,
      adaptive: c.adaptive,
    });
    assert.deepEqual(got.tokens, expected.tokens);
    const st = got.stats;
    assert.equal(st.generatedTokens, c.newTokens);
    assert.equal(st.rounds, got.rounds.length);
    assert.equal(got.rounds.reduce((s, r) => s + r.emitted, 0), c.newTokens);
    for (const r of got.rounds) {
      assert.ok(r.drafted <= c.draftMax && r.accepted <= r.drafted, JSON.stringify(r));
    }
    assert.ok(st.drafted > 0, "the draft must have drafted");
    assert.ok(st.readbacks <= st.rounds, `${st.readbacks} readbacks for ${st.rounds} rounds`);
  });
}

// --- stops, budget and context ------------------------------------------------------------------

Deno.test("speculation stops exactly at max-new-tokens, even mid-round, and never drafts past the budget", async () => {
  const target = await model("tiny-llama-ls");
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const full = (await greedyDecode(target, ids, 20)).tokens;
  for (
    const draft of [{ kind: "self", skip: SKIP_LS }, {
      kind: "model",
      model: await model("tiny-draft"),
    }] as DraftSource[]
  ) {
    for (const budget of [1, 2, 3, 5, 9, 13]) {
      const got = await greedySpeculate(target, ids, draft, { maxNewTokens: budget, draftMax: 8 });
      assert.deepEqual(got.tokens, full.slice(0, budget), `${draft.kind} budget ${budget}`);
      assert.equal(got.stats.stopReason, "max-new-tokens");
      let emitted = 0;
      for (const r of got.rounds) {
        // A round emits at most drafted + 1 tokens, so it drafts at most budget - emitted - 1.
        assert.ok(
          r.drafted <= budget - emitted - 1,
          `budget ${budget}: ${JSON.stringify(got.rounds)}`,
        );
        emitted += r.emitted;
      }
    }
  }
});

Deno.test("a stop token inside a draft ends speculation right after it, as in decode", async () => {
  const target = await model("tiny-llama-ls");
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const full = (await greedyDecode(target, ids, 40)).tokens;
  // Stop at tokens first seen at several depths of the continuation.
  const firstSeen = [...new Set(full)].map((t) => [t, full.indexOf(t)]).filter(([, i]) => i >= 3);
  const picks = [
    firstSeen[0],
    firstSeen[Math.floor(firstSeen.length / 2)],
    firstSeen[firstSeen.length - 1],
  ];
  let midRound = 0;
  for (const [stopToken, at] of picks) {
    const expected = full.slice(0, at + 1);
    const plain = await greedyDecode(target, ids, 40, [stopToken]);
    assert.deepEqual(plain.tokens, expected);
    for (
      const draft of [{ kind: "self", skip: SKIP_LS }, {
        kind: "model",
        model: await model("tiny-draft"),
      }] as DraftSource[]
    ) {
      const got = await greedySpeculate(target, ids, draft, {
        maxNewTokens: 40,
        stopTokens: [stopToken],
      });
      assert.deepEqual(got.tokens, expected, `stop ${stopToken} (${draft.kind})`);
      assert.equal(got.stats.stopReason, "stop-token");
      const last = got.rounds[got.rounds.length - 1];
      if (last.emitted < last.accepted + 1) midRound++; // the stop cut accepted drafts off
    }
  }
  assert.ok(midRound > 0, "at least one stop must fall inside an accepted draft");
});

Deno.test("command buffers of rounds that wrap around the round log's ring read back whole", async () => {
  // A log of 13 slots and up to 12 rounds a command buffer: batches of 8 (slots 0-7), then 12
  // (slots 8-12 and 0-6), ..., so most batches wrap. A misread slot fails speculate() itself (each
  // log entry names its round) or the tokens.
  const target = await Model.load(fixture("tiny-llama-ls"));
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const plain = await greedyDecode(target, ids, 80);
  const got = await greedySpeculate(target, ids, { kind: "self", skip: SKIP_LS }, {
    maxNewTokens: 80,
    roundsPerReadback: 12,
    roundLogSlots: 13,
  });
  assert.deepEqual(got.tokens, plain.tokens);
  assert.ok(got.stats.rounds > 20, `${got.stats.rounds} rounds`);
  assert.ok(got.stats.readbacks >= 3);
  target.destroy();
});

Deno.test("the command buffer that can finish a generation holds the rounds to finish it", async () => {
  // tiny-llama-ls with its tuned skip set and one draft a round (a fixed cap, so the rounds do not
  // depend on measured costs), 48 tokens: 8 rounds in the first command buffer (its streaming
  // limit), the rest in the second (past its limit of 16, which a small model's rounds run
  // through well within STREAM_HOLD_MS). Planned at the mean tokens per round so far, the second
  // buffer fell short and more readbacks of a round or two each followed.
  const target = await model("tiny-llama-ls");
  const skip = JSON.parse(
    await Deno.readTextFile(`${fixture("tiny-llama-ls")}/skip.json`),
  ) as SkipSet;
  const ids = await promptIds(
    "tiny-llama-ls",
    "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?",
  );
  const plain = await greedyDecode(target, ids, 48);
  const got = await greedySpeculate(target, ids, { kind: "self", skip }, {
    maxNewTokens: 48,
    draftMax: 1,
  });
  assert.deepEqual(got.tokens, plain.tokens);
  assert.ok(got.stats.rounds > 8 + 16, `${got.stats.rounds} rounds`);
  assert.equal(got.stats.readbacks, 2);
});

Deno.test("speculation stops at the end of the context, mid-round, like decode", async () => {
  const target = await Model.load(fixture("tiny-llama-ls"), { contextLength: 24 });
  const draftModel = await Model.load(fixture("tiny-draft"), { contextLength: 24 });
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const plain = await greedyDecode(target, ids, 100);
  assert.equal(plain.tokens.length, 24 - ids.length);
  assert.equal(plain.stats.stopReason, "context-full");
  for (
    const draft of [{ kind: "self", skip: SKIP_LS }, {
      kind: "model",
      model: draftModel,
    }] as DraftSource[]
  ) {
    const got = await greedySpeculate(target, ids, draft, { maxNewTokens: 100, draftMax: 8 });
    assert.deepEqual(got.tokens, plain.tokens, draft.kind);
    assert.equal(got.stats.stopReason, "context-full");
  }
  target.destroy();
  draftModel.destroy();
});

// --- rollback -----------------------------------------------------------------------------------

/** The last row of logits of a fresh forward over `ids` from position 0. */
async function freshLastLogits(m: Model, ids: number[]): Promise<Float32Array> {
  m.forward(ids, 0, NO_SKIP, "last");
  return await m.readLogits(1);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let worst = 0;
  for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i] - b[i]));
  return worst;
}

Deno.test("after rejected rounds the K/V caches hold exactly the accepted text (target and separate draft)", async () => {
  const target = await model("tiny-llama");
  const draftModel = await model("tiny-draft");
  const ids = await promptIds("tiny-llama", "ROMEO:\n");
  for (
    const draft of [{ kind: "self", skip: SKIP_HEAVY }, {
      kind: "model",
      model: draftModel,
    }] as DraftSource[]
  ) {
    const got = await greedySpeculate(target, ids, draft, { maxNewTokens: 30, draftMax: 6 });
    assert.ok(got.rounds.some((r) => r.accepted < r.drafted), "some round must reject a draft");
    const text = [...ids, ...got.tokens];
    // The target's cache holds every position but the last token's: continue from it.
    const [pos] = await readU32(target.device, target.state, 1);
    assert.equal(pos, text.length - 1);
    target.forward([text[text.length - 1]], pos, NO_SKIP, "last");
    const continued = await target.readLogits(1);
    const fresh = await freshLastLogits(target, text);
    assert.ok(
      maxAbsDiff(continued, fresh) < 1e-4,
      `target (${draft.kind}): ${maxAbsDiff(continued, fresh)}`,
    );
    if (draft.kind === "model") {
      // The draft's cache is valid below its state.pos (P, or P - 1 after a full acceptance, or
      // as it was when the last round had no room to draft).
      const [draftPos] = await readU32(draftModel.device, draftModel.state, 1);
      assert.ok(draftPos >= text.length - 3 && draftPos < text.length, `${draftPos}`);
      draftModel.forward(text.slice(draftPos), draftPos, NO_SKIP, "last");
      const draftContinued = await draftModel.readLogits(1);
      const draftFresh = await freshLastLogits(draftModel, text);
      assert.ok(maxAbsDiff(draftContinued, draftFresh) < 1e-4, "draft");
    }
  }
});

// --- the threshold controller ---------------------------------------------------------------------

Deno.test("the threshold controller gives the hand-computed values on a scripted acceptance sequence", () => {
  // gamma0 0.8, draft max 4, alpha 0.9. AR = 0.5 AR + 0.5 k/n; gamma' = gamma + 0.01 if AR < 0.9,
  // gamma if n == 4, else gamma - 0.01; gamma = 0.9 gamma + 0.1 gamma'.
  const c = new ThresholdController(0.8, 4, 0.9);
  const script: [number, number, number, number][] = [
    // accepted, drafted, AR, gamma
    [4, 4, 0.5, 0.801],
    [2, 4, 0.5, 0.802],
    [4, 4, 0.75, 0.803],
    [4, 4, 0.875, 0.804],
    [4, 4, 0.9375, 0.804], // AR >= alpha and n == max: unchanged
    [3, 3, 0.96875, 0.803], // AR >= alpha, n < max: down
    [0, 2, 0.484375, 0.804],
  ];
  for (const [accepted, drafted, ar, gamma] of script) {
    c.update(accepted, drafted);
    assert.ok(Math.abs(c.acceptance - ar) < 1e-12, `AR ${c.acceptance} != ${ar}`);
    assert.ok(Math.abs(c.gamma - gamma) < 1e-12, `gamma ${c.gamma} != ${gamma}`);
  }
  c.update(0, 0); // a round without drafts changes nothing
  assert.ok(Math.abs(c.gamma - 0.804) < 1e-12);
});

Deno.test("the GPU's threshold follows the controller round by round, and a fixed threshold stays put", async () => {
  const target = await model("tiny-llama-ls");
  const ids = await promptIds("tiny-llama-ls", LONG_PROMPT);
  const got = await greedySpeculate(target, ids, { kind: "self", skip: SKIP_LS }, {
    maxNewTokens: 48,
    draftMax: 6,
  });
  const c = new ThresholdController(0.8, 6);
  for (const r of got.rounds) {
    c.update(r.accepted, r.drafted);
    assert.ok(Math.abs(r.gamma - c.gamma) < 1e-5, `gpu ${r.gamma} cpu ${c.gamma}`);
  }
  const fixed = await greedySpeculate(target, ids, { kind: "self", skip: SKIP_LS }, {
    maxNewTokens: 24,
    adaptive: false,
    draftThreshold: 0.6,
  });
  assert.ok(fixed.rounds.every((r) => Math.abs(r.gamma - 0.6) < 1e-7));
});

Deno.test("draft exit: threshold 1 drafts one token per round, threshold 0 drafts up to draft-max", async () => {
  const target = await model("tiny-llama-ls");
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const budget = 30;
  const one = await greedySpeculate(target, ids, { kind: "self", skip: SKIP_LS }, {
    maxNewTokens: budget,
    adaptive: false,
    draftThreshold: 1,
  });
  let emitted = 0;
  for (const r of one.rounds) {
    assert.equal(r.drafted, Math.min(1, budget - emitted - 1), JSON.stringify(one.rounds));
    emitted += r.emitted;
  }
  const all = await greedySpeculate(target, ids, { kind: "self", skip: SKIP_LS }, {
    maxNewTokens: budget,
    adaptive: false,
    draftThreshold: 0,
    draftMax: 5,
    stepCap: "draft-max",
  });
  emitted = 0;
  for (const r of all.rounds) {
    assert.equal(r.drafted, Math.min(5, budget - emitted - 1), JSON.stringify(all.rounds));
    emitted += r.emitted;
  }
});

Deno.test("the step cap records few no-op draft steps, where draft-max every round records many; same tokens", async () => {
  const target = await model("tiny-llama-ls");
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const run = (stepCap: "auto" | "draft-max") =>
    greedySpeculate(target, ids, { kind: "self", skip: SKIP_LS }, { maxNewTokens: 40, stepCap });
  const auto = await run("auto");
  const full = await run("draft-max");
  assert.deepEqual(auto.tokens, full.tokens);
  const noOps = (st: SpeculationStats) => st.recordedDraftStepsPerRound - st.draftStepsPerRound;
  assert.equal(full.stats.recordedDraftStepsPerRound, 8);
  assert.ok(noOps(full.stats) > 5, `draft-max: ${noOps(full.stats)} no-op steps per round`);
  assert.ok(noOps(auto.stats) < 1, `auto: ${noOps(auto.stats)} no-op steps per round`);
  assert.ok(auto.stats.dispatchesPerToken < full.stats.dispatchesPerToken);
});

// --- losslessness of sampled speculation -------------------------------------------------------------

/** `count` logits ~ N(0, scale²), reproducible from `seed`. */
function randomLogits(count: number, seed: number, scale = 1.5): Float32Array {
  const random = mulberry32(seed);
  return Float32Array.from(
    { length: count },
    () => scale * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random()),
  );
}

/**
 * Runs `rounds` speculation rounds of the kernels alone against fixed logits: the draft's row q
 * and the target's rows p_0..p_K do not depend on the context, so every round's first emitted
 * token is an independent draw that must follow p_0, whatever the draft proposes.
 */
async function kernelRounds(
  p: Float32Array,
  q: Float32Array,
  vocab: number,
  sampling: SamplingParams,
  draftMax: number,
  rounds: number,
  negativeControl = false,
): Promise<{ first: Float64Array; drafted: number; accepted: number }> {
  const target = await model("tiny-draft"); // only for its device and pipelines
  const { device } = target;
  const ctx = { ...target.ctx, state: storageBuffer(device, STATE_BYTES, "state") };
  const b = allocateSpecBuffers(device, {
    vocab,
    draftMax,
    sampling,
    adaptive: false,
    targetAcceptance: 0.9,
    logCapacity: rounds,
    stopTokens: [],
  });
  const targetLogits = storageBuffer(device, p.byteLength, "p");
  const draftLogits = storageBuffer(device, q.byteLength, "q");
  const ids = storageBuffer(device, (draftMax + 1) * 4, "ids");
  device.queue.writeBuffer(targetLogits, 0, new Float32Array(p));
  device.queue.writeBuffer(draftLogits, 0, new Float32Array(q));
  device.queue.writeBuffer(b.presence, 0, new Uint32Array(vocab).fill(0xffffffff));
  const spec = new Uint32Array(SPEC.words);
  spec[SPEC.drafting] = 1;
  spec[SPEC.budget] = 0xffffffff;
  new Float32Array(spec.buffer)[SPEC.gamma] = 0; // never exit early: always draft draftMax
  device.queue.writeBuffer(b.spec, 0, spec);
  device.queue.writeBuffer(ctx.state, 0, new Uint32Array([0, 1, 0, 0]));
  const io = { state: ctx.state, ids, logits: targetLogits };
  const draftSample = draftSampleOp(ctx, b, { ...io, logits: draftLogits });
  const begin = verifyBeginOp(ctx, b, io);
  const verify = verifyOp(ctx, b, io, undefined, negativeControl);
  const encoder = device.createCommandEncoder();
  const rec = new Recorder(encoder.beginComputePass());
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < draftMax; i++) draftSample.record(rec, 1);
    begin.record(rec, 1);
    verify.record(rec, 1);
  }
  rec.pass.end();
  device.queue.submit([encoder.finish()]);
  const log = await readU32(device, b.roundLog, rounds * ROUND_LOG.words);
  const first = new Float64Array(vocab);
  let drafted = 0;
  let accepted = 0;
  for (let r = 0; r < rounds; r++) {
    const at = r * ROUND_LOG.words;
    assert.equal(log[at + ROUND_LOG.round], r);
    first[log[at + ROUND_LOG.tokens]]++;
    drafted += log[at + ROUND_LOG.drafted];
    accepted += log[at + ROUND_LOG.accepted];
  }
  for (const buffer of [ctx.state, targetLogits, draftLogits, ids]) buffer.destroy();
  destroySpecBuffers(b);
  return { first, drafted, accepted };
}

/** One greedy draft step on `logits` (1, vocab): the draft token and the q(d) it records. */
async function greedyDraftStep(logits: Float32Array, vocab: number) {
  const target = await model("tiny-draft"); // only for its device and pipelines
  const { device } = target;
  const ctx = { ...target.ctx, state: storageBuffer(device, STATE_BYTES, "state") };
  const b = allocateSpecBuffers(device, {
    vocab,
    draftMax: 4,
    sampling: GREEDY,
    adaptive: false,
    targetAcceptance: 0.9,
    logCapacity: 1,
    stopTokens: [],
  });
  const draftLogits = storageBuffer(device, logits.byteLength, "q");
  const ids = storageBuffer(device, 4 * 4, "ids");
  device.queue.writeBuffer(draftLogits, 0, new Float32Array(logits));
  device.queue.writeBuffer(b.presence, 0, new Uint32Array(vocab).fill(0xffffffff));
  const spec = new Uint32Array(SPEC.words);
  spec[SPEC.drafting] = 1;
  spec[SPEC.budget] = 0xffffffff;
  spec[SPEC.stepCap] = 4;
  device.queue.writeBuffer(b.spec, 0, spec);
  device.queue.writeBuffer(ctx.state, 0, new Uint32Array([0, 1, 0, 0]));
  const op = draftSampleOp(ctx, b, { state: ctx.state, ids, logits: draftLogits });
  const encoder = device.createCommandEncoder();
  const rec = new Recorder(encoder.beginComputePass());
  op.record(rec, 1);
  rec.pass.end();
  device.queue.submit([encoder.finish()]);
  const out = await readU32(device, b.spec, SPEC.words);
  for (const buffer of [ctx.state, draftLogits, ids]) buffer.destroy();
  destroySpecBuffers(b);
  return {
    token: out[SPEC.tokens + 1],
    prob: new Float32Array(out.buffer)[SPEC.draftProb],
  };
}

Deno.test("a greedy draft step records the argmax and its softmax probability (CPU reference)", async () => {
  for (const vocab of [1, 5, 7, 64, 333, 1024, 1027]) {
    const rows: [string, Float32Array][] = [
      ["N(0, 1.5²)", randomLogits(vocab, vocab + 3)],
      ["peaked", randomLogits(vocab, vocab + 4, 8)],
      ["flat", new Float32Array(vocab).fill(-7)],
      ["offset 1e4", randomLogits(vocab, vocab + 5).map((l) => l + 1e4)],
    ];
    for (const [name, logits] of rows) {
      const expected = processedDistribution(logits, GREEDY);
      const best = expected.indexOf(1);
      let m = -Infinity;
      for (const l of logits) m = Math.max(m, l);
      let sum = 0;
      for (const l of logits) sum += Math.exp(l - m);
      const { token, prob } = await greedyDraftStep(logits, vocab);
      assert.equal(token, best, `vocab ${vocab}, ${name}`);
      assert.ok(
        Math.abs(prob - 1 / sum) <= 1e-5 / sum,
        `vocab ${vocab}, ${name}: ${prob} vs ${1 / sum}`,
      );
    }
  }
});

const LOSSLESS_CASES: { name: string; vocab: number; rounds: number; sampling: SamplingParams }[] =
  [
    {
      name: "temperature 1",
      vocab: 40,
      rounds: 3000,
      sampling: { ...GREEDY, temperature: 1, seed: 7 },
    },
    {
      name: "temperature 0.8, top-k 12, top-p 0.9, min-p 0.02",
      vocab: 300,
      rounds: 600,
      sampling: { ...GREEDY, temperature: 0.8, topK: 12, topP: 0.9, minP: 0.02, seed: 8 },
    },
  ];

for (const c of LOSSLESS_CASES) {
  Deno.test(`sampled verification with a poor draft keeps the target distribution (${c.name}; chi-squared)`, async () => {
    const draftMax = 3;
    const p = randomLogits((draftMax + 1) * c.vocab, 1);
    // A deliberately poor draft: p's first row plus as much noise again.
    const noise = randomLogits(c.vocab, 2);
    const q = Float32Array.from(noise, (e, i) => p[i] + e);
    const rounds = 3000;
    const { first, drafted, accepted } = await kernelRounds(
      p,
      q,
      c.vocab,
      c.sampling,
      draftMax,
      rounds,
    );
    const expected = processedDistribution(p.subarray(0, c.vocab), c.sampling);
    const fit = chiSquared(first, expected);
    const rate = accepted / drafted;
    if (VERBOSE) console.log(c.name, { acceptance: rate, p: fit.pValue });
    assert.ok(rate > 0.05 && rate < 0.8, `acceptance ${rate}: the test needs both outcomes`);
    assert.ok(fit.pValue > 1e-3, `p ${fit.pValue} (statistic ${fit.statistic}, df ${fit.df})`);
    // The classic bug: a rejected draft replaced by a sample of p instead of the residual.
    const buggy = await kernelRounds(p, q, c.vocab, c.sampling, draftMax, rounds, true);
    const bugFit = chiSquared(buggy.first, expected);
    if (VERBOSE) console.log(c.name, "negative control p", bugFit.pValue);
    assert.ok(bugFit.pValue < 1e-6, `the negative control must fail: p ${bugFit.pValue}`);
  });
}

Deno.test("sampled self-speculation on a real model: the first tokens over many seeds follow the target distribution", async () => {
  const target = await model("tiny-llama-ls");
  const ids = await promptIds("tiny-llama-ls", "ROMEO:\n");
  const sampling: SamplingParams = { ...GREEDY, temperature: 1.3, topK: 6, seed: 0 };
  // The exact distribution of the first new token under the target.
  target.forward(ids, 0, NO_SKIP, "last");
  const logits = await target.readLogits(1);
  const expected = processedDistribution(logits, sampling);
  const counts = new Float64Array(logits.length);
  let rejected = 0;
  const seeds = 240;
  for (let seed = 1; seed <= seeds; seed++) {
    const got = await speculate(target, ids, {
      maxNewTokens: 3,
      sampling: { ...sampling, seed },
      draft: { kind: "self", skip: SKIP_HEAVY },
      stopTokens: [],
      draftThreshold: 0,
      adaptive: false,
      roundsPerReadback: 1,
    });
    counts[got.tokens[0]]++;
    if (got.rounds[0].accepted < got.rounds[0].drafted) rejected++;
  }
  assert.ok(rejected > seeds / 10, `only ${rejected} first rounds rejected a draft`);
  const fit = chiSquared(counts, expected);
  if (VERBOSE) console.log("real model", { rejected, p: fit.pValue });
  assert.ok(fit.pValue > 1e-3, `p ${fit.pValue} (statistic ${fit.statistic}, df ${fit.df})`);
});
