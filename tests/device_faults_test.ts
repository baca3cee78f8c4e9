/**
 * The GPU failing under a run: device loss mid-generation (simulated with device.destroy()) ends in
 * a one-line GpuError after the tokens streamed so far, never a hang or a stray rejection, and the
 * next model load gets a new device; a context whose K/V cannot fit the device fails before any
 * work, naming the limit; a WebGPU lacking a WGSL feature the kernels need is named in one line.
 */
import assert from "node:assert/strict";
import { decode } from "../src/generate/decode.ts";
import { speculate } from "../src/generate/speculate.ts";
import { GpuError } from "../src/errors.ts";
import { checkWgslFeatures, REQUIRED_WGSL_FEATURES } from "../src/gpu/device.ts";
import { GREEDY } from "../src/gpu/ops.ts";
import { Model, NO_SKIP } from "../src/model/model.ts";
import { assertOneLineError, editedConfig, FIXTURE, modelWith, skipspec } from "./helpers/cli.ts";

const PROMPT = [5, 17, 42];
const HANG_MS = 60_000;

/** Runs `generate`, destroying the device once more than 10 tokens have streamed. */
async function loseDeviceDuring(
  generate: (model: Model, onTokens: (ids: number[]) => void) => Promise<unknown>,
) {
  const model = await Model.load(FIXTURE);
  const streamed: number[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  const hang = new Promise((_, reject) => {
    timer = setTimeout(
      () => reject(new Error("hang: no result after the device was lost")),
      HANG_MS,
    );
  });
  const run = generate(model, (ids) => {
    streamed.push(...ids);
    if (streamed.length > 10) model.device.destroy();
  });
  await assert.rejects(
    () => Promise.race([run, hang]),
    (e: Error) => {
      assert.ok(e instanceof GpuError, `a GpuError, got ${e}`);
      assert.match(e.message, /^the GPU device was lost \(destroyed/);
      assert.equal(e.message.split("\n").length, 1);
      return true;
    },
  );
  clearTimeout(timer);
  assert.ok(streamed.length > 10, "the tokens before the loss were delivered");
  return streamed;
}

async function decodeStillWorks() {
  const model = await Model.load(FIXTURE); // a new device: openGpu forgot the lost one
  const r = await decode(model, PROMPT, {
    maxNewTokens: 4,
    sampling: GREEDY,
    skip: NO_SKIP,
    stopTokens: [],
  });
  assert.equal(r.tokens.length, 4);
  model.destroy();
}

Deno.test("device lost during decode: one-line GpuError after the streamed tokens", async () => {
  await loseDeviceDuring((model, onTokens) =>
    decode(model, PROMPT, {
      maxNewTokens: 400,
      sampling: GREEDY,
      skip: NO_SKIP,
      stopTokens: [],
      onTokens,
    })
  );
  await decodeStillWorks();
});

Deno.test("device lost during self-speculation: one-line GpuError, then a new device works", async () => {
  await loseDeviceDuring((model, onTokens) =>
    speculate(model, PROMPT, {
      maxNewTokens: 400,
      sampling: GREEDY,
      stopTokens: [],
      draft: { kind: "self", skip: { attn: [3, 5], mlp: [4] } },
      onTokens,
    })
  );
  await decodeStillWorks();
});

Deno.test("a context whose K/V cannot fit the GPU fails before loading, naming the limit", async () => {
  const huge = 1 << 26;
  const dir = await modelWith(FIXTURE, {
    "config.json": await editedConfig(FIXTURE, (c) => (c.max_position_embeddings = huge)),
  });
  const started = performance.now();
  const run = await skipspec([
    "decode",
    "--model",
    dir,
    "--prompt",
    "x",
    "--context",
    String(huge),
  ]);
  assertOneLineError(
    run,
    4,
    /context of 67108864 tokens needs K\/V textures \d+ texels wide per layer, over this GPU's texture size limit of \d+: use --context \d+ or less/,
  );
  assert.ok(performance.now() - started < 30_000, "no work that scales with the context first");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("a WebGPU without read-only storage textures gets a one-line error naming the feature", () => {
  assert.doesNotThrow(() => checkWgslFeatures(new Set(REQUIRED_WGSL_FEATURES)));
  for (const available of [new Set<string>(), undefined]) {
    assert.throws(() => checkWgslFeatures(available), (e: Error) => {
      assert.ok(e instanceof GpuError);
      assert.match(e.message, /lacks the WGSL feature readonly_and_readwrite_storage_textures/);
      assert.equal(e.message.split("\n").length, 1);
      return true;
    });
  }
});
