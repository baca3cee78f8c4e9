/** Timing helpers shared by bench, tune-skip's cost model and speculation's step cap. */
import { median } from "../bench/stats.ts";
export { median };
import { storageBuffer } from "../gpu/buffers.ts";
import { Recorder } from "../gpu/ops.ts";
import { GpuTimer } from "../gpu/profile.ts";
import { type Model, NO_SKIP, type SkipSet } from "../model/model.ts";

const timers = new WeakMap<GPUDevice, GpuTimer | null>();

/** The device's timestamp timer (one per device), or undefined without `timestamp-query`. */
export function timerFor(model: Model): GpuTimer | undefined {
  let timer = timers.get(model.device);
  if (timer === undefined) {
    timer = GpuTimer.for(model.gpu) ?? null;
    timers.set(model.device, timer);
  }
  return timer ?? undefined;
}

/**
 * Wall-clock milliseconds of one forward of `n` tokens, for devices without timestamp queries:
 * the difference between a submission of 24 forwards and one of 4, over 20, so the fixed cost of
 * a submission and of waiting for it (Deno sleeps ~10 ms in onSubmittedWorkDone) cancels out.
 */
async function wallClockForwardMs(model: Model, n: number, skip: SkipSet) {
  model.writeInput(Array.from({ length: n }, (_, i) => i + 1), 8);
  const record = (rec: Recorder) => model.recordForward(rec, n, skip, "all");
  const timed = (forwards: number) => wallClockMs(model, record, forwards);
  await timed(4);
  return Math.max(1e-3, ((await timed(24)) - (await timed(4))) / 20);
}

/** A forward to time: `n` tokens through `model` with `skip`. */
export interface TimedForward {
  model: Model;
  n: number;
  skip: SkipSet;
}

/**
 * Milliseconds of each of `forwards`, `rounds` times over: times[round][forward]. With timestamp
 * queries every forward of every round is a timed pass of one command buffer (after a first round
 * that compiles the pipelines, untimed; each round led by an untimed repeat of its first forward;
 * rounds past GpuTimer.MAX_PASSES passes go in further command buffers), so the forwards of a
 * round run back to back and a machine whose speed drifts, as shared VMs do (1.5-2x within
 * minutes here), moves them together: ratios of one round are sound where forwards timed apart
 * read fwd(8)/fwd(1) anywhere from 1.5 to 7.6 in one bench run. Each forward runs at position 8
 * over the model's own input ids; a copy before its pass sets the model's state ({pos, n}).
 * Without timestamps: wallClockForwardMs per forward. The models share one device.
 */
export async function forwardTimes(forwards: TimedForward[], rounds: number): Promise<number[][]> {
  const model = forwards[0].model;
  const timer = timerFor(model);
  if (!timer) {
    const times = [];
    for (let r = 0; r < rounds; r++) {
      const row = [];
      for (const f of forwards) row.push(await wallClockForwardMs(f.model, f.n, f.skip));
      times.push(row);
    }
    return times;
  }
  const states: GPUBuffer[] = [];
  for (const m of new Set(forwards.map((f) => f.model))) {
    const most = Math.max(...forwards.filter((f) => f.model === m).map((f) => f.n));
    m.writeInput(Array.from({ length: most }, (_, i) => i + 1), 8);
  }
  const passes = forwards.map((f) => {
    const state = storageBuffer(f.model.device, 16, "timed state");
    f.model.device.queue.writeBuffer(state, 0, new Uint32Array([8, f.n, 0, 0]));
    states.push(state);
    const tape = Recorder.tape((rec) => f.model.recordForward(rec, f.n, f.skip, "all"));
    return {
      before: (encoder: GPUCommandEncoder) =>
        encoder.copyBufferToBuffer(state, 0, f.model.state, 0, 16),
      record: (rec: Recorder) => rec.play(tape),
    };
  });
  // Each round runs its first forward twice and keeps the second time: on lavapipe a 1-token
  // forward right after a 9-token one ran 3-11% slower than one after a 1-token forward
  // (tiny-llama-ls, medians of 9 rounds), which had priced the bench's plain step high and every
  // ratio to it low. The repeat settles what the previous round's last forward left in the caches.
  const round = [passes[0], ...passes];
  try {
    // Command buffers of up to GpuTimer.MAX_PASSES passes, each led by an untimed round.
    const perBuffer = Math.max(1, Math.floor(GpuTimer.MAX_PASSES / round.length) - 1);
    const times: number[][] = [];
    while (times.length < rounds) {
      const count = Math.min(perBuffer, rounds - times.length);
      const ms = await timer.passesMs(Array.from({ length: count + 1 }, () => round).flat());
      for (let r = 1; r <= count; r++) {
        times.push(ms.slice(r * round.length + 1, (r + 1) * round.length));
      }
    }
    return times;
  } finally {
    states.forEach((s) => s.destroy());
  }
}

/** Wall-clock ms of one submitted pass recording `record` `times` times, until the queue drains. */
async function wallClockMs(model: Model, record: (rec: Recorder) => void, times = 1) {
  const encoder = model.device.createCommandEncoder();
  const rec = new Recorder(encoder.beginComputePass());
  for (let i = 0; i < times; i++) record(rec);
  rec.pass.end();
  const start = performance.now();
  model.device.queue.submit([encoder.finish()]);
  await model.device.queue.onSubmittedWorkDone();
  return performance.now() - start;
}

/**
 * Ms of one pass of what `record` records: GPU time where the device has timestamp queries,
 * else wall-clock (which then includes Deno's ~10 ms wait for the queue).
 */
export function passMs(model: Model, record: (rec: Recorder) => void): Promise<number> {
  const timer = timerFor(model);
  return timer ? timer.passMs(record) : wallClockMs(model, record);
}

/** GPU time of a speculative round's parts (see roundTimes). */
export interface RoundTimes {
  /** One draft step: a one-token forward of the draft (the target with its skip set, or a model). */
  draftStepMs: number;
  /** Verifying 2, 3 (at most) tokens: the target's forward of that many tokens. */
  verifyMs: number[];
}

/**
 * Rounds roundTimes times (after the one that compiles the pipelines): three, so that each median
 * sets one outlier aside (with two, eight measurements of tiny-llama-ls's draft step over its
 * 2-token verification read 0.38-0.41 and once 0.58).
 */
export const ROUND_TIME_ROUNDS = 3;

const measuredRounds = new WeakMap<Model, Map<Model | string, Promise<RoundTimes | undefined>>>();

/**
 * The GPU time of a draft step and of verifying 2 and 3 tokens (as many as the target verifies at
 * once), for the step cap (step_cap.ts timedCost); undefined without timestamp queries. Timed back
 * to back in ROUND_TIME_ROUNDS rounds (forwardTimes; medians), once per target, draft and skip set
 * in a process. The forwards overwrite the models' state, input and K/V cache at positions 8-10:
 * call it before prefill. Its first round compiles pipelines the speculation rounds run anyway.
 */
export function roundTimes(
  target: Model,
  draft: Model,
  draftSkip: SkipSet,
): Promise<RoundTimes | undefined> {
  if (!timerFor(target)) return Promise.resolve(undefined);
  const widest = Math.min(target.act.maxBatch, target.act.logitRows);
  const widths = [2, 3].filter((n) => n <= widest);
  let byDraft = measuredRounds.get(target);
  if (!byDraft) measuredRounds.set(target, byDraft = new Map());
  const key = draft === target ? `skip ${JSON.stringify(draftSkip)}` : draft;
  let times = byDraft.get(key);
  if (!times) {
    times = forwardTimes([
      { model: draft, n: 1, skip: draftSkip },
      ...widths.map((n) => ({ model: target, n, skip: NO_SKIP })),
    ], ROUND_TIME_ROUNDS).then((rounds) => ({
      draftStepMs: median(rounds.map((r) => r[0])),
      verifyMs: widths.map((_, i) => median(rounds.map((r) => r[1 + i]))),
    }));
    times.catch(() => byDraft.delete(key)); // a failure is not kept
    byDraft.set(key, times);
  }
  return times;
}
