/** Skip sets as users write them: `{ "attn": [layers], "mlp": [layers] }`, inline or in a file. */
import { InputError } from "../errors.ts";
import { brief, readText } from "../files.ts";
import type { SkipSet } from "./model.ts";

/** Where tune-skip writes a model's skip set and self-speculate looks for it. */
export function defaultSkipSetPath(modelDir: string): string {
  return `${modelDir}/skip.json`;
}

/** Sub-layers a skip set skips. */
export function skipCount(skip: SkipSet): number {
  return skip.attn.length + skip.mlp.length;
}

/** Parses and validates a skip set for a model of `numLayers` layers. */
export function parseSkipSet(text: string, numLayers: number, source = "skip set"): SkipSet {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    throw new InputError(`${source} is not valid JSON: expected {"attn": [...], "mlp": [...]}`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new InputError(`${source} must be an object {"attn": [...], "mlp": [...]}`);
  }
  const extra = Object.keys(raw).filter((k) => k !== "attn" && k !== "mlp");
  if (extra.length) {
    throw new InputError(`${source} has unknown key ${brief(extra[0])} (expected attn, mlp)`);
  }
  const list = (key: "attn" | "mlp"): number[] => {
    const v = (raw as Record<string, unknown>)[key] ?? [];
    if (!Array.isArray(v)) {
      throw new InputError(`${source}: "${key}" must be an array of layer indices`);
    }
    const seen = new Set<number>();
    for (const i of v) {
      if (!Number.isInteger(i) || i < 0 || i >= numLayers) {
        throw new InputError(
          `${source}: ${key} layer ${brief(i)} is not in 0..${numLayers - 1}`,
        );
      }
      if (seen.has(i)) throw new InputError(`${source}: ${key} layer ${i} is listed twice`);
      seen.add(i);
    }
    return [...seen].sort((a, b) => a - b);
  };
  return { attn: list("attn"), mlp: list("mlp") };
}

/** `--skip` takes inline JSON (starting with "{") or a path to a JSON file. */
export async function readSkipSet(arg: string, numLayers: number): Promise<SkipSet> {
  if (arg.trim().startsWith("{")) return parseSkipSet(arg, numLayers, "--skip");
  const text = await readText(arg, InputError, { label: `--skip ${arg}` });
  return parseSkipSet(text, numLayers, arg);
}
