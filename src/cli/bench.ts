/**
 * `skipspec bench`: decoding figures for each fixture model, measured in one run: prefill and
 * decode tok/s, ms per token, readbacks and GPU dispatches per token, and forward(8) / forward(1),
 * the cost of an 8-token forward (verification) relative to a 1-token one.
 */
import { fileURLToPath } from "node:url";
import { decode } from "../generate/decode.ts";
import { GREEDY } from "../gpu/ops.ts";
import { Model, NO_SKIP } from "../model/model.ts";
import { ModelTokenizer } from "../model/tokenizer.ts";
import { forwardMs, median } from "../generate/timing.ts";
import { benchSpeculation, type SpeculationRow } from "./bench_speculation.ts";
import { helpText, parseFlags } from "./flags.ts";

export const BENCH_SUMMARY = "Measure prefill/decode speed, readbacks and dispatches per token.";

const FIXTURES = ["tiny-llama", "tiny-llama-ls", "tiny-gemma2", "tiny-draft"];
/** Targets of the speculation table (each with a skip.json), and their separate draft. */
const SPECULATION_TARGETS = ["tiny-llama-ls", "tiny-llama", "tiny-gemma2"];
const DRAFT = "tiny-draft";
const fixture = (name: string) => fileURLToPath(new URL(`../../fixtures/${name}`, import.meta.url));
const PROMPT =
  "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.";

const FLAGS = {
  "model": { type: "string", help: "a model folder (default: every fixture)", placeholder: "DIR" },
  "new-tokens": { type: "int", help: "tokens to generate per run", default: 64, min: 2 },
  "repeats": { type: "int", help: "runs per figure (the median is reported)", default: 3, min: 1 },
  "speculation": {
    type: "boolean",
    help: "also measure speculate and self-speculate (fixtures only)",
    default: false,
  },
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
  const ratios = [];
  for (let i = 0; i < repeats; i++) {
    ratios.push((await forwardMs(model, 8, NO_SKIP, 1)) / (await forwardMs(model, 1, NO_SKIP, 1)));
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
  const dirs = flags.model ? [flags.model] : FIXTURES.map(fixture);
  const newTokens = flags["new-tokens"] ?? 64;
  const repeats = flags.repeats ?? 3;
  const rows: BenchRow[] = [];
  for (const dir of dirs) {
    if (!flags.json) console.error(`bench: ${dir} ...`);
    rows.push(await benchModel(dir, newTokens, repeats));
  }
  const speculation: SpeculationRow[] = [];
  if (flags.speculation) {
    const prompt = (await ModelTokenizer.load(fixture(DRAFT))).encode(PROMPT);
    for (const name of SPECULATION_TARGETS) {
      if (!flags.json) console.error(`bench: speculation on ${name} ...`);
      speculation.push(
        ...await benchSpeculation(fixture(name), fixture(DRAFT), prompt, newTokens, repeats),
      );
    }
  }
  if (flags.json) {
    console.log(JSON.stringify({ decode: rows, speculation }, null, 2));
    return 0;
  }
  printTable(
    [
      "model",
      "prompt",
      "prefill tok/s",
      "decode tok/s",
      "ms/token",
      "readbacks/tok",
      "dispatches/tok",
      "fwd8/fwd1",
    ],
    rows.map((r) => [
      r.model.split("/").pop()!,
      String(r.promptTokens),
      r.prefillTokensPerSecond.toFixed(1),
      r.decodeTokensPerSecond.toFixed(1),
      r.msPerToken.toFixed(2),
      r.readbacksPerToken.toFixed(3),
      r.dispatchesPerToken.toFixed(0),
      r.forward8OverForward1.toFixed(2),
    ]),
  );
  if (speculation.length) {
    console.log("");
    const fixed = (v: number | undefined, digits = 2) => v === undefined ? "-" : v.toFixed(digits);
    printTable(
      [
        "model",
        "mode",
        "draft",
        "tok/s",
        "speed-up",
        "accept",
        "tok/round",
        "drafts/round",
        "readbacks/round",
        "predicted",
        "ideal",
      ],
      speculation.map((r) => [
        r.model,
        r.mode,
        r.draft,
        r.tokensPerSecond.toFixed(1),
        `${r.speedup.toFixed(2)}x`,
        fixed(r.acceptanceRate),
        fixed(r.tokensPerRound),
        fixed(r.draftStepsPerRound),
        fixed(r.readbacksPerRound),
        r.predictedSpeedup === undefined ? "-" : `${r.predictedSpeedup.toFixed(2)}x`,
        r.idealSpeedup === undefined ? "-" : `${r.idealSpeedup.toFixed(2)}x`,
      ]),
    );
  }
  return 0;
}

function printTable(header: string[], table: string[][]) {
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((row) => row[i].length)));
  for (const row of [header, ...table]) {
    console.log(row.map((c, i) => c.padStart(widths[i])).join("  "));
  }
}
