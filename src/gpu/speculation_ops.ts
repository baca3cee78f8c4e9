/**
 * The speculation kernels bound to their buffers (kernels/draft_sample.wgsl, verify_begin.wgsl,
 * verify.wgsl), and the layouts of the GPU-resident speculation state (kernels/speculation.wgsl)
 * and round log that the decoding loop reads back.
 */
import { type Field, storageBuffer, uniformBuffer } from "./buffers.ts";
import type { Defines } from "./shader.ts";
import { Bound, type Op, type OpContext, type SamplingParams } from "./ops.ts";

/** Most drafts per round (MAX_DRAFT in speculation.wgsl). */
export const MAX_DRAFT = 32;
/** Most stop tokens the kernels test (SpecParams.stop). */
export const MAX_STOP_TOKENS = 8;

/** Word offsets of `struct Speculation`. */
export const SPEC = {
  roundPos: 0,
  drafted: 1,
  drafting: 2,
  done: 3,
  emitted: 4,
  budget: 5,
  rounds: 6,
  draftedTotal: 7,
  acceptedTotal: 8,
  gamma: 9,
  acceptance: 10,
  stepCap: 11,
  tokens: 12,
  draftProb: 12 + MAX_DRAFT + 1,
  words: 12 + 2 * MAX_DRAFT + 1,
} as const;

/** Word offsets of `struct RoundLog` (verify.wgsl). */
export const ROUND_LOG = {
  round: 0,
  count: 1,
  done: 2,
  drafted: 3,
  accepted: 4,
  gamma: 5,
  tokens: 8,
  words: 48,
} as const;

export interface SpecSettings {
  vocab: number;
  draftMax: number;
  sampling: SamplingParams;
  adaptive: boolean;
  targetAcceptance: number;
  logCapacity: number;
  stopTokens: number[];
}

/** The uniform `SpecParams` block. */
export function specParams(device: GPUDevice, s: SpecSettings): GPUBuffer {
  if (s.draftMax < 1 || s.draftMax > MAX_DRAFT) {
    throw new RangeError(`draft max ${s.draftMax} is outside 1..${MAX_DRAFT}`);
  }
  if (s.stopTokens.length > MAX_STOP_TOKENS) {
    throw new RangeError(`at most ${MAX_STOP_TOKENS} stop tokens, got ${s.stopTokens.length}`);
  }
  const stop = Array.from({ length: MAX_STOP_TOKENS }, (_, i) => s.stopTokens[i] ?? 0);
  const fields: Field[] = [
    ["u32", s.vocab],
    ["u32", s.draftMax],
    ["u32", s.sampling.topK],
    ["u32", s.sampling.seed >>> 0],
    ["f32", s.sampling.temperature],
    ["f32", s.sampling.topP],
    ["f32", s.sampling.minP],
    ["f32", s.sampling.repetitionPenalty],
    ["u32", s.adaptive ? 1 : 0],
    ["f32", s.targetAcceptance],
    ["u32", s.logCapacity],
    ["u32", s.stopTokens.length],
    ...stop.map((t): Field => ["u32", t]),
  ];
  return uniformBuffer(device, fields, "spec_params");
}

/** Buffers of one speculative generation. */
export interface SpecBuffers {
  /** V: the logits kernels load quads of logits when V % 4 == 0. */
  vocab: number;
  params: GPUBuffer;
  /** struct Speculation. */
  spec: GPUBuffer;
  /** (V) first position of each token in the context, or 0xffffffff. */
  presence: GPUBuffer;
  /** (draftMax, V) the draft's processed distributions (sampling only). */
  draftQ: GPUBuffer;
  /** (logCapacity) struct RoundLog. */
  roundLog: GPUBuffer;
}

export function allocateSpecBuffers(device: GPUDevice, s: SpecSettings): SpecBuffers {
  const sampled = s.sampling.temperature > 0;
  return {
    vocab: s.vocab,
    params: specParams(device, s),
    spec: storageBuffer(device, SPEC.words * 4, "speculation"),
    presence: storageBuffer(device, s.vocab * 4, "presence"),
    draftQ: storageBuffer(device, sampled ? s.draftMax * s.vocab * 4 : 4, "draft_q"),
    roundLog: storageBuffer(device, s.logCapacity * ROUND_LOG.words * 4, "round_log"),
  };
}

export function destroySpecBuffers(b: SpecBuffers) {
  [b.params, b.spec, b.presence, b.draftQ, b.roundLog].forEach((buffer) => buffer.destroy());
}

/** vec4 loads of the logits where every row starts at a multiple of 4 (logits_processing.wgsl). */
const logitsDefines = (b: SpecBuffers): Defines => ({ LOGITS_VEC4: b.vocab % 4 === 0 });

const single = (ctx: OpContext, kernel: "draft_sample" | "verify_begin" | "verify") =>
(
  resources: GPUBuffer[],
  defines: Defines = {},
): Op => {
  const [pipeline, group] = new Bound(ctx, kernel, resources).get(defines);
  return { record: (rec) => rec.dispatch(pipeline, group, 1) };
};

/** Picks draft token d_{i+1} from the draft's logits row 0 and decides whether drafting goes on. */
export function draftSampleOp(
  ctx: OpContext,
  b: SpecBuffers,
  draft: { state: GPUBuffer; logits: GPUBuffer; ids: GPUBuffer },
): Op {
  return single(ctx, "draft_sample")([
    b.params,
    b.spec,
    draft.state,
    draft.logits,
    b.presence,
    draft.ids,
    b.draftQ,
  ], logitsDefines(b));
}

/** Makes [x_P, d_1..d_k] at P the target's input (n = 0 after the end of generation). */
export function verifyBeginOp(
  ctx: OpContext,
  b: SpecBuffers,
  target: { state: GPUBuffer; ids: GPUBuffer },
): Op {
  return single(ctx, "verify_begin")([b.params, b.spec, target.state, target.ids]);
}

/**
 * Accepts a prefix of the drafts, emits it and the target's token into the round log, rolls back
 * and prepares the next round. `draft` is given when the draft is a separate model.
 */
export function verifyOp(
  ctx: OpContext,
  b: SpecBuffers,
  target: { state: GPUBuffer; logits: GPUBuffer; ids: GPUBuffer },
  draft?: { state: GPUBuffer; ids: GPUBuffer },
  negativeControl = false,
): Op {
  const resources = [
    b.params,
    b.spec,
    target.state,
    target.logits,
    b.presence,
    target.ids,
    b.draftQ,
    b.roundLog,
  ];
  if (draft) resources.push(draft.state, draft.ids);
  return single(ctx, "verify")(resources, {
    ...logitsDefines(b),
    SEPARATE_DRAFT: draft !== undefined,
    NEGATIVE_CONTROL_RESAMPLE_FROM_P: negativeControl,
  });
}
