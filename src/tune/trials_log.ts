/**
 * The tune-skip trials log, `trials.jsonl`: a header line naming the run, then one line per
 * evaluated skip set, appended and flushed as soon as it is known, so a killed run loses at most
 * the trial in progress. `--resume` reads it back: a header that does not match the run, or any
 * malformed complete line, is a one-line error; a last line cut off mid-write (no newline) is the
 * trial that was in progress and is run again.
 */
import { InputError } from "../errors.ts";
import { brief, readTextSync } from "../files.ts";
import type { SkipSet } from "../model/model.ts";
import type { CostModel } from "./objective.ts";

/** What a log belongs to; a resumed run must match it. */
export interface RunHeader {
  model: string;
  objective: string;
  method: string;
  acquisition: string;
  initialRandom: number;
  seed: number;
  layers: number;
  draftMax: number;
  maxNewTokens: number;
  /** Layers never skipped, comma-separated. */
  keep: string;
  minSkip: number;
  maxSkip: number;
  /** A hash of the tokenized calibration prompts. */
  prompts: string;
}

/** The header line: the run, and the cost model its scores used (a resumed run reuses it). */
export interface LogHeader extends RunHeader {
  costModel: CostModel;
}

export interface Trial {
  trial: number;
  phase: "random" | "bo";
  skip: SkipSet;
  /** The objective's value (predicted or measured speed-up over plain decoding). */
  value: number;
  tokensPerRound: number;
  draftStepsPerRound: number;
  acceptanceRate: number;
  /** Wall time of this trial's evaluation. */
  ms: number;
}

export class TrialsLog {
  private constructor(readonly path: string) {}

  /** A new log with its header (overwrites `path`). */
  static create(path: string, header: LogHeader): TrialsLog {
    Deno.writeTextFileSync(path, JSON.stringify({ header }) + "\n");
    return new TrialsLog(path);
  }

  /** The completed trials of an existing log, which must belong to the same run. */
  static resume(
    path: string,
    header: RunHeader,
  ): { log: TrialsLog; trials: Trial[]; costModel: CostModel } {
    const text = readTextSync(path, InputError, { label: `--resume ${path}` });
    // The last piece is "" after a final newline, or a line cut off mid-write: drop it either way.
    const complete = text.split("\n").slice(0, -1);
    if (complete.length === 0) throw new InputError(`--resume ${path}: the log has no header line`);
    const parse = (line: string, at: number): Record<string, unknown> => {
      try {
        const value = JSON.parse(line);
        if (typeof value === "object" && value !== null && !Array.isArray(value)) return value;
      } catch { /* reported below */ }
      throw new InputError(`--resume ${path}: line ${at + 1} is not a JSON object`);
    };
    const found = parse(complete[0], 0).header as Record<string, unknown> | undefined;
    if (!found || typeof found !== "object") {
      throw new InputError(`--resume ${path}: line 1 is not a trials-log header`);
    }
    for (const [key, value] of Object.entries(header)) {
      if (found[key] !== value) {
        throw new InputError(
          `--resume ${path}: the log is for ${key} ${brief(found[key])}, ` +
            `this run has ${brief(value)}`,
        );
      }
    }
    const trials = complete.slice(1).map((line, i) =>
      checkTrial(parse(line, i + 1), path, i + 2, header.layers)
    );
    trials.forEach((t, i) => {
      if (t.trial !== i) {
        throw new InputError(`--resume ${path}: line ${i + 2} is trial ${t.trial}, expected ${i}`);
      }
    });
    const costModel = found.costModel as CostModel;
    if (!isCostModel(costModel)) {
      throw new InputError(`--resume ${path}: the header has no valid cost model`);
    }
    // Drop a cut-off last line so the next append starts on a line of its own.
    Deno.writeTextFileSync(path, complete.map((l) => l + "\n").join(""));
    return { log: new TrialsLog(path), trials, costModel };
  }

  append(trial: Trial) {
    Deno.writeTextFileSync(this.path, JSON.stringify(trial) + "\n", { append: true });
  }
}

function checkTrial(v: Record<string, unknown>, path: string, line: number, layers: number): Trial {
  const skip = v.skip as Record<string, unknown> | null | undefined;
  const numbers = [
    "trial",
    "value",
    "tokensPerRound",
    "draftStepsPerRound",
    "acceptanceRate",
    "ms",
  ];
  const ok = numbers.every((k) => typeof v[k] === "number" && Number.isFinite(v[k])) &&
    (v.phase === "random" || v.phase === "bo") && typeof skip === "object" && skip !== null &&
    Array.isArray(skip.attn) && Array.isArray(skip.mlp) &&
    [skip.attn, skip.mlp].every((list) =>
      new Set(list).size === list.length &&
      list.every((i) => Number.isInteger(i) && i >= 0 && i < layers)
    );
  if (!ok) throw new InputError(`--resume ${path}: line ${line} is not a valid trial`);
  return v as unknown as Trial;
}

export function isCostModel(v: unknown): v is CostModel {
  const c = v as CostModel;
  const finite = (x: unknown) => typeof x === "number" && Number.isFinite(x);
  return typeof c === "object" && c !== null && finite(c.stepMs) && c.stepMs > 0 &&
    finite(c.attnMs) && finite(c.mlpMs) && finite(c.baseMs) && Array.isArray(c.verifyRatio) &&
    c.verifyRatio.length >= 2 && c.verifyRatio.every(finite);
}

/** FNV-1a of the tokenized prompts: a resumed run must calibrate on the same tokens. */
export function promptsHash(prompts: number[][]): string {
  let h = 0x811c9dc5;
  for (const ch of JSON.stringify(prompts)) {
    h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, "0");
}
