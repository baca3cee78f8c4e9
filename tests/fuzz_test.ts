/**
 * Seeded fuzzing of every file skipspec reads: safetensors (both fixture architectures), a sharded
 * folder's `model.safetensors.index.json`, config.json (both architectures), tokenizer.json,
 * skip.json and the tune-skip trials log. Each case mutates a valid file (bytes, structure-aware
 * JSON edits, format-specific edits), runs the real loader in-process, and must end in success or
 * a SkipspecError whose message is one short line; anything else fails with the seed and the case
 * index. No GPU: parsing and validation only.
 *
 * FUZZ_SEED (default 1) and FUZZ_CASES (default 1000 per format) pick the run; FUZZ_CASE=i runs
 * case i alone; FUZZ_SAVE=DIR writes the first case of each error kind there (files and an
 * `expected.json` per format), the way `tests/fuzz_corpus/` was made.
 */
import assert from "node:assert/strict";
import { dirname, join } from "node:path";
import { ModelError, SkipspecError } from "../src/errors.ts";
import { readJson } from "../src/files.ts";
import { resolveConfig } from "../src/model/config.ts";
import { inverseFrequencies } from "../src/model/rope.ts";
import {
  loadSafetensorsIndex,
  readTensorPieces,
  type TensorInfo,
} from "../src/model/safetensors.ts";
import { parseSkipSet, readSkipSet } from "../src/model/skip.ts";
import { ModelTokenizer } from "../src/model/tokenizer.ts";
import { WeightLoader } from "../src/model/weights.ts";
import { mulberry32 } from "../src/tune/bo.ts";
import { type RunHeader, TrialsLog } from "../src/tune/trials_log.ts";
import { assertOneLineError, FIXTURE, GEMMA, modelWith, skipspec } from "./helpers/cli.ts";
import { safetensorsBytes } from "./helpers/safetensors.ts";

type Rng = () => number;
// deno-lint-ignore no-explicit-any
type Json = any;

const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 1);
const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 1000);
const ONLY_CASE = Deno.env.get("FUZZ_CASE");
const SAVE_DIR = Deno.env.get("FUZZ_SAVE");
const CASE_LIMIT_MS = 5_000;
/** A message longer than this is not a line a user reads. */
const MAX_MESSAGE_CHARS = 400;
const CORPUS = new URL("./fuzz_corpus", import.meta.url).pathname;
const LLAMA_LAYERS = 12;

// --- random choices ---------------------------------------------------------------------------

const int = (rng: Rng, n: number) => Math.floor(rng() * n);
const pick = <T>(rng: Rng, items: readonly T[]): T => items[int(rng, items.length)];
const chance = (rng: Rng, p: number) => rng() < p;

/** The generator of one case: a function of the seed, the format and the index alone. */
function caseRng(seed: number, format: string, index: number): Rng {
  let h = 0x811c9dc5 ^ seed;
  for (const ch of `${format}#${index}`) h = Math.imul(h ^ ch.charCodeAt(0), 0x01000193);
  return mulberry32(h >>> 0);
}

// --- byte mutations ---------------------------------------------------------------------------

const TOKENS = ["{", "}", "[", "]", '"', "\\", ",", ":", "\n", "0", "-", "e", "null", "1e999"]
  .map((t) => new TextEncoder().encode(t)).concat([
    Uint8Array.of(0xff),
    Uint8Array.of(0xc3),
    Uint8Array.of(0),
  ]);

/** One byte-level edit inside [from, to) of `bytes` (to defaults to the end). */
function mutateBytes(
  rng: Rng,
  bytes: Uint8Array,
  from = 0,
  to = bytes.length,
): [Uint8Array, string] {
  const at = from + int(rng, Math.max(1, to - from));
  const splice = (cut: number, insert: Uint8Array) => {
    cut = Math.min(cut, Math.max(0, bytes.length - at));
    const out = new Uint8Array(bytes.length - cut + insert.length);
    out.set(bytes.subarray(0, at));
    out.set(insert, at);
    out.set(bytes.subarray(Math.min(bytes.length, at + cut)), at + insert.length);
    return out;
  };
  switch (int(rng, 7)) {
    case 0: {
      const out = bytes.slice();
      if (at < out.length) out[at] ^= 1 << int(rng, 8);
      return [out, `flip a bit at ${at}`];
    }
    case 1: {
      const out = bytes.slice();
      if (at < out.length) out[at] = int(rng, 256);
      return [out, `set byte ${at}`];
    }
    case 2: {
      const run = chance(rng, 0.5)
        ? Uint8Array.from({ length: 1 + int(rng, 32) }, () => int(rng, 256))
        : pick(rng, TOKENS);
      return [splice(0, run), `insert ${run.length} bytes at ${at}`];
    }
    case 3: {
      const n = 1 + int(rng, 64);
      return [splice(n, new Uint8Array(0)), `delete ${n} bytes at ${at}`];
    }
    case 4: {
      const n = 1 + int(rng, 64);
      const src = int(rng, Math.max(1, bytes.length - n));
      return [splice(0, bytes.slice(src, src + n)), `copy ${n} bytes from ${src} to ${at}`];
    }
    case 5:
      return [bytes.slice(0, at), `truncate at ${at}`];
    default:
      return [
        splice(0, pick(rng, TOKENS).slice()),
        `insert a token at ${at}`,
      ];
  }
}

// --- structure-aware JSON mutations ------------------------------------------------------------

/** Keys with this suffix are written as a second copy of the key (JSON allows duplicates). */
const DUP = "\u0000dup";
/** Strings with this prefix are written as raw JSON text (numbers JSON.stringify cannot write). */
const RAW = "\u0000raw:";

/** Values no file should hold where a number, a string or a list belongs. */
const ODD_VALUES: Json[] = [
  null,
  true,
  false,
  0,
  -1,
  1,
  0.5,
  -0.5,
  2 ** 31,
  2 ** 32,
  2 ** 53,
  2 ** 53 + 2,
  -(2 ** 53),
  1e308,
  -1e308,
  5e-324,
  `${RAW}1e400`,
  `${RAW}-1e400`,
  `${RAW}-0`,
  `${RAW}123456789012345678901234567890`,
  `${RAW}NaN`,
  `${RAW}Infinity`,
  "",
  "NaN",
  "Infinity",
  "-1",
  "12",
  "line\nbreak",
  "\u0000",
  "\ud800",
  "é",
  "x".repeat(5000),
  [],
  {},
  [0],
  [[]],
  [null],
  { "": null },
];

/** One value of each JSON type, for a value of the wrong type. */
const WRONG_TYPES: Json[] = [null, true, 0, -1, "", "x", [], {}];

/** Serialises with the duplicate-key and raw-text markers applied. */
function writeJson(value: Json, indent?: number): string {
  const escaped = (s: string) => JSON.stringify(s).slice(1, -1);
  let text = JSON.stringify(value);
  // Indenting deep nesting grows with the square of the depth: keep such cases compact.
  const indented = indent === undefined ? text : JSON.stringify(value, null, indent);
  if (indented.length < 2 * text.length + 50_000) text = indented;
  text = text.replace(new RegExp(`${escapeRegExp(escaped(DUP))}\\d*"`, "g"), '"');
  return text.replace(new RegExp(`"${escapeRegExp(escaped(RAW))}([^"]*)"`, "g"), "$1");
}

type Path = (string | number)[];

/** A deep copy; JSON's own round trip copes with nesting that overflows structuredClone. */
const clone = (value: Json): Json =>
  value === undefined ? value : JSON.parse(JSON.stringify(value));

/** A random node: a walk from the root that stops at each step with some chance. */
function randomPath(rng: Rng, root: Json): Path {
  const path: Path = [];
  let node = root;
  while (typeof node === "object" && node !== null) {
    const keys: (string | number)[] = Array.isArray(node)
      ? node.map((_, i) => i)
      : Object.keys(node);
    if (keys.length === 0 || (path.length > 0 && chance(rng, 0.4))) break;
    const key = pick(rng, keys);
    path.push(key);
    node = node[key];
  }
  return path;
}

const getAt = (root: Json, path: Path) => path.reduce((node, key) => node?.[key], root);

/** A number near `n` or at an edge. */
function oddNumber(rng: Rng, n: number): Json {
  return pick(rng, [
    n + 1,
    n - 1,
    -n,
    n * 2,
    n / 2,
    n * 1000,
    n + 0.5,
    0,
    2 ** 32 + n,
    n * 1e20,
    `${RAW}${n}e400`,
    String(n),
  ]);
}

/** Nests `value` `depth` lists deep. */
function nest(value: Json, depth: number): Json {
  for (let i = 0; i < depth; i++) value = [value];
  return value;
}

/** A replacement for `current`: odd values, the format's own words, nearby numbers, nesting. */
function oddValue(rng: Rng, current: Json, words: readonly Json[]): Json {
  // Copies: a shared list or object edited later would change the next cases (and loop).
  if (typeof current === "number" && chance(rng, 0.5)) return oddNumber(rng, current);
  if (chance(rng, 0.3)) return clone(pick(rng, WRONG_TYPES));
  if (chance(rng, 0.35)) return clone(pick(rng, words));
  if (chance(rng, 0.1)) return nest(clone(current) ?? 0, 1 + int(rng, 3000));
  if (chance(rng, 0.1)) return pick(rng, [[current], { value: current }, String(current)]);
  return clone(pick(rng, ODD_VALUES));
}

/** One structural edit of `root` (in place, except that the root itself may be replaced). */
function mutateTree(rng: Rng, root: Json, words: readonly Json[]): [Json, string] {
  const path = randomPath(rng, root);
  if (path.length === 0) return [oddValue(rng, root, words), "replace the root"];
  const key = path[path.length - 1];
  const parent = getAt(root, path.slice(0, -1));
  const current = parent[key];
  const where = path.join(".");
  const op = int(rng, 8);
  if (op === 0) {
    if (Array.isArray(parent)) parent.splice(key as number, 1);
    else delete parent[key];
    return [root, `delete ${where}`];
  }
  if (op === 1 && !Array.isArray(parent)) {
    const copy = chance(rng, 0.5) ? clone(current) : oddValue(rng, current, words);
    parent[`${key}${DUP}${int(rng, 1000)}`] = copy;
    return [root, `duplicate key ${where}`];
  }
  if (op === 2 && !Array.isArray(parent)) {
    const renamed = pick(rng, [
      `${key}x`,
      "",
      "line\nbreak",
      ...words.filter((w) => typeof w === "string"),
    ]);
    delete parent[key];
    parent[renamed] = current;
    return [root, `rename ${where}`];
  }
  if (op === 3 && Array.isArray(current) && current.length > 0) {
    const how = int(rng, 4);
    if (how === 0) current.reverse();
    else if (how === 1) current.push(current[int(rng, current.length)]);
    else if (how === 2) current.length = int(rng, current.length);
    else current.splice(int(rng, current.length), 0, oddValue(rng, current[0], words));
    return [root, `edit list ${where}`];
  }
  if (op === 4 && typeof current === "object" && current !== null && !Array.isArray(current)) {
    current[pick(rng, words.filter((w) => typeof w === "string").concat(["extra"]))] = oddValue(
      rng,
      null,
      words,
    );
    return [root, `add a key in ${where}`];
  }
  if (op === 5) {
    const other = randomPath(rng, root);
    parent[key] = clone(getAt(root, other));
    return [root, `copy ${other.join(".")} to ${where}`];
  }
  parent[key] = oddValue(rng, current, words);
  return [root, `set ${where}`];
}

/** A mutated JSON text: structural edits, byte edits of the text, or both. */
function mutateJsonText(rng: Rng, base: Json, words: readonly Json[]): [Uint8Array, string] {
  const steps: string[] = [];
  let value = clone(base);
  const how = rng();
  if (how < 0.85) {
    for (let n = 1 + int(rng, 3); n > 0; n--) {
      let step: string;
      [value, step] = mutateTree(rng, value, words);
      steps.push(step);
    }
  }
  let bytes: Uint8Array = new TextEncoder().encode(
    writeJson(value, chance(rng, 0.5) ? 1 : undefined),
  );
  if (how > 0.6) {
    for (let n = 1 + int(rng, 3); n > 0; n--) {
      let step: string;
      [bytes, step] = mutateBytes(rng, bytes);
      steps.push(step);
    }
  }
  return [bytes, steps.join("; ")];
}

// --- safetensors --------------------------------------------------------------------------------

interface SafetensorsBase {
  header: Record<string, Json>;
  dataLength: number;
  /** Each tensor's shape as config.json implies it (the fixture's own). */
  shapes: Map<string, number[]>;
}

async function readSafetensorsBase(path: string): Promise<SafetensorsBase> {
  const file = await Deno.open(path);
  try {
    const prefix = new Uint8Array(8);
    await file.read(prefix);
    const length = Number(new DataView(prefix.buffer).getBigUint64(0, true));
    const json = new Uint8Array(length);
    let got = 0;
    while (got < length) got += (await file.read(json.subarray(got))) ?? length;
    const header = JSON.parse(new TextDecoder().decode(json));
    const { size } = await file.stat();
    const shapes = new Map<string, number[]>();
    for (const [name, t] of Object.entries(header)) {
      if (name !== "__metadata__") shapes.set(name, (t as { shape: number[] }).shape);
    }
    return { header, dataLength: size - 8 - length, shapes };
  } finally {
    file.close();
  }
}

const DTYPE_WORDS = ["F32", "F16", "BF16", "I64", "U8", "F8_E4M3", "F64", "f32", "", "BOOL"];

/** Format-specific edits of one tensor entry: dtypes, shapes, offsets (overlaps, extremes). */
function mutateTensorEntry(rng: Rng, header: Record<string, Json>): string {
  const names = Object.keys(header).filter((n) => n !== "__metadata__");
  const name = pick(rng, names);
  const t = header[name];
  const other = header[pick(rng, names)];
  const [begin, end] = t.data_offsets;
  switch (int(rng, 9)) {
    case 0:
      t.dtype = pick(rng, DTYPE_WORDS);
      return `dtype of ${name}`;
    case 1:
      t.shape = [...t.shape].reverse();
      return `reverse the shape of ${name}`;
    case 2: {
      const i = int(rng, Math.max(1, t.shape.length));
      t.shape[i] = oddNumber(rng, t.shape[i] ?? 1);
      return `dim ${i} of ${name}`;
    }
    case 3:
      t.shape = pick(rng, [[], [...t.shape, 1], t.shape.slice(1), [
        t.shape[0] * 2,
        t.shape[1] / 2,
      ]]);
      return `rank of ${name}`;
    case 4: {
      const shift = pick(rng, [1, -1, 2, end - begin, begin - end, 2 ** 32]);
      t.data_offsets = [begin + shift, end + shift];
      return `shift ${name} by ${shift}`;
    }
    case 5:
      t.data_offsets = [...other.data_offsets];
      return `${name} takes the offsets of another tensor (overlap)`;
    case 6:
      t.data_offsets = pick(rng, [
        [end, begin],
        [begin, begin],
        [begin],
        [begin, end, end],
        [
          -begin,
          end,
        ],
        [begin, 2 ** 64],
        [begin + 0.5, end],
      ]);
      return `malformed offsets of ${name}`;
    case 7:
      header[`${name}.copy`] = clone(t);
      return `duplicate ${name} under another name (overlap)`;
    default:
      delete header[name];
      return `drop ${name} (a gap)`;
  }
}

/** A mutated safetensors file: its first bytes (length prefix + header) and its full size. */
function mutateSafetensors(rng: Rng, base: SafetensorsBase): [CaseFile, string] {
  const steps: string[] = [];
  let header = clone(base.header);
  const how = rng();
  if (how < 0.5) {
    for (let n = 1 + int(rng, 2); n > 0; n--) steps.push(mutateTensorEntry(rng, header));
  } else if (how < 0.65) {
    let step: string;
    [header, step] = mutateTree(rng, header, [...DTYPE_WORDS, "dtype", "shape", "data_offsets"]);
    steps.push(step);
  }
  const json = new TextEncoder().encode(writeJson(header) + " ".repeat(int(rng, 3) * 4));
  let prefix: Uint8Array = new Uint8Array(8 + json.length);
  prefix.set(json, 8);
  let length = BigInt(json.length);
  if (chance(rng, 0.1)) {
    length = pick(rng, [
      0n,
      1n,
      length - 1n,
      length + 1n,
      length + 8n,
      100_000_001n,
      2n ** 63n,
      2n ** 64n - 1n,
    ]);
    steps.push(`header length ${length}`);
  }
  new DataView(prefix.buffer).setBigUint64(0, length, true);
  let size = prefix.length + base.dataLength;
  if (how >= 0.65 && how < 0.9) {
    for (let n = 1 + int(rng, 3); n > 0; n--) {
      let step: string;
      [prefix, step] = mutateBytes(rng, prefix, 0, prefix.length);
      steps.push(step);
    }
    size = prefix.length + base.dataLength;
  }
  if (how >= 0.9 || chance(rng, 0.1)) {
    size = pick(rng, [size - 1, size + 1, size - 4096, size + 4096, int(rng, size), 7, 0]);
    steps.push(`file size ${size}`);
  }
  if (size < prefix.length) prefix = prefix.slice(0, size);
  return [{ bytes: prefix, size }, steps.join("; ") || "unchanged"];
}

/** A loader that only checks shapes: `info` needs no device. */
const shapeChecker = (tensors: Map<string, TensorInfo>) =>
  new WeightLoader(undefined as unknown as GPUDevice, tensors);

/** What Model.load does before the GPU: resolve the tensors, check their shapes, read one. */
async function loadTensors(dir: string, shapes: Map<string, number[]>): Promise<void> {
  const tensors = await loadSafetensorsIndex(dir);
  const checker = shapeChecker(tensors);
  for (const [name, shape] of shapes) checker.info(name, shape);
  const smallest = [...tensors.values()].sort((a, b) => a.byteLength - b.byteLength)[0];
  await readTensorPieces(smallest, () => {}, 256);
}

/** A shard file holding `names` of a base file's tensors, with their data. */
async function writeShard(path: string, source: string, base: SafetensorsBase, names: string[]) {
  const bytes = await Deno.readFile(source);
  const dataStart = bytes.length - base.dataLength;
  const header: Record<string, Json> = {};
  const pieces: Uint8Array[] = [];
  let offset = 0;
  for (const name of names) {
    const t = base.header[name];
    const [begin, end] = t.data_offsets;
    header[name] = { ...t, data_offsets: [offset, offset + end - begin] };
    pieces.push(bytes.subarray(dataStart + begin, dataStart + end));
    offset += end - begin;
  }
  await Deno.writeFile(path, safetensorsBytes(header, pieces));
}

// --- targets ------------------------------------------------------------------------------------

/** A file a case writes: its bytes, then zeros up to `size` (a sparse extension) when given. */
interface CaseFile {
  bytes: Uint8Array;
  size?: number;
}

interface Target {
  format: string;
  /** The file each case replaces, inside the case folder. */
  file: string;
  /** Writes the files every case shares (the rest of a model folder) into `dir`. */
  prepare(dir: string): Promise<void>;
  /** The unmutated file. */
  base(): CaseFile;
  mutate(rng: Rng): [CaseFile, string];
  /** Runs the real loader on `dir`; throws what it throws. */
  run(dir: string): Promise<unknown>;
}

async function writeCaseFile(path: string, f: CaseFile) {
  await Deno.writeFile(path, f.bytes);
  if (f.size !== undefined && f.size > f.bytes.length) await Deno.truncate(path, f.size);
}

const fixtureFile = (model: string, name: string) => join(model, name);
const encoded = (s: string) => new TextEncoder().encode(s);

async function safetensorsTarget(format: string, model: string): Promise<Target> {
  const base = await readSafetensorsBase(fixtureFile(model, "model.safetensors"));
  return {
    format,
    file: "model.safetensors",
    prepare: async () => {},
    base: () => unmutatedSafetensors(base),
    mutate: (rng) => mutateSafetensors(rng, base),
    run: (dir) => loadTensors(dir, base.shapes),
  };
}

function unmutatedSafetensors(base: SafetensorsBase): CaseFile {
  const json = encoded(JSON.stringify(base.header));
  const bytes = new Uint8Array(8 + json.length);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(json.length), true);
  bytes.set(json, 8);
  return { bytes, size: bytes.length + base.dataLength };
}

/** A target whose file is one JSON document mutated as text and as a tree. */
function jsonTarget(
  format: string,
  file: string,
  baseText: string,
  words: readonly Json[],
  run: (dir: string) => Promise<unknown>,
  prepare: (dir: string) => Promise<void> = async () => {},
): Target {
  const base = JSON.parse(baseText);
  return {
    format,
    file,
    prepare,
    base: () => ({ bytes: encoded(baseText) }),
    mutate: (rng) => {
      const [bytes, how] = mutateJsonText(rng, base, words);
      return [{ bytes }, how];
    },
    run,
  };
}

/** What Model.load does with config.json before the GPU: read, resolve, RoPE frequencies. */
async function loadConfig(dir: string) {
  const cfg = resolveConfig(await readJson(join(dir, "config.json"), ModelError));
  inverseFrequencies(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling);
  return cfg;
}

async function configTarget(format: string, model: string): Promise<Target> {
  const baseText = await Deno.readTextFile(fixtureFile(model, "config.json"));
  const words = [
    ...Object.keys(JSON.parse(baseText)),
    "LlamaForCausalLM",
    "Gemma2ForCausalLM",
    "llama3",
    "default",
    "linear",
    "gelu",
    "silu",
    "gelu_pytorch_tanh",
    16,
    48,
    256,
    512,
  ];
  return jsonTarget(format, "config.json", baseText, words, loadConfig);
}

const PROBE = "ROMEO: To be, or not to be? ¿Qué? 日本 <|begin_of_text|>\n\tend";

/** What a session does with a tokenizer: load it, encode a prompt, decode the ids. */
async function useTokenizer(dir: string) {
  const tok = await ModelTokenizer.load(dir);
  const ids = tok.encode(PROBE);
  tok.decode(ids);
  tok.decode(tok.encodeRaw(PROBE), { skipSpecialTokens: false });
  return ids.length;
}

async function tokenizerTarget(): Promise<Target> {
  const baseText = await Deno.readTextFile(fixtureFile(FIXTURE, "tokenizer.json"));
  const words = [
    "BPE",
    "WordPiece",
    "Unigram",
    "WordLevel",
    "ByteLevel",
    "Metaspace",
    "Sequence",
    "TemplateProcessing",
    "Split",
    "Regex",
    "type",
    "vocab",
    "merges",
    "id",
    "content",
    "<|begin_of_text|>",
    "(((a+)+)+)$",
    "[",
  ];
  return jsonTarget("tokenizer", "tokenizer.json", baseText, words, useTokenizer, async (dir) => {
    await Deno.copyFile(
      fixtureFile(FIXTURE, "tokenizer_config.json"),
      join(dir, "tokenizer_config.json"),
    );
  });
}

const SHARDS = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"];

/** A sharded copy of tiny-llama: two shards (tensors alternating) and their index. */
async function indexTarget(): Promise<Target> {
  const source = fixtureFile(FIXTURE, "model.safetensors");
  const base = await readSafetensorsBase(source);
  const names = [...base.shapes.keys()].sort();
  const weightMap = Object.fromEntries(names.map((n, i) => [n, SHARDS[i % 2]]));
  const baseText = JSON.stringify(
    { metadata: { total_size: base.dataLength }, weight_map: weightMap },
    null,
    2,
  );
  const words = [
    ...SHARDS,
    "weight_map",
    "metadata",
    "../x",
    "../" + SHARDS[0],
    "/etc/passwd",
    "/",
    ".",
    "..",
    "sub/" + SHARDS[0],
    "a\\b",
    "C:x",
    "model.safetensors.index.json",
    "missing.safetensors",
    "tokenizer.json",
    names[0],
  ];
  return jsonTarget(
    "index",
    "model.safetensors.index.json",
    baseText,
    words,
    (dir) => loadTensors(dir, base.shapes),
    async (dir) => {
      for (const [i, shard] of SHARDS.entries()) {
        await writeShard(join(dir, shard), source, base, names.filter((_, k) => k % 2 === i));
      }
      await Deno.copyFile(fixtureFile(FIXTURE, "tokenizer.json"), join(dir, "tokenizer.json"));
    },
  );
}

/** `--skip FILE` and `--skip JSON` as the CLI reads them. */
async function useSkipSet(dir: string) {
  const path = join(dir, "skip.json");
  const skip = await readSkipSet(path, LLAMA_LAYERS);
  const inline = await Deno.readTextFile(path);
  if (inline.trim().startsWith("{")) assert.deepEqual(parseSkipSet(inline, LLAMA_LAYERS), skip);
  return skip;
}

async function skipTarget(): Promise<Target> {
  const baseText = await Deno.readTextFile(fixtureFile(FIXTURE, "skip.json"));
  const words = ["attn", "mlp", 11, 12, 0, -1, 1.5, "3"];
  return jsonTarget("skip", "skip.json", baseText, words, useSkipSet);
}

/** The run a fuzzed log must belong to. */
const RUN_HEADER: RunHeader = {
  model: "fixtures/tiny-llama",
  objective: "predicted-speedup",
  method: "bo",
  acquisition: "ei",
  initialRandom: 10,
  seed: 0,
  layers: LLAMA_LAYERS,
  draftMax: 8,
  maxNewTokens: 32,
  keep: "0,11",
  minSkip: 0,
  maxSkip: 1,
  prompts: "0123abcd",
};
const TRIAL_LINES = 16;

/** A mutated log: whole-line edits, tree edits of one line, or byte edits. */
function mutateLog(rng: Rng, lines: Json[], words: readonly Json[]): [Uint8Array, string] {
  let texts = lines.map((l) => JSON.stringify(l));
  const steps: string[] = [];
  const how = rng();
  if (how < 0.3) {
    const i = int(rng, texts.length), j = int(rng, texts.length);
    const op = int(rng, 5);
    if (op === 0) texts.splice(i, 1);
    else if (op === 1) texts.splice(i, 0, texts[j]);
    else if (op === 2) [texts[i], texts[j]] = [texts[j], texts[i]];
    else if (op === 3) texts = texts.slice(0, i);
    else texts.splice(i, 0, pick(rng, ["", " ", "{}", "[]", "null", '{"header":{}}']));
    steps.push(`line edit ${op} at ${i}, ${j}`);
  } else if (how < 0.45) {
    const i = int(rng, texts.length);
    const value = clone(lines[i]);
    const fields = i === 0 ? value.header : value;
    const key = pick(rng, Object.keys(fields));
    fields[key] = chance(rng, 0.5) ? pick(rng, WRONG_TYPES) : oddValue(rng, fields[key], words);
    texts[i] = writeJson(value);
    steps.push(`line ${i + 1}: field ${key}`);
  } else if (how < 0.8) {
    const i = chance(rng, 0.3) ? 0 : int(rng, texts.length);
    let value = clone(lines[i]);
    for (let n = 1 + int(rng, 2); n > 0; n--) {
      let step: string;
      [value, step] = mutateTree(rng, value, words);
      steps.push(`line ${i + 1}: ${step}`);
    }
    texts[i] = writeJson(value);
  }
  let bytes: Uint8Array = encoded(texts.join("\n") + (chance(rng, 0.9) ? "\n" : ""));
  if (how >= 0.8) {
    let step: string;
    [bytes, step] = mutateBytes(rng, bytes);
    steps.push(step);
  }
  return [bytes, steps.join("; ")];
}

async function trialsTarget(): Promise<Target> {
  const fixture = (await Deno.readTextFile(fixtureFile(FIXTURE, "trials.jsonl"))).split("\n");
  const costModel = JSON.parse(fixture[0]).header.costModel;
  const lines = [
    { header: { ...RUN_HEADER, costModel } },
    ...fixture.slice(1, 1 + TRIAL_LINES).map((l) => JSON.parse(l)),
  ];
  const words = [
    ...Object.keys(RUN_HEADER),
    ...Object.keys(lines[1]),
    "header",
    "costModel",
    "attn",
    "mlp",
    "random",
    "bo",
    11,
    12,
  ];
  return {
    format: "trials",
    file: "trials.jsonl",
    prepare: async () => {},
    base: () => ({ bytes: encoded(lines.map((l) => JSON.stringify(l) + "\n").join("")) }),
    mutate: (rng) => {
      const [bytes, how] = mutateLog(rng, lines, words);
      return [{ bytes }, how];
    },
    run: (dir) => Promise.resolve(TrialsLog.resume(join(dir, "trials.jsonl"), RUN_HEADER)),
  };
}

/** Formats cheap enough to run more cases than FUZZ_CASES, and how many times more. */
const EXTRA_CASES: Record<string, number> = { trials: 3 };

const TARGETS: Record<string, () => Promise<Target>> = {
  "safetensors-llama": () => safetensorsTarget("safetensors-llama", FIXTURE),
  "safetensors-gemma2": () => safetensorsTarget("safetensors-gemma2", GEMMA),
  "index": indexTarget,
  "config-llama": () => configTarget("config-llama", FIXTURE),
  "config-gemma2": () => configTarget("config-gemma2", GEMMA),
  "tokenizer": tokenizerTarget,
  "skip": skipTarget,
  "trials": trialsTarget,
};

// --- running cases --------------------------------------------------------------------------------

type Outcome = { ok: true } | { ok: false; error: SkipspecError };

/** Errors nobody awaited, attributed to the case that was running. */
const stray: unknown[] = [];
globalThis.addEventListener("unhandledrejection", (event) => {
  event.preventDefault();
  stray.push(event.reason);
});

/** Why an outcome is a bug, or undefined when it is acceptable. */
function problem(thrown: unknown): string | undefined {
  if (!(thrown instanceof SkipspecError)) {
    return `not a SkipspecError: ${thrown instanceof Error ? thrown.stack : String(thrown)}`;
  }
  if (/[\n\r\u2028\u2029]/.test(thrown.message)) return `a multi-line message: ${thrown.message}`;
  if (thrown.message.length > MAX_MESSAGE_CHARS) {
    return `a ${thrown.message.length}-character message: ${thrown.message.slice(0, 200)}...`;
  }
  if (thrown.message.trim() === "") return "an empty message";
  return undefined;
}

/** Runs one case with a time limit; the outcome, or a description of the bug. */
async function runCase(target: Target, dir: string): Promise<Outcome | string> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const limit = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve(`still running after ${CASE_LIMIT_MS} ms`), CASE_LIMIT_MS);
  });
  try {
    const result = await Promise.race([
      Promise.resolve().then(() => target.run(dir)).then(
        (): Outcome => ({ ok: true }),
        (e) => problem(e) ?? { ok: false, error: e },
      ),
      limit,
    ]);
    await new Promise((resolve) => setTimeout(resolve, 0)); // let stray rejections surface
    if (stray.length > 0) return `an unhandled rejection: ${String(stray.splice(0)[0])}`;
    return result;
  } finally {
    clearTimeout(timer);
  }
}

/** An error's kind: its class and message with paths, names, numbers and values erased. */
function errorKind(error: SkipspecError, dir: string): string {
  let message = error.message.replaceAll(dir, "<dir>").replace(/<dir>\/[^:\s]*/g, "<dir>/F")
    .replace(/not valid JSON \(.*\)$/, "not valid JSON (...)")
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'/g, "S")
    .replace(/-?\d+(\.\d+)?(e[+-]?\d+)?/gi, "N")
    .replace(/\b(null|true|false|undefined|NaN|Infinity)\b/g, "V");
  // Lists and objects rendered in the message, innermost first.
  for (let before = ""; before !== message;) {
    before = message;
    message = message.replace(/\[[^[\]]*\]|\{[^{}]*\}/g, "V");
  }
  return `${error.name}: ${message}`;
}

/** A corpus case: the mutated file and the outcome it must keep having. */
interface CorpusCase {
  /** The file of the model folder (or log) the case replaces. */
  file: string;
  /** Zeros follow the stored bytes up to this size (safetensors data, kept out of the repo). */
  size?: number;
  how: string;
  /** "ok", or the error class and a pattern its message matches (`<dir>`: the case folder). */
  expect: "ok" | { error: string; message: string };
  /** Replayed through the CLI as well. */
  cli?: boolean;
}

const escapeRegExp = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Adds a case to `SAVE_DIR/<format>/` (its file and its entry in expected.json). */
async function saveCase(format: string, name: string, file: CaseFile, c: CorpusCase) {
  const folder = join(SAVE_DIR!, format);
  await Deno.mkdir(folder, { recursive: true });
  await Deno.writeFile(join(folder, name), file.bytes);
  const manifest = join(folder, "expected.json");
  const cases = await Deno.readTextFile(manifest).then(JSON.parse, () => ({}));
  cases[name] = c;
  await Deno.writeTextFile(manifest, JSON.stringify(cases, null, 2) + "\n");
}

/** The expected outcome of a case, as the corpus stores it. */
function expectation(outcome: Outcome, dir: string): CorpusCase["expect"] {
  if (outcome.ok) return "ok";
  const message = escapeRegExp(outcome.error.message.replaceAll(dir, "<dir>"))
    .replace(/not valid JSON \\\(.*\\\)$/, "not valid JSON \\(.*\\)");
  return { error: outcome.error.name, message: `^${message}$` };
}

async function fuzz(format: string) {
  const target = await TARGETS[format]();
  const dir = await caseFolder(format);
  try {
    await target.prepare(dir);
    const path = join(dir, target.file);
    const kinds = new Map<string, number>();
    const failures: string[] = [];
    let successes = 0;
    let slowest = { ms: 0, index: -1 };
    const indices = ONLY_CASE !== undefined
      ? [Number(ONLY_CASE)]
      : Array.from({ length: CASES * (EXTRA_CASES[format] ?? 1) }, (_, i) => i);
    for (const index of indices) {
      const [file, how] = target.mutate(caseRng(SEED, format, index));
      await writeCaseFile(path, file);
      const start = performance.now();
      const outcome = await runCase(target, dir);
      const ms = performance.now() - start;
      if (ms > slowest.ms) slowest = { ms, index };
      if (typeof outcome === "string") {
        failures.push(
          `${format} case ${index} (FUZZ_SEED=${SEED} FUZZ_CASE=${index}), ${how}: ${outcome}`,
        );
        if (failures.length >= 10) break;
        continue;
      }
      if (outcome.ok) successes++;
      const kind = outcome.ok ? "ok" : errorKind(outcome.error, dir);
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      if (SAVE_DIR && kinds.get(kind) === 1) {
        await saveCase(format, `case-${SEED}-${index}`, file, {
          file: target.file,
          ...(file.size === undefined ? {} : { size: file.size }),
          how,
          expect: expectation(outcome, dir),
        });
      }
    }
    console.log(
      `fuzz ${format}: ${indices.length} cases (seed ${SEED}), ${successes} loaded, ` +
        `${kinds.size - (successes > 0 ? 1 : 0)} distinct error kinds, ` +
        `slowest case ${slowest.index} in ${slowest.ms.toFixed(1)} ms`,
    );
    assert.deepEqual(failures, [], `${failures.length} cases failed:\n${failures.join("\n\n")}`);
    if (ONLY_CASE === undefined) {
      assert.ok(successes > 0, "no mutation loaded: the fuzzer only tests the first check");
      assert.ok(kinds.size > 5, `only ${kinds.size} outcomes: the mutations are too narrow`);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * A fresh folder for a format's cases whose path always has the same length. Messages cut an
 * over-long file name in the middle, so how much of it they keep depends on the folder's length,
 * which the corpus patterns record; Deno.makeTempDir's random part is hex without leading zeros,
 * 16 characters in 15 of 16 folders and shorter in the rest, which made such a case flaky.
 */
async function caseFolder(format: string): Promise<string> {
  const probe = await Deno.makeTempDir(); // where Deno puts temporary folders
  await Deno.remove(probe);
  const random = crypto.randomUUID().replaceAll("-", "").slice(0, 16);
  const dir = join(dirname(probe), `skipspec-fuzz-${format}-${random}`);
  await Deno.mkdir(dir);
  return dir;
}

/** The corpus of one format: its cases by file name. */
async function readCorpus(format: string): Promise<[string, CorpusCase][]> {
  const manifest = join(CORPUS, format, "expected.json");
  return Object.entries(JSON.parse(await Deno.readTextFile(manifest)));
}

const caseFile = async (format: string, name: string, c: CorpusCase): Promise<CaseFile> => ({
  bytes: await Deno.readFile(join(CORPUS, format, name)),
  size: c.size,
});

/** Checks an outcome against a corpus expectation, with `dir` standing for `<dir>`. */
function assertExpected(outcome: Outcome | string, c: CorpusCase, dir: string, label: string) {
  if (typeof outcome === "string") assert.fail(`${label}: ${outcome}`);
  if (c.expect === "ok") {
    assert.ok(outcome.ok, `${label}: expected success, got ${outcome.ok || outcome.error}`);
    return;
  }
  assert.ok(!outcome.ok, `${label}: expected ${c.expect.error}, but it loaded`);
  assert.equal(outcome.error.name, c.expect.error, `${label}: ${outcome.error.message}`);
  assert.match(outcome.error.message.replaceAll(dir, "<dir>"), new RegExp(c.expect.message), label);
}

for (const format of Object.keys(TARGETS)) {
  Deno.test(`fuzz corpus ${format}: every stored case keeps its outcome`, async () => {
    const target = await TARGETS[format]();
    const cases = await readCorpus(format);
    assert.ok(cases.length > 0, `no corpus for ${format}`);
    const dir = await caseFolder(format);
    try {
      await target.prepare(dir);
      for (const [name, c] of cases) {
        await writeCaseFile(join(dir, c.file), await caseFile(format, name, c));
        assertExpected(await runCase(target, dir), c, dir, `${format}/${name} (${c.how})`);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

/** Exit codes of the error classes the corpus expects. */
const EXIT_CODES: Record<string, number> = { ModelError: 3, InputError: 5 };

Deno.test("fuzz corpus through the CLI: the user sees the same one line, a non-zero exit, no stack", async () => {
  let replayed = 0;
  for (const format of ["safetensors-llama", "index", "config-gemma2", "tokenizer"]) {
    const target = await TARGETS[format]();
    const base = format.endsWith("gemma2") ? GEMMA : FIXTURE;
    for (const [name, c] of await readCorpus(format)) {
      if (!c.cli || c.expect === "ok") continue;
      const dir = await modelWith(base, {});
      try {
        await target.prepare(dir);
        if (format === "index") await Deno.remove(join(dir, "model.safetensors"));
        await writeCaseFile(join(dir, c.file), await caseFile(format, name, c));
        const body = c.expect.message.replace(/^\^/, "").replaceAll("<dir>", escapeRegExp(dir));
        const run = await skipspec([
          "decode",
          "--model",
          dir,
          "--prompt",
          "x",
          "--max-new-tokens",
          "1",
        ]);
        assertOneLineError(run, EXIT_CODES[c.expect.error], new RegExp(`^skipspec: ${body}`));
        replayed++;
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }
  }
  assert.ok(replayed >= 4, `only ${replayed} corpus cases are marked for the CLI`);
});

for (const format of Object.keys(TARGETS)) {
  Deno.test(`fuzz ${format}: the unmutated file loads`, async () => {
    const target = await TARGETS[format]();
    const dir = await caseFolder(format);
    try {
      await target.prepare(dir);
      await writeCaseFile(join(dir, target.file), target.base());
      assert.deepEqual(await runCase(target, dir), { ok: true });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  Deno.test(
    `fuzz ${format}: ${
      CASES * (EXTRA_CASES[format] ?? 1)
    } mutations end in success or a one-line SkipspecError`,
    () => fuzz(format),
  );
}

Deno.test("fuzz: a seed gives the same mutations every time (cases reproduce by index)", async () => {
  for (const [format, make] of Object.entries(TARGETS)) {
    const once = await make(), again = await make();
    for (let index = 0; index < 200; index++) {
      const [a] = once.mutate(caseRng(SEED, format, index));
      const [b] = again.mutate(caseRng(SEED, format, index));
      assert.deepEqual(a, b, `${format} case ${index} differs between two runs`);
    }
  }
});
