/**
 * Command-line flags from one table per subcommand: the table gives `node:util` parseArgs its
 * options, turns values into typed numbers with range checks, and writes the help text, so a
 * flag's default and description live in one place.
 */
import { parseArgs } from "node:util";
import { UsageError } from "../errors.ts";

export type FlagType = "string" | "boolean" | "int" | "number";

export interface FlagSpec {
  type: FlagType;
  help: string;
  /** Shown in help; `undefined` means "none" (or a default computed at run time, said in help). */
  default?: string | number | boolean;
  placeholder?: string;
  min?: number;
  max?: number;
}

export type FlagTable = Record<string, FlagSpec>;

export type FlagValues<T extends FlagTable> = {
  [K in keyof T]?: T[K]["type"] extends "boolean" ? boolean
    : T[K]["type"] extends "string" ? string
    : number;
};

/** Parses argv against the table; unknown flags, stray arguments and bad numbers are UsageErrors. */
export function parseFlags<T extends FlagTable>(
  command: string,
  table: T,
  argv: string[],
): FlagValues<T> {
  const options: Record<string, { type: "string" | "boolean" }> = {};
  for (const [name, spec] of Object.entries(table)) {
    options[name] = { type: spec.type === "boolean" ? "boolean" : "string" };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options, strict: true, allowPositionals: false });
  } catch (e) {
    const message = (e as Error).message.split("\n")[0].replace(/\. To specify.*$/, "");
    throw new UsageError(`${command}: ${message} (see skipspec ${command} --help)`);
  }
  const out: Record<string, unknown> = {};
  for (const [name, raw] of Object.entries(parsed.values)) {
    const spec = table[name];
    if (spec.type === "int" || spec.type === "number") {
      const value = Number(raw);
      const ok = (raw as string).trim() !== "" && Number.isFinite(value) &&
        (spec.type === "number" || Number.isInteger(value));
      if (!ok) {
        throw new UsageError(
          `${command}: --${name} needs ${
            spec.type === "int" ? "an integer" : "a number"
          }, got "${raw}"`,
        );
      }
      if (
        (spec.min !== undefined && value < spec.min) || (spec.max !== undefined && value > spec.max)
      ) {
        throw new UsageError(
          `${command}: --${name} must be in [${spec.min ?? "-inf"}, ${
            spec.max ?? "inf"
          }], got ${value}`,
        );
      }
      out[name] = value;
    } else {
      out[name] = raw;
    }
  }
  return out as FlagValues<T>;
}

/** Help text: usage line, then one line per flag with its default. */
export function helpText(usage: string, summary: string, table: FlagTable, footer = ""): string {
  const rows = Object.entries(table).map(([name, spec]) => {
    const arg = spec.type === "boolean" ? "" : ` ${spec.placeholder ?? spec.type.toUpperCase()}`;
    const def = spec.default === undefined ? "" : ` (default: ${JSON.stringify(spec.default)})`;
    return [`  --${name}${arg}`, `${spec.help}${def}`];
  });
  const width = Math.max(...rows.map(([left]) => left.length)) + 2;
  const lines = rows.map(([left, right]) => left.padEnd(width) + right);
  return [`Usage: ${usage}`, "", summary, "", "Flags:", ...lines, footer].join("\n").trimEnd() +
    "\n";
}
