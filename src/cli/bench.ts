/**
 * `skipspec bench`: prefill, decode, speculate and self-speculate on each model over one prompt
 * set, with warm-up and repeats; min / median per figure, speed-ups measured in the same run,
 * dispatches and readbacks per token, weight bytes per token and their GB/s, forward(8)/forward(1),
 * and per-kernel GPU time. `--synthetic SHAPE` measures randomly initialised models of real
 * shapes; `--json FILE` writes every figure and the machine, `--plot FILE.svg` draws them.
 */
import { fileURLToPath } from "node:url";
import { benchModel, type BenchTarget } from "../bench/measure.ts";
import { machineInfo } from "../bench/machine.ts";
import { measureMemcpy, measureWeightRead } from "../bench/memcpy.ts";
import { benchPlotSvg } from "../bench/plot.ts";
import {
  type BenchReport,
  type Mode,
  type ModeFigures,
  type ModelFigures,
  MODES,
  REPORT_SCHEMA,
  validateReport,
} from "../bench/report.ts";
import type { Summary } from "../bench/stats.ts";
import { InputError, UsageError } from "../errors.ts";
import { openGpu } from "../gpu/device.ts";
import { Model } from "../model/model.ts";
import { readSkipSet } from "../model/skip.ts";
import { loadSafetensorsIndex } from "../model/safetensors.ts";
import { syntheticSource } from "../model/synthetic.ts";
import { meanMatrixBytes } from "../model/weights.ts";
import { ModelTokenizer } from "../model/tokenizer.ts";
import { mulberry32 } from "../tune/bo.ts";
import { helpText, parseFlags } from "./flags.ts";
import { OUTPUT_FLAGS, Reporter } from "./session.ts";
import { resolveModelDir } from "../model/hf_cache.ts";
import { readPrompts } from "./tune_skip.ts";

export const BENCH_SUMMARY =
  "Measure prefill/decode/speculation speed, dispatches, readbacks, GB/s and kernel times.";

const fixture = (name: string) => fileURLToPath(new URL(`../../fixtures/${name}`, import.meta.url));
const FIXTURES = ["tiny-llama", "tiny-llama-ls", "tiny-gemma2", "tiny-draft"];
const DEFAULT_DRAFT = "tiny-draft";
/** Prompt length of synthetic models (no tokenizer: seeded random ids). */
const SYNTHETIC_PROMPT_TOKENS = 16;

const FLAGS = {
  "model": {
    type: "string",
    help: "model folders or HF repo ids, comma-separated",
    default: FIXTURES.join(","),
    placeholder: "DIRS",
  },
  "synthetic": {
    type: "string",
    help: "instead of --model: randomly initialised models of real shapes, comma-separated " +
      "(llama-3.2-1b, tinyllama-1.1b, gemma-2-2b; bf16)",
    placeholder: "SHAPES",
  },
  "layers": { type: "int", help: "trim synthetic shapes to their first N layers", min: 1 },
  "modes": {
    type: "string",
    help: `modes to measure, comma-separated (${MODES.join(", ")})`,
    default: MODES.join(","),
    placeholder: "LIST",
  },
  "prompts": {
    type: "string",
    help: 'prompt set, one per line (\\n escapes) or JSON lines {"prompt": ...}',
    default: "fixtures/calibration_prompts.txt",
    placeholder: "FILE",
  },
  "prompt-count": { type: "int", help: "prompts of the set to use", default: 2, min: 1 },
  "new-tokens": { type: "int", help: "tokens to generate per prompt", default: 48, min: 2 },
  "repeats": {
    type: "int",
    help: "measured runs per figure (after a warm-up)",
    default: 3,
    min: 1,
  },
  "prefill-tokens": { type: "int", help: "tokens of the prefill figure", default: 128, min: 1 },
  "draft-model": {
    type: "string",
    help: "draft of `speculate` (default: fixtures/tiny-draft where its vocabulary matches)",
    placeholder: "DIR",
  },
  "skip": {
    type: "string",
    help: "skip set of `self-speculate` (default: the model folder's skip.json; synthetic: " +
      "every other layer between the first and the last)",
    placeholder: "FILE_OR_JSON",
  },
  "memcpy": {
    type: "boolean",
    help: "also measure the ceilings for decode's weight reads (GB/s): a plain GPU buffer copy, " +
      "and a kernel streaming a weight texture",
    default: false,
  },
  "json": {
    type: "string",
    help: "write every figure and the machine as JSON",
    placeholder: "FILE",
  },
  "plot": {
    type: "string",
    help: "draw tokens/s per mode and tokens/round (SVG)",
    placeholder: "FILE",
  },
  ...OUTPUT_FLAGS,
  "help": { type: "boolean", help: "show this help" },
} as const;

export async function runBench(argv: string[]): Promise<number> {
  const flags = parseFlags("bench", FLAGS, argv);
  if (flags.help) {
    console.log(helpText("skipspec bench [flags]", BENCH_SUMMARY, FLAGS));
    return 0;
  }
  const out = Reporter.from(flags);
  const modes = parseModes(flags.modes ?? FLAGS.modes.default);
  if (flags.synthetic !== undefined && flags.model !== undefined) {
    throw new UsageError("bench: give --model or --synthetic, not both");
  }
  if (flags.layers !== undefined && flags.synthetic === undefined) {
    throw new UsageError("bench: --layers trims a --synthetic shape");
  }
  for (const path of [flags.json, flags.plot]) if (path !== undefined) await checkWritable(path);
  const settings = {
    newTokens: flags["new-tokens"] ?? 48,
    repeats: flags.repeats ?? 3,
    prompts: flags["prompt-count"] ?? 2,
    prefillTokens: flags["prefill-tokens"] ?? 128,
    modes,
  };
  const synthetic = flags.synthetic?.split(",").map((s) => s.trim());
  const models = synthetic ?? (flags.model ?? FIXTURES.map(fixture).join(",")).split(",");
  const promptTexts = synthetic
    ? []
    : (await readPrompts(flags.prompts ?? fixture("calibration_prompts.txt")))
      .slice(0, settings.prompts);
  // Unknown shapes and missing folders fail now; the largest model sets lavapipe's threading.
  const folders = synthetic ? [] : await Promise.all(models.map((name) => resolveModelDir(name)));
  const matrixBytes = synthetic
    ? synthetic.map((shape) => meanMatrixBytes(syntheticSource(shape, flags.layers).tensors))
    : await Promise.all(
      folders.map(async (dir) => meanMatrixBytes(await loadSafetensorsIndex(dir))),
    );
  const gpu = await openGpu({ meanMatrixBytes: Math.max(...matrixBytes) });
  const report: BenchReport = {
    schema: REPORT_SCHEMA,
    date: new Date().toISOString(),
    machine: machineInfo(gpu),
    settings: { ...settings, prompts: synthetic ? settings.prompts : promptTexts.length },
    memcpy: null,
    weightRead: null,
    models: [],
  };
  if (flags.memcpy) {
    out.say("bench: memcpy ...");
    report.memcpy = await measureMemcpy(gpu, settings.repeats);
    out.say("bench: weight reads ...");
    report.weightRead = await measureWeightRead(gpu, settings.repeats);
  }
  for (const [i, name] of models.entries()) {
    const step = `bench [${i + 1}/${models.length}] ${name.split("/").pop()}`;
    const target = synthetic
      ? await syntheticTarget(name, flags.layers, settings.prompts, flags.skip)
      : await folderTarget(
        folders[i],
        promptTexts,
        flags["draft-model"],
        flags.skip,
      );
    try {
      report.models.push(
        await benchModel(target, { ...settings, progress: (m) => out.say(`${step}: ${m}`) }),
      );
    } finally {
      target.model.destroy();
      target.draft?.model.destroy();
    }
    await writeOutputs(report, flags.json, undefined); // figures so far survive an interruption
  }
  validateReport(report);
  await writeOutputs(report, flags.json, flags.plot);
  console.log(formatReport(report));
  return 0;
}

function parseModes(list: string): Mode[] {
  const modes = list.split(",").map((m) => m.trim());
  for (const m of modes) {
    if (!MODES.includes(m as Mode)) {
      throw new UsageError(`bench: unknown mode "${m}" (modes: ${MODES.join(", ")})`);
    }
  }
  return MODES.filter((m) => modes.includes(m));
}

/** Fails before any work when an output file cannot be written (e.g. no --allow-write). */
async function checkWritable(path: string) {
  const status = await Deno.permissions.query({ name: "write", path });
  if (status.state !== "granted") {
    throw new InputError(
      `cannot write ${path}: Deno was not given write access (run with --allow-write=${path})`,
    );
  }
}

async function writeOutputs(report: BenchReport, json?: string, plot?: string) {
  if (json !== undefined) await writeAtomically(json, JSON.stringify(report, null, 2) + "\n");
  if (plot !== undefined) await writeAtomically(plot, await benchPlotSvg(report));
}

/** Write then rename, so an interrupted write never leaves a half file in place of a whole one. */
async function writeAtomically(path: string, text: string) {
  const partial = `${path}.partial`;
  await Deno.writeTextFile(partial, text);
  await Deno.rename(partial, path);
}

async function folderTarget(
  dir: string,
  prompts: string[],
  draftDir: string | undefined,
  skipArg: string | undefined,
): Promise<BenchTarget> {
  const model = await Model.load(dir);
  const tokenizer = await ModelTokenizer.load(dir);
  const target: BenchTarget = {
    model,
    synthetic: false,
    prompts: prompts.map((p) => tokenizer.encode(p)),
  };
  const skipPath = skipArg ?? `${dir}/skip.json`;
  if (skipArg !== undefined || await isFile(skipPath)) {
    target.skip = await readSkipSet(skipPath, model.cfg.numLayers);
  }
  const draft = draftDir ?? fixture(DEFAULT_DRAFT);
  const isDraftItself = (await Deno.realPath(draft)) === (await Deno.realPath(dir));
  if (!isDraftItself) {
    const draftModel = await Model.load(draft, { contextLength: model.contextLength });
    if (draftModel.cfg.vocabSize === model.cfg.vocabSize) {
      target.draft = { label: draft.split("/").pop()!, model: draftModel };
    } else if (draftDir !== undefined) {
      throw new InputError(`--draft-model ${draftDir} has another vocabulary than ${dir}`);
    } else {
      draftModel.destroy();
    }
  }
  return target;
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isFile;
  } catch {
    return false;
  }
}

async function syntheticTarget(
  shape: string,
  layers: number | undefined,
  promptCount: number,
  skipArg: string | undefined,
): Promise<BenchTarget> {
  const source = syntheticSource(shape, layers);
  const model = await Model.create(source, { contextLength: 1024 });
  const random = mulberry32(7);
  const vocab = model.cfg.vocabSize;
  const n = model.cfg.numLayers;
  const everyOther = Array.from({ length: n }, (_, l) => l).filter((l) => l % 2 === 1 && l < n - 1);
  return {
    model,
    synthetic: true,
    prompts: Array.from(
      { length: promptCount },
      () => Array.from({ length: SYNTHETIC_PROMPT_TOKENS }, () => Math.floor(random() * vocab)),
    ),
    skip: skipArg !== undefined
      ? await readSkipSet(skipArg, n)
      : { attn: everyOther, mlp: everyOther },
  };
}

/** The report as tables: per model, its modes, forward(8)/forward(1) and top kernels. */
export function formatReport(r: BenchReport): string {
  const lines: string[] = [];
  const m = r.machine;
  lines.push(
    `machine: ${m.adapter.description || m.adapter.device} (${
      m.adapter.isFallback ? "software" : "hardware"
    }), ${m.cpus} CPUs, Deno ${m.deno}`,
  );
  if (r.memcpy) lines.push(`memcpy: ${range(r.memcpy.gbPerSecond, 2)} GB/s (buffer copy)`);
  if (r.memcpy && r.weightRead) {
    const ratio = r.weightRead.gbPerSecond.median / r.memcpy.gbPerSecond.median;
    lines.push(
      `weight reads: ${range(r.weightRead.gbPerSecond, 2)} GB/s (${ratio.toFixed(2)}x copy; ` +
        `a kernel that only streams a weight texture, as decode's kernels stream weights)`,
    );
  }
  for (const model of r.models) {
    lines.push("", modelTitle(model));
    lines.push(...table(
      [
        "mode",
        "draft",
        "tok/s (min-max)",
        "ms/tok",
        "speed-up",
        "disp/tok",
        "rb/tok",
        "GB/s",
        "accept",
        "tok/round",
        "drafts (recorded)/round",
        "predicted",
        "ideal",
        "if all accepted",
      ],
      model.modes.map((f) =>
        modeRow(f, r.memcpy?.gbPerSecond.median, r.weightRead?.gbPerSecond.median)
      ),
    ));
    lines.push(`forward(8) / forward(1): ${range(model.forward8OverForward1, 2)}`);
    if (model.modes.some((f) => !f.meaningful)) {
      lines.push(
        "(speculation on untrained synthetic weights: acceptance and speed-up mean nothing)",
      );
    }
    if (model.kernels) {
      const total = model.kernels.reduce((a, k) => a + k.msPerToken, 0);
      lines.push(`GPU time of a decode step: ${total.toFixed(3)} ms; top kernels:`);
      lines.push(...table(
        ["share", "ms/tok", "calls", "kernel"],
        model.kernels.slice(0, 8).map((k) => [
          `${(100 * k.share).toFixed(1)}%`,
          k.msPerToken.toFixed(3),
          String(k.calls),
          k.kernel,
        ]),
        [false, false, false, true],
      ));
    }
  }
  return lines.join("\n");
}

function modelTitle(m: ModelFigures): string {
  const params = m.parameters >= 1e9
    ? `${(m.parameters / 1e9).toFixed(2)}B`
    : `${(m.parameters / 1e6).toFixed(2)}M`;
  return `${m.model}: ${m.architecture}, ${m.layers} layers, ${params} parameters, ${m.dtype}, ` +
    `${m.promptTokens} prompt tokens`;
}

function modeRow(f: ModeFigures, memcpyGBps?: number, readsGBps?: number): string[] {
  const fixed = (s: Summary | null, d = 2) => s === null ? "-" : s.median.toFixed(d);
  const of = (gbps: number) =>
    memcpyGBps && readsGBps
      ? ` (${(gbps / memcpyGBps).toFixed(2)}x copy, ${(gbps / readsGBps).toFixed(2)}x reads)`
      : "";
  const gb = f.weightGBPerSecond === null
    ? "-"
    : f.weightGBPerSecond.median.toFixed(2) + of(f.weightGBPerSecond.median);
  const note = f.meaningful ? "" : "*";
  return [
    f.mode,
    f.draft ?? "-",
    range(f.tokensPerSecond, 1),
    fixed(f.msPerToken),
    f.speedup === null ? "-" : `${f.speedup.median.toFixed(2)}x${note}`,
    f.dispatchesPerToken.toFixed(1),
    f.readbacksPerToken.toFixed(3),
    gb,
    fixed(f.acceptanceRate),
    fixed(f.tokensPerRound),
    f.draftStepsPerRound === null
      ? "-"
      : `${fixed(f.draftStepsPerRound)} (${fixed(f.recordedDraftStepsPerRound)})`,
    f.predictedSpeedup === null ? "-" : `${f.predictedSpeedup.toFixed(2)}x`,
    f.idealSpeedup === null ? "-" : `${f.idealSpeedup.toFixed(2)}x`,
    f.allAcceptedSpeedup === null ? "-" : `${f.allAcceptedSpeedup.toFixed(2)}x`,
  ];
}

const range = (s: Summary, d: number) =>
  `${s.median.toFixed(d)} (${s.min.toFixed(d)}-${s.max.toFixed(d)})`;

function table(header: string[], rows: string[][], leftAlign: boolean[] = []): string[] {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i].length)));
  return [header, ...rows].map((row) =>
    row.map((c, i) => leftAlign[i] ? c.padEnd(widths[i]) : c.padStart(widths[i])).join("  ")
      .trimEnd()
  );
}
