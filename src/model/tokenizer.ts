/**
 * Tokenizer of a Hugging Face model folder (`tokenizer.json` + `tokenizer_config.json`), built on
 * `@huggingface/tokenizers` for encoding/decoding and `@huggingface/jinja` for the chat template.
 * The template runs in jinja's own interpreter: nothing from the model folder is executed as JS.
 */
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";
import { InputError, ModelError } from "../errors.ts";
import { detail, readJsonObject } from "../files.ts";

export interface ChatMessage {
  role: "user" | "assistant" | "system";
  content: string;
}

type Json = Record<string, unknown>;

/** Text that takes a tokenizer through its normalizer, pre-tokenizer, model and decoder. */
const PROBE = "Hello, world! 123 \u00e9\n";

/** A special token in tokenizer_config.json: a string, or an AddedToken object `{content}`. */
function tokenText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  const content = (value as { content?: unknown } | null)?.content;
  return typeof content === "string" ? content : undefined;
}

/** `chat_template` is a string, or a list of `{name, template}` of which "default" is used. */
function chatTemplateText(value: unknown): string | undefined {
  if (typeof value === "string") return value;
  if (!Array.isArray(value)) return undefined;
  const entry = value.find((t) => t?.name === "default") ?? (value.length === 1 ? value[0] : null);
  return typeof entry?.template === "string" ? entry.template : undefined;
}

export class ModelTokenizer {
  readonly bosTokenId: number | undefined;
  /** From tokenizer_config's eos_token; the caller may add generation_config's ids. */
  readonly eosTokenIds: number[];
  /** Number of ids, added tokens included. */
  readonly vocabSize: number;
  #template?: Template;

  private constructor(
    private readonly tok: Tokenizer,
    private readonly config: Json,
    private readonly tokenizerPath: string,
    private readonly configPath: string,
  ) {
    const id = (v: unknown) => {
      const text = tokenText(v);
      return text === undefined ? undefined : tok.token_to_id(text);
    };
    this.bosTokenId = id(config.bos_token);
    const eos = id(config.eos_token);
    this.eosTokenIds = eos === undefined ? [] : [eos];
    this.vocabSize = tok.model?.vocab?.length ?? 0;
    if (!Number.isSafeInteger(this.vocabSize)) throw new Error("its model has no vocabulary list");
  }

  static async load(modelDir: string): Promise<ModelTokenizer> {
    const dir = modelDir.replace(/\/+$/, "");
    const tokenizerPath = `${dir}/tokenizer.json`, configPath = `${dir}/tokenizer_config.json`;
    const json = await readJsonObject(tokenizerPath, ModelError);
    const config = await readJsonObject(configPath, ModelError);
    try {
      const tok = new ModelTokenizer(
        new Tokenizer(json, config),
        config,
        tokenizerPath,
        configPath,
      );
      // The library builds its parts lazily: a malformed part fails on first use, so use them all.
      tok.decode(tok.encode(PROBE), { skipSpecialTokens: false });
      return tok;
    } catch (e) {
      if (e instanceof ModelError) throw e; // from the probe: it names the file already
      throw new ModelError(`${tokenizerPath} cannot be used: ${detail(e)}`);
    }
  }

  /** Runs a library call; a failure is the tokenizer file's fault, a ModelError naming it. */
  #guard<T>(what: string, call: () => T): T {
    try {
      return call();
    } catch (e) {
      if (e instanceof ModelError) throw e;
      throw new ModelError(`${this.tokenizerPath} cannot ${what}: ${detail(e)}`);
    }
  }

  /** Ids for a plain prompt, with the special tokens the post-processor adds (BOS here). */
  encode(text: string): number[] {
    return this.#guard("encode the text", () => this.tok.encode(text).ids);
  }

  /** Ids of text that already holds its special tokens (a rendered chat template): no BOS added. */
  encodeRaw(text: string): number[] {
    return this.#guard(
      "encode the text",
      () => this.tok.encode(text, { add_special_tokens: false }).ids,
    );
  }

  /** Text of `ids`; special tokens (BOS, EOS, ...) are skipped unless `skipSpecialTokens: false`. */
  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    return this.#guard("decode the ids", () => {
      // The library throws on an empty list and has no text for ids past its vocabulary (models
      // often pad their embedding table): both give no text here.
      const known = ids.filter((id) => this.tok.id_to_token(id) !== undefined);
      if (known.length === 0) return "";
      return this.tok.decode(known, { skip_special_tokens: opts.skipSpecialTokens ?? true });
    });
  }

  /** The chat template rendered for `messages`, with the generation prompt appended. */
  applyChatTemplate(messages: ChatMessage[]): string {
    if (!this.#template) {
      const text = chatTemplateText(this.config.chat_template);
      if (text === undefined) {
        throw new InputError("this model has no chat template; give a plain prompt instead");
      }
      try {
        this.#template = new Template(text);
      } catch (e) {
        throw new ModelError(
          `the chat template in ${this.configPath} cannot be parsed: ${detail(e)}`,
        );
      }
    }
    try {
      return this.#template.render({
        messages,
        add_generation_prompt: true,
        bos_token: tokenText(this.config.bos_token) ?? "",
        eos_token: tokenText(this.config.eos_token) ?? "",
      });
    } catch (e) {
      throw new InputError(`the chat template refused the messages: ${detail(e)}`);
    }
  }
}

/**
 * Streaming detokenizer: `push` ids as they come and get only the newly completed text. Text is
 * decoded from a few ids back (so decoders that treat the first token specially stay right) and
 * held back while it ends in U+FFFD (a UTF-8 character split across byte-level tokens).
 */
export class TextStreamer {
  #ids: number[] = [];
  /** Start of the ids decoded as context, and end of the ids whose text was already returned. */
  #prefix = 0;
  #read = 0;

  constructor(private readonly tok: ModelTokenizer) {}

  push(ids: number[]): string {
    this.#ids.push(...ids);
    const done = this.tok.decode(this.#ids.slice(this.#prefix, this.#read));
    const text = this.tok.decode(this.#ids.slice(this.#prefix));
    if (text.length <= done.length || text.endsWith("\uFFFD")) return "";
    this.#prefix = this.#read;
    this.#read = this.#ids.length;
    return text.slice(done.length);
  }

  /** The text still held back (an incomplete character decodes as U+FFFD); resets the stream. */
  flush(): string {
    const done = this.tok.decode(this.#ids.slice(this.#prefix, this.#read));
    const text = this.tok.decode(this.#ids.slice(this.#prefix));
    this.#ids = [];
    this.#prefix = this.#read = 0;
    return text.slice(done.length);
  }
}
