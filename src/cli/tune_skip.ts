/**
 * `skipspec tune-skip`: Bayesian optimisation of the self-speculative draft's skip set. Each trial
 * scores one skip set (src/tune/objective.ts) and is appended to `trials.jsonl` at once; the best
 * set is written as `skip.json` (what self-speculate reads) with the convergence plot beside it.
 * `--resume LOG` continues a killed run without losing or repeating a trial, and Ctrl-C stops
 * after the trial in progress with everything written.
 */
import { join } from "node:path";
import { InputError, UsageError } from "../errors.ts";
import { readJson, readText } from "../files.ts";
import { median } from "../generate/timing.ts";
import { Model, type SkipSet } from "../model/model.ts";
import { defaultSkipSetPath, skipCount } from "../model/skip.ts";
import { ModelTokenizer } from "../model/tokenizer.ts";
import { type Phase, runSearch, SearchSpace, type Trial as Point } from "../tune/bo.ts";
import {
  calibrate,
  type Calibration,
  type CostModel,
  decodeTokensPerSecond,
  measureCostModel,
  predictedSpeedup,
} from "../tune/objective.ts";
import { convergenceSvg } from "../tune/plot.ts";
import {
  isCostModel,
  promptsHash,
  type RunHeader,
  type Trial,
  TrialsLog,
} from "../tune/trials_log.ts";
import { helpText, parseFlags } from "./flags.ts";
import {
  describeAdapter,
  MODEL_FLAGS,
  modelDir,
  ms,
  OUTPUT_FLAGS,
  Reporter,
  untilInterrupted,
} from "./session.ts";

export const TUNE_SKIP_SUMMARY =
  "Bayesian optimisation of which sub-layers the self-speculative draft skips.";

const DEFAULT_PROMPTS = new URL("../../fixtures/calibration_prompts.txt", import.meta.url).pathname;

const FLAGS = {
  ...MODEL_FLAGS,
  "prompts": {
    type: "string",
    help:
      'calibration prompts: one per line ("\\n" for a newline), or JSONL with a "prompt" field ' +
      "(default: fixtures/calibration_prompts.txt)",
    placeholder: "FILE",
  },
  "trials": { type: "int", help: "skip sets to evaluate", default: 100, min: 1 },
  "initial-random": {
    type: "int",
    help: "random skip sets before the Gaussian process takes over",
    default: 10,
    min: 1,
  },
  "method": {
    type: "string",
    help: "bo or random (the same budget as pure random search)",
    default: "bo",
  },
  "acquisition": { type: "string", help: "ei (expected improvement) or ucb", default: "ei" },
  "objective": {
    type: "string",
    help: "predicted-speedup (deterministic) or tokens-per-second (measured wall-clock)",
    default: "predicted-speedup",
  },
  "seed": { type: "int", help: "seed of the search", default: 0, min: 0, max: 2 ** 32 - 1 },
  "max-new-tokens": {
    type: "int",
    help: "tokens generated per calibration prompt and trial",
    default: 32,
    min: 2,
  },
  "draft-max": { type: "int", help: "most drafts per round", default: 8, min: 1, max: 32 },
  "keep": {
    type: "string",
    help: 'layers never skipped, comma-separated (default: the first and the last; "" for none)',
    placeholder: "LAYERS",
  },
  "min-skip": {
    type: "number",
    help: "least fraction of all sub-layers skipped",
    default: 0,
    min: 0,
    max: 1,
  },
  "max-skip": {
    type: "number",
    help: "most fraction of all sub-layers skipped",
    default: 0.8,
    min: 0,
    max: 1,
  },
  "out": {
    type: "string",
    help: "folder for skip.json, trials.jsonl and convergence.svg (default: the model folder)",
    placeholder: "DIR",
  },
  "cost-model": {
    type: "string",
    help: "reuse a cost model (JSON, as --json prints it) instead of measuring one",
    placeholder: "FILE",
  },
  "resume": {
    type: "string",
    help: "continue the run logged in this trials.jsonl",
    placeholder: "LOG",
  },
  "json": { type: "boolean", help: "print the result as one JSON object", default: false },
  ...OUTPUT_FLAGS,
  "help": { type: "boolean", help: "show this help" },
} as const;

/** Bit i < L: attention of layer i; bit L + i: MLP of layer i. */
export function skipFromBits(x: readonly number[], layers: number): SkipSet {
  const on = (offset: number) => [...Array(layers).keys()].filter((l) => x[offset + l] === 1);
  return { attn: on(0), mlp: on(layers) };
}

export function bitsFromSkip(skip: SkipSet, layers: number): number[] {
  const x = new Array(2 * layers).fill(0);
  for (const l of skip.attn) x[l] = 1;
  for (const l of skip.mlp) x[layers + l] = 1;
  return x;
}

/** Calibration prompts from a text file (one per line, "\n" escapes) or JSONL ({"prompt": ...}). */
export async function readPrompts(path: string): Promise<string[]> {
  const text = await readText(path, InputError, { label: `--prompts ${path}`, allowEmpty: true });
  const lines = text.split("\n").filter((l) => l.trim() !== "");
  const prompts = lines.map((line, i) => {
    if (!line.trimStart().startsWith("{")) return line.replaceAll("\\n", "\n");
    let prompt: unknown;
    try {
      prompt = JSON.parse(line).prompt;
    } catch {
      throw new InputError(`--prompts ${path}: line ${i + 1} is not valid JSON`);
    }
    if (typeof prompt !== "string" || prompt === "") {
      throw new InputError(`--prompts ${path}: line ${i + 1} has no "prompt" string`);
    }
    return prompt;
  });
  if (prompts.length === 0) throw new InputError(`--prompts ${path}: no prompts in the file`);
  return prompts;
}

function choice<T extends string>(flag: string, value: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(value)) {
    throw new UsageError(
      `tune-skip: --${flag} must be one of ${allowed.join(", ")}, got "${value}"`,
    );
  }
  return value as T;
}

function keptLayers(arg: string | undefined, layers: number): number[] {
  if (arg === undefined) return [0, layers - 1];
  if (arg.trim() === "") return [];
  return arg.split(",").map((part) => {
    const layer = Number(part.trim());
    if (!Number.isInteger(layer) || layer < 0 || layer >= layers) {
      throw new UsageError(`tune-skip: --keep layer "${part.trim()}" is not in 0..${layers - 1}`);
    }
    return layer;
  });
}

export async function runTuneSkip(argv: string[]): Promise<number> {
  const flags = parseFlags("tune-skip", FLAGS, argv);
  if (flags.help) {
    console.log(helpText("skipspec tune-skip [flags]", TUNE_SKIP_SUMMARY, FLAGS));
    return 0;
  }
  const method = choice("method", flags.method ?? "bo", ["bo", "random"] as const);
  const acquisition = choice("acquisition", flags.acquisition ?? "ei", ["ei", "ucb"] as const);
  const objective = choice(
    "objective",
    flags.objective ?? "predicted-speedup",
    ["predicted-speedup", "tokens-per-second"] as const,
  );
  if (flags.resume !== undefined && flags["cost-model"] !== undefined) {
    throw new UsageError("tune-skip: --resume reuses the log's cost model; drop --cost-model");
  }
  const report = Reporter.from(flags);
  const dir = await modelDir(flags);
  const trials = flags.trials ?? 100;
  const maxNewTokens = flags["max-new-tokens"] ?? 32;
  const draftMax = flags["draft-max"] ?? 8;
  const seed = flags.seed ?? 0;
  const promptTexts = await readPrompts(flags.prompts ?? DEFAULT_PROMPTS);
  const loadStart = performance.now();
  const tokenizer = await ModelTokenizer.load(dir);
  const model = await Model.load(dir);
  report.detail(describeAdapter(model.gpu));
  report.detail(`model: ${dir}, loaded in ${ms(performance.now() - loadStart)}`);
  const layers = model.cfg.numLayers;
  const keep = keptLayers(flags.keep, layers);
  let space: SearchSpace;
  try {
    space = new SearchSpace({
      dims: 2 * layers,
      fixedZero: keep.flatMap((l) => [l, layers + l]),
      minFraction: flags["min-skip"] ?? 0,
      maxFraction: flags["max-skip"] ?? 0.8,
    });
  } catch (e) {
    throw new UsageError(`tune-skip: ${(e as Error).message}`);
  }
  const prompts = promptTexts.map((p) => tokenizer.encode(p));
  const tooLong = prompts.findIndex((p) => p.length + maxNewTokens > model.contextLength);
  if (tooLong >= 0) {
    throw new InputError(
      `calibration prompt ${tooLong + 1} has ${prompts[tooLong].length} tokens: with ` +
        `--max-new-tokens ${maxNewTokens} it does not fit the context of ${model.contextLength}`,
    );
  }
  const out = flags.out ?? dir;
  await Deno.mkdir(out, { recursive: true });
  const header: RunHeader = {
    model: dir,
    objective,
    method,
    acquisition,
    initialRandom: flags["initial-random"] ?? 10,
    seed,
    layers,
    draftMax,
    maxNewTokens,
    keep: keep.join(","),
    minSkip: flags["min-skip"] ?? 0,
    maxSkip: flags["max-skip"] ?? 0.8,
    prompts: promptsHash(prompts),
  };

  const resumed = flags.resume !== undefined ? TrialsLog.resume(flags.resume, header) : undefined;
  const say = (line: string) => flags.json || report.say(line);
  // Times of the phases, for --verbose.
  let phaseStart = performance.now();
  const phase = (name: string) => {
    report.detail(`timings: ${name} ${ms(performance.now() - phaseStart)}`);
    phaseStart = performance.now();
  };
  // Measured once per run (or taken from the resumed log or --cost-model): the cost model, and
  // plain decoding for the wall-clock figures.
  const options = { maxNewTokens, draftMax, stopTokens: [] };
  await calibrate(model, prompts.slice(0, 1), { attn: [], mlp: [] }, options); // warm-up
  phase("warm-up");
  const cost = resumed?.costModel ??
    (flags["cost-model"] !== undefined
      ? await readCostModel(flags["cost-model"])
      : await measureCostModel(model, draftMax));
  phase(resumed || flags["cost-model"] !== undefined ? "cost model (read)" : "cost model");
  if (cost.verifyRatio.length < draftMax + 2) {
    throw new InputError(
      `the cost model covers verifications up to --draft-max ${cost.verifyRatio.length - 2}`,
    );
  }
  say(formatCostModel(cost));
  const log = resumed?.log ??
    TrialsLog.create(join(out, "trials.jsonl"), { ...header, costModel: cost });
  const logged: Trial[] = resumed?.trials ?? [];
  const baseline = await decodeTokensPerSecond(model, prompts, maxNewTokens);
  say(`plain decode on the calibration prompts: ${baseline.toFixed(1)} tok/s`);
  phase("plain decode baseline");

  const score = (c: Calibration & { tokensPerSecond: number }, skip: SkipSet) =>
    objective === "predicted-speedup"
      ? predictedSpeedup(c, cost, skip, layers)
      : c.tokensPerSecond / baseline;
  const details = new Map<string, { c: Calibration; ms: number }>();
  const evaluate = async (x: number[]) => {
    const start = performance.now();
    const skip = skipFromBits(x, layers);
    const c = await calibrate(model, prompts, skip, options);
    details.set(x.join(""), { c, ms: performance.now() - start });
    return score(c, skip);
  };
  // On a terminal the progress line is redrawn in place (also with --json, whose output is on
  // stdout); elsewhere it is one line per trial, as every other stderr line.
  const progress = progressLine(trials, report.quiet ? undefined : say);
  const history: Point[] = logged.map((t) => ({ x: bitsFromSkip(t.skip, layers), y: t.value }));
  const stop = new AbortController();
  const started = performance.now();
  await untilInterrupted((shouldStop) => {
    const poll = setInterval(() => shouldStop() && stop.abort(), 100);
    return runSearch(evaluate, space, {
      trials,
      seed,
      method,
      acquisition,
      initialRandom: header.initialRandom,
      history,
      signal: stop.signal,
      onTrial: (t: Point & { index: number; phase: Phase }) => {
        const { c, ms } = details.get(t.x.join(""))!;
        const entry: Trial = {
          trial: t.index,
          phase: t.phase,
          skip: skipFromBits(t.x, layers),
          value: t.y,
          tokensPerRound: c.tokens / c.rounds,
          draftStepsPerRound: c.drafted / c.rounds,
          acceptanceRate: c.drafted ? c.accepted / c.drafted : 0,
          ms,
        };
        logged.push(entry);
        log.append(entry);
        progress.update(logged, performance.now() - started, t.index + 1 - history.length);
      },
    }).finally(() => clearInterval(poll));
  });
  progress.end();
  const newTrials = logged.length - history.length;
  phase(
    `search (${newTrials} trial${newTrials === 1 ? "" : "s"}, ${
      ms((performance.now() - started) / Math.max(1, newTrials))
    } each)`,
  );
  if (logged.length === 0) throw new InputError("no trial completed");

  const best = logged.reduce((a, b) => (b.value > a.value ? b : a));
  const skipPath = defaultSkipSetPath(out);
  await Deno.writeTextFile(skipPath, JSON.stringify(best.skip) + "\n");
  const plotPath = join(out, "convergence.svg");
  await Deno.writeTextFile(
    plotPath,
    await convergenceSvg(logged, `${dir.split("/").pop()}: ${method}, ${objective}`),
  );
  // The wall-clock speed-up of the final choice, whatever the objective.
  const wall = [];
  for (let r = 0; r < 3; r++) {
    wall.push((await calibrate(model, prompts, best.skip, options)).tokensPerSecond / baseline);
  }
  phase("outputs and the final wall-clock check");
  const result = {
    model: dir,
    method,
    objective,
    trials: logged.length,
    best: best.skip,
    skipped: skipCount(best.skip),
    bestValue: best.value,
    bestTrial: best.trial,
    wallClockSpeedup: median(wall),
    costModel: cost,
    skipJson: skipPath,
    trialsLog: log.path,
    plot: plotPath,
    interrupted: stop.signal.aborted,
  };
  if (flags.json) console.log(JSON.stringify(result));
  else {
    report.say(
      `best: trial ${best.trial + 1}, ${result.skipped}/${2 * layers} sub-layers skipped ` +
        `${JSON.stringify(best.skip)}, ${objective} ${best.value.toFixed(3)}x, ` +
        `wall-clock ${result.wallClockSpeedup.toFixed(2)}x over plain decoding`,
    );
    report.say(`wrote ${skipPath}, ${log.path}, ${plotPath}`);
  }
  return stop.signal.aborted ? 130 : 0;
}

async function readCostModel(path: string): Promise<CostModel> {
  const value = await readJson(path, InputError, { label: `--cost-model ${path}` });
  if (!isCostModel(value)) throw new InputError(`--cost-model ${path}: not a cost model`);
  return value;
}

function formatCostModel(c: CostModel): string {
  const verify = c.verifyRatio.slice(2).map((r, i) => `${i + 2}:${r.toFixed(2)}`).join(" ");
  return `cost model: step ${c.stepMs.toFixed(2)} ms = base ${c.baseMs.toFixed(2)} + ` +
    `per layer attention ${c.attnMs.toFixed(3)} + MLP ${c.mlpMs.toFixed(3)} ms; ` +
    `verify(n)/step ${verify}`;
}

/**
 * One line per trial: done, best so far, time left (overwritten in place on a terminal); nothing
 * without `say` (--quiet).
 */
function progressLine(total: number, say: ((line: string) => void) | undefined) {
  const tty = Deno.stderr.isTerminal();
  const write = (text: string) => Deno.stderr.writeSync(new TextEncoder().encode(text));
  let open = false; // a line redrawn in place that still needs its newline
  return {
    update(trials: Trial[], elapsedMs: number, newTrials: number) {
      if (!say) return;
      const best = Math.max(...trials.map((t) => t.value));
      const last = trials[trials.length - 1];
      const perTrial = elapsedMs / Math.max(1, newTrials);
      const left = Math.max(0, total - trials.length) * perTrial / 1000;
      const bar = "#".repeat(Math.round((20 * trials.length) / total)).padEnd(20, ".");
      const line = `[${bar}] trial ${trials.length}/${total} (${last.phase}) ` +
        `${last.value.toFixed(3)}x, best ${best.toFixed(3)}x, ~${left.toFixed(0)} s left`;
      if (tty) {
        write(`\r${line}`);
        open = true;
      } else say(line);
    },
    end() {
      if (open) write("\n");
      open = false;
    },
  };
}
