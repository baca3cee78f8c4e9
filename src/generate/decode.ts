/**
 * Plain autoregressive decoding with a GPU-resident token loop: the sampler picks each token on
 * the GPU and feeds it to the next step through the `ids` buffer, so a chunk of steps is recorded
 * into one command buffer and the chosen tokens come back in one readback per chunk. Each next
 * chunk is recorded while the GPU runs the one before, and submitted before that one is read
 * where the text this holds back is short (see STREAM_HOLD_MS). Tokens computed past a stop
 * token or the budget are discarded.
 */
import { InputError } from "../errors.ts";
import { readBuffer, storageBuffer } from "../gpu/buffers.ts";
import { asDeviceLost } from "../gpu/device.ts";
import { Recorder, sampleOp, type SamplingParams } from "../gpu/ops.ts";
import type { Model, SkipSet } from "../model/model.ts";

export interface DecodeOptions {
  maxNewTokens: number;
  sampling: SamplingParams;
  skip: SkipSet;
  /** Generation ends after any of these (the stop token is kept in `tokens`). */
  stopTokens: number[];
  /** Decode steps of the first command buffer and readback (later ones double, to MAX_CHUNK). */
  chunkSize?: number;
  /** Called with each batch of newly accepted tokens, in order. */
  onTokens?: (ids: number[]) => void;
  /** Checked between chunks; true ends generation early (Ctrl-C). */
  shouldStop?: () => boolean;
  /** Most ms of computed text a chunk submitted early may hold back (default STREAM_HOLD_MS). */
  streamHoldMs?: number;
}

/** One stats record for every generation strategy (JSON-serialisable). */
export interface GenerationStats {
  promptTokens: number;
  generatedTokens: number;
  /** Prompt processing, including the first token's readback. */
  prefillMs: number;
  prefillTokensPerSecond: number;
  /** Tokens after the first, over the time after the first. */
  decodeMs: number;
  decodeTokensPerSecond: number;
  readbacks: number;
  readbacksPerToken: number;
  dispatchesPerToken: number;
  stopReason: "stop-token" | "max-new-tokens" | "context-full" | "interrupted";
}

export interface GenerationResult {
  tokens: number[];
  stats: GenerationStats;
}

/**
 * Decode steps per readback: the first chunk is short so text appears soon; each next one doubles
 * up to MAX_CHUNK, since every readback costs at least ~10 ms in Deno (a sleep after the queue
 * drains) and steps past a stop token are wasted work at most one chunk long.
 */
export const FIRST_CHUNK = 16;
export const MAX_CHUNK = 64;

/**
 * Deno's mapAsync waits for everything submitted so far, not just the buffer being mapped (the
 * read of a chunk submitted before the next one was returns when both are done; measured). A
 * chunk submitted before the previous one is read thus saves the GPU a ~10 ms idle gap, but holds
 * the previous chunk's text back for its whole run. So it is submitted early only when, at the
 * decode speed measured so far, it runs for at most this long; otherwise after the read.
 */
export const STREAM_HOLD_MS = 1000;

/** No occurrence in `presence` (kernels/logits_processing.wgsl). */
export const ABSENT = 0xffffffff;

/** presence[t]: the first position of token t in `tokens`, or ABSENT. */
export function initialPresence(tokens: number[], vocab: number): Uint32Array<ArrayBuffer> {
  const presence = new Uint32Array(vocab).fill(ABSENT);
  tokens.forEach((id, position) => {
    if (id < vocab && presence[id] === ABSENT) presence[id] = position;
  });
  return presence;
}

/**
 * Runs every maxBatch-sized chunk of `tokens` but the last through the model (K/V only, no
 * logits) and returns where the last chunk starts; the caller runs that one with what it needs.
 */
export function prefill(model: Model, tokens: number[], skip: SkipSet): number {
  const maxBatch = model.act.maxBatch;
  let start = 0;
  for (; start + maxBatch < tokens.length; start += maxBatch) {
    model.forward(tokens.slice(start, start + maxBatch), start, skip, "none");
  }
  return start;
}

export async function decode(
  model: Model,
  prompt: number[],
  opts: DecodeOptions,
): Promise<GenerationResult> {
  const { device, cfg, contextLength } = model;
  if (prompt.length === 0) throw new InputError("the prompt is empty");
  if (prompt.length >= contextLength) {
    throw new InputError(
      `the prompt has ${prompt.length} tokens, but the context holds ${contextLength} ` +
        `(prompt plus new tokens); shorten the prompt or raise --context`,
    );
  }
  const budget = Math.min(opts.maxNewTokens, contextLength - prompt.length);
  let chunkSize = opts.chunkSize ?? FIRST_CHUNK;
  const stop = new Set(opts.stopTokens);

  const presence = initialPresence(prompt, cfg.vocabSize);
  const presenceBuffer = storageBuffer(device, presence.byteLength, "presence");
  device.queue.writeBuffer(presenceBuffer, 0, presence);
  const outTokens = storageBuffer(
    device,
    (budget + Math.max(MAX_CHUNK, chunkSize)) * 4,
    "out_tokens",
  );
  const sample = sampleOp(model.ctx, {
    vocab: cfg.vocabSize,
    logits: model.act.logits,
    presence: presenceBuffer,
    ids: model.act.ids,
    outTokens,
    sampling: opts.sampling,
  });

  let readbacks = 0;
  const readTokens = async (first: number, count: number, encoder: GPUCommandEncoder) => {
    try {
      readbacks++;
      const ids = await readBuffer(device, outTokens, count * 4, first * 4, encoder);
      return [...new Uint32Array(ids)];
    } catch (e) {
      throw asDeviceLost(e);
    }
  };

  // Prefill in chunks of maxBatch; the last chunk's last logits choose the first token.
  const start = performance.now();
  const lastChunk = prefill(model, prompt, opts.skip);
  model.writeInput(prompt.slice(lastChunk), lastChunk);
  const prefillEncoder = device.createCommandEncoder();
  const prefillPass = new Recorder(prefillEncoder.beginComputePass());
  model.recordForward(prefillPass, prompt.length - lastChunk, opts.skip, "last");
  sample.record(prefillPass, 1);
  prefillPass.pass.end();
  const firstIds = await readTokens(0, 1, prefillEncoder);
  const prefillMs = performance.now() - start;
  const tokens: number[] = [firstIds[0]];
  opts.onTokens?.(tokens.slice());

  // Decode: chunks of steps, each one readback; the next one recorded while the GPU runs.
  let stopReason: GenerationStats["stopReason"] = "max-new-tokens";
  if (stop.has(tokens[0])) stopReason = "stop-token";
  let scheduled = 1;
  let decodeDispatches = 0;
  const inflight: Promise<number[]>[] = [];
  const decodeStart = performance.now();
  /** The next chunk, recorded and not yet submitted. */
  const recordChunk = () => {
    const steps = Math.min(chunkSize, budget - scheduled);
    const first = scheduled;
    scheduled += steps;
    chunkSize = Math.min(2 * chunkSize, Math.max(MAX_CHUNK, chunkSize));
    const encoder = device.createCommandEncoder();
    const rec = new Recorder(encoder.beginComputePass());
    for (let i = 0; i < steps; i++) {
      model.recordForward(rec, 1, opts.skip, "last");
      sample.record(rec, 1);
    }
    rec.pass.end();
    // Finished now, while the GPU runs the chunk before: wgpu's finish() costs ~2 us a dispatch.
    return { first, steps, commands: encoder.finish(), dispatches: rec.dispatches };
  };
  let next = scheduled < budget ? recordChunk() : undefined;
  const submitNext = () => {
    decodeDispatches += next!.dispatches;
    device.queue.submit([next!.commands]);
    const read = readTokens(next!.first, next!.steps, device.createCommandEncoder());
    read.catch(() => {}); // a failure (device lost) surfaces where it is awaited, once
    inflight.push(read);
    next = scheduled < budget ? recordChunk() : undefined;
  };
  /** Whether submitting `next` now holds the text in flight back at most STREAM_HOLD_MS. */
  const holdIsShort = () => {
    const decoded = tokens.length - 1;
    if (decoded === 0) return false; // no speed measured yet
    const msPerStep = (performance.now() - decodeStart) / decoded;
    return next!.steps * msPerStep <= (opts.streamHoldMs ?? STREAM_HOLD_MS);
  };
  let done = stopReason === "stop-token" || tokens.length >= budget;
  while (!done) {
    if (inflight.length === 0 && next) submitNext();
    if (inflight.length === 1 && next && holdIsShort()) submitNext();
    const ids = await inflight.shift()!;
    const fresh: number[] = [];
    for (const id of ids) {
      fresh.push(id);
      if (stop.has(id)) {
        stopReason = "stop-token";
        break;
      }
    }
    tokens.push(...fresh);
    if (fresh.length) opts.onTokens?.(fresh);
    if (stopReason === "stop-token" || tokens.length >= budget) done = true;
    else if (opts.shouldStop?.()) {
      stopReason = "interrupted";
      done = true;
    }
  }
  await Promise.all(inflight); // surplus steps past a stop: finish and discard
  const decodeMs = performance.now() - decodeStart;
  if (stopReason === "max-new-tokens" && budget < opts.maxNewTokens) stopReason = "context-full";
  presenceBuffer.destroy();
  outTokens.destroy();
  const decoded = tokens.length - 1;
  return {
    tokens,
    stats: {
      promptTokens: prompt.length,
      generatedTokens: tokens.length,
      prefillMs,
      prefillTokensPerSecond: prompt.length / (prefillMs / 1000),
      decodeMs,
      decodeTokensPerSecond: decoded > 0 ? decoded / (decodeMs / 1000) : 0,
      readbacks,
      readbacksPerToken: readbacks / tokens.length,
      dispatchesPerToken: scheduled > 1 ? decodeDispatches / (scheduled - 1) : 0,
      stopReason,
    },
  };
}
