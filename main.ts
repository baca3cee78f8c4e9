/**
 * skipspec: LLM decoding on WebGPU with per-sub-layer skip flags, for Deno.
 * `deno run main.ts <command> [flags]`; every user-facing error is one line and an exit code.
 */
import { BENCH_SUMMARY, runBench } from "./src/cli/bench.ts";
import { DECODE_SUMMARY, runDecode } from "./src/cli/decode.ts";
import { INFO_SUMMARY, runInfo } from "./src/cli/info.ts";
import { colors, useColor } from "./src/cli/session.ts";
import {
  runSelfSpeculate,
  runSpeculate,
  SELF_SPECULATE_SUMMARY,
  SPECULATE_SUMMARY,
} from "./src/cli/speculate.ts";
import { runTuneSkip, TUNE_SKIP_SUMMARY } from "./src/cli/tune_skip.ts";
import { asDeviceLost } from "./src/gpu/device.ts";
import { ExitCode, SkipspecError, UsageError } from "./src/errors.ts";

const COMMANDS: Record<string, { summary: string; run: (argv: string[]) => Promise<number> }> = {
  decode: { summary: DECODE_SUMMARY, run: runDecode },
  speculate: { summary: SPECULATE_SUMMARY, run: runSpeculate },
  "self-speculate": { summary: SELF_SPECULATE_SUMMARY, run: runSelfSpeculate },
  "tune-skip": { summary: TUNE_SKIP_SUMMARY, run: runTuneSkip },
  bench: { summary: BENCH_SUMMARY, run: runBench },
  info: { summary: INFO_SUMMARY, run: runInfo },
};

export const HELP = `Usage: skipspec <command> [flags]

Commands:
${Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(16)}${c.summary}`).join("\n")}

Run "skipspec <command> --help" for a command's flags and their defaults.

Exit codes:
  0    success
  1    internal error (a bug: please report it with the stack trace)
  2    usage error (unknown or malformed flags, conflicting options)
  3    the model cannot be loaded (missing folder or HF cache entry, malformed or unsupported files)
  4    no usable GPU adapter, or the GPU cannot hold what was asked
  5    bad input (prompt longer than the context, invalid skip set, unreadable file, permissions)
  130  interrupted (Ctrl-C); the text and stats so far are printed
`;

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(HELP);
    return command === undefined ? ExitCode.usage : ExitCode.ok;
  }
  try {
    const entry = COMMANDS[command];
    if (!entry) {
      throw new UsageError(
        `unknown command "${command}" (commands: ${Object.keys(COMMANDS).join(", ")})`,
      );
    }
    return await entry.run(rest);
  } catch (caught) {
    const prefix = colors(useColor()).error("skipspec:");
    const e = asDeviceLost(caught); // a lost GPU anywhere is one line, exit 4
    if (e instanceof SkipspecError) {
      console.error(`${prefix} ${e.message.split("\n")[0]}`);
      return e.exitCode;
    }
    if (e instanceof Deno.errors.NotCapable || e instanceof Deno.errors.PermissionDenied) {
      // A file the run needs is outside what Deno's permissions (or the OS) allow.
      console.error(`${prefix} ${(e as Error).message.split("\n")[0]}`);
      return ExitCode.badInput;
    }
    console.error(`${prefix} internal error (a bug):`, e);
    return ExitCode.internal;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
