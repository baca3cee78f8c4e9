import assert from "node:assert/strict";
import { ModelTokenizer, TextStreamer } from "../src/model/tokenizer.ts";
import { InputError, ModelError } from "../src/errors.ts";

const FIXTURES = ["tiny-llama", "tiny-llama-ls", "tiny-gemma2", "tiny-draft"];
const fixture = (name: string) => new URL(`../fixtures/${name}`, import.meta.url).pathname;
const BOS = 1020, EOS = 1021, START_OF_TURN = 1022;

interface Case {
  prompt: string;
  ids: number[];
  greedy_ids: number[];
  greedy_text: string;
}
const cases = async (name: string): Promise<Case[]> =>
  JSON.parse(await Deno.readTextFile(`${fixture(name)}/reference.json`)).cases;

const streamOneByOne = (tok: ModelTokenizer, ids: number[]) => {
  const streamer = new TextStreamer(tok);
  const pieces = ids.map((id) => streamer.push([id]));
  return { pieces, text: pieces.join("") + streamer.flush() };
};

/** A folder holding the given files (name to text), removed after `fn`. */
async function withModelDir(files: Record<string, string>, fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir();
  try {
    for (const [name, text] of Object.entries(files)) {
      await Deno.writeTextFile(`${dir}/${name}`, text);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}
const llamaConfig = () => Deno.readTextFile(`${fixture("tiny-llama")}/tokenizer_config.json`);

for (const name of FIXTURES) {
  Deno.test(`${name}: encode gives the reference ids of every prompt, BOS first`, async () => {
    const tok = await ModelTokenizer.load(fixture(name));
    for (const c of await cases(name)) assert.deepEqual(tok.encode(c.prompt), c.ids);
  });

  Deno.test(`${name}: decode of the greedy ids gives the reference text, EOS or not`, async () => {
    const tok = await ModelTokenizer.load(fixture(name));
    for (const c of await cases(name)) {
      assert.equal(tok.decode(c.greedy_ids), c.greedy_text);
      assert.equal(tok.decode([...c.greedy_ids, EOS]), c.greedy_text);
    }
  });

  Deno.test(`${name}: streaming the greedy ids one at a time gives the decoded text`, async () => {
    const tok = await ModelTokenizer.load(fixture(name));
    for (const c of await cases(name)) {
      assert.equal(streamOneByOne(tok, [...c.greedy_ids, EOS]).text, tok.decode(c.greedy_ids));
    }
  });
}

Deno.test("special token ids and the vocabulary size come from the model folder", async () => {
  const tok = await ModelTokenizer.load(fixture("tiny-llama"));
  assert.equal(tok.bosTokenId, BOS);
  assert.deepEqual(tok.eosTokenIds, [EOS]);
  assert.equal(tok.vocabSize, 1024);
});

Deno.test("decode keeps special tokens when asked and gives no text for no ids", async () => {
  const tok = await ModelTokenizer.load(fixture("tiny-llama"));
  const ids = tok.encode("Hello");
  assert.equal(
    tok.decode([...ids, EOS], { skipSpecialTokens: false }),
    "<|begin_of_text|>Hello<|end_of_text|>",
  );
  assert.equal(tok.decode([...ids, EOS]), "Hello");
  assert.equal(tok.decode([]), "");
});

Deno.test("a chat template renders one user message with the generation prompt", async () => {
  const tok = await ModelTokenizer.load(fixture("tiny-llama"));
  const text = tok.applyChatTemplate([{ role: "user", content: "Hello" }]);
  assert.equal(
    text,
    "<|begin_of_text|><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
  );
  const ids = tok.encodeRaw(text);
  assert.equal(ids[0], BOS);
  assert.equal(ids.filter((id) => id === BOS).length, 1);
  assert.ok(ids.includes(START_OF_TURN));
  assert.equal(tok.decode(ids, { skipSpecialTokens: false }), text);
});

Deno.test("a system message the template rejects gives a one-line InputError", async () => {
  const tok = await ModelTokenizer.load(fixture("tiny-llama"));
  const run = () => tok.applyChatTemplate([{ role: "system", content: "Be brief." }]);
  assert.throws(run, (e: unknown) => {
    assert.ok(e instanceof InputError);
    assert.match(e.message, /System role not supported/);
    assert.ok(!e.message.includes("\n"));
    return true;
  });
});

Deno.test("a model without a chat template gives an InputError on applyChatTemplate", async () => {
  const config = JSON.parse(await llamaConfig());
  delete config.chat_template;
  const tokenizer = await Deno.readTextFile(`${fixture("tiny-llama")}/tokenizer.json`);
  await withModelDir(
    { "tokenizer.json": tokenizer, "tokenizer_config.json": JSON.stringify(config) },
    async (dir) => {
      const tok = await ModelTokenizer.load(dir);
      assert.throws(() => tok.applyChatTemplate([{ role: "user", content: "Hi" }]), InputError);
    },
  );
});

Deno.test("a missing tokenizer.json gives a ModelError that names it", async () => {
  await withModelDir({ "tokenizer_config.json": await llamaConfig() }, async (dir) => {
    await assert.rejects(ModelTokenizer.load(dir), (e: unknown) => {
      assert.ok(e instanceof ModelError);
      assert.match(e.message, /tokenizer\.json: file not found/);
      return true;
    });
  });
});

Deno.test("a malformed tokenizer.json gives a one-line ModelError that names it", async () => {
  for (const text of ['{"model": ', "{}", "[1, 2]"]) {
    await withModelDir(
      { "tokenizer.json": text, "tokenizer_config.json": await llamaConfig() },
      async (dir) => {
        await assert.rejects(ModelTokenizer.load(dir), (e: unknown) => {
          assert.ok(e instanceof ModelError);
          assert.match(e.message, /tokenizer\.json/);
          assert.ok(!e.message.includes("\n"));
          return true;
        });
      },
    );
  }
});

Deno.test("streaming holds back a UTF-8 character split across byte-level tokens", async () => {
  const tok = await ModelTokenizer.load(fixture("tiny-llama"));
  const text = "héllo wörld ✓";
  const ids = tok.encodeRaw(text);
  // The fixture's small vocabulary splits é, ö and ✓ into single-byte tokens.
  assert.ok(ids.some((id) => tok.decode([id]) === "\uFFFD"));
  const { pieces, text: streamed } = streamOneByOne(tok, ids);
  assert.equal(streamed, text);
  assert.ok(pieces.every((p) => !p.includes("\uFFFD")));
  assert.ok(pieces.includes("✓"));
});

Deno.test("flush returns an incomplete trailing character as U+FFFD and resets the stream", async () => {
  const tok = await ModelTokenizer.load(fixture("tiny-llama"));
  const check = tok.encodeRaw("✓");
  assert.equal(check.length, 3);
  const streamer = new TextStreamer(tok);
  assert.equal(streamer.push(tok.encodeRaw("a")), "a");
  assert.equal(streamer.push(check.slice(0, 1)), "");
  assert.equal(streamer.push(check.slice(1, 2)), "");
  assert.equal(streamer.flush(), "\uFFFD");
  assert.equal(streamer.push(tok.encodeRaw("b")), "b");
});
