/**
 * The GGUF writer of the llama.cpp peer bench (bench/gguf.ts), read back by a small reader here:
 * header, metadata, tensor table, alignment, F16 data against the fixture's weights, the rotary row
 * permutation and the llama3 rope factors.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { llamaToGguf, permuteRotaryRows } from "../bench/gguf.ts";
import { loadSafetensorsIndex } from "../src/model/safetensors.ts";
import { toF32 } from "../src/model/weights.ts";
import { FIXTURE } from "./helpers/cli.ts";

interface Read {
  meta: Map<string, unknown>;
  tensors: Map<string, { dims: number[]; type: number; offset: number }>;
  dataStart: number;
  bytes: Uint8Array;
}

function readGguf(bytes: Uint8Array): Read {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let at = 0;
  const u32 = () => (at += 4, v.getUint32(at - 4, true));
  const u64 = () => (at += 8, Number(v.getBigUint64(at - 8, true)));
  const str = () => {
    const n = u64();
    at += n;
    return new TextDecoder().decode(bytes.subarray(at - n, at));
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 4:
        return u32();
      case 5:
        return (at += 4, v.getInt32(at - 4, true));
      case 6:
        return (at += 4, v.getFloat32(at - 4, true));
      case 7:
        return bytes[at++] === 1;
      case 8:
        return str();
      case 9: {
        const elem = u32();
        return Array.from({ length: u64() }, () => value(elem));
      }
    }
    throw new Error(`value type ${type}`);
  };
  assert.equal(new TextDecoder().decode(bytes.subarray(0, 4)), "GGUF");
  at = 4;
  assert.equal(u32(), 3, "version");
  const nTensors = u64(), nMeta = u64();
  const meta = new Map<string, unknown>();
  for (let i = 0; i < nMeta; i++) {
    const key = str();
    meta.set(key, value(u32()));
  }
  const tensors = new Map<string, { dims: number[]; type: number; offset: number }>();
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const dims = Array.from({ length: u32() }, u64);
    tensors.set(name, { dims, type: u32(), offset: u64() });
  }
  return { meta, tensors, dataStart: Math.ceil(at / 32) * 32, bytes };
}

Deno.test("the GGUF of tiny-llama reads back: metadata, tensor table, aligned F16 data equal to its weights", async () => {
  const g = readGguf(await llamaToGguf(FIXTURE));
  const cfg = JSON.parse(await Deno.readTextFile(join(FIXTURE, "config.json")));
  assert.equal(g.meta.get("general.architecture"), "llama");
  assert.equal(g.meta.get("llama.block_count"), cfg.num_hidden_layers);
  assert.equal(g.meta.get("llama.attention.head_count_kv"), cfg.num_key_value_heads);
  assert.equal(g.meta.get("llama.rope.freq_base"), cfg.rope_theta);
  assert.equal(g.meta.get("tokenizer.ggml.bos_token_id"), cfg.bos_token_id);
  const tokens = g.meta.get("tokenizer.ggml.tokens") as string[];
  assert.equal(tokens.length, cfg.vocab_size);
  assert.equal(tokens[cfg.bos_token_id], "<|begin_of_text|>");
  assert.equal((g.meta.get("tokenizer.ggml.token_type") as number[])[cfg.bos_token_id], 3);
  // 9 tensors a layer, embedding, final norm, LM head, rope factors.
  assert.equal(g.tensors.size, 9 * cfg.num_hidden_layers + 4);
  for (const [name, t] of g.tensors) {
    assert.equal(t.offset % 32, 0, `${name} aligned`);
    assert.equal(t.type, t.dims.length > 1 ? 1 : 0, `${name}: F16 matrices, F32 vectors`);
  }
  // ggml lists the innermost dimension first; data equal to the weights rounded to F16.
  const index = await loadSafetensorsIndex(FIXTURE);
  const weights = async (name: string) => {
    const info = index.get(name)!;
    const file = await Deno.readFile(info.file);
    return {
      info,
      values: toF32(info.dtype, file.subarray(info.offset, info.offset + info.byteLength)),
    };
  };
  const f16 = (name: string) => {
    const t = g.tensors.get(name)!;
    const count = t.dims.reduce((a, b) => a * b, 1);
    const start = g.dataStart + t.offset;
    return new Float16Array(g.bytes.slice(start, start + 2 * count).buffer);
  };
  const up = await weights("model.layers.3.mlp.up_proj.weight");
  assert.deepEqual(g.tensors.get("blk.3.ffn_up.weight")!.dims, [...up.info.shape].reverse());
  assert.deepEqual([...f16("blk.3.ffn_up.weight")], [...new Float16Array(up.values)]);
  // q rows permuted to llama.cpp's rotary pairs.
  const q = await weights("model.layers.0.self_attn.q_proj.weight");
  const [rows, cols] = q.info.shape;
  const permuted = new Float16Array(
    permuteRotaryRows(q.values, rows, cols, cfg.num_attention_heads),
  );
  assert.deepEqual([...f16("blk.0.attn_q.weight")], [...permuted]);
  // llama3 factors: 1 for short wavelengths, `factor` for long ones (HF's scaling, inverted).
  const t = g.tensors.get("rope_freqs.weight")!;
  const start = g.dataStart + t.offset;
  const factors = new Float32Array(g.bytes.slice(start, start + 4 * t.dims[0]).buffer);
  assert.equal(factors.length, cfg.head_dim / 2);
  assert.ok(
    Math.abs(factors[0] - 1) < 1e-6 && Math.abs(factors.at(-1)! - cfg.rope_scaling.factor) < 1e-4,
  );
});

Deno.test("rotary row permutation: a head's halves interleave, row (h, j, i) to (h, i, j)", () => {
  // 2 heads of 4 rows (halves of 2), 1 column: rows 0..7 hold their own index.
  const w = Float32Array.from({ length: 8 }, (_, i) => i);
  assert.deepEqual([...permuteRotaryRows(w, 8, 1, 2)], [0, 2, 1, 3, 4, 6, 5, 7]);
  const wide = Float32Array.from({ length: 8 }, (_, i) => i); // 4 rows of 2 columns, 1 head
  assert.deepEqual([...permuteRotaryRows(wide, 4, 2, 1)], [0, 1, 4, 5, 2, 3, 6, 7]);
});
