/**
 * Two config types: `HfConfig`, the raw shape of a Hugging Face `config.json`, and `ModelConfig`,
 * resolved with the defaults transformers uses, validated, and with the architecture picked.
 */
import { ModelError } from "../errors.ts";
import { brief } from "../files.ts";

export const SUPPORTED_ARCHITECTURES = ["LlamaForCausalLM", "Gemma2ForCausalLM"] as const;
export type Architecture = typeof SUPPORTED_ARCHITECTURES[number];

/** The fields of HF's LlamaConfig and Gemma2Config that skipspec reads. */
export interface HfConfig {
  architectures?: string[];
  model_type?: string;
  hidden_size?: number;
  intermediate_size?: number;
  num_hidden_layers?: number;
  num_attention_heads?: number;
  num_key_value_heads?: number;
  head_dim?: number;
  vocab_size?: number;
  rms_norm_eps?: number;
  rope_theta?: number;
  rope_scaling?: {
    rope_type?: string;
    type?: string;
    factor?: number;
    low_freq_factor?: number;
    high_freq_factor?: number;
    original_max_position_embeddings?: number;
  } | null;
  tie_word_embeddings?: boolean;
  max_position_embeddings?: number;
  hidden_act?: string;
  hidden_activation?: string;
  attention_bias?: boolean;
  mlp_bias?: boolean;
  bos_token_id?: number;
  eos_token_id?: number | number[];
  // Gemma-2
  query_pre_attn_scalar?: number;
  attn_logit_softcapping?: number | null;
  final_logit_softcapping?: number | null;
  sliding_window?: number | null;
}

export type RopeScaling =
  | { type: "default" }
  | {
    type: "llama3";
    factor: number;
    lowFreqFactor: number;
    highFreqFactor: number;
    originalMaxPositions: number;
  };

export interface ModelConfig {
  architecture: Architecture;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  vocabSize: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  tieWordEmbeddings: boolean;
  maxPositions: number;
  bosTokenId?: number;
  eosTokenIds: number[];
  /** Score multiplier in attention. */
  attentionScale: number;
  /** Gemma-2 only (0 / false elsewhere). */
  attnSoftcap: number;
  finalSoftcap: number;
  slidingWindow: number;
}

function positiveInt(cfg: HfConfig, key: keyof HfConfig, fallback?: number): number {
  const v = cfg[key] ?? fallback;
  if (!Number.isSafeInteger(v) || (v as number) <= 0) {
    throw new ModelError(`config.json: "${key}" must be a positive integer (got ${brief(v)})`);
  }
  return v as number;
}

function positiveNumber(cfg: HfConfig, key: keyof HfConfig, fallback: number): number {
  const v = cfg[key] ?? fallback;
  if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
    throw new ModelError(`config.json: "${key}" must be a positive number (got ${brief(v)})`);
  }
  return v;
}

/** A Gemma-2 setting that null (or absence) turns off: 0, else a positive number. */
function optionalPositive(cfg: HfConfig, key: keyof HfConfig, integer = false): number {
  const v = cfg[key] ?? 0;
  const ok = integer ? Number.isSafeInteger(v) : Number.isFinite(v);
  if (!ok || (v as number) < 0) {
    const what = integer ? "a non-negative integer" : "a non-negative number";
    throw new ModelError(`config.json: "${key}" must be null or ${what} (got ${brief(v)})`);
  }
  return v as number;
}

/** Token ids: absent, one id, or (eos) a list of ids; each a non-negative integer. */
function tokenIds(cfg: HfConfig, key: "bos_token_id" | "eos_token_id"): number[] {
  const v = cfg[key];
  const ids = v === undefined || v === null ? [] : Array.isArray(v) ? v : [v];
  if (
    (Array.isArray(v) && key === "bos_token_id") ||
    !ids.every((id) => Number.isSafeInteger(id) && id >= 0)
  ) {
    throw new ModelError(`config.json: "${key}" must be a token id (got ${brief(v)})`);
  }
  return ids;
}

/** Validates a parsed config.json and fills in transformers' defaults. */
export function resolveConfig(raw: unknown): ModelConfig {
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw new ModelError("config.json: not a JSON object");
  }
  const cfg = raw as HfConfig;
  const arch = cfg.architectures?.[0];
  if (!SUPPORTED_ARCHITECTURES.includes(arch as Architecture)) {
    throw new ModelError(
      `config.json: unsupported architecture ${brief(arch ?? cfg.model_type ?? null)} ` +
        `(supported: ${SUPPORTED_ARCHITECTURES.join(", ")})`,
    );
  }
  const architecture = arch as Architecture;
  const gemma = architecture === "Gemma2ForCausalLM";
  if (cfg.attention_bias || cfg.mlp_bias) {
    throw new ModelError("config.json: attention_bias / mlp_bias are not supported");
  }
  const act = cfg.hidden_activation ?? cfg.hidden_act ?? (gemma ? "gelu_pytorch_tanh" : "silu");
  const expectedAct = gemma ? ["gelu_pytorch_tanh", "gelu"] : ["silu"];
  if (!expectedAct.includes(act)) {
    throw new ModelError(`config.json: unsupported activation ${brief(act)} for ${architecture}`);
  }
  const hiddenSize = positiveInt(cfg, "hidden_size");
  const numHeads = positiveInt(cfg, "num_attention_heads");
  const numKvHeads = positiveInt(cfg, "num_key_value_heads", numHeads);
  if (numHeads % numKvHeads !== 0) {
    throw new ModelError(
      `config.json: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKvHeads}`,
    );
  }
  const headDim = positiveInt(cfg, "head_dim", hiddenSize / numHeads);
  // The attention kernel holds head rows as 4x4 blocks (kernels/attention.wgsl).
  if (headDim % 16 !== 0 || headDim > 256) {
    throw new ModelError(
      `config.json: head_dim ${headDim} is not supported (a multiple of 16, at most 256)`,
    );
  }
  const tie = cfg.tie_word_embeddings ?? gemma;
  if (typeof tie !== "boolean") {
    throw new ModelError(
      `config.json: "tie_word_embeddings" must be true or false (got ${brief(tie)})`,
    );
  }
  const queryPreAttnScalar = gemma
    ? positiveNumber(cfg, "query_pre_attn_scalar", headDim)
    : headDim;
  return {
    architecture,
    hiddenSize,
    intermediateSize: positiveInt(cfg, "intermediate_size"),
    numLayers: positiveInt(cfg, "num_hidden_layers"),
    numHeads,
    numKvHeads,
    headDim,
    vocabSize: positiveInt(cfg, "vocab_size"),
    rmsNormEps: positiveNumber(cfg, "rms_norm_eps", 1e-6),
    ropeTheta: positiveNumber(cfg, "rope_theta", 10000),
    ropeScaling: resolveRopeScaling(cfg),
    tieWordEmbeddings: tie,
    maxPositions: positiveInt(cfg, "max_position_embeddings", 2048),
    bosTokenId: tokenIds(cfg, "bos_token_id")[0],
    eosTokenIds: tokenIds(cfg, "eos_token_id"),
    attentionScale: 1 / Math.sqrt(queryPreAttnScalar),
    attnSoftcap: gemma ? optionalPositive(cfg, "attn_logit_softcapping") : 0,
    finalSoftcap: gemma ? optionalPositive(cfg, "final_logit_softcapping") : 0,
    slidingWindow: gemma ? optionalPositive(cfg, "sliding_window", true) : 0,
  };
}

function resolveRopeScaling(cfg: HfConfig): RopeScaling {
  const s = cfg.rope_scaling;
  if (s === undefined || s === null) return { type: "default" };
  if (typeof s !== "object" || Array.isArray(s)) {
    throw new ModelError(`config.json: "rope_scaling" must be an object or null (got ${brief(s)})`);
  }
  const type = s.rope_type ?? s.type;
  if (type === "default") return { type: "default" };
  if (type !== "llama3") {
    throw new ModelError(
      `config.json: unsupported rope_scaling type ${brief(type)} (supported: llama3)`,
    );
  }
  const num = (v: unknown, name: string) => {
    if (typeof v !== "number" || !(v > 0) || !Number.isFinite(v)) {
      throw new ModelError(
        `config.json: rope_scaling.${name} must be a positive number (got ${brief(v)})`,
      );
    }
    return v;
  };
  return {
    type: "llama3",
    factor: num(s.factor, "factor"),
    lowFreqFactor: num(s.low_freq_factor, "low_freq_factor"),
    highFreqFactor: num(s.high_freq_factor, "high_freq_factor"),
    originalMaxPositions: num(
      s.original_max_position_embeddings,
      "original_max_position_embeddings",
    ),
  };
}
