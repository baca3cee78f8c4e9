/**
 * bench's own logic: statistics, the report schema and its validator, kernel labels, the synthetic
 * shapes' tensors against the real models' published parameter counts, and whole runs through the
 * CLI (fixture with speculation, a trimmed synthetic shape) whose JSON must validate. No timings
 * are asserted.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { kernelName } from "../src/bench/measure.ts";
import { forwardTimes, roundTimes } from "../src/generate/timing.ts";
import { Model, NO_SKIP } from "../src/model/model.ts";
import { measureWeightRead } from "../src/bench/memcpy.ts";
import { readU32, storageBuffer } from "../src/gpu/buffers.ts";
import { lavapipeThreads, openGpu, THREADED_MATRIX_BYTES } from "../src/gpu/device.ts";
import { matmulOp, STATE_BYTES } from "../src/gpu/ops.ts";
import { GpuTimer } from "../src/gpu/profile.ts";
import { Pipelines } from "../src/gpu/shader.ts";
import { type BenchReport, REPORT_SCHEMA, validateReport } from "../src/bench/report.ts";
import { histogram, median, pairedRatios, summarize } from "../src/bench/stats.ts";
import { syntheticConfig, syntheticSource, syntheticTensors } from "../src/model/synthetic.ts";
import { loadSafetensorsIndex } from "../src/model/safetensors.ts";
import { createMatrix, meanMatrixBytes, parameterCount } from "../src/model/weights.ts";
import { roundSpeedup, speedupIfAllAccepted } from "../src/tune/objective.ts";
import { assertOneLineError, FIXTURE, skipspec } from "./helpers/cli.ts";

Deno.test("summaries: min, median (odd and even counts), max, runs kept in order", () => {
  assert.deepEqual(summarize([3, 1, 2]), { min: 1, median: 2, max: 3, runs: [3, 1, 2] });
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.equal(median([7]), 7);
  assert.throws(() => summarize([]), RangeError);
  assert.throws(() => summarize([1, NaN]), RangeError);
  assert.deepEqual(pairedRatios([2, 9], [1, 3]), [2, 3]);
  assert.throws(() => pairedRatios([1], [1, 2]), RangeError);
  assert.deepEqual(histogram([2, 1, 2, 4, 2]), [
    { value: 1, count: 1 },
    { value: 2, count: 3 },
    { value: 4, count: 1 },
  ]);
});

Deno.test("GPU timestamps still time a pass's first dispatch after the weight-read ceiling's texture stream", async () => {
  // A texture wgpu had to zero itself (no COPY_DST) once left lavapipe's timestamps of every later
  // pass missing its first dispatch: bench's kernel table (a pass per dispatch) after --memcpy was
  // ~100x too small.
  const gpu = await openGpu();
  const timer = GpuTimer.for(gpu);
  if (!timer) return; // no timestamp-query: bench prints no kernel table
  await measureWeightRead(gpu, 1);
  const device = gpu.device;
  const cols = 2048, rows = 2048;
  const state = storageBuffer(device, STATE_BYTES, "state");
  device.queue.writeBuffer(state, 0, new Uint32Array([0, 1, 0, 0]));
  const w = createMatrix(device, "BF16", rows, cols, "w");
  const x = storageBuffer(device, cols * 4, "x"), y = storageBuffer(device, rows * 4, "y");
  const op = matmulOp({ device, pipelines: new Pipelines(device), state }, {
    w,
    x,
    xStride: cols,
    y,
    yStride: rows,
    epilogue: "store",
  });
  // min of 3 GPU times of a pass of `dispatches` calls (the first compiles)
  const passMs = async (dispatches: number) => {
    let ms = Infinity;
    for (let i = 0; i < 4; i++) {
      const t = await timer.passMs((rec) => {
        for (let d = 0; d < dispatches; d++) op.record(rec, 1);
      });
      if (i > 0) ms = Math.min(ms, t);
    }
    return ms;
  };
  // Broken, a pass's first dispatch took no time: one dispatch ~0.1 ms, two one dispatch's time.
  const one = await passMs(1), two = await passMs(2);
  assert.ok(one > two / 4, `a pass of one dispatch ${one} ms, of two ${two} ms`);
  const perDispatch = (await timer.kernelMs((rec) => op.record(rec, 1)))[0].ms;
  assert.ok(perDispatch > two / 8, `one timed dispatch ${perDispatch} ms, a pass of two ${two} ms`);
  for (const b of [state, x, y]) b.destroy();
  w.chunks.forEach((c) => c.texture.destroy());
  timer.destroy();
});

Deno.test("forwardTimes: rounds x forwards of times, each forward run at position 8 with its own token count", async () => {
  const model = await Model.load(join(FIXTURE, "..", "tiny-llama-ls"));
  const layers = [...Array(model.cfg.numLayers).keys()];
  const forwards = [
    { model, n: 3, skip: NO_SKIP },
    { model, n: 1, skip: { attn: layers, mlp: [] } },
    { model, n: 2, skip: NO_SKIP },
  ];
  const times = await forwardTimes(forwards, 4);
  assert.equal(times.length, 4);
  for (const round of times) {
    assert.equal(round.length, forwards.length);
    for (const ms of round) assert.ok(Number.isFinite(ms) && ms > 0, `${ms} ms`);
  }
  // The last pass was the 2-token forward of ids 1, 2 at position 8: a copy before it set the
  // state (the input write before them all set n = 3), and its logits are those of that forward
  // run directly (positions 0..7 of the cache untouched).
  assert.deepEqual([...await readU32(model.device, model.state, 2)], [8, 2]);
  const timed = await model.readLogits(2);
  model.forward([1, 2], 8, NO_SKIP, "all");
  assert.deepEqual(await model.readLogits(2), timed);
  // More rounds than one command buffer's timestamps hold go in further command buffers.
  const bare = { model, n: 1, skip: { attn: layers, mlp: layers } };
  const many = await forwardTimes([bare], GpuTimer.MAX_PASSES + 5);
  assert.equal(many.length, GpuTimer.MAX_PASSES + 5);
  assert.ok(many.every(([ms]) => ms > 0));
  model.destroy();
});

Deno.test("roundTimes: a draft step and verifications of 2 and 3 tokens, measured once per pair of models", async () => {
  const target = await Model.load(join(FIXTURE, "..", "tiny-llama-ls"));
  const draft = await Model.load(join(FIXTURE, "..", "tiny-draft"));
  const layers = [...Array(target.cfg.numLayers).keys()];
  const heavy = { attn: layers.slice(1), mlp: layers.slice(1) };
  const self = await roundTimes(target, target, heavy);
  assert.ok(self, "lavapipe has timestamp queries");
  assert.equal(self.verifyMs.length, 2);
  for (const ms of [self.draftStepMs, ...self.verifyMs]) assert.ok(ms > 0, `${ms} ms`);
  // One layer of 12 costs less than the whole model over 2 tokens.
  assert.ok(self.draftStepMs < self.verifyMs[0], JSON.stringify(self));
  // Cached per target, draft and skip set (the same promise), measured again for another.
  assert.equal(roundTimes(target, target, heavy), roundTimes(target, target, heavy));
  const full = roundTimes(target, target, NO_SKIP);
  assert.notEqual(full, roundTimes(target, target, heavy));
  assert.ok((await full)!.draftStepMs > self.draftStepMs);
  const separate = await roundTimes(target, draft, NO_SKIP);
  assert.ok(separate && separate.draftStepMs > 0 && separate.verifyMs.length === 2);
  assert.equal(roundTimes(target, draft, NO_SKIP), roundTimes(target, draft, NO_SKIP));
  target.destroy();
  draft.destroy();
});

Deno.test("kernel labels read as the kernel file and its defines", () => {
  assert.equal(
    kernelName('matmul[["DTYPE_BF16",true],["NORM",false],["ROWS",8]]'),
    "matmul DTYPE_BF16 ROWS=8",
  );
  assert.equal(kernelName("embed[]"), "embed");
  assert.equal(kernelName("plain"), "plain");
});

// Published parameter counts (Hugging Face model cards / safetensors metadata of the releases).
const KNOWN_PARAMETERS: Record<string, number> = {
  "llama-3.2-1b": 1_235_814_400,
  "tinyllama-1.1b": 1_100_048_384,
  "gemma-2-2b": 2_614_341_888,
};

Deno.test("synthetic shapes have the real models' tensors and parameter counts", () => {
  for (const [shape, count] of Object.entries(KNOWN_PARAMETERS)) {
    const source = syntheticSource(shape);
    assert.equal(parameterCount(source.tensors), count, shape);
    for (const t of source.tensors.values()) assert.equal(t.dtype, "BF16");
  }
  const llama = syntheticTensors(syntheticConfig("llama-3.2-1b"), "x");
  assert.deepEqual(llama.get("model.layers.15.self_attn.k_proj.weight")?.shape, [512, 2048]);
  assert.ok(!llama.has("lm_head.weight"), "Llama-3.2-1B ties its head to the embeddings");
  const tiny = syntheticTensors(syntheticConfig("tinyllama-1.1b"), "x");
  assert.deepEqual(tiny.get("lm_head.weight")?.shape, [32000, 2048]);
  const gemma = syntheticTensors(syntheticConfig("gemma-2-2b"), "x");
  assert.deepEqual(gemma.get("model.layers.0.self_attn.q_proj.weight")?.shape, [2048, 2304]);
  assert.ok(gemma.has("model.layers.25.post_feedforward_layernorm.weight"));
});

Deno.test("--layers trims a shape; unknown shapes and bad layer counts are usage errors", () => {
  const one = syntheticSource("tinyllama-1.1b", 1);
  // embeddings + head (2 x 32000 x 2048) + one layer + final norm
  assert.equal(parameterCount(one.tensors), 131_072_000 + 44_044_288 + 2048);
  assert.equal(one.cfg.numLayers, 1);
  assert.throws(() => syntheticSource("gpt-5"), /unknown synthetic shape "gpt-5"/);
  assert.throws(() => syntheticSource("llama-3.2-1b", 17), /--layers must be 1..16/);
});

Deno.test("synthetic weights are seeded: the same piece twice, norm gains are the identity", async () => {
  const source = syntheticSource("gemma-2-2b", 1);
  const read = async (name: string) => {
    const pieces: Uint8Array[] = [];
    await source.read(source.tensors.get(name)!, (b) => {
      pieces.push(b);
    }, 1 << 20);
    return pieces[0];
  };
  const q = "model.layers.0.self_attn.q_proj.weight";
  assert.deepEqual(await read(q), await read(q));
  const halves = new Uint16Array((await read(q)).buffer);
  const exponents = new Set([...halves.slice(0, 4096)].map((h) => (h >> 7) & 0xff));
  assert.deepEqual([...exponents].sort(), [120, 121], "magnitudes in [2^-7, 2^-5)");
  const gain = new Uint16Array((await read("model.norm.weight")).buffer);
  assert.ok(gain.every((h) => h === 0), "Gemma stores w of (1 + w): identity is 0");
  const llamaGain = syntheticSource("llama-3.2-1b", 1);
  const pieces: Uint8Array[] = [];
  await llamaGain.read(llamaGain.tensors.get("model.norm.weight")!, (b) => {
    pieces.push(b);
  }, 1 << 20);
  assert.ok(new Uint16Array(pieces[0].buffer).every((h) => h === 0x3f80), "Llama gain 1.0");
});

async function benchRun(
  args: string[],
): Promise<{ report: BenchReport; stdout: string; svg: string }> {
  const dir = await Deno.makeTempDir({ prefix: "skipspec-bench-" });
  const json = join(dir, "bench.json");
  const plot = join(dir, "bench.svg");
  const run = await skipspec(
    ["bench", ...args, "--repeats", "1", "--prompt-count", "1", "--json", json, "--plot", plot],
    {},
    { write: dir },
  );
  assert.equal(run.code, 0, run.stderr);
  const report = JSON.parse(await Deno.readTextFile(json));
  validateReport(report);
  const svg = await Deno.readTextFile(plot);
  await Deno.remove(dir, { recursive: true });
  return { report, stdout: run.stdout, svg };
}

/** LP_NUM_THREADS as this test process got it: a value the user set wins over skipspec's choice. */
const USER_THREADS = Deno.env.get("LP_NUM_THREADS");

Deno.test("lavapipe runs threaded for models with large matrices, single-threaded for small ones", async () => {
  const fixture = meanMatrixBytes(await loadSafetensorsIndex(FIXTURE));
  assert.ok(fixture < 100_000, `the fixture's matrices average ${fixture} bytes`);
  // One TinyLlama-1.1B layer: embeddings, head, q/k/v/o, gate/up/down (bf16); norms are vectors.
  const tiny = meanMatrixBytes(syntheticSource("tinyllama-1.1b", 1).tensors);
  assert.ok(Math.abs(tiny - (131_072_000 + 44_040_192) * 2 / 9) < 1e-6);
  for (const shape of Object.keys(KNOWN_PARAMETERS)) {
    assert.ok(meanMatrixBytes(syntheticSource(shape).tensors) >= THREADED_MATRIX_BYTES, shape);
  }
  assert.equal(lavapipeThreads(undefined, { meanMatrixBytes: fixture }, 8), "0");
  assert.equal(lavapipeThreads(undefined, { meanMatrixBytes: tiny }, 8), "8");
  assert.equal(lavapipeThreads(undefined, { meanMatrixBytes: THREADED_MATRIX_BYTES - 1 }, 8), "0");
  assert.equal(lavapipeThreads(undefined, { meanMatrixBytes: THREADED_MATRIX_BYTES }, 2), "2");
  assert.equal(lavapipeThreads(undefined, undefined, 8), "0", "no workload: tests, info");
  assert.equal(lavapipeThreads("3", { meanMatrixBytes: fixture }, 8), "3", "the user's setting");
  assert.equal(lavapipeThreads("0", { meanMatrixBytes: tiny }, 8), "0", "the user's setting");
  // The choice is the driver's only: the environment is restored for child processes.
  const gpu = await openGpu();
  assert.equal(gpu.lavapipeThreads, USER_THREADS ?? "0");
  assert.equal(Deno.env.get("LP_NUM_THREADS"), USER_THREADS);
});

Deno.test("bench on a fixture: every mode, a valid report, a plot, a table", async () => {
  const { report, stdout, svg } = await benchRun([
    "--model",
    FIXTURE,
    "--new-tokens",
    "8",
    "--prefill-tokens",
    "16",
    "--memcpy",
    "--quiet",
  ]);
  assert.equal(report.models.length, 1);
  assert.equal(report.machine.lavapipeThreads, USER_THREADS ?? "0");
  const model = report.models[0];
  assert.equal(model.parameters, parameterCount(await loadSafetensorsIndex(FIXTURE)));
  assert.deepEqual(model.modes.map((m) => m.mode), [
    "prefill",
    "decode",
    "speculate",
    "self-speculate",
  ]);
  const byMode = Object.fromEntries(model.modes.map((m) => [m.mode, m]));
  assert.equal(byMode.decode.speedup!.median, 1);
  assert.equal(
    byMode.decode.weightBytesPerToken,
    model.parameters * 2 - 1024 * 128 * 2,
    "bf16 weights read per step, not the embedding table",
  );
  assert.equal(byMode.speculate.draft, "tiny-draft");
  assert.match(byMode["self-speculate"].draft!, /^skip \d+\/24$/);
  for (const mode of ["prefill", "decode"]) {
    assert.equal(byMode[mode].allAcceptedSpeedup, null);
  }
  for (const mode of ["speculate", "self-speculate"]) {
    const f = byMode[mode];
    assert.ok(f.meaningful);
    assert.ok(f.allAcceptedSpeedup! > 0 && f.predictedSpeedup! > 0);
    const rounds = f.tokensPerRoundHistogram!.reduce((a, b) => a + b.count, 0);
    const emitted = f.tokensPerRoundHistogram!.reduce((a, b) => a + b.value * b.count, 0);
    assert.ok(
      Math.abs(emitted / rounds - f.tokensPerRound!.median) < 1e-9,
      "histogram = tok/round",
    );
  }
  assert.ok(report.memcpy!.gbPerSecond.median > 0);
  assert.ok(report.weightRead!.gbPerSecond.median > 0);
  assert.match(stdout, /weight reads: [\d.]+ \([\d.]+-[\d.]+\) GB\/s \([\d.]+x copy/);
  assert.match(
    stdout,
    /\d+\.\d+ \(\d+\.\d+x copy, \d+\.\d+x reads\)/,
    "decode's GB/s against both",
  );
  assert.ok(model.kernels!.length > 0 && model.kernels!.some((k) => k.kernel.startsWith("matmul")));
  assert.equal(
    model.kernels!.reduce((a, k) => a + k.calls, 0),
    byMode.decode.dispatchesPerToken,
    "the table covers every dispatch of a decode step",
  );
  assert.equal(byMode.decode.dispatchesPerToken, 12 * 5 + 3, "embed, 5 per layer, head, sample");
  assert.match(report.machine.adapter.description, /\S/);
  assert.match(stdout, /self-speculate/);
  assert.match(stdout, /top kernels/);
  assert.match(svg, /^<svg/);
  assert.match(svg, /tokens emitted per speculative round/);
});

Deno.test("bench --synthetic: a trimmed real shape, speculation marked as meaningless", async () => {
  const { report, stdout } = await benchRun([
    "--synthetic",
    "tinyllama-1.1b",
    "--layers",
    "1",
    "--modes",
    "decode,self-speculate",
    "--skip",
    '{"attn":[],"mlp":[0]}',
    "--new-tokens",
    "3",
  ]);
  assert.equal(
    report.machine.lavapipeThreads,
    USER_THREADS ?? String(navigator.hardwareConcurrency),
  );
  const model = report.models[0];
  assert.equal(model.model, "synthetic:tinyllama-1.1b:1");
  assert.ok(model.synthetic);
  assert.equal(model.layers, 1);
  assert.equal(model.parameters, 131_072_000 + 44_044_288 + 2048);
  const [decode, self] = model.modes;
  assert.equal(decode.mode, "decode");
  assert.ok(decode.meaningful);
  assert.equal(self.mode, "self-speculate");
  assert.equal(self.meaningful, false);
  // What speculation could gain with every draft accepted does not depend on the weights.
  assert.ok(self.allAcceptedSpeedup! > 0);
  assert.match(stdout, /if all accepted/);
  assert.match(stdout, /untrained synthetic weights/);
});

Deno.test("speed-up of rounds from their costs, and with every draft accepted at the best cap", () => {
  // 1.88 tokens for 0.98 draft steps at 0.55 of a step each, verifying 2 tokens at 1.37 steps.
  const lavapipe = [0, 1, 1.37, 1.79, 2.88];
  assert.ok(
    Math.abs(roundSpeedup(1.88, 0.98, 0.55, lavapipe) - 1.88 / (0.98 * 0.55 + 1.37)) < 1e-12,
  );
  // 2.6 draft steps verify 4 tokens.
  assert.ok(Math.abs(roundSpeedup(3, 2.6, 0.5, lavapipe) - 3 / (2.6 * 0.5 + 2.88)) < 1e-12);
  // Every draft accepted: k = 1 gives 2 / 1.92, k = 2 3 / 2.89, k = 3 4 / 4.53.
  const cpu = speedupIfAllAccepted(0.55, lavapipe);
  assert.equal(cpu.draftSteps, 1);
  assert.ok(Math.abs(cpu.speedup - 2 / 1.92) < 1e-12);
  // Verification as cheap at any width as one step (a memory-bound GPU): the longest cap pays.
  const flat = speedupIfAllAccepted(0.5, [0, 1, 1, 1, 1]);
  assert.deepEqual(flat, { speedup: 4 / 2.5, draftSteps: 3 });
  // A draft dearer than verification: no cap pays, and the best still says by how much.
  const dear = speedupIfAllAccepted(2, [0, 1, 1.1, 1.2]);
  assert.deepEqual(dear, { speedup: 2 / 3.1, draftSteps: 1 });
});

Deno.test("report validation rejects broken figures", () => {
  const summary = (v: number) => ({ min: v, median: v, max: v, runs: [v] });
  const valid = (): BenchReport => ({
    schema: REPORT_SCHEMA,
    date: new Date(0).toISOString(),
    machine: {
      deno: "2.9.6",
      v8: "x",
      os: "linux",
      arch: "x86_64",
      cpus: 2,
      adapter: { vendor: "v", architecture: "", device: "0", description: "d", isFallback: true },
      features: ["timestamp-query"],
      limits: { maxBufferSize: 1 },
      lavapipeThreads: null,
    },
    settings: { newTokens: 8, repeats: 1, prompts: 1, prefillTokens: 16, modes: ["decode"] },
    memcpy: null,
    weightRead: null,
    models: [{
      model: "m",
      synthetic: false,
      architecture: "LlamaForCausalLM",
      layers: 1,
      parameters: 10,
      dtype: "BF16",
      contextLength: 16,
      promptTokens: 3,
      forward8OverForward1: summary(2),
      kernels: [{ kernel: "k", calls: 1, msPerToken: 1, share: 1 }],
      modes: [{
        mode: "self-speculate",
        draft: "skip 1/2",
        meaningful: true,
        tokensPerSecond: summary(10),
        msPerToken: summary(100),
        speedup: summary(1.1),
        dispatchesPerToken: 10,
        readbacksPerToken: 0.1,
        weightBytesPerToken: null,
        weightGBPerSecond: null,
        acceptanceRate: summary(0.5),
        tokensPerRound: summary(2),
        draftStepsPerRound: summary(1),
        recordedDraftStepsPerRound: summary(1.5),
        readbacksPerRound: summary(0.2),
        tokensPerRoundHistogram: [{ value: 2, count: 4 }],
        predictedSpeedup: 1,
        idealSpeedup: 1.2,
        allAcceptedSpeedup: 1.1,
      }],
    }],
  });
  validateReport(valid());
  const broken: [string, (r: BenchReport) => void][] = [
    ["schema", (r) => ((r as { schema: string }).schema = "other")],
    ["median above max", (r) => (r.models[0].modes[0].tokensPerSecond.median = 11)],
    ["min disagrees with runs", (r) => (r.models[0].forward8OverForward1.min = 1)],
    ["acceptance over 1", (r) => (r.models[0].modes[0].acceptanceRate = summary(1.5))],
    ["no histogram", (r) => (r.models[0].modes[0].tokensPerRoundHistogram = null)],
    ["shares", (r) => (r.models[0].kernels![0].share = 0.5)],
    ["mode", (r) => ((r.models[0].modes[0] as { mode: string }).mode = "fast")],
    ["missing machine", (r) => delete (r as Partial<BenchReport>).machine],
    ["negative", (r) => (r.models[0].modes[0].dispatchesPerToken = -1)],
    ["no all-accepted speed-up", (r) => (r.models[0].modes[0].allAcceptedSpeedup = 0)],
    [
      "weight reads without memcpy",
      (r) => (r.weightRead = { bytes: 16, gbPerSecond: summary(3) }),
    ],
    ["missing weight reads", (r) => delete (r as Partial<BenchReport>).weightRead],
    ["weight read bytes", (r) => {
      r.memcpy = { bytes: 16, gbPerSecond: summary(8) };
      r.weightRead = { bytes: 0, gbPerSecond: summary(3) };
    }],
  ];
  const ceilings = valid();
  ceilings.memcpy = { bytes: 16, gbPerSecond: summary(8) };
  ceilings.weightRead = { bytes: 16, gbPerSecond: summary(3) };
  validateReport(ceilings);
  for (const [what, breakIt] of broken) {
    const r = valid();
    breakIt(r);
    assert.throws(() => validateReport(r), RangeError, what);
  }
});

Deno.test("bench: bad flags and unwritable outputs fail at once, in one line", async () => {
  assertOneLineError(
    await skipspec(["bench", "--synthetic", "gpt-5"]),
    2,
    /unknown synthetic shape/,
  );
  assertOneLineError(await skipspec(["bench", "--modes", "decode,warp"]), 2, /unknown mode "warp"/);
  assertOneLineError(await skipspec(["bench", "--layers", "2"]), 2, /--layers trims a --synthetic/);
  assertOneLineError(
    await skipspec(["bench", "--json", "/tmp/skipspec-no-write.json"]),
    5,
    /cannot write .*--allow-write/,
  );
});
