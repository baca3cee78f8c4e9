/** `skipspec decode`: plain autoregressive generation, text streamed to stdout, stats to stderr. */
import { decode, type GenerationStats } from "../generate/decode.ts";
import { helpText, parseFlags } from "./flags.ts";
import {
  type Colors,
  colors,
  GENERATION_FLAGS,
  ms,
  openSession,
  Reporter,
  stdoutText,
  untilInterrupted,
} from "./session.ts";

export const DECODE_SUMMARY = "Generate text token by token (greedy or sampled), on the GPU.";

export async function runDecode(argv: string[]): Promise<number> {
  const flags = parseFlags("decode", GENERATION_FLAGS, argv);
  if (flags.help) {
    console.log(helpText("skipspec decode [flags]", DECODE_SUMMARY, GENERATION_FLAGS));
    return 0;
  }
  const report = Reporter.from(flags);
  const s = await openSession(flags, report);
  const out = stdoutText(s.tokenizer);
  const result = await untilInterrupted((shouldStop) =>
    decode(s.model, s.promptIds, {
      maxNewTokens: s.maxNewTokens,
      sampling: s.sampling,
      skip: s.skip,
      stopTokens: s.stopTokens,
      onTokens: flags.json ? undefined : out.push,
      shouldStop,
    })
  );
  if (flags.json) {
    console.log(JSON.stringify({
      command: "decode",
      model: s.dir,
      prompt: s.promptText,
      promptIds: s.promptIds,
      skip: s.skip,
      sampling: s.sampling,
      tokens: result.tokens,
      text: s.tokenizer.decode(result.tokens),
      stats: result.stats,
    }));
  } else {
    out.end();
    report.say(formatStats(result.stats, s.sampling.seed, report.color));
  }
  report.detail(formatTimings(result.stats));
  return result.stats.stopReason === "interrupted" ? 130 : 0;
}

/** One stderr line of figures, the same for every generation strategy. */
export function formatStats(st: GenerationStats, seed: number, c: Colors = colors(false)): string {
  return [
    `${c.label("prompt")} ${st.promptTokens} tokens, ${c.label("prefill")} ` +
    `${st.prefillTokensPerSecond.toFixed(1)} tok/s`,
    `${st.generatedTokens} tokens, ${c.label("decode")} ${
      st.decodeTokensPerSecond.toFixed(1)
    } tok/s`,
    `${st.readbacks} ${c.label("readbacks")} (${st.readbacksPerToken.toFixed(3)}/token)`,
    `${st.dispatchesPerToken.toFixed(0)} ${c.label("dispatches/token")}`,
    `${c.label("stop:")} ${st.stopReason}, ${c.label("seed")} ${seed}`,
  ].join(" | ");
}

/** Per-phase timings for --verbose. */
export function formatTimings(st: GenerationStats): string {
  return `timings: prefill ${ms(st.prefillMs)} (${st.promptTokens} tokens), ` +
    `decode ${ms(st.decodeMs)} (${Math.max(0, st.generatedTokens - 1)} tokens after the first)`;
}
