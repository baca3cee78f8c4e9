import assert from "node:assert/strict";
import { join } from "node:path";
import { ModelError } from "../src/errors.ts";
import {
  type DType,
  loadSafetensorsIndex,
  parseSafetensorsHeader,
  readSafetensorsHeader,
  readTensorPieces,
  type TensorInfo,
} from "../src/model/safetensors.ts";

const FIXTURES = join(import.meta.dirname!, "..", "fixtures");

// --- helpers ---------------------------------------------------------------------------------

/** Raw file: u64 LE header length, the header text as given, then the data bytes. */
function encode(header: unknown, data: Uint8Array | number): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const bytes = typeof data === "number" ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + json.length + bytes.length);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  out.set(bytes, 8 + json.length);
  return out;
}

/** Headers under test are deliberately malformed, so mutations need loose typing. */
// deno-lint-ignore no-explicit-any
type Json = any;

interface Spec {
  name: string;
  dtype: DType;
  shape: number[];
}

const SIZE: Record<DType, number> = { F32: 4, F16: 2, BF16: 2 };

/** A valid file holding the tensors back to back, each filled with a distinct byte pattern. */
function buildSafetensors(
  specs: Spec[],
  metadata?: Record<string, string>,
): { bytes: Uint8Array; data: Map<string, Uint8Array> } {
  const header: Record<string, unknown> = metadata ? { __metadata__: metadata } : {};
  const data = new Map<string, Uint8Array>();
  let offset = 0;
  specs.forEach(({ name, dtype, shape }, k) => {
    const n = SIZE[dtype] * shape.reduce((a, b) => a * b, 1);
    data.set(name, Uint8Array.from({ length: n }, (_, i) => (i * 31 + k * 101 + 7) & 255));
    header[name] = { dtype, shape, data_offsets: [offset, offset + n] };
    offset += n;
  });
  const all = new Uint8Array(offset);
  offset = 0;
  for (const d of data.values()) {
    all.set(d, offset);
    offset += d.length;
  }
  return { bytes: encode(header, all), data };
}

/** Two tensors: "a" F32 [2, 3] at data [0, 24), "b" F16 [5] at data [24, 34). */
function validHeader(): Record<string, Json> {
  return {
    __metadata__: { format: "pt" },
    a: { dtype: "F32", shape: [2, 3], data_offsets: [0, 24] },
    b: { dtype: "F16", shape: [5], data_offsets: [24, 34] },
  };
}

function parse(bytes: Uint8Array, fileSize = bytes.length) {
  return parseSafetensorsHeader(bytes, fileSize, "model.safetensors");
}

/** Asserts a one-line ModelError whose message matches `pattern`. */
async function assertModelError(fn: () => unknown, pattern: RegExp): Promise<void> {
  let error: unknown;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ModelError, `expected a ModelError, got ${error}`);
  assert.doesNotMatch(error.message, /[\r\n]/);
  assert.match(error.message, pattern);
}

/** Mutates a copy of validHeader(), then expects parsing (34 data bytes) to fail with `pattern`. */
async function assertHeaderRejected(
  mutate: (h: Record<string, Json>) => void,
  pattern: RegExp,
  dataLength = 34,
): Promise<void> {
  const header = validHeader();
  mutate(header);
  await assertModelError(() => parse(encode(header, dataLength)), pattern);
  await assertModelError(() => parse(encode(header, dataLength)), /^model\.safetensors: /);
}

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "safetensors_test_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function collect(t: TensorInfo, pieceBytes?: number) {
  const pieces: { length: number; offset: number }[] = [];
  const all = new Uint8Array(t.byteLength);
  await readTensorPieces(t, (bytes, offset) => {
    pieces.push({ length: bytes.length, offset });
    all.set(bytes, offset);
  }, pieceBytes);
  return { pieces, all };
}

// --- parseSafetensorsHeader: valid input -----------------------------------------------------

Deno.test("parseSafetensorsHeader() accepts a valid header and reports absolute offsets", () => {
  const bytes = encode(validHeader(), 34);
  const h = parse(bytes);
  const dataStart = bytes.length - 34;
  assert.equal(h.dataStart, dataStart);
  assert.equal(h.fileSize, bytes.length);
  assert.deepEqual(h.metadata, { format: "pt" });
  assert.deepEqual([...h.tensors.keys()], ["a", "b"]);
  assert.deepEqual(h.tensors.get("a"), {
    name: "a",
    dtype: "F32",
    shape: [2, 3],
    offset: dataStart,
    byteLength: 24,
    file: "model.safetensors",
  });
  assert.deepEqual(h.tensors.get("b")?.offset, dataStart + 24);
});

Deno.test("parseSafetensorsHeader() accepts a header padded with trailing spaces", () => {
  const text = JSON.stringify(validHeader()) + "       ";
  assert.equal(parse(encode(text, 34)).tensors.size, 2);
});

Deno.test("parseSafetensorsHeader() accepts scalars, zero-sized tensors and no metadata", () => {
  const h = parse(encode({
    empty: { dtype: "BF16", shape: [0, 4], data_offsets: [0, 0] },
    scalar: { dtype: "F32", shape: [], data_offsets: [0, 4] },
  }, 4));
  assert.deepEqual(h.metadata, {});
  assert.equal(h.tensors.get("empty")?.byteLength, 0);
  assert.equal(h.tensors.get("scalar")?.byteLength, 4);
});

Deno.test("parseSafetensorsHeader() accepts tensors listed out of data order", () => {
  const h = parse(encode({
    late: { dtype: "F16", shape: [2], data_offsets: [4, 8] },
    early: { dtype: "F16", shape: [2], data_offsets: [0, 4] },
  }, 8));
  assert.equal(h.tensors.get("late")!.offset - h.tensors.get("early")!.offset, 4);
});

// --- parseSafetensorsHeader: framing ---------------------------------------------------------

Deno.test("parseSafetensorsHeader() rejects a file shorter than 8 bytes", async () => {
  await assertModelError(() => parse(new Uint8Array(5)), /5 bytes, too short/);
  await assertModelError(() => parse(new Uint8Array(0)), /0 bytes, too short/);
});

Deno.test("parseSafetensorsHeader() rejects a header longer than the file", async () => {
  const bytes = encode(validHeader(), 34);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(bytes.length), true);
  await assertModelError(() => parse(bytes), /header length \d+ bytes runs past the end/);
});

Deno.test("parseSafetensorsHeader() rejects a header length over 100 MB", async () => {
  for (const length of [100_000_001n, 2n ** 64n - 1n]) {
    const bytes = new Uint8Array(64);
    new DataView(bytes.buffer).setBigUint64(0, length, true);
    await assertModelError(
      () => parse(bytes, 200_000_000),
      new RegExp(`header length ${length} bytes exceeds the limit of 100000000`),
    );
  }
});

Deno.test("parseSafetensorsHeader() rejects being given fewer bytes than the header", async () => {
  const bytes = encode(validHeader(), 34);
  await assertModelError(() => parse(bytes.subarray(0, 20), bytes.length), /only 20 of the \d+/);
  await assertModelError(() => parse(bytes.subarray(0, 3), bytes.length), /only 3 of the first 8/);
});

Deno.test("parseSafetensorsHeader() rejects a header that is not valid UTF-8", async () => {
  const bytes = encode("{}", 0);
  bytes[9] = 0xff;
  await assertModelError(() => parse(bytes), /not valid UTF-8/);
});

Deno.test("parseSafetensorsHeader() rejects a header that is not valid JSON", async () => {
  await assertModelError(() => parse(encode('{"a": {"dtype": "F32",', 0)), /not valid JSON/);
  await assertModelError(() => parse(encode("", 0)), /not valid JSON/);
});

Deno.test("parseSafetensorsHeader() rejects a JSON array or other non-object header", async () => {
  await assertModelError(() => parse(encode([1, 2], 0)), /must be a JSON object, got an array/);
  await assertModelError(() => parse(encode("null", 0)), /must be a JSON object, got null/);
  await assertModelError(() => parse(encode('"x"', 0)), /must be a JSON object, got a string/);
});

Deno.test("parseSafetensorsHeader() rejects a header with no tensors", async () => {
  await assertModelError(() => parse(encode({}, 0)), /no tensors/);
  await assertModelError(() => parse(encode({ __metadata__: {} }, 0)), /no tensors/);
});

// --- parseSafetensorsHeader: entries ---------------------------------------------------------

Deno.test("parseSafetensorsHeader() rejects real but unsupported dtypes such as I64", async () => {
  for (const dtype of ["I64", "F64", "U8", "BOOL"]) {
    await assertHeaderRejected(
      (h) => h.b.dtype = dtype,
      new RegExp(`tensor "b" has unsupported dtype "${dtype}" \\(supported: F32, F16, BF16\\)`),
    );
  }
});

Deno.test("parseSafetensorsHeader() rejects an unknown dtype string", async () => {
  for (const dtype of ["FLOAT", "f32", "toString", ""]) {
    await assertHeaderRejected((h) => h.a.dtype = dtype, /tensor "a" has unknown dtype/);
  }
  await assertHeaderRejected((h) => h.a.dtype = 4, /tensor "a" dtype must be a string/);
  await assertHeaderRejected((h) => delete h.a.dtype, /tensor "a" dtype must be a string/);
});

Deno.test("parseSafetensorsHeader() rejects a shape that disagrees with the byte count", async () => {
  await assertHeaderRejected(
    (h) => h.a.shape = [2, 4],
    /tensor "a" is F32 \[2, 4\] = 32 bytes, but data_offsets \[0, 24\) span 24 bytes/,
  );
  await assertHeaderRejected((h) => h.b.dtype = "F32", /tensor "b" is F32 \[5\] = 20 bytes/);
});

Deno.test("parseSafetensorsHeader() rejects malformed or absurd shapes", async () => {
  const bad = [[-1, 3], [2.5], ["2", 3], null, 6, [2 ** 53]];
  for (const shape of bad) {
    await assertHeaderRejected(
      (h) => h.a.shape = shape,
      /tensor "a" shape must be an array of non-negative integers/,
    );
  }
  await assertHeaderRejected((h) => h.a.shape = [2 ** 40, 2 ** 40], /shape .* is too large/);
  await assertModelError(
    () => parse(encode('{"a": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 0]}}', 0)),
    /tensor "a" shape must be an array of non-negative integers/,
  );
});

Deno.test("parseSafetensorsHeader() rejects negative, fractional or malformed offsets", async () => {
  const bad = [[-24, 0], [0.5, 24.5], [0, 2 ** 64], [0], [0, 24, 48], "0-24", null, [0, "24"]];
  for (const offsets of bad) {
    await assertHeaderRejected(
      (h) => h.a.data_offsets = offsets,
      /tensor "a" data_offsets must be \[begin, end\] of non-negative integers/,
    );
  }
  await assertHeaderRejected(
    (h) => delete h.a.data_offsets,
    /tensor "a" data_offsets must be \[begin, end\]/,
  );
});

Deno.test("parseSafetensorsHeader() rejects offsets with begin after end", async () => {
  await assertHeaderRejected(
    (h) => h.a.data_offsets = [24, 0],
    /tensor "a" data_offsets \[24, 0\] have begin > end/,
  );
});

Deno.test("parseSafetensorsHeader() rejects offsets beyond the end of the file", async () => {
  await assertHeaderRejected(
    (h) => h.b.data_offsets = [34, 44],
    /tensor "b" data \[34, 44\) lies past the end of the 34-byte data section/,
  );
  await assertHeaderRejected((h) => h.b.data_offsets = [24, 34], /lies past the end/, 30);
});

Deno.test("parseSafetensorsHeader() rejects overlapping tensors", async () => {
  await assertHeaderRejected((h) => {
    h.b = { dtype: "F16", shape: [5], data_offsets: [20, 30] };
    h.c = { dtype: "F16", shape: [2], data_offsets: [30, 34] };
  }, /tensor "b" data \[20, 30\) overlaps "a"/);
  await assertHeaderRejected(
    (h) => h.b = { ...h.a },
    /tensor "[ab]" data \[0, 24\) overlaps "[ab]"/,
    24,
  );
});

Deno.test("parseSafetensorsHeader() rejects a gap between tensors", async () => {
  await assertHeaderRejected(
    (h) => h.b.data_offsets = [26, 36],
    /gap of 2 bytes .* before tensor "b" \(data \[24, 26\) belongs to no tensor\)/,
    36,
  );
});

Deno.test("parseSafetensorsHeader() rejects data that does not start at offset 0", async () => {
  await assertHeaderRejected(
    (h) => {
      h.a.data_offsets = [10, 34];
      h.b.data_offsets = [34, 44];
    },
    /gap of 10 bytes .* before tensor "a"/,
    44,
  );
});

Deno.test("parseSafetensorsHeader() rejects data not covering the end of the file", async () => {
  await assertHeaderRejected(
    () => {},
    /data section has 6 bytes after the last tensor \(data \[34, 40\) belongs to no tensor\)/,
    40,
  );
});

Deno.test("parseSafetensorsHeader() rejects metadata that is not strings", async () => {
  await assertHeaderRejected(
    (h) => h.__metadata__.layers = 12,
    /__metadata__ value for "layers" must be a string, got a number/,
  );
  await assertHeaderRejected(
    (h) => h.__metadata__ = ["pt"],
    /__metadata__ must be an object, got an array/,
  );
});

Deno.test("parseSafetensorsHeader() rejects an unknown extra key in an entry", async () => {
  await assertHeaderRejected((h) => h.a.layout = "row", /tensor "a" has unknown key "layout"/);
});

Deno.test("parseSafetensorsHeader() rejects an entry that is not an object", async () => {
  await assertHeaderRejected((h) => h.c = [1, 2], /tensor "c" must be an object, got an array/);
});

Deno.test("parseSafetensorsHeader() keeps messages on one line for names with newlines", async () => {
  await assertHeaderRejected((h) => {
    h["evil\nname"] = h.b;
    delete h.b;
    h["evil\nname"].dtype = "I8";
  }, /tensor "evil\\nname" has unsupported dtype "I8"/);
});

// --- readSafetensorsHeader and readTensorPieces ----------------------------------------------

Deno.test("readTensorPieces() returns exactly each tensor's bytes, in small pieces", async () => {
  await withTempDir(async (dir) => {
    const specs: Spec[] = [
      { name: "embed", dtype: "BF16", shape: [4, 5] },
      { name: "norm", dtype: "F32", shape: [3] },
      { name: "proj", dtype: "F16", shape: [2, 2, 3] },
      { name: "empty", dtype: "F32", shape: [0] },
    ];
    const { bytes, data } = buildSafetensors(specs, { format: "pt" });
    const path = join(dir, "model.safetensors");
    await Deno.writeFile(path, bytes);
    const h = await readSafetensorsHeader(path);
    assert.deepEqual(h.metadata, { format: "pt" });
    assert.equal(h.fileSize, bytes.length);
    for (const spec of specs) {
      const t = h.tensors.get(spec.name)!;
      assert.deepEqual([t.dtype, t.shape, t.file], [spec.dtype, spec.shape, path]);
      const { pieces, all } = await collect(t, 7);
      assert.deepEqual(all, data.get(spec.name));
      assert.equal(pieces.length, Math.ceil(t.byteLength / 7));
      pieces.forEach((p, i) => {
        assert.equal(p.offset, i * 7);
        assert.equal(p.length, Math.min(7, t.byteLength - i * 7));
      });
      assert.deepEqual((await collect(t)).all, data.get(spec.name)); // default: one piece
    }
  });
});

Deno.test("readTensorPieces() awaits an async callback and passes its errors through", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await Deno.writeFile(path, buildSafetensors([{ name: "w", dtype: "F32", shape: [8] }]).bytes);
    const t = (await readSafetensorsHeader(path)).tensors.get("w")!;
    const order: number[] = [];
    await readTensorPieces(t, async (_, offset) => {
      await new Promise((r) => setTimeout(r, 1));
      order.push(offset);
    }, 10);
    assert.deepEqual(order, [0, 10, 20, 30]);
    await assert.rejects(
      readTensorPieces(t, () => {
        throw new Error("upload failed");
      }, 10),
      /upload failed/,
    );
  });
});

Deno.test("readTensorPieces() reports a file truncated after its header was validated", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    const { bytes } = buildSafetensors([
      { name: "a", dtype: "F32", shape: [16] },
      { name: "b", dtype: "F32", shape: [16] },
    ]);
    await Deno.writeFile(path, bytes);
    const h = await readSafetensorsHeader(path);
    await Deno.truncate(path, bytes.length - 10);
    await assertModelError(
      () => collect(h.tensors.get("b")!, 7),
      new RegExp(
        `file is truncated: tensor "b" needs bytes .* the file is now ${bytes.length - 10}`,
      ),
    );
    await Deno.truncate(path, 20); // now "b" starts past the end of the file
    await assertModelError(() => collect(h.tensors.get("b")!), /file is truncated: tensor "b"/);
    await Deno.remove(path);
    await assertModelError(
      () => collect(h.tensors.get("a")!),
      /model\.safetensors: file not found/,
    );
  });
});

Deno.test("readSafetensorsHeader() rejects a zero-byte and a truncated file", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    const { bytes } = buildSafetensors([{ name: "w", dtype: "F16", shape: [10] }]);
    await Deno.writeFile(path, new Uint8Array(0));
    await assertModelError(() => readSafetensorsHeader(path), /0 bytes, too short/);
    await Deno.writeFile(path, bytes.subarray(0, 6));
    await assertModelError(() => readSafetensorsHeader(path), /6 bytes, too short/);
    await Deno.writeFile(path, bytes.subarray(0, 30)); // cut inside the JSON
    await assertModelError(() => readSafetensorsHeader(path), /runs past the end of the 30-byte/);
    await Deno.writeFile(path, bytes.subarray(0, bytes.length - 1)); // cut inside the data
    await assertModelError(
      () => readSafetensorsHeader(path),
      /tensor "w" data \[0, 20\) lies past the end of the 19-byte data section/,
    );
  });
});

Deno.test("readSafetensorsHeader() rejects a header length over 100 MB without reading it", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    const bytes = new Uint8Array(16);
    new DataView(bytes.buffer).setBigUint64(0, 1n << 40n, true);
    await Deno.writeFile(path, bytes);
    await assertModelError(() => readSafetensorsHeader(path), /exceeds the limit of 100000000/);
  });
});

Deno.test("readSafetensorsHeader() reports a missing file as not found", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "nope.safetensors");
    await assertModelError(() => readSafetensorsHeader(path), /nope\.safetensors: file not found$/);
  });
});

Deno.test("readSafetensorsHeader() rejects a directory where the file should be", async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, "model.safetensors");
    await Deno.mkdir(path);
    await assertModelError(() => readSafetensorsHeader(path), /is a directory, expected a file/);
    await assertModelError(() => loadSafetensorsIndex(dir), /is a directory, expected a file/);
  });
});

// --- loadSafetensorsIndex --------------------------------------------------------------------

/** Writes two shards ("a", "b" in shard 1; "c" in shard 2) and returns their data. */
async function writeShards(dir: string, weightMap?: unknown): Promise<Map<string, Uint8Array>> {
  const one = buildSafetensors([
    { name: "a", dtype: "F32", shape: [3] },
    { name: "b", dtype: "BF16", shape: [2, 2] },
  ]);
  const two = buildSafetensors([{ name: "c", dtype: "F16", shape: [5] }]);
  await Deno.writeFile(join(dir, "model-00001-of-00002.safetensors"), one.bytes);
  await Deno.writeFile(join(dir, "model-00002-of-00002.safetensors"), two.bytes);
  const index = {
    metadata: { total_size: 30 },
    weight_map: weightMap ?? {
      a: "model-00001-of-00002.safetensors",
      b: "model-00001-of-00002.safetensors",
      c: "model-00002-of-00002.safetensors",
    },
  };
  await Deno.writeTextFile(join(dir, "model.safetensors.index.json"), JSON.stringify(index));
  return new Map([...one.data, ...two.data]);
}

Deno.test("loadSafetensorsIndex() reads a single model.safetensors", async () => {
  await withTempDir(async (dir) => {
    const { bytes } = buildSafetensors([{ name: "w", dtype: "F32", shape: [2, 2] }]);
    await Deno.writeFile(join(dir, "model.safetensors"), bytes);
    const tensors = await loadSafetensorsIndex(dir);
    assert.deepEqual([...tensors.keys()], ["w"]);
    assert.equal(tensors.get("w")!.file, join(dir, "model.safetensors"));
  });
});

Deno.test("loadSafetensorsIndex() merges the tensors of two shards", async () => {
  await withTempDir(async (dir) => {
    const data = await writeShards(dir);
    const tensors = await loadSafetensorsIndex(dir);
    assert.deepEqual([...tensors.keys()].sort(), ["a", "b", "c"]);
    assert.equal(tensors.get("b")!.file, join(dir, "model-00001-of-00002.safetensors"));
    assert.equal(tensors.get("c")!.file, join(dir, "model-00002-of-00002.safetensors"));
    assert.deepEqual(tensors.get("b")!.shape, [2, 2]);
    for (const [name, t] of tensors) assert.deepEqual((await collect(t, 3)).all, data.get(name));
  });
});

Deno.test("loadSafetensorsIndex() rejects an index naming a tensor its shard lacks", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir, {
      a: "model-00001-of-00002.safetensors",
      c: "model-00001-of-00002.safetensors",
    });
    await assertModelError(
      () => loadSafetensorsIndex(dir),
      /index\.json: weight_map puts tensor "c" in "model-00001-of-00002\.safetensors", but that shard does not contain it/,
    );
  });
});

Deno.test("loadSafetensorsIndex() rejects shard names that leave the model folder", async () => {
  await withTempDir(async (dir) => {
    const names = [
      "../evil.safetensors",
      "/etc/passwd",
      join(dir, "x"),
      "sub/../../x",
      "..",
      "a\\b",
    ];
    for (const name of names) {
      await writeShards(dir, { a: name });
      await assertModelError(
        () => loadSafetensorsIndex(dir),
        /weight_map puts tensor "a" in .*, which is not a plain file name inside the model folder/,
      );
    }
  });
});

Deno.test("loadSafetensorsIndex() rejects a malformed index", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir);
    const index = join(dir, "model.safetensors.index.json");
    const cases: [string, RegExp][] = [
      ['{"weight_map": {"a": ', /index\.json is not valid JSON/],
      ["[]", /must be a JSON object, got an array/],
      ["{}", /index\.json: has no "weight_map"/],
      ['{"weight_map": []}', /"weight_map" must be an object, got an array/],
      ['{"weight_map": {}}', /"weight_map" is empty/],
      ['{"weight_map": {"a": 1}}', /entry for tensor "a" must be a file name, got a number/],
    ];
    for (const [text, pattern] of cases) {
      await Deno.writeTextFile(index, text);
      await assertModelError(() => loadSafetensorsIndex(dir), pattern);
    }
  });
});

Deno.test("loadSafetensorsIndex() rejects a tensor that appears in two shards", async () => {
  await withTempDir(async (dir) => {
    await writeShards(dir);
    const dup = buildSafetensors([{ name: "a", dtype: "F32", shape: [3] }]).bytes;
    await Deno.writeFile(join(dir, "model-00002-of-00002.safetensors"), dup);
    await assertModelError(
      () => loadSafetensorsIndex(dir),
      /tensor "a" appears in both "model-00001-of-00002\.safetensors" and "model-00002-of-00002\.safetensors"/,
    );
  });
});

Deno.test("loadSafetensorsIndex() reports a missing shard, folder or model file", async () => {
  await withTempDir(async (dir) => {
    await assertModelError(
      () => loadSafetensorsIndex(dir),
      /has neither model\.safetensors nor model\.safetensors\.index\.json/,
    );
    await assertModelError(() => loadSafetensorsIndex(join(dir, "gone")), /folder not found/);
    await writeShards(dir);
    await assertModelError(
      () => loadSafetensorsIndex(join(dir, "model.safetensors.index.json")),
      /is not a folder/,
    );
    await Deno.remove(join(dir, "model-00002-of-00002.safetensors"));
    await assertModelError(
      () => loadSafetensorsIndex(dir),
      /model-00002-of-00002\.safetensors: file not found/,
    );
  });
});

// --- real fixtures ---------------------------------------------------------------------------

Deno.test("the fixture models parse, with the expected dtypes and shapes", async () => {
  const expected: [string, DType, number, boolean][] = [
    ["tiny-llama", "BF16", 111, true],
    ["tiny-gemma2", "F32", 134, false],
    ["tiny-draft", "F16", 20, false],
  ];
  for (const [model, dtype, count, hasLmHead] of expected) {
    const h = await readSafetensorsHeader(join(FIXTURES, model, "model.safetensors"));
    assert.deepEqual(h.metadata, { format: "pt" });
    assert.equal(h.tensors.size, count, model);
    for (const t of h.tensors.values()) assert.equal(t.dtype, dtype, `${model} ${t.name}`);
    assert.deepEqual(h.tensors.get("model.embed_tokens.weight")!.shape, [1024, 128]);
    assert.deepEqual(h.tensors.get("model.norm.weight")!.shape, [128]);
    assert.deepEqual(h.tensors.get("model.layers.0.mlp.down_proj.weight")!.shape, [128, 384]);
    assert.deepEqual(h.tensors.get("model.layers.1.self_attn.k_proj.weight")!.shape, [64, 128]);
    assert.equal(h.tensors.has("lm_head.weight"), hasLmHead, model);
    const total = [...h.tensors.values()].reduce((n, t) => n + t.byteLength, 0);
    assert.equal(h.dataStart + total, h.fileSize);
  }
});

Deno.test("loadSafetensorsIndex() loads a fixture folder and streams a tensor", async () => {
  const tensors = await loadSafetensorsIndex(join(FIXTURES, "tiny-llama"));
  const norm = tensors.get("model.norm.weight")!;
  assert.equal(norm.byteLength, 256);
  const { pieces, all } = await collect(norm, 100);
  assert.deepEqual(pieces.map((p) => p.length), [100, 100, 56]);
  // bf16 is the top half of an f32.
  const f32 = new Float32Array(
    Uint32Array.from(new Uint16Array(all.buffer), (x) => x << 16).buffer,
  );
  assert.ok(f32.every(Number.isFinite), "bf16 norm weights are finite");
});
