/**
 * `tune-skip` end to end on tiny-llama: BO against random search at a fixed budget, the written
 * skip.json driving self-speculate to exactly greedy decode, a killed run resumed without a trial
 * lost or repeated, and one-line errors for bad inputs. Runs are kept small (two short calibration
 * prompts, few tokens) and share one measured cost model so their scores are comparable.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type CostModel, draftCostRatio, subLayerCosts } from "../src/tune/objective.ts";
import { assertOneLineError, errorLines, FIXTURE, skipspec, spawnSkipspec } from "./helpers/cli.ts";

const PROMPTS = "ROMEO:\nJULIET:\\nO Romeo, Romeo!\n";
const SMALL = ["--model", FIXTURE, "--max-new-tokens", "10", "--draft-max", "4"];

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "skipspec-tune-" });
}

let setup: Promise<{ dir: string; prompts: string; costModel: string }> | undefined;
/** Calibration prompts and a cost model measured once, shared by the runs below. */
function shared() {
  setup ??= (async () => {
    const dir = await tempDir();
    const prompts = join(dir, "prompts.txt");
    await Deno.writeTextFile(prompts, PROMPTS);
    const r = await skipspec(
      [
        "tune-skip",
        ...SMALL,
        "--prompts",
        prompts,
        "--trials",
        "1",
        "--out",
        dir,
        "--json",
        "--verbose",
      ],
      {},
      { write: dir },
    );
    assert.equal(r.code, 0, r.stderr);
    // --verbose: the adapter, the load time and each phase's time, on stderr beside --json.
    for (const phase of ["model: .* loaded in", "timings: warm-up", "timings: cost model \\d"]) {
      assert.match(r.stderr, new RegExp(`^${phase}`, "m"));
    }
    assert.match(r.stderr, /^adapter: /m);
    assert.match(r.stderr, /^timings: search \(1 trial, \d+ ms each\)/m);
    // The measured cost model: a base every draft step pays (embedding, head), and sub-layers
    // that add up to the rest of the step.
    const cost: CostModel = JSON.parse(r.stdout).costModel;
    assert.ok(cost.baseMs > 0 && cost.baseMs < cost.stepMs, JSON.stringify(cost));
    const layers = 12;
    assert.ok(Math.abs(draftCostRatio(cost, { attn: [], mlp: [] }, layers) - 1) < 1e-9);
    const costModel = join(dir, "cost_model.json");
    await Deno.writeTextFile(costModel, JSON.stringify(cost));
    return { dir, prompts, costModel };
  })();
  return setup;
}

/** tune-skip on the shared prompts and cost model, writing into `out`. */
function tuneArgs(out: string, extra: string[]): Promise<string[]> {
  return shared().then(({ prompts, costModel }) => [
    "tune-skip",
    ...SMALL,
    "--prompts",
    prompts,
    "--cost-model",
    costModel,
    "--out",
    out,
    ...extra,
  ]);
}

async function tune(method: string, trials: number) {
  const out = await tempDir();
  const extra = ["--method", method, "--trials", String(trials), "--initial-random", "5"];
  const r = await skipspec(await tuneArgs(out, [...extra, "--seed", "3", "--json"]), {}, {
    write: out,
  });
  assert.equal(r.code, 0, r.stderr);
  return { out, result: JSON.parse(r.stdout), log: await readLog(join(out, "trials.jsonl")) };
}

Deno.test("the cost model splits step - base over the sub-layers in proportion to their savings", () => {
  // Removing all attention saves 1.2 ms and all MLP 1.8 ms of a 3.2 ms step, but removing both
  // leaves 0.5 ms, not 0.2: the savings are scaled by 2.7 / 3.0.
  const c = subLayerCosts({ stepMs: 3.2, noAttnMs: 2, noMlpMs: 1.4, noLayersMs: 0.5 }, 12);
  assert.equal(c.stepMs, 3.2);
  assert.equal(c.baseMs, 0.5);
  assert.ok(Math.abs(c.attnMs - (1.2 * 0.9) / 12) < 1e-12, String(c.attnMs));
  assert.ok(Math.abs(c.mlpMs - (1.8 * 0.9) / 12) < 1e-12, String(c.mlpMs));
  const cost = { ...c, verifyRatio: [0, 1] };
  const all = [...Array(12).keys()];
  assert.ok(Math.abs(draftCostRatio(cost, { attn: all, mlp: all }, 12) - 0.5 / 3.2) < 1e-12);
  assert.ok(Math.abs(draftCostRatio(cost, { attn: [], mlp: [] }, 12) - 1) < 1e-12);
  // Half the attention and none of the MLP: base + 6 attention sub-layers.
  const half = draftCostRatio(cost, { attn: all.slice(6), mlp: [] }, 12);
  assert.ok(Math.abs(half - (3.2 - 0.6 * 0.9) / 3.2) < 1e-12, String(half));
  // Noise: a base timed above the step is the step; savings too small to see split evenly.
  const flat = subLayerCosts({ stepMs: 1, noAttnMs: 1.1, noMlpMs: 1, noLayersMs: 1.2 }, 4);
  assert.deepEqual(flat, { stepMs: 1, attnMs: 0, mlpMs: 0, baseMs: 1 });
  const even = subLayerCosts({ stepMs: 2, noAttnMs: 2.1, noMlpMs: 2, noLayersMs: 1 }, 4);
  assert.deepEqual(even, { stepMs: 2, attnMs: 0.125, mlpMs: 0.125, baseMs: 1 });
});

async function readLog(path: string) {
  const lines = (await Deno.readTextFile(path)).trim().split("\n").map((l) => JSON.parse(l));
  return { header: lines[0].header, trials: lines.slice(1) };
}

Deno.test("tune-skip with BO finds a skip set at least as good as random search with the same budget", async () => {
  const bo = await tune("bo", 14);
  const random = await tune("random", 14);
  const best = (log: { trials: { value: number }[] }) =>
    Math.max(...log.trials.map((t) => t.value));
  assert.equal(bo.log.trials.length, 14);
  assert.equal(random.log.trials.length, 14);
  assert.ok(bo.log.trials.some((t: { phase: string }) => t.phase === "bo"));
  assert.ok(random.log.trials.every((t: { phase: string }) => t.phase === "random"));
  assert.equal(bo.result.bestValue, best(bo.log));
  assert.ok(
    best(bo.log) >= best(random.log),
    `BO best ${best(bo.log)} < random best ${best(random.log)}`,
  );
  // The outputs: skip.json in self-speculate's format, and the plot.
  const skip = JSON.parse(await Deno.readTextFile(join(bo.out, "skip.json")));
  assert.deepEqual(Object.keys(skip).sort(), ["attn", "mlp"]);
  assert.deepEqual(skip, bo.result.best);
  for (const layer of [0, 11]) {
    assert.ok(!skip.attn.includes(layer) && !skip.mlp.includes(layer), "first and last layer kept");
  }
  const svg = await Deno.readTextFile(join(bo.out, "convergence.svg"));
  assert.match(svg, /^<svg/);
  assert.ok(Number.isFinite(bo.result.wallClockSpeedup) && bo.result.wallClockSpeedup > 0);

  // self-speculate with the written skip.json reproduces greedy decode exactly.
  const args = ["--model", FIXTURE, "--prompt", "ROMEO:\n", "--temperature", "0"];
  const spec = await skipspec([
    "self-speculate",
    ...args,
    "--skip",
    join(bo.out, "skip.json"),
    "--json",
  ]);
  const plain = await skipspec(["decode", ...args, "--json"]);
  assert.equal(spec.code, 0, spec.stderr);
  assert.deepEqual(JSON.parse(spec.stdout).tokens, JSON.parse(plain.stdout).tokens);
});

Deno.test("a tune-skip run killed mid-way and resumed logs every trial exactly once", async () => {
  const out = await tempDir();
  const log = join(out, "trials.jsonl");
  const args = await tuneArgs(out, ["--initial-random", "4"]);
  const child = spawnSkipspec([...args, "--trials", "40"], {}, { write: out });
  // Kill it hard once three trials are logged.
  for (let waited = 0; waited < 200; waited++) {
    await new Promise((r) => setTimeout(r, 300));
    const text = await Deno.readTextFile(log).catch(() => "");
    if (text.split("\n").length - 2 >= 3) break;
  }
  child.kill("SIGKILL");
  await child.output();
  const before = await readLog(log);
  assert.ok(before.trials.length >= 3 && before.trials.length < 40, `${before.trials.length}`);
  // Resuming reuses the log's own cost model (and refuses another).
  const withCostModel = await skipspec([...args, "--trials", "9", "--resume", log], {}, {
    write: out,
  });
  assertOneLineError(withCostModel, 2, /--resume reuses the log's cost model/);
  // Without write access to --out: a one-line error, not a stack trace.
  const readOnly = await skipspec([...args, "--trials", "9", "--out", await tempDir()]);
  assertOneLineError(readOnly, 5, /write access/);
  const at = args.indexOf("--cost-model");
  const resumeArgs = [...args.slice(0, at), ...args.slice(at + 2), "--trials", "9"];
  const r = await skipspec([...resumeArgs, "--resume", log], {}, { write: out });
  assert.equal(r.code, 0, r.stderr);
  const after = await readLog(log);
  assert.deepEqual(after.trials.map((t: { trial: number }) => t.trial), [...Array(9).keys()]);
  assert.deepEqual(after.trials.slice(0, before.trials.length), before.trials, "no trial lost");
  const keys = after.trials.map((t: { skip: unknown }) => JSON.stringify(t.skip));
  assert.equal(new Set(keys).size, keys.length, "no skip set evaluated twice");
});

Deno.test("Ctrl-C stops tune-skip after the trial in progress with every output written (exit 130), and --resume continues it", async () => {
  const out = await tempDir();
  const log = join(out, "trials.jsonl");
  const args = await tuneArgs(out, ["--trials", "40"]);
  const child = spawnSkipspec(args, {}, { write: out });
  // Up to 3 minutes for two trials: under a loaded CI machine the warm-up and cost model are slow.
  let logged = 0;
  for (let waited = 0; waited < 600 && logged < 2; waited++) {
    await new Promise((r) => setTimeout(r, 300));
    logged = (await Deno.readTextFile(log).catch(() => "")).split("\n").length - 2;
  }
  assert.ok(logged >= 2, `two trials logged before Ctrl-C (got ${logged})`);
  child.kill("SIGINT");
  const { code } = await child.output();
  assert.equal(code, 130);
  const { trials } = await readLog(log);
  assert.ok(trials.length >= 2 && trials.length < 40, `${trials.length} trials`);
  const best = trials.reduce((a: { value: number }, b: { value: number }) =>
    b.value > a.value ? b : a
  );
  assert.deepEqual(JSON.parse(await Deno.readTextFile(join(out, "skip.json"))), best.skip);
  assert.match(await Deno.readTextFile(join(out, "convergence.svg")), /^<svg/);

  // --resume picks up after the interrupted run: its trials kept, two more, none repeated.
  const at = args.indexOf("--cost-model");
  const resumeArgs = [...args.slice(0, at), ...args.slice(at + 2)];
  const total = String(trials.length + 2);
  const r = await skipspec([...resumeArgs, "--trials", total, "--resume", log, "--quiet"], {}, {
    write: out,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(errorLines(r), [], "--quiet: nothing on stderr");
  const after = await readLog(log);
  assert.deepEqual(
    after.trials.map((t: { trial: number }) => t.trial),
    [...Array(trials.length + 2).keys()],
  );
  assert.deepEqual(after.trials.slice(0, trials.length), trials, "no trial lost");
  const keys = after.trials.map((t: { skip: unknown }) => JSON.stringify(t.skip));
  assert.equal(new Set(keys).size, keys.length, "no skip set evaluated twice");
});

Deno.test("tune-skip rejects bad inputs with one-line errors", async () => {
  const { dir, prompts } = await shared();
  const empty = join(dir, "empty.txt");
  await Deno.writeTextFile(empty, "\n\n");
  const noPrompts = await skipspec(["tune-skip", ...SMALL, "--prompts", empty, "--out", dir], {}, {
    write: dir,
  });
  assertOneLineError(noPrompts, 5, /no prompts in the file/);

  // The shared run's own header, then a line that is not JSON.
  const headerLine = (await Deno.readTextFile(join(dir, "trials.jsonl"))).split("\n")[0];
  const badLog = join(dir, "bad.jsonl");
  await Deno.writeTextFile(badLog, `${headerLine}\nnot json\n`);
  const resumed = await skipspec(
    [
      "tune-skip",
      ...SMALL,
      "--prompts",
      (await shared()).prompts,
      "--resume",
      badLog,
      "--out",
      dir,
    ],
    {},
    { write: dir },
  );
  assertOneLineError(resumed, 5, /--resume .*bad\.jsonl: line 2 is not a JSON object/);
  // A trial naming a layer the model does not have.
  const trial = {
    trial: 0,
    phase: "random",
    skip: { attn: [12], mlp: [] },
    value: 1,
    tokensPerRound: 1,
    draftStepsPerRound: 1,
    acceptanceRate: 1,
    ms: 1,
  };
  await Deno.writeTextFile(badLog, `${headerLine}\n${JSON.stringify(trial)}\n`);
  const resumeArgs = ["tune-skip", ...SMALL, "--prompts", prompts, "--out", dir];
  assertOneLineError(
    await skipspec([...resumeArgs, "--resume", badLog], {}, { write: dir }),
    5,
    /line 2 is not a valid trial/,
  );
  // A run whose settings differ from the log's.
  const changed = await skipspec(
    [...resumeArgs, "--resume", join(dir, "trials.jsonl"), "--max-new-tokens", "12"],
    {},
    { write: dir },
  );
  assertOneLineError(changed, 5, /the log is for maxNewTokens 10, this run has 12/);

  const impossible = await skipspec([
    "tune-skip",
    ...SMALL,
    "--keep",
    [...Array(12).keys()].join(","),
    "--min-skip",
    "0.5",
  ]);
  assertOneLineError(impossible, 2, /tune-skip: /);
  const unknown = await skipspec(["tune-skip", "--method", "annealing"]);
  assertOneLineError(unknown, 2, /--method must be one of bo, random/);
});
