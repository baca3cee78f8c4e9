/**
 * Ctrl-C during generation: decode, speculate and self-speculate stop at the next check, print the
 * text and figures so far, and exit 130. The text printed is exactly greedy decoding's for as many
 * tokens as the stats report (all three are lossless, so it is the same text for each).
 */
import assert from "node:assert/strict";
import { FIXTURE, skipspec, spawnSkipspec } from "./helpers/cli.ts";

const DRAFT = new URL("../fixtures/tiny-draft", import.meta.url).pathname;
const LS = new URL("../fixtures/tiny-llama-ls", import.meta.url).pathname;
// Greedy, and long enough to be still running when the signal comes (no fixture stops early).
const ARGS = ["--prompt", "ROMEO:", "--temperature", "0", "--max-new-tokens", "1000"];

/** Spawns the CLI, waits for `bytes` of streamed text, sends SIGINT, and collects the outcome. */
async function interrupted(args: string[], bytes = 40) {
  const child = spawnSkipspec(args);
  const reader = child.stdout.getReader();
  const chunks: Uint8Array[] = [];
  let seen = 0;
  const deadline = setTimeout(() => child.kill("SIGKILL"), 120_000);
  while (seen < bytes) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
    seen += value.length;
  }
  child.kill("SIGINT");
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    chunks.push(value);
  }
  const [status, stderr] = await Promise.all([
    child.status,
    new Response(child.stderr).text(),
  ]);
  clearTimeout(deadline);
  const stdout = new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
  return { code: status.code, stdout, stderr };
}

/** Greedy decode's text for `n` new tokens (what the interrupted run must have printed). */
async function greedyText(model: string, n: number): Promise<string> {
  const args = ["decode", "--model", model, ...ARGS.slice(0, -1), String(n), "--json"];
  const r = await skipspec(args);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout).text;
}

for (
  const [name, model, args] of [
    ["decode", FIXTURE, ["decode", "--model", FIXTURE]],
    ["speculate", FIXTURE, ["speculate", "--model", FIXTURE, "--draft-model", DRAFT]],
    ["self-speculate", LS, ["self-speculate", "--model", LS]],
  ] as const
) {
  Deno.test(`Ctrl-C during ${name} prints the text and stats so far and exits 130`, async () => {
    const r = await interrupted([...args, ...ARGS]);
    assert.equal(r.code, 130, r.stderr);
    const stats = r.stderr.match(/ (\d+) tokens, decode [\d.]+ tok\/s .*stop: interrupted/);
    assert.ok(stats, `stats line with stop: interrupted:\n${r.stderr}`);
    const generated = Number(stats[1]);
    assert.ok(generated > 0 && generated < 1000, `${generated} tokens`);
    if (name !== "decode") assert.match(r.stderr, /\d+ rounds \| drafted \d+, accepted \d+/);
    assert.equal(r.stdout, (await greedyText(model, generated)) + "\n");
  });
}
