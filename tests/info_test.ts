/**
 * `skipspec info`: the adapter, its features and limits and Deno's version; with --model, the
 * figures of the model (checked against the safetensors header read here independently) and
 * whether it fits this device's limits, including a context whose K/V cache does not.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  assertOneLineError,
  editedConfig,
  FIXTURE,
  GEMMA,
  modelWith,
  skipspec,
} from "./helpers/cli.ts";

/** The tensors of a single-file model, from its header (u64 length, then JSON). */
async function header(dir: string): Promise<{ dtype: string; shape: number[] }[]> {
  const bytes = await Deno.readFile(join(dir, "model.safetensors"));
  const length = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const json = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + length)));
  delete json.__metadata__;
  return Object.values(json);
}

async function info(args: string[], env: Record<string, string> = {}) {
  const r = await skipspec(["info", ...args, "--json"], env);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

Deno.test("info --json reports the adapter, its features and limits, and Deno's version", async () => {
  const out = await info([]);
  assert.equal(out.deno.deno, Deno.version.deno);
  assert.equal(out.deno.os, Deno.build.os);
  assert.equal(typeof out.adapter.description, "string");
  assert.ok(out.adapter.description || out.adapter.device, "the adapter has a name");
  assert.equal(typeof out.adapter.vendor, "string");
  assert.equal(typeof out.adapter.isFallbackAdapter, "boolean");
  assert.ok(Array.isArray(out.adapter.features));
  for (const key of ["maxStorageBufferBindingSize", "maxBufferSize", "maxComputeWorkgroupSizeX"]) {
    assert.ok(Number.isInteger(out.adapter.limits[key]) && out.adapter.limits[key] > 0, key);
  }
  assert.equal(out.model, undefined);
});

Deno.test("info --model reports parameters, dtype, GPU bytes and K/V cache, and that the model fits", async () => {
  const tensors = await header(FIXTURE);
  const elements = (t: { shape: number[] }) => t.shape.reduce((a, b) => a * b, 1);
  const { model } = await info(["--model", FIXTURE]);
  assert.equal(model.architecture, "LlamaForCausalLM");
  assert.equal(model.layers, 12);
  assert.equal(model.parameters, tensors.reduce((n, t) => n + elements(t), 0));
  assert.equal(model.dtype, "BF16");
  // Matrices stay bf16 on the GPU (2 bytes), vectors (norms) are widened to f32.
  const gpuBytes = tensors.reduce((n, t) => n + elements(t) * (t.shape.length > 1 ? 2 : 4), 0);
  assert.equal(model.weightBytesOnGpu, gpuBytes);
  assert.equal(model.contextLength, 1024);
  assert.equal(model.kvCacheBytes, 2 * 12 * 1024 * 2 * 32 * 4); // K and V, layers, tokens, n_kv, head_dim, f32
  assert.equal(model.fits, true);
  assert.ok(model.checks.length >= 4 && model.checks.every((c: { ok: boolean }) => c.ok));

  const gemma = (await info(["--model", GEMMA, "--context", "64"])).model;
  assert.equal(gemma.architecture, "Gemma2ForCausalLM");
  assert.equal(gemma.dtype, "F32");
  assert.equal(gemma.contextLength, 64);
  assert.equal(gemma.kvCacheBytes, 2 * 12 * 64 * 2 * 32 * 4);

  const text = await skipspec(["info", "--model", FIXTURE]);
  assert.equal(text.code, 0, text.stderr);
  for (
    const pattern of [
      /^Deno \d+\.\d+\.\d+/m,
      /^adapter: /m,
      /fallback \(software\) adapter: (yes|no)/,
      /^features: /m,
      /^\s+maxStorageBufferBindingSize\s+\d+$/m,
      /parameters 2\.62M \(BF16 2\.62M\), dtype BF16/,
      /fits this device's limits: yes/,
    ]
  ) {
    assert.match(text.stdout, pattern);
  }
});

Deno.test("info says NO when the context's K/V cache does not fit the texture size limit", async () => {
  const maxDim = (await info([])).adapter.limits.maxTextureDimension2D;
  const positionTexels = (2 * 32) / 4; // n_kv x head_dim / 4 (rgba32float texels)
  const context = Math.floor(maxDim / positionTexels) * maxDim + 1;
  const dir = await modelWith(FIXTURE, {
    "config.json": await editedConfig(FIXTURE, (c) => (c.max_position_embeddings = context)),
  });
  const { model } = await info(["--model", dir, "--context", String(context)]);
  assert.equal(model.fits, false);
  const failed = model.checks.filter((c: { ok: boolean }) => !c.ok);
  assert.ok(failed.some((c: { what: string }) => c.what.startsWith("K/V cache per layer")));
  assert.equal(model.maxContextLength, context - 1);
  const text = await skipspec(["info", "--model", dir, "--context", String(context)]);
  assert.match(text.stdout, /fits this device's limits: NO; longest context that fits: \d+/);
  assert.match(text.stdout, /NO\s+K\/V cache per layer/);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("info's errors are one line with their exit codes", async () => {
  assertOneLineError(await skipspec(["info", "--context", "64"]), 2, /give --model too/);
  assertOneLineError(await skipspec(["info", "--model", "/nonexistent/m"]), 3, /not found/);
  assertOneLineError(
    await skipspec(["info", "--model", FIXTURE, "--context", "5000"]),
    5,
    /context length 5000 is outside 2\.\.1024/,
  );
  assertOneLineError(
    await skipspec(["info"], { SKIPSPEC_NO_GPU: "1" }),
    4,
    /no WebGPU adapter found/,
  );
});
