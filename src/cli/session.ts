/**
 * What every generating subcommand does before it generates: find the model folder (a path, or a
 * repo id in the local Hugging Face cache), load the model (with a progress bar for large ones)
 * and its tokenizer, read generation_config.json for the sampling defaults, build the prompt ids,
 * and parse the skip set. Also what they share in how they talk: --quiet / --verbose, colours only
 * on a terminal without NO_COLOR, and Ctrl-C turned into a clean stop.
 */
import { fileURLToPath } from "node:url";
import { InputError, ModelError, UsageError } from "../errors.ts";
import { readJsonObject, readText } from "../files.ts";
import type { Gpu } from "../gpu/device.ts";
import type { SamplingParams } from "../gpu/ops.ts";
import { resolveModelDir } from "../model/hf_cache.ts";
import { Model, NO_SKIP, type SkipSet } from "../model/model.ts";
import { readSkipSet } from "../model/skip.ts";
import { ModelTokenizer, TextStreamer } from "../model/tokenizer.ts";
import type { FlagTable } from "./flags.ts";

/** The embedded default model, shipped in `fixtures/` (and inside the compiled binary). */
export const DEFAULT_MODEL = fileURLToPath(new URL("../../fixtures/tiny-llama", import.meta.url));

/** --model and --revision, as every command that loads a model takes them. */
export const MODEL_FLAGS = {
  "model": {
    type: "string",
    help: "model folder (HF layout), or a Hugging Face repo id org/name already in the local " +
      "HF cache (never downloaded)",
    default: "the embedded tiny-llama",
    placeholder: "DIR_OR_REPO",
  },
  "revision": {
    type: "string",
    help: "with a repo id: the branch, tag or commit hash in the HF cache",
    default: "main",
    placeholder: "REV",
  },
} as const satisfies FlagTable;

/** --quiet and --verbose, for every command that reports progress or figures on stderr. */
export const OUTPUT_FLAGS = {
  "quiet": {
    type: "boolean",
    help: "print only the output: no progress or figures on stderr (errors still are)",
    default: false,
  },
  "verbose": {
    type: "boolean",
    help: "also print the adapter, load times and per-phase timings on stderr",
    default: false,
  },
} as const satisfies FlagTable;

/** The model folder that --model / --revision name (the embedded model by default). */
export function modelDir(flags: { model?: string; revision?: string }): Promise<string> {
  if (flags.model === undefined) {
    if (flags.revision !== undefined) {
      throw new UsageError("--revision needs --model org/name (a Hugging Face repo id)");
    }
    return Promise.resolve(DEFAULT_MODEL);
  }
  return resolveModelDir(flags.model, flags.revision);
}

/** Flags shared by decode, speculate and self-speculate (HF names). */
export const GENERATION_FLAGS = {
  ...MODEL_FLAGS,
  "prompt": { type: "string", help: "prompt text", placeholder: "TEXT" },
  "prompt-file": { type: "string", help: "read the prompt from a file", placeholder: "FILE" },
  "chat": { type: "boolean", help: "wrap the prompt in the model's chat template", default: false },
  "max-new-tokens": {
    type: "int",
    help: "tokens to generate (default: generation_config.json, else 128)",
    min: 1,
  },
  "temperature": {
    type: "number",
    help: "0 = greedy (default: generation_config.json, else 0)",
    min: 0,
  },
  "top-k": {
    type: "int",
    help: "keep the k most likely tokens, 0 = off (default: generation_config.json)",
    min: 0,
  },
  "top-p": {
    type: "number",
    help: "nucleus sampling mass, 1 = off (default: generation_config.json)",
    min: 0,
    max: 1,
  },
  "min-p": {
    type: "number",
    help: "drop tokens below min-p x the top probability, 0 = off",
    default: 0,
    min: 0,
    max: 1,
  },
  "repetition-penalty": {
    type: "number",
    help: "penalise tokens already in the context, 1 = off",
    default: 1,
    min: 0.01,
  },
  "seed": {
    type: "int",
    help: "sampling seed (default: random, reported in the stats)",
    min: 0,
    max: 2 ** 32 - 1,
  },
  "skip": {
    type: "string",
    help: 'skip sub-layers: JSON {"attn":[..],"mlp":[..]} or a file',
    placeholder: "FILE_OR_JSON",
  },
  "context": {
    type: "int",
    help: "K/V cache length in tokens (default: min(max_position_embeddings, 4096))",
    min: 2,
  },
  "json": {
    type: "boolean",
    help: "print tokens, text and stats as one JSON object on stdout",
    default: false,
  },
  ...OUTPUT_FLAGS,
  "help": { type: "boolean", help: "show this help" },
} as const satisfies FlagTable;

/** How much a command says on stderr, and in which colours. */
export class Reporter {
  readonly color: Colors;
  constructor(readonly level: "quiet" | "normal" | "verbose", color = useColor()) {
    this.color = colors(color);
  }

  static from(flags: { quiet?: boolean; verbose?: boolean }): Reporter {
    if (flags.quiet && flags.verbose) throw new UsageError("give --quiet or --verbose, not both");
    return new Reporter(flags.quiet ? "quiet" : flags.verbose ? "verbose" : "normal");
  }

  get quiet(): boolean {
    return this.level === "quiet";
  }
  get verbose(): boolean {
    return this.level === "verbose";
  }
  /** Progress and figures: not with --quiet. */
  say(line: string) {
    if (!this.quiet) console.error(line);
  }
  /** Extra detail: only with --verbose. */
  detail(line: string) {
    if (this.verbose) console.error(this.color.dim(line));
  }
}

/**
 * Colours on stderr only on a terminal, and never with NO_COLOR set to a non-empty value
 * (`Deno.noColor` reads it at startup, so no env permission is needed).
 */
export function useColor(): boolean {
  return !Deno.noColor && Deno.stderr.isTerminal();
}

export type Colors = Record<"label" | "error" | "dim", (text: string) => string>;

export function colors(enabled: boolean): Colors {
  const sgr = (code: string) => (text: string) =>
    enabled && text ? `\x1b[${code}m${text}\x1b[0m` : text;
  return { label: sgr("36"), error: sgr("1;31"), dim: sgr("2") };
}

/**
 * "adapter: <name> (<vendor>, <architecture>), a fallback (software) adapter, LP_NUM_THREADS=0"
 * for --verbose (the threading only on software adapters, where lavapipe reads it).
 */
export function describeAdapter(gpu: Gpu): string {
  const i = gpu.adapterInfo;
  const name = i.description || i.device || "unknown";
  const where = [i.vendor, i.architecture].filter(Boolean).join(", ");
  const threads = gpu.lavapipeThreads === null ? "" : `, LP_NUM_THREADS=${gpu.lavapipeThreads}`;
  return `adapter: ${name}${where ? ` (${where})` : ""}` +
    (gpu.isFallback ? `, a fallback (software) adapter${threads}` : "");
}

/** Milliseconds, for --verbose timings. */
export const ms = (t: number) => `${t.toFixed(0)} ms`;

export interface GenerationConfig {
  do_sample?: boolean;
  temperature?: number;
  top_k?: number;
  top_p?: number;
  min_p?: number;
  repetition_penalty?: number;
  max_new_tokens?: number;
  eos_token_id?: number | number[];
}

/** generation_config.json of the model folder; none is `{}` (the defaults apply). */
export async function readGenerationConfig(dir: string): Promise<GenerationConfig> {
  const path = `${dir}/generation_config.json`;
  try {
    await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return {};
  }
  return await readJsonObject(path, ModelError) as GenerationConfig;
}

type GenerationFlagValues = {
  [K in keyof typeof GENERATION_FLAGS]?: (typeof GENERATION_FLAGS)[K]["type"] extends "boolean"
    ? boolean
    : (typeof GENERATION_FLAGS)[K]["type"] extends "string" ? string
    : number;
};

/** Sampling settings: flags first, then generation_config.json (when it samples), else greedy. */
export function samplingFrom(flags: GenerationFlagValues, gen: GenerationConfig): SamplingParams {
  const sampled = gen.do_sample === true;
  const num = (
    v: unknown,
    fallback: number,
  ) => (typeof v === "number" && Number.isFinite(v) ? v : fallback);
  return {
    temperature: flags.temperature ?? (sampled ? num(gen.temperature, 1) : 0),
    topK: flags["top-k"] ?? (sampled ? num(gen.top_k, 0) : 0),
    topP: flags["top-p"] ?? (sampled ? num(gen.top_p, 1) : 1),
    minP: flags["min-p"] ?? num(gen.min_p, 0),
    repetitionPenalty: flags["repetition-penalty"] ?? num(gen.repetition_penalty, 1),
    seed: flags.seed ?? crypto.getRandomValues(new Uint32Array(1))[0],
  };
}

export interface Session {
  dir: string;
  model: Model;
  tokenizer: ModelTokenizer;
  generation: GenerationConfig;
  promptText: string;
  promptIds: number[];
  skip: SkipSet;
  sampling: SamplingParams;
  maxNewTokens: number;
  stopTokens: number[];
}

/** Loads everything a generating subcommand needs from its flags. */
export async function openSession(
  flags: GenerationFlagValues,
  report: Reporter = new Reporter("normal"),
): Promise<Session> {
  if (flags.prompt !== undefined && flags["prompt-file"] !== undefined) {
    throw new InputError("give --prompt or --prompt-file, not both");
  }
  let promptText = flags.prompt;
  if (flags["prompt-file"] !== undefined) {
    const path = flags["prompt-file"];
    promptText = await readText(path, InputError, { label: `--prompt-file ${path}` });
  }
  if (promptText === undefined) {
    throw new InputError("no prompt: give --prompt TEXT or --prompt-file FILE");
  }
  const dir = await modelDir(flags);
  const start = performance.now();
  const tokenizer = await ModelTokenizer.load(dir);
  const tokenizerMs = performance.now() - start;
  const model = await Model.load(dir, {
    contextLength: flags.context,
    onProgress: report.quiet ? undefined : progressBar(),
  });
  report.detail(describeAdapter(model.gpu));
  report.detail(
    `model: ${dir}, context ${model.contextLength} tokens; loaded in ` +
      `${ms(performance.now() - start)} (tokenizer ${ms(tokenizerMs)})`,
  );
  if (tokenizer.vocabSize > model.cfg.vocabSize) {
    throw new ModelError(
      `tokenizer has ${tokenizer.vocabSize} tokens but the model's vocab_size is ${model.cfg.vocabSize}`,
    );
  }
  const generation = await readGenerationConfig(dir);
  const text = flags.chat
    ? tokenizer.applyChatTemplate([{ role: "user", content: promptText }])
    : promptText;
  const promptIds = flags.chat ? tokenizer.encodeRaw(text) : tokenizer.encode(text);
  const skip = flags.skip === undefined
    ? NO_SKIP
    : await readSkipSet(flags.skip, model.cfg.numLayers);
  const genEos = generation.eos_token_id;
  const stopTokens = [
    ...new Set([
      ...model.cfg.eosTokenIds,
      ...tokenizer.eosTokenIds,
      ...(genEos === undefined ? [] : Array.isArray(genEos) ? genEos : [genEos]),
    ]),
  ];
  if (flags.chat) {
    const endOfTurn = tokenizer.encodeRaw("<end_of_turn>");
    if (endOfTurn.length === 1) stopTokens.push(endOfTurn[0]);
  }
  return {
    dir,
    model,
    tokenizer,
    generation,
    promptText: text,
    promptIds,
    skip,
    sampling: samplingFrom(flags, generation),
    maxNewTokens: flags["max-new-tokens"] ?? generation.max_new_tokens ?? 128,
    stopTokens,
  };
}

/** A progress bar on stderr for models over 100 MB (only on a terminal). */
function progressBar(): (loaded: number, total: number) => void {
  const tty = Deno.stderr.isTerminal();
  let last = -1;
  return (loaded, total) => {
    if (!tty || total < 100e6) return;
    const percent = Math.floor((loaded / total) * 100);
    if (percent === last) return;
    last = percent;
    const bar = "#".repeat(percent / 4).padEnd(25, ".");
    const mb = (b: number) => (b / 1e6).toFixed(0);
    Deno.stderr.writeSync(
      new TextEncoder().encode(`\rloading [${bar}] ${percent}% ${mb(loaded)}/${mb(total)} MB`),
    );
    if (loaded >= total) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  };
}

/** Decoded text streamed to stdout as token ids arrive (whole characters only). */
export function stdoutText(tokenizer: ModelTokenizer) {
  const streamer = new TextStreamer(tokenizer);
  const write = (text: string) => text && Deno.stdout.writeSync(new TextEncoder().encode(text));
  return {
    push: (ids: number[]) => write(streamer.push(ids)),
    /** The rest of the text and a newline. */
    end: () => write(streamer.flush() + "\n"),
  };
}

/**
 * Runs a generation with Ctrl-C turned into a stop request it polls, so the text and figures so
 * far are still printed (and the command exits 130).
 */
export async function untilInterrupted<T>(run: (shouldStop: () => boolean) => Promise<T>) {
  let interrupted = false;
  // A second Ctrl-C does not wait for the next check.
  const onInterrupt = () => interrupted ? Deno.exit(130) : (interrupted = true);
  Deno.addSignalListener("SIGINT", onInterrupt);
  try {
    return await run(() => interrupted);
  } finally {
    Deno.removeSignalListener("SIGINT", onInterrupt);
  }
}
