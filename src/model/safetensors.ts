/**
 * Safetensors reading: header parsing with full validation, sharded-folder resolution, and
 * streaming a tensor's bytes in bounded pieces (for upload to the GPU).
 *
 * File layout: u64 little-endian header length N, then N bytes of UTF-8 JSON, then the data
 * section. Each tensor's `data_offsets` are relative to the data section's start (8 + N).
 */
import { join } from "node:path";
import { ModelError } from "../errors.ts";
import { brief, fileError, openFile, readJson } from "../files.ts";

export type DType = "F32" | "F16" | "BF16";

/** Bytes per element. */
export const DTYPE_BYTES: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** absolute byte offset of the tensor's data in the file */
  offset: number;
  byteLength: number;
  /** which file holds it (path) */
  file: string;
}

export interface SafetensorsHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  /** absolute byte offset of the data section: 8 + header length */
  dataStart: number;
  fileSize: number;
}

const MAX_HEADER_BYTES = 100_000_000;
const MAX_INDEX_BYTES = 100_000_000;
const DEFAULT_PIECE_BYTES = 64 * 1024 * 1024;
const SUPPORTED = "supported: F32, F16, BF16";
const ENTRY_KEYS = new Set(["dtype", "shape", "data_offsets"]);
/** dtypes the format defines that we cannot load, to tell "unsupported" from "unknown". */
const OTHER_DTYPES = new Set([
  "BOOL",
  "U8",
  "I8",
  "U16",
  "I16",
  "U32",
  "I32",
  "U64",
  "I64",
  "F64",
  "C64",
  "F8_E4M3",
  "F8_E5M2",
  "F8_E8M0",
  "F6_E2M3",
  "F6_E3M2",
  "F4",
]);

/** Quote a name from a file so that messages stay on one short line. */
const q = (s: string) => brief(s, 100);

/** A short one-line rendering of an untrusted JSON value. */
const show = (v: unknown) => brief(v);

function kind(v: unknown): string {
  if (v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return "an array";
  return typeof v === "object" ? "an object" : `a ${typeof v}`;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const isIndex = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;

/** Parse and fully validate the header of a safetensors file given its bytes' first part and the file size. */
export function parseSafetensorsHeader(
  headerBytes: Uint8Array,
  fileSize: number,
  file: string,
): SafetensorsHeader {
  const fail = (problem: string): never => {
    throw new ModelError(`${file}: ${problem}`);
  };
  if (fileSize < 8) fail(`file is ${fileSize} bytes, too short to hold the 8-byte header length`);
  if (headerBytes.length < 8) fail(`only ${headerBytes.length} of the first 8 bytes were given`);
  const length = new DataView(headerBytes.buffer, headerBytes.byteOffset, 8).getBigUint64(0, true);
  if (length > BigInt(MAX_HEADER_BYTES)) {
    fail(`header length ${length} bytes exceeds the limit of ${MAX_HEADER_BYTES} bytes`);
  }
  const dataStart = 8 + Number(length);
  if (dataStart > fileSize) {
    fail(
      `header length ${length} bytes runs past the end of the ${fileSize}-byte file ` +
        `(a truncated download?)`,
    );
  }
  if (headerBytes.length < dataStart) {
    fail(`only ${headerBytes.length} of the ${dataStart} header bytes were given`);
  }

  let text = "";
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(headerBytes.subarray(8, dataStart));
  } catch {
    fail("header is not valid UTF-8");
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    fail(`header is not valid JSON (${String((e as Error).message).split("\n")[0]})`);
  }
  if (!isObject(json)) fail(`header must be a JSON object, got ${kind(json)}`);
  const header = json as Record<string, unknown>;

  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const spans: { name: string; begin: number; end: number }[] = [];
  const dataLength = fileSize - dataStart;
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") {
      if (!isObject(entry)) fail(`__metadata__ must be an object, got ${kind(entry)}`);
      for (const [key, value] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof value !== "string") {
          fail(`__metadata__ value for ${q(key)} must be a string, got ${kind(value)}`);
        }
        metadata[key] = value as string;
      }
      continue;
    }
    const t = `tensor ${q(name)}`;
    if (!isObject(entry)) fail(`${t} must be an object, got ${kind(entry)}`);
    const e = entry as Record<string, unknown>;
    for (const key of Object.keys(e)) {
      if (!ENTRY_KEYS.has(key)) fail(`${t} has unknown key ${q(key)}`);
    }
    const { dtype, shape, data_offsets: offsets } = e;
    if (typeof dtype !== "string") fail(`${t} dtype must be a string, got ${show(dtype)}`);
    if (!Object.hasOwn(DTYPE_BYTES, dtype as string)) {
      const which = OTHER_DTYPES.has(dtype as string) ? "unsupported" : "unknown";
      fail(`${t} has ${which} dtype ${q(dtype as string)} (${SUPPORTED})`);
    }
    if (!Array.isArray(shape) || !shape.every(isIndex)) {
      fail(`${t} shape must be an array of non-negative integers, got ${show(shape)}`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isIndex)) {
      fail(`${t} data_offsets must be [begin, end] of non-negative integers, got ${show(offsets)}`);
    }
    const dims = shape as number[];
    const [begin, end] = offsets as [number, number];
    if (begin > end) fail(`${t} data_offsets [${begin}, ${end}] have begin > end`);
    let bytes = DTYPE_BYTES[dtype as DType];
    for (const d of dims) bytes *= d;
    if (!Number.isSafeInteger(bytes)) fail(`${t} shape ${show(dims)} is too large`);
    if (end - begin !== bytes) {
      fail(
        `${t} is ${dtype} [${dims.join(", ")}] = ${bytes} bytes, ` +
          `but data_offsets [${begin}, ${end}) span ${end - begin} bytes`,
      );
    }
    if (end > dataLength) {
      fail(
        `file is shorter than its header says (a truncated download?): ${t} data ` +
          `[${begin}, ${end}) lies past the end of the ${dataLength}-byte data section`,
      );
    }
    tensors.set(name, {
      name,
      dtype: dtype as DType,
      shape: dims,
      offset: dataStart + begin,
      byteLength: bytes,
      file,
    });
    spans.push({ name, begin, end });
  }
  if (spans.length === 0) fail("header lists no tensors");

  // The data section must be tiled exactly: no overlaps, no gaps, nothing left over at the end.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let prev: { name: string; begin: number; end: number } | undefined;
  for (const s of spans) {
    const at = prev?.end ?? 0;
    if (s.begin < at) {
      fail(`tensor ${q(s.name)} data [${s.begin}, ${s.end}) overlaps ${q(prev!.name)}`);
    }
    if (s.begin > at) {
      fail(
        `gap of ${s.begin - at} bytes in the data section before tensor ${q(s.name)} ` +
          `(data [${at}, ${s.begin}) belongs to no tensor)`,
      );
    }
    prev = s;
  }
  if (prev!.end < dataLength) {
    fail(
      `data section has ${dataLength - prev!.end} bytes after the last tensor ` +
        `(data [${prev!.end}, ${dataLength}) belongs to no tensor)`,
    );
  }
  return { tensors, metadata, dataStart, fileSize };
}

async function io<T>(path: string, op: () => Promise<T>): Promise<T> {
  try {
    return await op();
  } catch (e) {
    throw fileError(e, path, ModelError);
  }
}

/** Read up to `n` bytes from the current position; fewer only at end of file. */
async function readFully(
  file: Deno.FsFile,
  n: number,
  path: string,
): Promise<Uint8Array<ArrayBuffer>> {
  const buf = new Uint8Array(n);
  let got = 0;
  while (got < n) {
    const r = await io(path, () => file.read(buf.subarray(got)));
    if (!r) break;
    got += r;
  }
  return got === n ? buf : buf.subarray(0, got);
}

/** Open a file, read just the header (8-byte little-endian u64 length + JSON), validate. */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const { file, size } = await openFile(path, ModelError);
  try {
    const prefix = await readFully(file, Math.min(8, size), path);
    let bytes = prefix;
    if (prefix.length === 8) {
      const length = new DataView(prefix.buffer).getBigUint64(0, true);
      // Read the JSON only when its length is plausible; otherwise the parser reports why not.
      if (length <= BigInt(MAX_HEADER_BYTES) && 8 + Number(length) <= size) {
        const json = await readFully(file, Number(length), path);
        bytes = new Uint8Array(8 + json.length);
        bytes.set(prefix);
        bytes.set(json, 8);
      }
    }
    return parseSafetensorsHeader(bytes, size, path);
  } finally {
    file.close();
  }
}

async function statOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw fileError(e, path, ModelError);
  }
}

/** Read the index's `weight_map` (tensor name → shard file name), checking each shard name. */
async function readWeightMap(indexPath: string): Promise<Record<string, string>> {
  const fail = (problem: string): never => {
    throw new ModelError(`${indexPath}: ${problem}`);
  };
  const json = await readJson(indexPath, ModelError, { maxBytes: MAX_INDEX_BYTES });
  if (!isObject(json)) fail(`must be a JSON object, got ${kind(json)}`);
  const weightMap = (json as Record<string, unknown>).weight_map;
  if (weightMap === undefined) fail(`has no "weight_map"`);
  if (!isObject(weightMap)) fail(`"weight_map" must be an object, got ${kind(weightMap)}`);
  const entries = Object.entries(weightMap as Record<string, unknown>);
  if (entries.length === 0) fail(`"weight_map" is empty`);
  for (const [name, shard] of entries) {
    if (typeof shard !== "string") {
      fail(`weight_map entry for tensor ${q(name)} must be a file name, got ${kind(shard)}`);
    }
    // A plain name only: no separators (so no absolute paths or `..` hops), nothing odd.
    const s = shard as string;
    const bad = s === "" || s === "." || s === ".." || /[/\\:]/.test(s) ||
      [...s].some((c) => c.charCodeAt(0) < 0x20);
    if (bad) {
      fail(
        `weight_map puts tensor ${q(name)} in ${q(s)}, which is not a plain file name ` +
          `inside the model folder`,
      );
    }
  }
  return weightMap as Record<string, string>;
}

/** Resolve a model folder: `model.safetensors`, or shards listed by `model.safetensors.index.json` ({"weight_map": {tensorName: fileName}}). Returns all tensors (merged map), validating that every tensor named in the weight_map is present in its shard, that shard file names stay inside the folder (no absolute paths, no `..`, no path separators), and that tensor names are unique across shards. */
export async function loadSafetensorsIndex(modelDir: string): Promise<Map<string, TensorInfo>> {
  const dir = await statOrNull(modelDir);
  if (!dir) throw new ModelError(`${modelDir}: model folder not found`);
  if (!dir.isDirectory) throw new ModelError(`${modelDir}: is not a folder`);

  const single = join(modelDir, "model.safetensors");
  if (await statOrNull(single)) return (await readSafetensorsHeader(single)).tensors;
  const indexPath = join(modelDir, "model.safetensors.index.json");
  if (!(await statOrNull(indexPath))) {
    throw new ModelError(
      `${modelDir}: has neither model.safetensors nor model.safetensors.index.json`,
    );
  }

  const weightMap = await readWeightMap(indexPath);
  const tensors = new Map<string, TensorInfo>();
  const shardOf = new Map<string, string>(); // tensor name → shard file name
  for (const shard of [...new Set(Object.values(weightMap))].sort()) {
    for (const [name, t] of (await readSafetensorsHeader(join(modelDir, shard))).tensors) {
      const other = shardOf.get(name);
      if (other !== undefined) {
        throw new ModelError(
          `${indexPath}: tensor ${q(name)} appears in both ${q(other)} and ${q(shard)}`,
        );
      }
      tensors.set(name, t);
      shardOf.set(name, shard);
    }
  }
  for (const [name, shard] of Object.entries(weightMap)) {
    if (shardOf.get(name) !== shard) {
      throw new ModelError(
        `${indexPath}: weight_map puts tensor ${q(name)} in ${q(shard)}, but that shard ` +
          `does not contain it`,
      );
    }
  }
  return tensors;
}

/**
 * Stream a tensor's bytes in pieces of at most `pieceBytes` (default 64 MiB) without reading the
 * whole file: calls onPiece(bytes, byteOffsetWithinTensor) in order, awaiting each call. Each piece
 * is a fresh buffer the callback may keep. A zero-byte tensor yields no pieces. The file is closed
 * afterwards. A short read (file truncated after validation) is a ModelError.
 */
export async function readTensorPieces(
  t: TensorInfo,
  onPiece: (bytes: Uint8Array<ArrayBuffer>, offset: number) => void | Promise<void>,
  pieceBytes: number = DEFAULT_PIECE_BYTES,
): Promise<void> {
  if (!Number.isSafeInteger(pieceBytes) || pieceBytes <= 0) {
    throw new RangeError(`pieceBytes must be a positive integer, got ${pieceBytes}`);
  }
  const { file } = await openFile(t.file, ModelError);
  try {
    await io(t.file, () => file.seek(t.offset, Deno.SeekMode.Start));
    for (let done = 0; done < t.byteLength;) {
      const want = Math.min(pieceBytes, t.byteLength - done);
      const bytes = await readFully(file, want, t.file);
      if (bytes.length < want) {
        const { size } = await io(t.file, () => file.stat());
        throw new ModelError(
          `${t.file}: file is truncated: tensor ${q(t.name)} needs bytes ` +
            `[${t.offset}, ${t.offset + t.byteLength}) but the file is now ${size} bytes`,
        );
      }
      await onPiece(bytes, done);
      done += want;
    }
  } finally {
    file.close();
  }
}
