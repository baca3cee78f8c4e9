/**
 * `skipspec speculate` (a separate draft model) and `skipspec self-speculate` (Draft & Verify: the
 * target drafts with sub-layers skipped). Both run the same verification engine
 * (src/generate/speculate.ts), stream text to stdout and print the decode stats plus the
 * speculation figures to stderr; `--compare` also runs plain decoding on the same prompt in the
 * same process and reports the speed-up.
 */
import { UsageError } from "../errors.ts";
import { decode, type GenerationResult, type GenerationStats } from "../generate/decode.ts";
import {
  DEFAULT_DRAFT_MAX,
  DEFAULT_TARGET_ACCEPTANCE,
  defaultDraftThreshold,
  type DraftSource,
  speculate,
  type SpeculationResult,
  type SpeculationStats,
} from "../generate/speculate.ts";
import { MAX_DRAFT } from "../gpu/speculation_ops.ts";
import { resolveModelDir } from "../model/hf_cache.ts";
import { Model, type SkipSet } from "../model/model.ts";
import { defaultSkipSetPath, readSkipSet, skipCount } from "../model/skip.ts";
import { formatStats, formatTimings } from "./decode.ts";
import { helpText, parseFlags } from "./flags.ts";
import {
  type Colors,
  colors,
  GENERATION_FLAGS,
  ms,
  openSession,
  Reporter,
  type Session,
  stdoutText,
  untilInterrupted,
} from "./session.ts";

export const SPECULATE_SUMMARY = "Speculative decoding with a separate draft model (lossless).";
export const SELF_SPECULATE_SUMMARY =
  "Draft & Verify: draft with skipped sub-layers, verify with the full model (lossless).";

const SPECULATION_FLAGS = {
  "draft-max": {
    type: "int",
    help: "most draft tokens per round",
    default: DEFAULT_DRAFT_MAX,
    min: 1,
    max: MAX_DRAFT,
  },
  "draft-threshold": {
    type: "number",
    help: "initial draft-exit threshold gamma on the draft token's probability " +
      "(default: 0.8 greedy, 0.5 sampling)",
    min: 0,
    max: 1,
  },
  "no-adaptive": {
    type: "boolean",
    help: "keep gamma fixed instead of the Draft & Verify controller",
    default: false,
  },
  "target-acceptance": {
    type: "number",
    help: "acceptance rate the threshold controller aims at",
    default: DEFAULT_TARGET_ACCEPTANCE,
    min: 0,
    max: 1,
  },
  "compare": {
    type: "boolean",
    help: "also run plain decode on the same prompt and report the speed-up",
    default: false,
  },
} as const;

const SPECULATE_FLAGS = {
  ...GENERATION_FLAGS,
  "draft-model": {
    type: "string",
    help: "the draft model's folder, or a repo id in the HF cache (same tokenizer as the target)",
    placeholder: "DIR_OR_REPO",
  },
  "draft-revision": {
    type: "string",
    help: "with a repo id as --draft-model: its branch, tag or commit hash",
    default: "main",
    placeholder: "REV",
  },
  ...SPECULATION_FLAGS,
  skip: { ...GENERATION_FLAGS.skip, help: "not used by speculate (see self-speculate)" },
} as const;

const SELF_SPECULATE_FLAGS = {
  ...GENERATION_FLAGS,
  ...SPECULATION_FLAGS,
  skip: {
    ...GENERATION_FLAGS.skip,
    help: 'the draft\'s skipped sub-layers: JSON {"attn":[..],"mlp":[..]} or a file ' +
      "(default: skip.json in the model folder, as tune-skip writes it)",
  },
} as const;

export function runSpeculate(argv: string[]): Promise<number> {
  return runSpeculation("speculate", argv);
}

export function runSelfSpeculate(argv: string[]): Promise<number> {
  return runSpeculation("self-speculate", argv);
}

type Command = "speculate" | "self-speculate";

async function runSpeculation(command: Command, argv: string[]): Promise<number> {
  const table = command === "speculate" ? SPECULATE_FLAGS : SELF_SPECULATE_FLAGS;
  const flags = parseFlags(command, table, argv) as ReturnType<
    typeof parseFlags<typeof SPECULATE_FLAGS>
  >;
  if (flags.help) {
    const summary = command === "speculate" ? SPECULATE_SUMMARY : SELF_SPECULATE_SUMMARY;
    console.log(helpText(`skipspec ${command} [flags]`, summary, table));
    return 0;
  }
  if (command === "speculate") {
    if (flags["draft-model"] === undefined) {
      throw new UsageError("speculate needs --draft-model DIR (or use self-speculate)");
    }
    if (flags.skip !== undefined) {
      throw new UsageError(
        "speculate drafts with --draft-model; --skip belongs to self-speculate, not both",
      );
    }
  }
  const report = Reporter.from(flags);
  if (flags["no-adaptive"] && flags["target-acceptance"] !== undefined) {
    throw new UsageError(
      "--target-acceptance steers the adaptive threshold; it conflicts with --no-adaptive",
    );
  }
  // --skip is the draft's here, not the target's: the session's model runs in full.
  const { skip: skipArg, ...sessionFlags } = flags;
  const draftDir = command === "speculate"
    ? await resolveModelDir(flags["draft-model"]!, flags["draft-revision"])
    : undefined;
  const s = await openSession(sessionFlags, report);
  let draft: DraftSource;
  let draftDescription: Record<string, unknown>;
  if (draftDir !== undefined) {
    const start = performance.now();
    const draftModel = await Model.load(draftDir, { contextLength: s.model.contextLength });
    report.detail(`draft model: ${draftDir}, loaded in ${ms(performance.now() - start)}`);
    draft = { kind: "model", model: draftModel };
    draftDescription = { draftModel: draftDir };
  } else {
    const skip = await selfDraftSkipSet(skipArg, s);
    draft = { kind: "self", skip };
    draftDescription = { skip };
  }

  const options = {
    maxNewTokens: s.maxNewTokens,
    sampling: s.sampling,
    draft,
    stopTokens: s.stopTokens,
    draftMax: flags["draft-max"] ?? DEFAULT_DRAFT_MAX,
    draftThreshold: flags["draft-threshold"] ?? defaultDraftThreshold(s.sampling),
    adaptive: !flags["no-adaptive"],
    targetAcceptance: flags["target-acceptance"] ?? DEFAULT_TARGET_ACCEPTANCE,
  };
  let plain: GenerationResult | undefined;
  const out = stdoutText(s.tokenizer);
  // Ctrl-C during --compare's plain run ends it too, and the speculative run then stops at once.
  const result: SpeculationResult = await untilInterrupted(async (shouldStop) => {
    if (flags.compare) {
      // Warm up both paths (pipeline compilation), then measure them back to back.
      const start = performance.now();
      await decode(s.model, s.promptIds, { ...options, maxNewTokens: 2, skip: s.skip });
      await speculate(s.model, s.promptIds, { ...options, maxNewTokens: 2 });
      report.detail(`timings: --compare warm-up ${ms(performance.now() - start)}`);
      plain = await decode(s.model, s.promptIds, { ...options, skip: s.skip, shouldStop });
      report.detail(`plain decode (--compare): ${formatTimings(plain.stats)}`);
    }
    return await speculate(s.model, s.promptIds, {
      ...options,
      onTokens: flags.json ? undefined : out.push,
      shouldStop,
    });
  });
  const text = s.tokenizer.decode(result.tokens);
  const comparison: Comparison | undefined = plain && {
    decode: plain.stats,
    speedup: result.stats.decodeTokensPerSecond / plain.stats.decodeTokensPerSecond,
    identicalToDecode: sameTokens(result.tokens, plain.tokens),
  };
  if (flags.json) {
    console.log(JSON.stringify({
      command,
      model: s.dir,
      ...draftDescription,
      prompt: s.promptText,
      promptIds: s.promptIds,
      sampling: s.sampling,
      tokens: result.tokens,
      text,
      stats: result.stats,
      rounds: result.rounds,
      ...(comparison ? { compare: comparison } : {}),
    }));
  } else {
    out.end();
    report.say(formatStats(result.stats, s.sampling.seed, report.color));
    report.say(formatSpeculationStats(result.stats, report.color));
    if (comparison) {
      report.say(formatComparison(comparison, s.sampling.temperature === 0, report.color));
    }
  }
  report.detail(formatTimings(result.stats));
  return result.stats.stopReason === "interrupted" ? 130 : 0;
}

/** --skip, else skip.json beside the model; the draft must skip something. */
async function selfDraftSkipSet(arg: string | undefined, s: Session): Promise<SkipSet> {
  const layers = s.model.cfg.numLayers;
  let skip: SkipSet;
  if (arg !== undefined) {
    skip = await readSkipSet(arg, layers);
  } else {
    const path = defaultSkipSetPath(s.dir);
    try {
      await Deno.stat(path);
    } catch {
      throw new UsageError(
        `self-speculate needs a skip set: give --skip FILE_OR_JSON, or write ${path} with ` +
          `"skipspec tune-skip --model ${s.dir}"`,
      );
    }
    skip = await readSkipSet(path, layers);
  }
  if (skipCount(skip) === 0) {
    throw new UsageError("the skip set skips nothing: the draft would be the target itself");
  }
  return skip;
}

function sameTokens(a: number[], b: number[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

export function formatSpeculationStats(st: SpeculationStats, c: Colors = colors(false)): string {
  return [
    `${st.rounds} ${c.label("rounds")}`,
    `${c.label("drafted")} ${st.drafted}, ${c.label("accepted")} ${st.accepted} ` +
    `(${(100 * st.acceptanceRate).toFixed(1)}%)`,
    `${st.tokensPerRound.toFixed(2)} ${c.label("tokens/round")}`,
    `${st.draftStepsPerRound.toFixed(2)} ${c.label("draft steps/round")} ` +
    `(${st.recordedDraftStepsPerRound.toFixed(2)} ${c.label("recorded")})`,
    `${c.label("final gamma")} ${st.finalGamma.toFixed(3)}`,
  ].join(" | ");
}

/** Plain decode on the same prompt in the same run (--compare). */
interface Comparison {
  decode: GenerationStats;
  speedup: number;
  identicalToDecode: boolean;
}

function formatComparison(c: Comparison, greedy: boolean, color: Colors): string {
  const same = greedy
    ? ` | output ${c.identicalToDecode ? "identical to" : "DIFFERS from"} plain decode`
    : "";
  return `${color.label("plain decode")} ${c.decode.decodeTokensPerSecond.toFixed(1)} tok/s | ` +
    `${color.label("speed-up")} ${c.speedup.toFixed(2)}x (measured in this run)${same}`;
}
