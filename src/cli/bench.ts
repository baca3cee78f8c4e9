/**
 * `skipspec bench`: decoding figures for each fixture model, measured in one run: prefill and
 * decode tok/s, ms per token, readbacks and GPU dispatches per token, and forward(8) / forward(1),
 * the cost of an 8-token forward (verification) relative to a 1-token one.
 */
import { fileURLToPath } from "node:url";
import { decode } from "../generate/decode.ts";
import { GREEDY, Recorder } from "../gpu/ops.ts";
import { Model, NO_SKIP } from "../model/model.ts";
import { ModelTokenizer } from "../model/tokenizer.ts";
import { helpText, parseFlags } from "./flags.ts";

export const BENCH_SUMMARY = "Measure prefill/decode speed, readbacks and dispatches per token.";

const FIXTURES = ["tiny-llama", "tiny-llama-ls", "tiny-gemma2", "tiny-draft"];
const PROMPT =
  "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.";

const FLAGS = {
  "model": { type: "string", help: "a model folder (default: every fixture)", placeholder: "DIR" },
  "new-tokens": { type: "int", help: "tokens to generate per run", default: 64, min: 2 },
  "repeats": { type: "int", help: "runs per figure (the median is reported)", default: 3, min: 1 },
  "json": { type: "boolean", help: "print the figures as JSON", default: false },
  "help": { type: "boolean", help: "show this help" },
} as const;

export interface BenchRow {
  model: string;
  promptTokens: number;
  prefillTokensPerSecond: number;
  decodeTokensPerSecond: number;
  msPerToken: number;
  readbacksPerToken: number;
  dispatchesPerToken: number;
  forward8OverForward1: number;
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

/** Wall time of `reps` forwards of `n` tokens recorded into one submission. */
async function timeForwards(model: Model, n: number, reps: number): Promise<number> {
  model.writeInput(Array.from({ length: n }, (_, i) => i + 1), 0);
  const start = performance.now();
  const encoder = model.device.createCommandEncoder();
  const rec = new Recorder(encoder.beginComputePass());
  for (let i = 0; i < reps; i++) model.recordForward(rec, n, NO_SKIP, "all");
  rec.pass.end();
  model.device.queue.submit([encoder.finish()]);
  await model.device.queue.onSubmittedWorkDone();
  return performance.now() - start;
}

export async function benchModel(
  dir: string,
  newTokens: number,
  repeats: number,
): Promise<BenchRow> {
  const model = await Model.load(dir);
  const ids = (await ModelTokenizer.load(dir)).encode(PROMPT);
  const run = () =>
    decode(model, ids, {
      maxNewTokens: newTokens,
      sampling: GREEDY,
      skip: NO_SKIP,
      stopTokens: [],
    });
  await run(); // compiles every pipeline variant
  const runs = [];
  for (let i = 0; i < repeats; i++) runs.push((await run()).stats);
  await timeForwards(model, 8, 2);
  const ratios = [];
  for (let i = 0; i < repeats; i++) {
    ratios.push((await timeForwards(model, 8, 20)) / (await timeForwards(model, 1, 20)));
  }
  model.destroy();
  const decodeTps = median(runs.map((s) => s.decodeTokensPerSecond));
  return {
    model: dir,
    promptTokens: ids.length,
    prefillTokensPerSecond: median(runs.map((s) => s.prefillTokensPerSecond)),
    decodeTokensPerSecond: decodeTps,
    msPerToken: 1000 / decodeTps,
    readbacksPerToken: median(runs.map((s) => s.readbacksPerToken)),
    dispatchesPerToken: median(runs.map((s) => s.dispatchesPerToken)),
    forward8OverForward1: median(ratios),
  };
}

export async function runBench(argv: string[]): Promise<number> {
  const flags = parseFlags("bench", FLAGS, argv);
  if (flags.help) {
    console.log(helpText("skipspec bench [flags]", BENCH_SUMMARY, FLAGS));
    return 0;
  }
  const dirs = flags.model
    ? [flags.model]
    : FIXTURES.map((f) => fileURLToPath(new URL(`../../fixtures/${f}`, import.meta.url)));
  const rows: BenchRow[] = [];
  for (const dir of dirs) {
    if (!flags.json) console.error(`bench: ${dir} ...`);
    rows.push(await benchModel(dir, flags["new-tokens"] ?? 64, flags.repeats ?? 3));
  }
  if (flags.json) {
    console.log(JSON.stringify(rows, null, 2));
    return 0;
  }
  const header = [
    "model",
    "prompt",
    "prefill tok/s",
    "decode tok/s",
    "ms/token",
    "readbacks/tok",
    "dispatches/tok",
    "fwd8/fwd1",
  ];
  const table = rows.map((r) => [
    r.model.split("/").pop()!,
    String(r.promptTokens),
    r.prefillTokensPerSecond.toFixed(1),
    r.decodeTokensPerSecond.toFixed(1),
    r.msPerToken.toFixed(2),
    r.readbacksPerToken.toFixed(3),
    r.dispatchesPerToken.toFixed(0),
    r.forward8OverForward1.toFixed(2),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
  for (const row of [header, ...table]) {
    console.log(row.map((c, i) => c.padStart(widths[i])).join("  "));
  }
  return 0;
}
