/**
 * The command line as a user meets it: help, output, and bad input. Every bad input must end in a
 * one-line `skipspec: ...` error and its documented exit code, never a stack trace or a hang.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  assertOneLineError,
  editedConfig,
  errorLines,
  FIXTURE,
  GEMMA,
  modelWith,
  skipspec,
} from "./helpers/cli.ts";

Deno.test("skipspec --help lists the commands and exit codes; decode --help lists every flag with its default", async () => {
  const top = await skipspec(["--help"]);
  assert.equal(top.code, 0);
  assert.match(top.stdout, /decode/);
  assert.match(top.stdout, /Exit codes/);
  const help = await skipspec(["decode", "--help"]);
  assert.equal(help.code, 0);
  for (
    const flag of [
      "model",
      "prompt",
      "prompt-file",
      "chat",
      "max-new-tokens",
      "temperature",
      "top-k",
      "top-p",
      "min-p",
      "repetition-penalty",
      "seed",
      "skip",
      "json",
    ]
  ) {
    assert.match(help.stdout, new RegExp(`--${flag}\\b`), flag);
  }
  assert.match(help.stdout, /--min-p NUMBER\s+.*\(default: 0\)/);
});

Deno.test("decode --json prints the greedy reference continuation with stats", async () => {
  const ref = JSON.parse(await Deno.readTextFile(join(FIXTURE, "reference.json"))).cases[0];
  const r = await skipspec([
    "decode",
    "--prompt",
    ref.prompt,
    "--temperature",
    "0",
    "--max-new-tokens",
    "20",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out.tokens, ref.greedy_ids.slice(0, 20));
  assert.equal(out.stats.generatedTokens, 20);
  assert.ok(out.stats.readbacksPerToken <= 0.2);
  assert.ok(out.stats.dispatchesPerToken > 0);
});

Deno.test("decode streams text to stdout and stats to stderr, and a seed makes sampling repeatable", async () => {
  const args = [
    "decode",
    "--prompt",
    "ROMEO:\n",
    "--max-new-tokens",
    "24",
    "--seed",
    "42",
    "--temperature",
    "0.9",
  ];
  const a = await skipspec(args);
  const b = await skipspec(args);
  assert.equal(a.code, 0, a.stderr);
  assert.ok(a.stdout.trim().length > 0);
  assert.equal(a.stdout, b.stdout);
  assert.match(errorLines(a).join("\n"), /decode [\d.]+ tok\/s .*seed 42/);
});

Deno.test("decode --chat renders the chat template and runs on Gemma-2", async () => {
  const r = await skipspec([
    "decode",
    "--model",
    GEMMA,
    "--prompt",
    "Hello",
    "--chat",
    "--max-new-tokens",
    "8",
    "--json",
  ]);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(
    out.prompt,
    "<|begin_of_text|><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
  );
  assert.equal(out.promptIds.filter((id: number) => id === 1020).length, 1);
});

Deno.test("unknown flags, malformed numbers and unknown commands are usage errors (exit 2)", async () => {
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--bogus"]),
    2,
    /Unknown option '--bogus'/,
  );
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--top-k", "many"]),
    2,
    /--top-k needs an integer/,
  );
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--top-p", "1.5"]),
    2,
    /--top-p must be in \[0, 1\]/,
  );
  assertOneLineError(await skipspec(["decode", "stray"]), 2, /Unexpected argument/);
  assertOneLineError(await skipspec(["frobnicate"]), 2, /unknown command "frobnicate"/);
});

Deno.test("bad model folders are one-line model errors (exit 3)", async () => {
  assertOneLineError(
    await skipspec(["decode", "--model", "/nonexistent/model", "--prompt", "x"]),
    3,
    /not found/,
  );
  const gpt2 = await modelWith(FIXTURE, {
    "config.json": await editedConfig(FIXTURE, (c) => (c.architectures = ["GPT2LMHeadModel"])),
  });
  assertOneLineError(
    await skipspec(["decode", "--model", gpt2, "--prompt", "x"]),
    3,
    /unsupported architecture "GPT2LMHeadModel" \(supported: LlamaForCausalLM, Gemma2ForCausalLM\)/,
  );
  const deeper = await modelWith(FIXTURE, {
    "config.json": await editedConfig(FIXTURE, (c) => (c.num_hidden_layers = 13)),
  });
  assertOneLineError(
    await skipspec(["decode", "--model", deeper, "--prompt", "x"]),
    3,
    /missing tensor "model\.layers\.12\./,
  );
  const wider = await modelWith(FIXTURE, {
    "config.json": await editedConfig(FIXTURE, (c) => (c.intermediate_size = 392)),
  });
  assertOneLineError(
    await skipspec(["decode", "--model", wider, "--prompt", "x"]),
    3,
    /has shape \[384,128\], expected \[392,128\]/,
  );
  const truncated = (await Deno.readFile(join(FIXTURE, "model.safetensors"))).slice(0, 5000);
  const cut = await modelWith(FIXTURE, { "model.safetensors": truncated });
  assertOneLineError(
    await skipspec(["decode", "--model", cut, "--prompt", "x"]),
    3,
    /model\.safetensors/,
  );
  const garbage = await modelWith(FIXTURE, { "config.json": "{ not json" });
  assertOneLineError(
    await skipspec(["decode", "--model", garbage, "--prompt", "x"]),
    3,
    /config\.json is not valid JSON/,
  );
  const oddHeads = await modelWith(FIXTURE, {
    "config.json": await editedConfig(FIXTURE, (c) => (c.head_dim = 40)),
  });
  assertOneLineError(
    await skipspec(["decode", "--model", oddHeads, "--prompt", "x"]),
    3,
    /head_dim 40 is not supported \(a multiple of 16, at most 256\)/,
  );
  for (const dir of [gpt2, deeper, wider, cut, garbage, oddHeads]) {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a prompt longer than the context and invalid skip sets are input errors (exit 5)", async () => {
  const long = "To be, or not to be, that is the question. ".repeat(4);
  assertOneLineError(
    await skipspec(["decode", "--prompt", long, "--context", "16"]),
    5,
    /the prompt has \d+ tokens, but the context holds 16/,
  );
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--skip", '{"attn":[12]}']),
    5,
    /attn layer 12 is not in 0\.\.11/,
  );
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--skip", '{"mlp":[3,3]}']),
    5,
    /mlp layer 3 is listed twice/,
  );
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--skip", '{"attn":"1"}']),
    5,
    /"attn" must be an array/,
  );
  assertOneLineError(
    await skipspec(["decode", "--prompt", "x", "--skip", "/nonexistent.json"]),
    5,
    /file not found/,
  );
  assertOneLineError(await skipspec(["decode"]), 5, /no prompt/);
});

Deno.test("a machine without a GPU adapter gets a one-line error naming the remedy (exit 4)", async () => {
  // SKIPSPEC_NO_GPU=1 makes openGpu() behave as if requestAdapter() returned null.
  const r = await skipspec(["decode", "--prompt", "x"], { SKIPSPEC_NO_GPU: "1" });
  assertOneLineError(r, 4, /no WebGPU adapter found: .*apt-get install -y mesa-vulkan-drivers/);
});
