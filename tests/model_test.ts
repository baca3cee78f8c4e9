/**
 * Whole-model tests against the golden outputs of an independent PyTorch implementation
 * (`fixtures/<model>/reference.json`), for both architectures and for skipped sub-layers.
 */
import assert from "node:assert/strict";
import { decode, FIRST_CHUNK, MAX_CHUNK } from "../src/generate/decode.ts";
import { GREEDY, Recorder } from "../src/gpu/ops.ts";
import { Model, NO_SKIP, type SkipSet } from "../src/model/model.ts";
import { ModelTokenizer } from "../src/model/tokenizer.ts";

interface ReferenceCase {
  prompt: string;
  skip_attn: number[];
  skip_mlp: number[];
  ids: number[];
  last_top10_ids: number[];
  last_top10_logits: number[];
  argmax_per_position: number[];
  margin_per_position: number[];
  greedy_ids: number[];
}

const FIXTURES = ["tiny-llama", "tiny-gemma2", "tiny-llama-ls", "tiny-draft"];
const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;

async function reference(name: string): Promise<ReferenceCase[]> {
  return JSON.parse(await Deno.readTextFile(`${fixture(name)}/reference.json`)).cases;
}

const skipOf = (c: ReferenceCase): SkipSet => ({ attn: c.skip_attn, mlp: c.skip_mlp });
const label = (c: ReferenceCase) =>
  `${JSON.stringify(c.prompt.slice(0, 24))} skip attn [${c.skip_attn}] mlp [${c.skip_mlp}]`;

/** Logits (n, vocab) of a prompt, prefilled in chunks that fit the logits buffer. */
async function promptLogits(model: Model, ids: number[], skip: SkipSet): Promise<Float32Array> {
  const vocab = model.cfg.vocabSize;
  const out = new Float32Array(ids.length * vocab);
  const step = model.act.logitRows;
  for (let start = 0; start < ids.length; start += step) {
    const chunk = ids.slice(start, start + step);
    model.forward(chunk, start, skip, "all");
    out.set(await model.readLogits(chunk.length), start * vocab);
  }
  return out;
}

function argmax(row: Float32Array): number {
  let best = 0;
  for (let i = 1; i < row.length; i++) if (row[i] > row[best]) best = i;
  return best;
}

for (const name of FIXTURES) {
  Deno.test(`${name}: tokenizer ids, logits, per-position argmax and greedy continuation match reference.json`, async () => {
    const model = await Model.load(fixture(name));
    const tokenizer = await ModelTokenizer.load(fixture(name));
    const cases = await reference(name);
    assert.ok(cases.length >= 2);
    for (const c of cases) {
      assert.deepEqual(tokenizer.encode(c.prompt), c.ids, `tokenizer ids for ${label(c)}`);
      const vocab = model.cfg.vocabSize;
      const logits = await promptLogits(model, c.ids, skipOf(c));
      const last = logits.subarray((c.ids.length - 1) * vocab);
      c.last_top10_ids.forEach((id, i) => {
        const err = Math.abs(last[id] - c.last_top10_logits[i]);
        assert.ok(
          err <= 0.05,
          `${label(c)}: logit of token ${id} (top-${i + 1}) expected ${
            c.last_top10_logits[i]
          }, got ${last[id]}, error ${err}`,
        );
      });
      const top = [...last].map((v, id) => [v, id]).sort((a, b) => b[0] - a[0]).slice(0, 10).map((
        [, id],
      ) => id);
      assert.deepEqual(top, c.last_top10_ids, `${label(c)}: top-10 ids`);
      for (let t = 0; t < c.ids.length; t++) {
        if (c.margin_per_position[t] <= 0.05) continue;
        const got = argmax(logits.subarray(t * vocab, (t + 1) * vocab));
        assert.equal(got, c.argmax_per_position[t], `${label(c)}: argmax at position ${t}`);
      }
      const result = await decode(model, c.ids, {
        maxNewTokens: c.greedy_ids.length,
        sampling: GREEDY,
        skip: skipOf(c),
        stopTokens: model.cfg.eosTokenIds,
      });
      assert.deepEqual(result.tokens, c.greedy_ids, `${label(c)}: greedy continuation`);
    }
    model.destroy();
  });
}

Deno.test("greedy decoding gives the same continuation whether the prompt is prefilled at once or token by token", async () => {
  for (const name of ["tiny-llama", "tiny-gemma2"]) {
    const model = await Model.load(fixture(name), { maxBatch: 1 });
    const c = (await reference(name))[1];
    const oneByOne = await decode(model, c.ids, {
      maxNewTokens: 24,
      sampling: GREEDY,
      skip: skipOf(c),
      stopTokens: [],
    });
    model.destroy();
    const batched = await Model.load(fixture(name));
    const atOnce = await decode(batched, c.ids, {
      maxNewTokens: 24,
      sampling: GREEDY,
      skip: skipOf(c),
      stopTokens: [],
    });
    batched.destroy();
    assert.equal(model.act.maxBatch, 1);
    assert.deepEqual(oneByOne.tokens, atOnce.tokens, name);
    assert.deepEqual(atOnce.tokens, c.greedy_ids.slice(0, 24), name);
  }
});

/** Chunks of the doubling schedule 16, 32, 64, 64, ... that cover `steps` decode steps. */
function chunksFor(steps: number): number {
  let chunks = 0;
  for (let size = FIRST_CHUNK, done = 0; done < steps; size = Math.min(2 * size, MAX_CHUNK)) {
    done += size;
    chunks++;
  }
  return chunks;
}

Deno.test("decode stops exactly at max-new-tokens and at a stop token, and reads back once per chunk", async () => {
  const model = await Model.load(fixture("tiny-llama"));
  const c = (await reference("tiny-llama"))[0];
  for (const n of [1, 5, 16, 17, 40, 48, 120]) {
    const r = await decode(model, c.ids, {
      maxNewTokens: n,
      sampling: GREEDY,
      skip: skipOf(c),
      stopTokens: [],
    });
    assert.equal(r.tokens.length, n);
    assert.deepEqual(r.tokens.slice(0, 48), c.greedy_ids.slice(0, n), `max-new-tokens ${n}`);
    assert.equal(r.stats.stopReason, "max-new-tokens");
    // One readback for the first token, then one per chunk: 16 steps, then 32, then 64, 64, ...
    assert.equal(r.stats.readbacks, 1 + chunksFor(n - 1), `readbacks for ${n}`);
    if (n >= 48) assert.ok(r.stats.readbacksPerToken <= 1 / 16, "<= 1 readback per 16 tokens");
  }
  // Pretend the 7th greedy token is an end-of-text token: generation stops right after it.
  const stopAt = c.greedy_ids[6];
  const firstStop = c.greedy_ids.indexOf(stopAt);
  const r = await decode(model, c.ids, {
    maxNewTokens: 40,
    sampling: GREEDY,
    skip: skipOf(c),
    stopTokens: [stopAt],
  });
  assert.deepEqual(r.tokens, c.greedy_ids.slice(0, firstStop + 1));
  assert.equal(r.stats.stopReason, "stop-token");
  model.destroy();
});

Deno.test("a forward's dispatches are worked out once per (tokens, skip set, logits) and replayed", async () => {
  const model = await Model.load(fixture("tiny-llama"));
  // What each way of recording dispatches, in order.
  const trace = (record: (rec: Recorder) => void) => {
    const seen: [string, GPUBindGroup, number, number, number][] = [];
    const rec = Recorder.counting();
    rec.dispatch = (p, g, x, y = 1, z = 1) => {
      seen.push([p.label, g, x, y, z]);
      rec.dispatches++;
    };
    record(rec);
    return seen;
  };
  const op = model.net.layers[3].mlp[0];
  const recordOp = op.record.bind(op);
  let worked = 0;
  op.record = (rec, n) => {
    worked++;
    recordOp(rec, n);
  };
  try {
    const skip = { attn: [1], mlp: [2] };
    const first = trace((rec) => model.recordForward(rec, 3, skip, "all"));
    const again = trace((rec) => model.recordForward(rec, 3, { attn: [1], mlp: [2] }, "all"));
    assert.equal(worked, 1, "the second forward replays the tape");
    assert.deepEqual(again, first);
    assert.ok(first.length > 0);
    // Each of n, the skip set and the logits mode changes the dispatches: a tape of their own.
    for (
      const [n, s, logits] of [[2, skip, "all"], [3, NO_SKIP, "all"], [3, skip, "last"]] as const
    ) {
      const other = trace((rec) => model.recordForward(rec, n, s, logits));
      assert.notDeepEqual(other, first, `${n} ${JSON.stringify(s)} ${logits}`);
    }
    assert.equal(worked, 4);
    const skipMlp3 = trace((rec) => model.recordForward(rec, 1, { attn: [], mlp: [3] }, "last"));
    assert.equal(worked, 4, "a skipped sub-layer is not recorded");
    assert.ok(skipMlp3.length > 0);
  } finally {
    op.record = recordOp;
    model.destroy();
  }
});

Deno.test("decode streams each chunk before submitting the next unless that holds text back briefly", async () => {
  // Deno's mapAsync waits for everything submitted, so a chunk submitted before the previous one
  // is read holds that one's text back until it is done too.
  const model = await Model.load(fixture("tiny-llama"));
  const c = (await reference("tiny-llama"))[0];
  // A chunk's readback is mapped right after the chunk is submitted: count the maps.
  const mapOf = GPUBuffer.prototype.mapAsync;
  let submits = 0;
  GPUBuffer.prototype.mapAsync = function (...args) {
    submits++;
    return mapOf.apply(this, args);
  };
  try {
    for (const [streamHoldMs, expected] of [[0, [1, 2, 3, 4]], [Infinity, [1, 3, 4, 4]]] as const) {
      // Per onTokens call: chunks submitted since the first token (prefill) came back.
      const seen: number[] = [];
      let base: number | undefined;
      const r = await decode(model, c.ids, {
        maxNewTokens: 1 + 16 + 32 + 64 + 8,
        sampling: GREEDY,
        skip: skipOf(c),
        stopTokens: [],
        streamHoldMs,
        onTokens: () => {
          if (base === undefined) base = submits; // the prefill's token
          else seen.push(submits - base);
        },
      });
      assert.deepEqual(r.tokens.slice(0, 48), c.greedy_ids.slice(0, 48));
      // Chunks of 16, 32, 64, 8. The first is read before the second is submitted; with no hold
      // allowed every one is, with any hold allowed each later one goes before the last is read.
      assert.deepEqual(seen, expected, `streamHoldMs ${streamHoldMs}`);
      assert.equal(r.stats.readbacks, 5);
    }
  } finally {
    GPUBuffer.prototype.mapAsync = mapOf;
    model.destroy();
  }
});

Deno.test("decode stops at the end of the context, and a prompt that fills the context is rejected", async () => {
  const model = await Model.load(fixture("tiny-llama"), { contextLength: 12 });
  const ids = (await reference("tiny-llama"))[1].ids.slice(0, 10);
  const r = await decode(model, ids, {
    maxNewTokens: 50,
    sampling: GREEDY,
    skip: { attn: [], mlp: [] },
    stopTokens: [],
  });
  assert.equal(r.tokens.length, 2);
  assert.equal(r.stats.stopReason, "context-full");
  await assert.rejects(
    decode(model, [...ids, 1, 2], {
      maxNewTokens: 5,
      sampling: GREEDY,
      skip: { attn: [], mlp: [] },
      stopTokens: [],
    }),
    /the prompt has 12 tokens, but the context holds 12/,
  );
  model.destroy();
});

Deno.test("sampled decoding is reproducible with a seed and differs across seeds", async () => {
  const model = await Model.load(fixture("tiny-llama"));
  const ids = (await reference("tiny-llama"))[0].ids;
  const run = (seed: number) =>
    decode(model, ids, {
      maxNewTokens: 20,
      sampling: { temperature: 1, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed },
      skip: { attn: [], mlp: [] },
      stopTokens: [],
    });
  const a = await run(7);
  const b = await run(7);
  const c = await run(8);
  assert.deepEqual(a.tokens, b.tokens);
  assert.notDeepEqual(a.tokens, c.tokens);
  model.destroy();
});
