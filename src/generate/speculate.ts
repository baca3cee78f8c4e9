/**
 * Lossless speculative decoding with a GPU-resident round loop, for both ways of drafting:
 * a separate small draft model with its own K/V cache (`speculate`), or the target itself with
 * sub-layers skipped, sharing the target's K/V cache (`self-speculate`, Draft & Verify).
 *
 * A round, recorded once and replayed: up to K draft steps (draft forward of one token, then
 * draft_sample picks the draft token, keeps q and decides on the GPU whether to go on; a stopped
 * draft sets its state.n = 0, so the remaining recorded steps do nothing), verify_begin (the
 * target's input becomes [x_P, d_1..d_k]), one target forward over those k + 1 tokens, and verify
 * (accept a prefix, emit the target's token, roll back by setting the cache length, update the
 * threshold controller, set up the next round). As many rounds as finish the remaining budget
 * with high probability (round_batch.ts), at most 8 in the first command buffer (so text appears
 * soon), then 16, then 32 (`roundsPerReadback`), go into one command buffer whose round-log slots
 * come back in one readback. Rounds after the end of generation are no-ops.
 */
import { InputError } from "../errors.ts";
import { readRanges } from "../gpu/buffers.ts";
import { throwIfGpuError } from "../gpu/device.ts";
import { Recorder, type SamplingParams, type Tape } from "../gpu/ops.ts";
import {
  allocateSpecBuffers,
  destroySpecBuffers,
  draftSampleOp,
  MAX_DRAFT,
  MAX_STOP_TOKENS,
  ROUND_LOG,
  SPEC,
  verifyBeginOp,
  verifyOp,
} from "../gpu/speculation_ops.ts";
import { type Model, NO_SKIP, type SkipSet } from "../model/model.ts";
import { type GenerationStats, initialPresence, prefill } from "./decode.ts";
import { PLAN_PRIOR, roundsToRecord } from "./round_batch.ts";
import {
  type CappedRound,
  chooseStepCap,
  dispatchCost,
  longestCap,
  type RoundCost,
  stepRates,
  timedCost,
} from "./step_cap.ts";
import { roundTimes } from "./timing.ts";

/** Where drafts come from: the target with a skip set, or a separate model. */
export type DraftSource =
  | { kind: "self"; skip: SkipSet }
  | { kind: "model"; model: Model };

export interface SpeculateOptions {
  maxNewTokens: number;
  sampling: SamplingParams;
  draft: DraftSource;
  /** Generation ends after any of these (the stop token is kept). */
  stopTokens: number[];
  /** Most drafts per round (K). */
  draftMax?: number;
  /** Initial draft-exit threshold gamma; default 0.8 greedy, 0.5 sampling. */
  draftThreshold?: number;
  /** false: gamma stays fixed. */
  adaptive?: boolean;
  /** The controller's target acceptance rate alpha. */
  targetAcceptance?: number;
  /**
   * Draft steps recorded per round: "auto" (default) picks the cap with the most expected tokens
   * per unit of cost from the rounds so far (step_cap.ts); "draft-max" records draft-max every round.
   */
  stepCap?: "auto" | "draft-max";
  /**
   * Most rounds per command buffer (and readback) while text streams; the first ones hold fewer
   * (see above), one that finishes the generation up to twice as many (round_batch.ts).
   */
  roundsPerReadback?: number;
  /** Slots of the round log's ring; default twice roundsPerReadback (tests: a size batches wrap). */
  roundLogSlots?: number;
  onTokens?: (ids: number[]) => void;
  shouldStop?: () => boolean;
  /** Test only: replace rejected drafts by a sample of p instead of the residual (wrong). */
  negativeControl?: boolean;
}

/** What one round did (from the GPU's round log). */
export interface RoundRecord {
  drafted: number;
  accepted: number;
  emitted: number;
  /** The threshold after this round's controller update. */
  gamma: number;
}

export interface SpeculationStats extends GenerationStats {
  rounds: number;
  drafted: number;
  accepted: number;
  /** accepted / drafted. */
  acceptanceRate: number;
  /** Tokens emitted per target forward. */
  tokensPerRound: number;
  draftStepsPerRound: number;
  /** Draft steps recorded per round (the cap): the drafted ones and the no-ops after a stop. */
  recordedDraftStepsPerRound: number;
  finalGamma: number;
  draftMax: number;
}

export interface SpeculationResult {
  tokens: number[];
  stats: SpeculationStats;
  rounds: RoundRecord[];
}

export const DEFAULT_DRAFT_MAX = 8;
export const DEFAULT_TARGET_ACCEPTANCE = 0.9;
/** Rounds in the first command buffer; each later one may hold twice as many as the last. */
export const FIRST_ROUNDS_PER_READBACK = 8;
export const DEFAULT_ROUNDS_PER_READBACK = 32;
/** Rounds of a command buffer of rounds submitted ahead of the rest (see the round loop). */
const LEAD_ROUNDS = 2;

export function defaultDraftThreshold(sampling: SamplingParams): number {
  return sampling.temperature > 0 ? 0.5 : 0.8;
}

/** The Draft & Verify threshold controller (shared/docs/algorithms.md), as the GPU runs it. */
export class ThresholdController {
  static readonly BETA1 = 0.5;
  static readonly BETA2 = 0.9;
  static readonly EPSILON = 0.01;
  acceptance = 0;
  constructor(
    public gamma: number,
    readonly draftMax: number,
    readonly targetAcceptance = DEFAULT_TARGET_ACCEPTANCE,
  ) {}

  /** After a verification that accepted `accepted` of `drafted` drafts. */
  update(accepted: number, drafted: number) {
    if (drafted === 0) return;
    const { BETA1, BETA2, EPSILON } = ThresholdController;
    this.acceptance = BETA1 * this.acceptance + (1 - BETA1) * (accepted / drafted);
    let next = this.gamma - EPSILON;
    if (this.acceptance < this.targetAcceptance) next = this.gamma + EPSILON;
    else if (drafted === this.draftMax) next = this.gamma;
    this.gamma = BETA2 * this.gamma + (1 - BETA2) * next;
  }
}

export function checkDraftModel(target: Model, draft: Model) {
  if (draft.cfg.vocabSize !== target.cfg.vocabSize) {
    throw new InputError(
      `the draft model's vocabulary (${draft.cfg.vocabSize} tokens, ${draft.dir}) differs from ` +
        `the target's (${target.cfg.vocabSize} tokens, ${target.dir}): speculation needs one tokenizer`,
    );
  }
  if (draft.contextLength < target.contextLength) {
    throw new InputError(
      `the draft model holds ${draft.contextLength} tokens of context, the target ` +
        `${target.contextLength}: load both with the same --context`,
    );
  }
}

export async function speculate(
  target: Model,
  prompt: number[],
  opts: SpeculateOptions,
): Promise<SpeculationResult> {
  const { device, cfg, contextLength } = target;
  const draftMax = opts.draftMax ?? DEFAULT_DRAFT_MAX;
  if (prompt.length === 0) throw new InputError("the prompt is empty");
  if (prompt.length >= contextLength) {
    throw new InputError(
      `the prompt has ${prompt.length} tokens, but the context holds ${contextLength} ` +
        `(prompt plus new tokens); shorten the prompt or raise --context`,
    );
  }
  if (!Number.isInteger(draftMax) || draftMax < 1 || draftMax > MAX_DRAFT) {
    throw new InputError(`--draft-max must be an integer in 1..${MAX_DRAFT}, got ${draftMax}`);
  }
  if (draftMax + 1 > Math.min(target.act.maxBatch, target.act.logitRows)) {
    throw new InputError(
      `--draft-max ${draftMax} needs a ${draftMax + 1}-token verification, over this model's ` +
        `batch of ${Math.min(target.act.maxBatch, target.act.logitRows)}`,
    );
  }
  if (opts.stopTokens.length > MAX_STOP_TOKENS) {
    throw new InputError(`at most ${MAX_STOP_TOKENS} stop tokens are supported`);
  }
  const separate = opts.draft.kind === "model" ? opts.draft.model : undefined;
  if (separate) checkDraftModel(target, separate);
  const draftModel = separate ?? target;
  const draftSkip = opts.draft.kind === "self" ? opts.draft.skip : NO_SKIP;
  const budget = Math.min(opts.maxNewTokens, contextLength - prompt.length);
  const maxRounds = opts.roundsPerReadback ?? DEFAULT_ROUNDS_PER_READBACK;
  // The round log's ring: room for a finishing command buffer past the streaming limit.
  const logCapacity = opts.roundLogSlots ?? 2 * maxRounds;
  if (!Number.isInteger(logCapacity) || logCapacity < maxRounds) {
    throw new RangeError(`a round log of ${logCapacity} slots holds less than a command buffer`);
  }
  const gamma0 = opts.draftThreshold ?? defaultDraftThreshold(opts.sampling);

  const buffers = allocateSpecBuffers(device, {
    vocab: cfg.vocabSize,
    draftMax,
    sampling: opts.sampling,
    adaptive: opts.adaptive ?? true,
    targetAcceptance: opts.targetAcceptance ?? DEFAULT_TARGET_ACCEPTANCE,
    logCapacity,
    stopTokens: opts.stopTokens,
  });
  const targetIo = { state: target.state, ids: target.act.ids, logits: target.act.logits };
  const draftIo = {
    state: draftModel.state,
    ids: draftModel.act.ids,
    logits: draftModel.act.logits,
  };
  const draftSample = draftSampleOp(target.ctx, buffers, draftIo);
  const verifyBegin = verifyBeginOp(target.ctx, buffers, targetIo);
  const verify = verifyOp(target.ctx, buffers, targetIo, separate && draftIo, opts.negativeControl);

  // What a round records: draft steps, then the verification of cap + 1 tokens.
  const recordDraftStep = (rec: Recorder, step: number) => {
    // A separate draft's first step may take two tokens ([d_k, bonus] after a full acceptance).
    draftModel.recordForward(rec, separate && step === 0 ? 2 : 1, draftSkip, "last");
    draftSample.record(rec, 1);
  };
  const recordVerify = (rec: Recorder, cap: number) => {
    verifyBegin.record(rec, 1);
    target.recordForward(rec, cap + 1, NO_SKIP, "all");
    verify.record(rec, 1);
  };
  const dispatchesOf = (record: (rec: Recorder) => void) => {
    const rec = Recorder.counting();
    record(rec);
    return rec.dispatches;
  };
  const start = performance.now();
  // The step cap's costs: measured GPU time where the device has timestamps (once per pair of
  // models in a process; before prefill, as the timed forwards write the K/V cache), else
  // dispatches (step_cap.ts).
  const times = opts.stepCap === "draft-max"
    ? undefined
    : await roundTimes(target, draftModel, draftSkip);
  // Prefill all but the last prompt token (K/V only): the first round starts from it.
  const head = prompt.slice(0, -1);
  const last = prompt[prompt.length - 1];
  for (const model of separate ? [target, separate] : [target]) {
    if (head.length === 0) continue;
    const lastChunk = prefill(model, head, NO_SKIP);
    model.forward(head.slice(lastChunk), lastChunk, NO_SKIP, "none");
  }
  const p = head.length;
  const drafting = budget >= 2 ? 1 : 0;
  const spec = new DataView(new ArrayBuffer(SPEC.words * 4));
  const setU32 = (word: number, v: number) => spec.setUint32(word * 4, v, true);
  setU32(SPEC.roundPos, p);
  setU32(SPEC.drafting, drafting);
  setU32(SPEC.budget, budget);
  spec.setFloat32(SPEC.gamma * 4, gamma0, true);
  setU32(SPEC.tokens, last);
  setU32(SPEC.stepCap, draftMax);
  device.queue.writeBuffer(buffers.spec, 0, spec.buffer);
  device.queue.writeBuffer(buffers.presence, 0, initialPresence(prompt, cfg.vocabSize));
  // Both states: { pos: P, n: 1 while drafting } with x_P as the draft's first input.
  const firstStep = new Uint32Array([p, drafting, 0, 0]);
  device.queue.writeBuffer(draftModel.state, 0, firstStep);
  device.queue.writeBuffer(draftModel.act.ids, 0, new Uint32Array([last]));
  if (separate) device.queue.writeBuffer(target.state, 0, new Uint32Array([p, 0, 0, 0]));
  // Compile every pipeline a round may use (both draft-step widths, each cap's verification
  // width) now, so no measured round pays for a compile: recording into a counting recorder
  // creates them.
  dispatchesOf((rec) => {
    recordDraftStep(rec, 0);
    recordDraftStep(rec, 1);
    for (let cap = 1; cap <= draftMax; cap++) recordVerify(rec, cap);
  });
  await device.queue.onSubmittedWorkDone();
  const prefillMs = performance.now() - start;

  // Rounds.
  let dispatches = 0;
  let readbacks = 0;
  // Draft steps recorded per round (the cap; the GPU stops drafting there): a stopped draft's
  // remaining steps still cost their dispatches, so each command buffer records the cap with the
  // most expected tokens per unit of cost given the rounds so far (step_cap.ts).
  const roundCost: RoundCost = times ? timedCost(times.draftStepMs, times.verifyMs) : dispatchCost(
    dispatchesOf((rec) => recordDraftStep(rec, 1)),
    dispatchesOf((rec) => recordVerify(rec, draftMax)),
  );
  const capped: CappedRound[] = [];
  const nextCap = () =>
    opts.stepCap === "draft-max" ? draftMax : chooseStepCap(capped, draftMax, roundCost);
  let stepCap = nextCap();
  // A round's dispatches depend only on its cap (the GPU state does the rest): one tape per cap.
  const roundTapes = new Map<number, Tape>();
  const recordRound = (rec: Recorder) => {
    let tape = roundTapes.get(stepCap);
    if (!tape) {
      const cap = stepCap;
      tape = Recorder.tape((r) => {
        for (let i = 0; i < cap; i++) recordDraftStep(r, i);
        recordVerify(r, cap);
      });
      roundTapes.set(cap, tape);
    }
    rec.play(tape);
  };
  // One command buffer of rounds, its round-log slots read back at its end. Deno's mapAsync
  // waits for the whole queue to drain and then sleeps ~10 ms, so a second command buffer in
  // flight would overlap nothing; instead each one holds enough rounds for the tokens still to
  // come (round_batch.ts), up to the round log's capacity.
  const submit = async (count: number): Promise<Uint32Array> => {
    device.queue.writeBuffer(buffers.spec, SPEC.stepCap * 4, new Uint32Array([stepCap]));
    // The first rounds go in a command buffer of their own, so the GPU starts on them while the
    // rest are recorded and finished (wgpu's finish() costs ~2 us a dispatch); one readback.
    const record = (rounds: number) => {
      const encoder = device.createCommandEncoder();
      const rec = new Recorder(encoder.beginComputePass());
      for (let r = 0; r < rounds; r++) recordRound(rec);
      rec.pass.end();
      dispatches += rec.dispatches;
      return encoder;
    };
    const head = Math.min(count - 1, LEAD_ROUNDS);
    if (head > 0) device.queue.submit([record(head).finish()]);
    const encoder = record(count - head);
    readbacks++;
    // Round r's log sits in slot r % logCapacity: a batch may wrap around the end of the ring.
    const entries = (n: number) => n * ROUND_LOG.words * 4;
    const start = rounds.length % logCapacity;
    const beforeEnd = Math.min(count, logCapacity - start);
    const ranges = [{ offset: entries(start), bytes: entries(beforeEnd) }];
    if (beforeEnd < count) ranges.push({ offset: 0, bytes: entries(count - beforeEnd) });
    return new Uint32Array(await readRanges(device, buffers.roundLog, ranges, encoder));
  };

  const tokens: number[] = [];
  const rounds: RoundRecord[] = [];
  const stop = new Set(opts.stopTokens);
  let stopReason: GenerationStats["stopReason"] = "max-new-tokens";
  let finished = false;
  const roundsStart = performance.now();
  while (!finished) {
    const batch = roundsToRecord({
      msPerRound: rounds.length ? (performance.now() - roundsStart) / rounds.length : undefined,
      remaining: budget - tokens.length,
      rates: stepRates(capped, draftMax, PLAN_PRIOR),
      cap: stepCap,
      tried: longestCap(capped),
      limit: Math.min(FIRST_ROUNDS_PER_READBACK * 2 ** readbacks, maxRounds),
      capacity: logCapacity,
    });
    const first = rounds.length;
    const log = await submit(batch);
    const f32 = new Float32Array(log.buffer);
    for (let r = 0; r < batch && !finished; r++) {
      const at = r * ROUND_LOG.words;
      if (log[at + ROUND_LOG.round] !== first + r) {
        throw new Error(`round ${first + r} did not run though generation had not ended`);
      }
      const emitted = log[at + ROUND_LOG.count];
      const fresh = [...log.subarray(at + ROUND_LOG.tokens, at + ROUND_LOG.tokens + emitted)];
      const round = {
        drafted: log[at + ROUND_LOG.drafted],
        accepted: log[at + ROUND_LOG.accepted],
        emitted,
        gamma: f32[at + ROUND_LOG.gamma],
      };
      rounds.push(round);
      capped.push({ cap: stepCap, drafted: round.drafted, accepted: round.accepted });
      tokens.push(...fresh);
      opts.onTokens?.(fresh);
      if (log[at + ROUND_LOG.done]) {
        finished = true;
        if (stop.has(tokens[tokens.length - 1])) stopReason = "stop-token";
      }
    }
    stepCap = nextCap();
    if (!finished && opts.shouldStop?.()) {
      stopReason = "interrupted";
      finished = true;
    }
  }
  throwIfGpuError();
  const decodeMs = performance.now() - roundsStart;
  if (stopReason === "max-new-tokens" && budget < opts.maxNewTokens) stopReason = "context-full";
  destroySpecBuffers(buffers);

  const drafted = rounds.reduce((s, r) => s + r.drafted, 0);
  const accepted = rounds.reduce((s, r) => s + r.accepted, 0);
  return {
    tokens,
    rounds,
    stats: {
      promptTokens: prompt.length,
      generatedTokens: tokens.length,
      prefillMs,
      prefillTokensPerSecond: head.length / (prefillMs / 1000),
      decodeMs,
      decodeTokensPerSecond: tokens.length / (decodeMs / 1000),
      readbacks,
      readbacksPerToken: readbacks / tokens.length,
      dispatchesPerToken: dispatches / tokens.length,
      stopReason,
      rounds: rounds.length,
      drafted,
      accepted,
      acceptanceRate: drafted > 0 ? accepted / drafted : 0,
      tokensPerRound: tokens.length / rounds.length,
      draftStepsPerRound: drafted / rounds.length,
      recordedDraftStepsPerRound: capped.reduce((s, r) => s + r.cap, 0) / rounds.length,
      finalGamma: rounds.length ? rounds[rounds.length - 1].gamma : gamma0,
      draftMax,
    },
  };
}
