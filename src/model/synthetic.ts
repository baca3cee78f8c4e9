/**
 * Synthetic models for `bench --synthetic SHAPE`: the config.json of a real model and a tensor set
 * of exactly its names, shapes and dtype (bf16), filled with seeded random values as they stream to
 * the GPU, so throughput is measured at real sizes without a download. Norm gains are the identity
 * (1 for Llama, 0 for Gemma's 1 + w) so activations keep a sane scale; the weights are untrained,
 * so acceptance rates measured on them mean nothing.
 */
import { UsageError } from "../errors.ts";
import { type HfConfig, type ModelConfig, resolveConfig } from "./config.ts";
import { DTYPE_BYTES, type TensorInfo } from "./safetensors.ts";
import type { WeightSource } from "./weights.ts";

/** The published config.json fields of each shape (Hugging Face model cards, as released). */
export const SYNTHETIC_SHAPES: Record<string, HfConfig> = {
  "llama-3.2-1b": {
    architectures: ["LlamaForCausalLM"],
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 64,
    vocab_size: 128256,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: "llama3",
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
    max_position_embeddings: 131072,
    tie_word_embeddings: true,
    hidden_act: "silu",
    bos_token_id: 128000,
    eos_token_id: 128001,
  },
  "tinyllama-1.1b": {
    architectures: ["LlamaForCausalLM"],
    hidden_size: 2048,
    intermediate_size: 5632,
    num_hidden_layers: 22,
    num_attention_heads: 32,
    num_key_value_heads: 4,
    vocab_size: 32000,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    max_position_embeddings: 2048,
    tie_word_embeddings: false,
    hidden_act: "silu",
    bos_token_id: 1,
    eos_token_id: 2,
  },
  "gemma-2-2b": {
    architectures: ["Gemma2ForCausalLM"],
    hidden_size: 2304,
    intermediate_size: 9216,
    num_hidden_layers: 26,
    num_attention_heads: 8,
    num_key_value_heads: 4,
    head_dim: 256,
    vocab_size: 256000,
    rms_norm_eps: 1e-6,
    rope_theta: 10000,
    max_position_embeddings: 8192,
    query_pre_attn_scalar: 256,
    attn_logit_softcapping: 50,
    final_logit_softcapping: 30,
    sliding_window: 4096,
    hidden_activation: "gelu_pytorch_tanh",
    tie_word_embeddings: true,
    bos_token_id: 2,
    eos_token_id: 1,
  },
};

/** The resolved config of a shape, optionally trimmed to its first `layers` layers. */
export function syntheticConfig(shape: string, layers?: number): ModelConfig {
  const raw = SYNTHETIC_SHAPES[shape];
  if (!raw) {
    throw new UsageError(
      `unknown synthetic shape "${shape}" (shapes: ${Object.keys(SYNTHETIC_SHAPES).join(", ")})`,
    );
  }
  const cfg = resolveConfig(raw);
  if (layers === undefined) return cfg;
  if (!Number.isInteger(layers) || layers < 1 || layers > cfg.numLayers) {
    throw new UsageError(`--layers must be 1..${cfg.numLayers} for ${shape}, got ${layers}`);
  }
  return { ...cfg, numLayers: layers };
}

/** Every tensor a checkpoint of this config holds, in file order, as bf16. */
export function syntheticTensors(cfg: ModelConfig, file: string): Map<string, TensorInfo> {
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  const h = cfg.hiddenSize;
  const shapes: [string, number[]][] = [["model.embed_tokens.weight", [cfg.vocabSize, h]]];
  const gemma = cfg.architecture === "Gemma2ForCausalLM";
  const norms = gemma
    ? [
      "input_layernorm",
      "post_attention_layernorm",
      "pre_feedforward_layernorm",
      "post_feedforward_layernorm",
    ]
    : ["input_layernorm", "post_attention_layernorm"];
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`;
    shapes.push(
      [`${p}self_attn.q_proj.weight`, [qDim, h]],
      [`${p}self_attn.k_proj.weight`, [kvDim, h]],
      [`${p}self_attn.v_proj.weight`, [kvDim, h]],
      [`${p}self_attn.o_proj.weight`, [h, qDim]],
      [`${p}mlp.gate_proj.weight`, [cfg.intermediateSize, h]],
      [`${p}mlp.up_proj.weight`, [cfg.intermediateSize, h]],
      [`${p}mlp.down_proj.weight`, [h, cfg.intermediateSize]],
      ...norms.map((n): [string, number[]] => [`${p}${n}.weight`, [h]]),
    );
  }
  shapes.push(["model.norm.weight", [h]]);
  if (!cfg.tieWordEmbeddings) shapes.push(["lm_head.weight", [cfg.vocabSize, h]]);
  const tensors = new Map<string, TensorInfo>();
  let offset = 0;
  for (const [name, shape] of shapes) {
    const byteLength = shape.reduce((a, b) => a * b, 1) * DTYPE_BYTES.BF16;
    tensors.set(name, { name, dtype: "BF16", shape, offset, byteLength, file });
    offset += byteLength;
  }
  return tensors;
}

/** bf16 bit patterns: 1.0 and 0.0 (identity norm gains for Llama and Gemma). */
const BF16_ONE = 0x3f80;
const BF16_ZERO = 0x0000;

/**
 * A weight source for a shape. Matrices get random bf16 values of magnitude in [2^-7, 2^-5)
 * (about the 0.02 scale of initialisation), with a random sign; a piece's values depend only on
 * (seed, tensor, offset), so two loads of one shape are identical.
 */
export function syntheticSource(shape: string, layers?: number, seed = 1): WeightSource {
  const cfg = syntheticConfig(shape, layers);
  const name = `synthetic:${shape}${layers === undefined ? "" : `:${layers}`}`;
  const tensors = syntheticTensors(cfg, name);
  const gain = cfg.architecture === "Gemma2ForCausalLM" ? BF16_ZERO : BF16_ONE;
  return {
    name,
    cfg,
    tensors,
    read: async (t, onPiece, pieceBytes) => {
      for (let done = 0; done < t.byteLength; done += pieceBytes) {
        const bytes = new Uint8Array(Math.min(pieceBytes, t.byteLength - done));
        const halves = new Uint16Array(bytes.buffer);
        if (t.shape.length === 1) halves.fill(gain);
        else fillRandomBf16(halves, (seed * 0x9e3779b9 + t.offset + done) >>> 0);
        await onPiece(bytes, done);
      }
    },
  };
}

function fillRandomBf16(out: Uint16Array, seed: number) {
  let s = seed | 1;
  for (let i = 0; i < out.length; i++) {
    // xorshift32: 16 random bits per value are plenty for bandwidth-bound benchmarks.
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const sign = s & 0x8000;
    const exponent = 120 + ((s >>> 8) & 1); // 2^-7 or 2^-6
    out[i] = sign | (exponent << 7) | (s & 0x7f);
  }
}
