/**
 * A Llama model folder as a GGUF file (version 3), laid out as llama.cpp's `convert_hf_to_gguf.py`
 * lays it out: its tensor names, the q and k rows permuted from Hugging Face's rotate-half order to
 * llama.cpp's interleaved rotary pairs, llama3 rope scaling as the `rope_freqs` factors, the
 * byte-level BPE vocabulary as a `gpt2` tokenizer; matrices in F16 (the converter's long-time
 * default), norms and factors in F32. It is the input of the peer comparison
 * (bench/llama_cpp_peer.ts), which checks that llama.cpp's greedy tokens on it match skipspec's.
 */
import { join } from "node:path";
import { resolveConfig } from "../src/model/config.ts";
import { inverseFrequencies } from "../src/model/rope.ts";
import { loadSafetensorsIndex, type TensorInfo } from "../src/model/safetensors.ts";
import { toF32 } from "../src/model/weights.ts";

/** GGUF metadata value types and ggml tensor types used here. */
const GGUF = { UINT32: 4, INT32: 5, FLOAT32: 6, BOOL: 7, STRING: 8, ARRAY: 9 } as const;
const GGML_F32 = 0, GGML_F16 = 1;
const ALIGNMENT = 32;

/** Little-endian byte builder. */
class Bytes {
  #parts: Uint8Array[] = [];
  length = 0;
  raw(bytes: Uint8Array) {
    this.#parts.push(bytes);
    this.length += bytes.byteLength;
  }
  #num(size: number, write: (v: DataView) => void) {
    const b = new Uint8Array(size);
    write(new DataView(b.buffer));
    this.raw(b);
  }
  u32 = (v: number) => this.#num(4, (d) => d.setUint32(0, v, true));
  i32 = (v: number) => this.#num(4, (d) => d.setInt32(0, v, true));
  u64 = (v: number) => this.#num(8, (d) => d.setBigUint64(0, BigInt(v), true));
  f32 = (v: number) => this.#num(4, (d) => d.setFloat32(0, v, true));
  str(s: string) {
    const b = new TextEncoder().encode(s);
    this.u64(b.byteLength);
    this.raw(b);
  }
  pad() {
    this.raw(new Uint8Array((ALIGNMENT - (this.length % ALIGNMENT)) % ALIGNMENT));
  }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.length);
    let at = 0;
    for (const p of this.#parts) {
      out.set(p, at);
      at += p.byteLength;
    }
    return out;
  }
}

type Value =
  | { u32: number }
  | { f32: number }
  | { bool: boolean }
  | { str: string }
  | { strs: string[] }
  | { i32s: number[] };

function writeValue(b: Bytes, v: Value) {
  if ("u32" in v) {
    b.u32(GGUF.UINT32);
    b.u32(v.u32);
  } else if ("f32" in v) {
    b.u32(GGUF.FLOAT32);
    b.f32(v.f32);
  } else if ("bool" in v) {
    b.u32(GGUF.BOOL);
    b.raw(new Uint8Array([v.bool ? 1 : 0]));
  } else if ("str" in v) {
    b.u32(GGUF.STRING);
    b.str(v.str);
  } else {
    const strings = "strs" in v;
    b.u32(GGUF.ARRAY);
    b.u32(strings ? GGUF.STRING : GGUF.INT32);
    if (strings) {
      b.u64(v.strs.length);
      v.strs.forEach((s) => b.str(s));
    } else {
      b.u64(v.i32s.length);
      v.i32s.forEach((x) => b.i32(x));
    }
  }
}

/** A tensor to write: row-major `shape` (outermost first, as in safetensors). */
interface GgufTensor {
  name: string;
  shape: number[];
  values: Float32Array;
}

/**
 * Rows of a q or k projection (heads x [first half; second half] of each head's dimensions) in
 * llama.cpp's order, where a head's rotary pairs are adjacent rows: row (h, j, i) -> (h, i, j).
 */
export function permuteRotaryRows(w: Float32Array, rows: number, cols: number, heads: number) {
  const half = rows / heads / 2;
  const out = new Float32Array(w.length);
  for (let h = 0; h < heads; h++) {
    for (let j = 0; j < 2; j++) {
      for (let i = 0; i < half; i++) {
        const from = (h * 2 * half + j * half + i) * cols;
        const to = (h * 2 * half + i * 2 + j) * cols;
        out.set(w.subarray(from, from + cols), to);
      }
    }
  }
  return out;
}

/** The GGUF file of the Llama model in `modelDir` (config.json, tokenizer.json, safetensors). */
export async function llamaToGguf(modelDir: string): Promise<Uint8Array> {
  const cfg = resolveConfig(JSON.parse(await Deno.readTextFile(join(modelDir, "config.json"))));
  if (cfg.architecture !== "LlamaForCausalLM") {
    throw new Error(`bench/gguf.ts writes Llama models, not ${cfg.architecture}`);
  }
  const tok = JSON.parse(await Deno.readTextFile(join(modelDir, "tokenizer.json")));
  if (tok.model?.type !== "BPE") throw new Error("bench/gguf.ts needs a byte-level BPE tokenizer");
  const index = await loadSafetensorsIndex(modelDir);
  const files = new Map<string, Uint8Array>();
  const read = async (name: string): Promise<[Float32Array, TensorInfo]> => {
    const info = index.get(name);
    if (!info) throw new Error(`tensor ${name} is missing`);
    if (!files.has(info.file)) files.set(info.file, await Deno.readFile(info.file));
    const bytes = files.get(info.file)!.subarray(info.offset, info.offset + info.byteLength);
    return [toF32(info.dtype, bytes), info];
  };
  const tensors: GgufTensor[] = [];
  const add = async (name: string, from: string, heads = 0) => {
    const [values, info] = await read(from);
    const [rows, cols] = info.shape;
    tensors.push({
      name,
      shape: info.shape,
      values: heads ? permuteRotaryRows(values, rows, cols, heads) : values,
    });
  };
  await add("token_embd.weight", "model.embed_tokens.weight");
  for (let l = 0; l < cfg.numLayers; l++) {
    const p = `model.layers.${l}.`, g = `blk.${l}.`;
    await add(`${g}attn_norm.weight`, `${p}input_layernorm.weight`);
    await add(`${g}attn_q.weight`, `${p}self_attn.q_proj.weight`, cfg.numHeads);
    await add(`${g}attn_k.weight`, `${p}self_attn.k_proj.weight`, cfg.numKvHeads);
    await add(`${g}attn_v.weight`, `${p}self_attn.v_proj.weight`);
    await add(`${g}attn_output.weight`, `${p}self_attn.o_proj.weight`);
    await add(`${g}ffn_norm.weight`, `${p}post_attention_layernorm.weight`);
    await add(`${g}ffn_gate.weight`, `${p}mlp.gate_proj.weight`);
    await add(`${g}ffn_up.weight`, `${p}mlp.up_proj.weight`);
    await add(`${g}ffn_down.weight`, `${p}mlp.down_proj.weight`);
  }
  await add("output_norm.weight", "model.norm.weight");
  if (!cfg.tieWordEmbeddings) await add("output.weight", "lm_head.weight");
  if (cfg.ropeScaling.type === "llama3") {
    // llama.cpp divides each rotary frequency by its factor: the default over the scaled one.
    const plain = inverseFrequencies(cfg.headDim, cfg.ropeTheta, { type: "default" });
    const scaled = inverseFrequencies(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling);
    const factors = Float32Array.from(plain, (f, i) => f / scaled[i]);
    tensors.push({ name: "rope_freqs.weight", shape: [factors.length], values: factors });
  }

  // The vocabulary by id; added tokens (special ones as control tokens) at their ids.
  const tokens: string[] = [];
  const types: number[] = [];
  for (const [text, id] of Object.entries(tok.model.vocab as Record<string, number>)) {
    [tokens[id], types[id]] = [text, 1];
  }
  for (const a of tok.added_tokens ?? []) {
    [tokens[a.id], types[a.id]] = [a.content, a.special ? 3 : 4];
  }
  for (let i = 0; i < tokens.length; i++) {
    if (tokens[i] === undefined) [tokens[i], types[i]] = [`[PAD${i}]`, 1];
  }
  const merges = (tok.model.merges as (string | string[])[]).map((m) =>
    typeof m === "string" ? m : m.join(" ")
  );
  const meta: [string, Value][] = [
    ["general.architecture", { str: "llama" }],
    ["general.name", { str: modelDir.split("/").filter(Boolean).pop()! }],
    ["general.alignment", { u32: ALIGNMENT }],
    ["general.file_type", { u32: GGML_F16 }],
    ["llama.block_count", { u32: cfg.numLayers }],
    ["llama.context_length", { u32: cfg.maxPositions }],
    ["llama.embedding_length", { u32: cfg.hiddenSize }],
    ["llama.feed_forward_length", { u32: cfg.intermediateSize }],
    ["llama.attention.head_count", { u32: cfg.numHeads }],
    ["llama.attention.head_count_kv", { u32: cfg.numKvHeads }],
    ["llama.attention.key_length", { u32: cfg.headDim }],
    ["llama.attention.value_length", { u32: cfg.headDim }],
    ["llama.attention.layer_norm_rms_epsilon", { f32: cfg.rmsNormEps }],
    ["llama.rope.freq_base", { f32: cfg.ropeTheta }],
    ["llama.rope.dimension_count", { u32: cfg.headDim }],
    ["llama.vocab_size", { u32: tokens.length }],
    ["tokenizer.ggml.model", { str: "gpt2" }],
    ["tokenizer.ggml.pre", { str: "default" }],
    ["tokenizer.ggml.tokens", { strs: tokens }],
    ["tokenizer.ggml.token_type", { i32s: types }],
    ["tokenizer.ggml.merges", { strs: merges }],
    ...(cfg.bosTokenId === undefined ? [] : [
      ["tokenizer.ggml.bos_token_id", { u32: cfg.bosTokenId }] as [string, Value],
      ["tokenizer.ggml.add_bos_token", { bool: true }] as [string, Value],
    ]),
    ...(cfg.eosTokenIds.length
      ? [["tokenizer.ggml.eos_token_id", { u32: cfg.eosTokenIds[0] }]] as [
        string,
        Value,
      ][]
      : []),
  ];

  const head = new Bytes();
  head.raw(new TextEncoder().encode("GGUF"));
  head.u32(3); // version
  head.u64(tensors.length);
  head.u64(meta.length);
  for (const [key, value] of meta) {
    head.str(key);
    writeValue(head, value);
  }
  const data = new Bytes();
  for (const t of tensors) {
    const matrix = t.shape.length > 1;
    head.str(t.name);
    head.u32(t.shape.length);
    [...t.shape].reverse().forEach((d) => head.u64(d)); // ggml: innermost dimension first
    head.u32(matrix ? GGML_F16 : GGML_F32);
    head.u64(data.length);
    const values = matrix ? new Float16Array(t.values) : t.values;
    data.raw(new Uint8Array(values.buffer, values.byteOffset, values.byteLength));
    data.pad();
  }
  head.pad();
  head.raw(data.bytes());
  return head.bytes();
}
