/**
 * The command line as a user meets it: help, output, and bad input. Every bad input must end in a
 * one-line `skipspec: ...` error and its documented exit code, never a stack trace or a hang.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ExitCode } from "../src/errors.ts";
import {
  assertOneLineError,
  CONFIG,
  editedConfig,
  errorLines,
  FIXTURE,
  GEMMA,
  MAIN,
  modelWith,
  PERMISSIONS,
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
  assertOneLineError(
    await skipspec(["decode", "--prompt-file", "/nonexistent.txt"]),
    5,
    /--prompt-file \/nonexistent\.txt: file not found/,
  );
});

Deno.test("a machine without a GPU adapter gets a one-line error naming the remedy (exit 4)", async () => {
  // SKIPSPEC_NO_GPU=1 makes openGpu() behave as if requestAdapter() returned null.
  const r = await skipspec(["decode", "--prompt", "x"], { SKIPSPEC_NO_GPU: "1" });
  assertOneLineError(r, 4, /no WebGPU adapter found: .*apt-get install -y mesa-vulkan-drivers/);
});

Deno.test("skipspec --help and the README list every exit code", async () => {
  const help = (await skipspec(["--help"])).stdout;
  const readme = await Deno.readTextFile(new URL("../README.md", import.meta.url));
  const section = readme.split(/^### Exit codes$/m)[1]?.split(/^#/m)[0] ?? "";
  assert.ok(section, "README has an Exit codes section");
  for (const [name, code] of Object.entries(ExitCode)) {
    assert.match(help, new RegExp(`^  ${code}\\s+\\S`, "m"), `--help: ${name}`);
    assert.match(section, new RegExp(`\\| ${code}\\s+\\|`), `README: ${name}`);
  }
});

Deno.test("--quiet prints only the text; --verbose adds the adapter, load time and phase timings", async () => {
  const args = ["decode", "--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "6"];
  const normal = await skipspec(args);
  const quiet = await skipspec([...args, "--quiet"]);
  assert.equal(quiet.code, 0, quiet.stderr);
  assert.equal(quiet.stdout, normal.stdout);
  assert.ok(quiet.stdout.trim().length > 0);
  assert.deepEqual(errorLines(quiet), []);
  assert.match(errorLines(normal).join("\n"), /tok\/s/);

  const verbose = await skipspec([...args, "--verbose"]);
  assert.equal(verbose.code, 0, verbose.stderr);
  assert.equal(verbose.stdout, normal.stdout);
  const lines = errorLines(verbose).join("\n");
  assert.match(lines, /^adapter: .+/m);
  if (/fallback/.test(lines)) { // lavapipe: the embedded model's small matrices run single-threaded
    assert.match(lines, new RegExp(`LP_NUM_THREADS=${Deno.env.get("LP_NUM_THREADS") ?? 0}$`, "m"));
  }
  assert.match(lines, /^model: .*tiny-llama, context 1024 tokens; loaded in \d+ ms/m);
  assert.match(lines, /^timings: prefill \d+ ms \(\d+ tokens\), decode \d+ ms/m);
  assert.match(lines, /decode [\d.]+ tok\/s/);

  const spec = await skipspec([
    "self-speculate",
    "--model",
    new URL("../fixtures/tiny-llama-ls", import.meta.url).pathname,
    ...args.slice(1),
    "--quiet",
  ]);
  assert.equal(spec.code, 0, spec.stderr);
  assert.ok(spec.stdout.trim().length > 0);
  assert.deepEqual(errorLines(spec), []);
  assertOneLineError(await skipspec([...args, "--quiet", "--verbose"]), 2, /--quiet or --verbose/);
});

// deno-lint-ignore no-control-regex
const ANSI = /\x1b\[/;

Deno.test("no colours off a terminal: stats and errors carry no ANSI escapes", async () => {
  const ok = await skipspec(["decode", "--prompt", "x", "--max-new-tokens", "2", "--verbose"]);
  assert.equal(ok.code, 0, ok.stderr);
  assert.doesNotMatch(ok.stderr + ok.stdout, ANSI);
  const bad = await skipspec(["decode", "--model", "/nonexistent/model", "--prompt", "x"]);
  assert.equal(bad.code, 3);
  assert.doesNotMatch(bad.stderr, ANSI);
});

/** Runs the CLI on a pseudo-terminal (util-linux `script`), returning what the terminal shows. */
async function onTerminal(args: string[], env: Record<string, string>): Promise<string> {
  const line = [Deno.execPath(), "run", ...PERMISSIONS, "--config", CONFIG, MAIN, ...args]
    .map((a) => `'${a.replaceAll("'", "'\\''")}'`).join(" ");
  const out = await new Deno.Command("script", {
    args: ["-qec", line, "/dev/null"],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return new TextDecoder().decode(out.stdout);
}

const hasScript = await new Deno.Command("script", { args: ["--version"], stdout: "null" })
  .output().then((o) => o.success, () => false);

Deno.test({
  name: "on a terminal stats labels and errors are coloured, unless NO_COLOR is set (non-empty)",
  ignore: !hasScript,
  async fn() {
    const args = ["decode", "--prompt", "x", "--max-new-tokens", "2"];
    // deno-lint-ignore no-control-regex
    assert.match(await onTerminal(args, {}), /\x1b\[36mdecode\x1b\[0m [\d.]+ tok\/s/);
    assert.match(await onTerminal(args, { NO_COLOR: "" }), ANSI, "an empty NO_COLOR is unset");
    assert.doesNotMatch(await onTerminal(args, { NO_COLOR: "1" }), ANSI);
    const bad = ["decode", "--model", "/nonexistent/model", "--prompt", "x"];
    // deno-lint-ignore no-control-regex
    assert.match(await onTerminal(bad, {}), /\x1b\[1;31mskipspec:\x1b\[0m .*not found/);
    assert.doesNotMatch(await onTerminal(bad, { NO_COLOR: "1" }), ANSI);
  },
});

Deno.test("a chat template reaching for JavaScript globals executes nothing (an error or inert text)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skipspec-jinja-" });
  const marker = join(dir, "pwned");
  const payloads = [
    "{{ messages.constructor.constructor('return Deno')() }}",
    `{{ ''.constructor.constructor('Deno.writeTextFileSync("${marker}", "x")')() }}`,
    "{{ range.constructor('Deno.exit(42)')() }}",
    "{{ raise_exception.constructor('return Deno.exit(42)')() }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "[{{ messages['constructor'] }}|{{ ''.constructor }}|{{ messages.__proto__ }}]",
  ];
  for (const template of payloads) {
    const config = JSON.parse(await Deno.readTextFile(join(GEMMA, "tokenizer_config.json")));
    config.chat_template = template;
    const model = await modelWith(GEMMA, { "tokenizer_config.json": JSON.stringify(config) });
    // Write access to the marker's folder: were the template executed as JS, the write would work.
    const r = await skipspec(
      ["decode", "--model", model, "--chat", "--prompt", "Hi", "--max-new-tokens", "1", "--json"],
      {},
      { write: dir },
    );
    await Deno.remove(model, { recursive: true });
    assert.notEqual(r.code, 42, template);
    if (r.code === 0) {
      const prompt: string = JSON.parse(r.stdout).prompt;
      assert.doesNotMatch(prompt, /Deno|function|native code|uid=/, template);
    } else {
      assertOneLineError(r, 5, /the chat template refused the messages/);
    }
  }
  assert.equal(await Deno.stat(marker).then(() => true, () => false), false, "no file written");
  await Deno.remove(dir, { recursive: true });
});
