/**
 * `speculate` and `self-speculate` as a user meets them: output equal to greedy decode, the
 * --compare record, the skip.json beside the model, and one-line errors for mismatched draft
 * models, invalid skip sets and conflicting flags.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  assertOneLineError,
  editedConfig,
  errorLines,
  FIXTURE,
  modelWith,
  skipspec,
} from "./helpers/cli.ts";
import { safetensorsBytes } from "./helpers/safetensors.ts";

const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;
const LS = fixture("tiny-llama-ls");
const DRAFT = fixture("tiny-draft");
const GREEDY_ARGS = [
  "--prompt",
  "ROMEO:\n",
  "--temperature",
  "0",
  "--max-new-tokens",
  "24",
  "--json",
];

Deno.test("self-speculate uses the skip.json beside the model, and --compare reports the speed-up and identical output", async () => {
  const r = await skipspec(["self-speculate", "--model", LS, ...GREEDY_ARGS, "--compare"]);
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  const shipped = JSON.parse(await Deno.readTextFile(join(LS, "skip.json")));
  assert.deepEqual(out.skip, shipped);
  assert.equal(out.command, "self-speculate");
  assert.equal(out.tokens.length, 24);
  assert.equal(out.compare.identicalToDecode, true);
  assert.ok(out.compare.speedup > 0 && Number.isFinite(out.compare.speedup));
  assert.equal(
    out.compare.speedup,
    out.stats.decodeTokensPerSecond / out.compare.decode.decodeTokensPerSecond,
  );
  for (
    const key of ["rounds", "drafted", "accepted", "acceptanceRate", "tokensPerRound", "finalGamma"]
  ) {
    assert.ok(key in out.stats, key);
  }
  assert.ok(out.stats.readbacks <= out.stats.rounds);
  const plain = JSON.parse((await skipspec(["decode", "--model", LS, ...GREEDY_ARGS])).stdout);
  assert.deepEqual(out.tokens, plain.tokens);
});

Deno.test("speculate with tiny-draft streams the same text as greedy decode and prints the speculation figures", async () => {
  const args = ["--prompt", "ROMEO:\n", "--temperature", "0", "--max-new-tokens", "24"];
  const r = await skipspec(["speculate", "--draft-model", DRAFT, ...args]);
  assert.equal(r.code, 0, r.stderr);
  const plain = await skipspec(["decode", ...args]);
  assert.equal(r.stdout, plain.stdout);
  const lines = errorLines(r);
  assert.match(
    lines.join("\n"),
    /rounds \| drafted \d+, accepted \d+ \([\d.]+%\) \| [\d.]+ tokens\/round/,
  );
});

Deno.test("a draft model with another vocabulary is refused before any work (exit 5)", async () => {
  // tiny-draft cut to 512 tokens: a consistent model whose vocabulary differs from the target's.
  const dir = await modelWith(DRAFT, {
    "config.json": await editedConfig(DRAFT, (c) => (c.vocab_size = 512)),
    "model.safetensors": await truncatedEmbedding(join(DRAFT, "model.safetensors"), 512),
  });
  const r = await skipspec(["speculate", "--draft-model", dir, "--prompt", "ROMEO:"]);
  assertOneLineError(
    r,
    5,
    /draft model's vocabulary \(512 tokens.*differs from the target's \(1024/,
  );
  assert.equal(r.stdout, "");
});

Deno.test("invalid skip sets for self-speculate are one-line input errors (exit 5)", async () => {
  for (
    const [skip, pattern] of [
      ['{"attn":[12],"mlp":[]}', /attn layer 12 is not in 0\.\.11/],
      ['{"attn":[3,3],"mlp":[]}', /attn layer 3 is listed twice/],
      ['{"attn":3,"mlp":[]}', /"attn" must be an array/],
      [await tempFile("[[1], [2]]"), /must be an object/],
      ['{"attn":[1],"mlp":[],"ffn":[2]}', /unknown key "ffn"/],
    ] as const
  ) {
    const r = await skipspec([
      "self-speculate",
      "--model",
      LS,
      "--prompt",
      "ROMEO:",
      "--skip",
      skip,
    ]);
    assertOneLineError(r, 5, pattern);
  }
});

Deno.test("conflicting or missing speculation flags are one-line usage errors (exit 2)", async () => {
  const cases: [string[], RegExp][] = [
    [["speculate", "--prompt", "x"], /needs --draft-model/],
    [
      ["speculate", "--draft-model", DRAFT, "--skip", '{"attn":[1]}', "--prompt", "x"],
      /--skip belongs to self-speculate/,
    ],
    [
      ["self-speculate", "--model", LS, "--draft-model", DRAFT, "--prompt", "x"],
      /unknown option '--draft-model'/i,
    ],
    [[
      "self-speculate",
      "--model",
      LS,
      "--no-adaptive",
      "--target-acceptance",
      "0.8",
      "--prompt",
      "x",
    ], /conflicts with --no-adaptive/],
    [
      ["self-speculate", "--model", LS, "--draft-max", "0", "--prompt", "x"],
      /--draft-max must be in \[1, 32\]/,
    ],
    [
      ["self-speculate", "--model", LS, "--skip", '{"attn":[],"mlp":[]}', "--prompt", "x"],
      /skips nothing/,
    ],
  ];
  for (const [args, pattern] of cases) assertOneLineError(await skipspec(args), 2, pattern);
  // No --skip and no skip.json beside the model: say how to make one.
  const bare = await modelWith(FIXTURE, {});
  await Deno.remove(join(bare, "skip.json"));
  const r = await skipspec(["self-speculate", "--model", bare, "--prompt", "x"]);
  assertOneLineError(
    r,
    2,
    /needs a skip set: give --skip FILE_OR_JSON, or write .*skip\.json with "skipspec tune-skip/,
  );
});

async function tempFile(text: string): Promise<string> {
  const path = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(path, text);
  return path;
}

/** A copy of a safetensors file whose embedding table keeps only its first `rows` rows. */
async function truncatedEmbedding(path: string, rows: number): Promise<Uint8Array> {
  const bytes = await Deno.readFile(path);
  const headerLength = Number(new DataView(bytes.buffer).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength)));
  const data = bytes.subarray(8 + headerLength);
  const names = Object.keys(header).filter((n) => n !== "__metadata__");
  names.sort((a, b) => header[a].data_offsets[0] - header[b].data_offsets[0]);
  const pieces: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const t = header[name];
    let piece = data.subarray(t.data_offsets[0], t.data_offsets[1]);
    if (name === "model.embed_tokens.weight") {
      piece = piece.subarray(0, (piece.length / t.shape[0]) * rows);
      t.shape = [rows, t.shape[1]];
    }
    t.data_offsets = [offset, offset + piece.length];
    offset += piece.length;
    pieces.push(piece);
  }
  return safetensorsBytes(header, pieces);
}
