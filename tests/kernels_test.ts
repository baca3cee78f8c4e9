/**
 * Each WGSL kernel (except the sampler) against its plain-loop CPU reference in
 * tests/reference/cpu_ops.ts, on seeded random inputs with sizes that are not multiples of the
 * workgroup size (64), odd token counts, all three weight dtypes and row-chunked weights.
 * Output buffers start with random contents and are compared whole, so writes outside the
 * expected region fail too; inputs the kernels must not read hold NaN.
 */
import assert from "node:assert/strict";
import { readF32, readU32, storageBuffer } from "../src/gpu/buffers.ts";
import { openGpu } from "../src/gpu/device.ts";
import {
  addRmsnormOp,
  type AttentionBlocking,
  attentionOp,
  embedOp,
  type Epilogue,
  GLU_WIDE_COLS,
  type MatmulGeometry,
  matmulGeometry,
  matmulOp,
  type Op,
  type OpContext,
  Recorder,
  STATE_BYTES,
  STREAM_READ_RUN,
  streamReadOp,
  type WeightDType,
} from "../src/gpu/ops.ts";
import { Pipelines } from "../src/gpu/shader.ts";
import { ModelError } from "../src/errors.ts";
import {
  KV_TEXEL_BYTES,
  type KvLayout,
  kvLayout,
  kvTexture,
  maxKvContext,
} from "../src/model/kv_cache.ts";
import { createMatrix, toF32, weightTexture, writeMatrixRows } from "../src/model/weights.ts";
import * as ref from "./reference/cpu_ops.ts";

const gpu = await openGpu();
const device = gpu.device;
const ctx: OpContext = {
  device,
  pipelines: new Pipelines(device),
  state: storageBuffer(device, STATE_BYTES, "state"),
};

/** GPU f32 against the f64 reference: |got - want| <= TOL + TOL |want|. */
const TOL = 1e-4;
const DTYPES: WeightDType[] = ["F32", "F16", "BF16"];

// --- helpers ---------------------------------------------------------------------------------

/**
 * Asserts |got[i] - want[i]| <= tol (1 + |want[i]|) for every i (NaN matches only NaN). The message
 * names the first failing index (and [row, col] when `width` is given), expected, got, and the
 * largest error.
 */
function assertClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  tol: number,
  label: string,
  width?: number,
) {
  assert.equal(got.length, want.length, `${label}: length ${got.length}, expected ${want.length}`);
  const where = (i: number) =>
    width ? `index ${i} [${Math.floor(i / width)}, ${i % width}]` : `index ${i}`;
  let bad = 0;
  let first = -1;
  let maxError = 0;
  let maxAt = -1;
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    const w = want[i];
    if (Number.isNaN(w) && Number.isNaN(g)) continue;
    const error = Number.isNaN(g - w) ? Infinity : Math.abs(g - w);
    if (maxAt < 0 || error > maxError) {
      maxError = error;
      maxAt = i;
    }
    if (!(error <= tol * (1 + Math.abs(w)))) {
      bad++;
      if (first < 0) first = i;
    }
  }
  if (bad > 0) {
    assert.fail(
      `${label}: ${bad} of ${want.length} values differ; first at ${where(first)}: ` +
        `expected ${want[first]}, got ${got[first]}; max error ${maxError} at ${where(maxAt)} ` +
        `(expected ${want[maxAt]}, got ${got[maxAt]}); tol ${tol} abs + rel`,
    );
  }
}

/** Buffers made by one test, destroyed when it ends. */
class Buffers {
  #all: (GPUBuffer | GPUTexture)[] = [];
  /** A storage buffer holding `data`. */
  upload(data: Float32Array | Uint32Array, label: string): GPUBuffer {
    const buffer = storageBuffer(device, data.byteLength, label, { uniform: true });
    device.queue.writeBuffer(
      buffer,
      0,
      data.buffer as ArrayBuffer,
      data.byteOffset,
      data.byteLength,
    );
    return this.own(buffer);
  }
  /** Destroys `buffer` with the rest. */
  own(buffer: GPUBuffer): GPUBuffer {
    this.#all.push(buffer);
    return buffer;
  }
  /** Destroys `texture` with the rest. */
  ownTexture(texture: GPUTexture): GPUTexture {
    this.#all.push(texture);
    return texture;
  }
  /**
   * A K/V cache texture holding `values` (ctxLen, nKv, headDim) in the model's layout, for a GPU
   * whose textures are at most max(2 positions' width, ctxLen / 2) texels: caches longer than
   * that put two positions in a texture row, so the tests cover the folded layout too.
   */
  kv(
    values: Float32Array,
    shape: { nKv: number; headDim: number; ctxLen: number },
    label: string,
  ) {
    const positionTexels = (shape.nKv * shape.headDim) / 4;
    const maxDim = Math.max(2 * positionTexels, Math.ceil(shape.ctxLen / 2));
    const layout = kvLayout(shape.nKv, shape.headDim, shape.ctxLen, maxDim);
    const texture = this.ownTexture(kvTexture(device, layout, label, values));
    return { view: texture.createView(), texture, layout };
  }
  /** Destroys a weight matrix's textures with the rest. */
  track<T extends { chunks: { texture: GPUTexture }[] }>(m: T): T {
    this.#all.push(...m.chunks.map((c) => c.texture));
    return m;
  }
  destroy() {
    this.#all.forEach((b) => b.destroy());
    this.#all = [];
  }
}

async function withBuffers<T>(fn: (b: Buffers) => T | Promise<T>): Promise<T> {
  const b = new Buffers();
  try {
    return await fn(b);
  } finally {
    b.destroy();
  }
}

/**
 * Records `op` for `recordN` tokens (default n) with state { pos, n } in one compute pass and
 * submits it; returns the dispatches. A recordN above n is the GPU-resident loops' case: one
 * recorded sequence serves steps whose token count the GPU sets.
 */
function run(op: Op | Op[], pos: number, n: number, recordN = n): number {
  device.queue.writeBuffer(ctx.state, 0, new Uint32Array([pos, n, 0, 0]));
  const enc = device.createCommandEncoder();
  const rec = new Recorder(enc.beginComputePass());
  for (const o of Array.isArray(op) ? op : [op]) o.record(rec, recordN);
  rec.pass.end();
  device.queue.submit([enc.finish()]);
  return rec.dispatches;
}

/** The labels (kernel and defines) of the pipelines `op` records for `n` tokens; nothing runs. */
function pipelineLabels(op: Op, n: number): string[] {
  const labels: string[] = [];
  const rec = Recorder.counting();
  rec.dispatch = (pipeline) => void labels.push(pipeline.label);
  op.record(rec, n);
  return labels;
}

/** `values` with NaN at the indices where `hole(i)` (input the kernel must not read). */
function withHoles(values: Float32Array<ArrayBuffer>, hole: (i: number) => boolean) {
  for (let i = 0; i < values.length; i++) if (hole(i)) values[i] = NaN;
  return values;
}

// --- matmul ----------------------------------------------------------------------------------

interface MatmulCase {
  dtype: WeightDType;
  epilogue: Epilogue;
  rows: number;
  cols: number;
  n: number;
  norm?: boolean;
  softcap?: number;
  lastOnly?: boolean;
  /** Rows per weight chunk (a small binding limit); absent: one chunk. */
  chunkRows?: number;
  /** Extra floats per x row (a multiple of 4), NaN-filled. */
  xPad?: number;
  /** x ~ U(-2 xScale, 2 xScale); small values make the RMSNorm epsilon matter. */
  xScale?: number;
  /** Tokens the op is recorded for (state.n is n); default n. */
  recordN?: number;
  /** A variant other than the op's choice (rows / tokens per invocation, workgroup size). */
  geometry?: Partial<MatmulGeometry>;
  /** The norm gain in a buffer without UNIFORM usage (read through its storage binding). */
  gainStorage?: boolean;
}

/** A buffer holding `data` that can only be bound as storage. */
function storageOnly(b: Buffers, data: Float32Array<ArrayBuffer>): GPUBuffer {
  const usage = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
  const buffer = device.createBuffer({ size: data.byteLength, usage, label: "storage only" });
  device.queue.writeBuffer(buffer, 0, data);
  return b.own(buffer);
}

async function checkMatmul(c: MatmulCase) {
  const label = `matmul ${JSON.stringify(c)}`;
  const rng = ref.mulberry32(ref.seedFrom(label));
  const glu = c.epilogue === "glu-silu" || c.epilogue === "glu-gelu";
  const stack = glu ? 2 : 1;
  const { rows, cols, n } = c;
  // Weights ~ U(-a, a) with a = 2 / sqrt(cols), so outputs are O(1) (softcaps then matter).
  const a = 2 / Math.sqrt(cols);
  const parts = Array.from(
    { length: stack },
    () => ref.encodeWeights(c.dtype, ref.randomF32(rng, rows * cols, -a, a)),
  );
  const wDecoded = new Float32Array(stack * rows * cols);
  parts.forEach((p, i) => wDecoded.set(p.decoded, i * rows * cols));

  const xStride = cols + (c.xPad ?? 0);
  const x = withHoles(
    // One row at least (a binding cannot be empty), unread when there are no tokens.
    ref.randomF32(rng, Math.max(n, 1) * xStride, -2 * (c.xScale ?? 1), 2 * (c.xScale ?? 1)),
    (i) => i % xStride >= cols || (c.lastOnly === true && Math.floor(i / xStride) < n - 1),
  );
  const yStride = rows + 3; // columns past `rows` must stay untouched
  const yRows = (c.lastOnly ? 1 : n) + 1; // so must the row after the last token (or row 0)
  const y0 = ref.randomF32(rng, yRows * yStride);
  const gain = ref.randomF32(rng, cols, 0.5, 1.5);
  const eps = 1e-5;

  await withBuffers(async (b) => {
    const maxRows = c.chunkRows ? stack * c.chunkRows : undefined;
    const w = b.track(createMatrix(device, c.dtype, rows, cols, "w", { stack, maxRows }));
    const chunks = c.chunkRows ? Math.ceil(rows / c.chunkRows) : 1;
    assert.equal(w.chunks.length, chunks, `${label}: chunk count`);
    parts.forEach((p, part) => writeMatrixRows(device, w, 0, p.bytes, part));
    const y = b.upload(y0, "y");
    const op = matmulOp(ctx, {
      w,
      x: b.upload(x, "x"),
      xStride,
      y,
      yStride,
      epilogue: c.epilogue,
      norm: c.norm
        ? { gain: c.gainStorage ? storageOnly(b, gain) : b.upload(gain, "gain"), eps }
        : undefined,
      softcap: c.softcap,
      lastOnly: c.lastOnly,
      geometry: c.geometry,
    });
    assert.equal(run(op, 3, n, c.recordN), chunks, `${label}: one dispatch per chunk`);
    const got = await readF32(device, y, y0.length);
    const want = ref.matmulRef({
      w: wDecoded,
      rows,
      cols,
      x,
      xStride,
      y: y0,
      yStride,
      n,
      epilogue: c.epilogue,
      norm: c.norm ? { gain, eps } : undefined,
      softcap: c.softcap,
      lastOnly: c.lastOnly,
    });
    assertClose(got, want, TOL, label, yStride);
  });
}

const EPILOGUES: { epilogue: Epilogue; words: string }[] = [
  { epilogue: "store", words: "the store epilogue (with and without softcap)" },
  { epilogue: "add", words: "the residual-add epilogue" },
  { epilogue: "glu-silu", words: "the SiLU GLU epilogue" },
  { epilogue: "glu-gelu", words: "the tanh-GELU GLU epilogue" },
];

for (const dtype of DTYPES) {
  for (const { epilogue, words } of EPILOGUES) {
    Deno.test(
      `matmul with ${words} matches the CPU reference for ${dtype} weights, ` +
        `with and without fused RMSNorm, for 1, 5 and 13 tokens`,
      async () => {
        const softcap = epilogue === "store" ? 1.5 : undefined;
        // n = 1 takes the TOKENS = 1 variant, 5 and 13 the TOKENS = 8 one (13: a partial block).
        const cases: Omit<MatmulCase, "dtype" | "epilogue">[] = [
          { rows: 67, cols: 72, n: 1 },
          { rows: 131, cols: 200, n: 1, norm: true, softcap },
          { rows: 131, cols: 200, n: 5, xPad: 4 },
          { rows: 67, cols: 72, n: 5, norm: true },
          { rows: 67, cols: 200, n: 13, softcap },
          { rows: 131, cols: 72, n: 13, norm: true, xPad: 8 },
        ];
        for (const c of cases) await checkMatmul({ dtype, epilogue, ...c });
      },
    );
  }
}

Deno.test("matmul over a weight split into several row chunks matches the CPU reference for every epilogue", async () => {
  const cases: MatmulCase[] = [
    { dtype: "F16", epilogue: "store", rows: 67, cols: 72, n: 1, norm: true, chunkRows: 5 },
    // mean(x^2) ~ 1e-6, near eps = 1e-5: a misplaced epsilon shows.
    { dtype: "F32", epilogue: "store", rows: 67, cols: 72, n: 5, norm: true, xScale: 1e-3 },
    { dtype: "F32", epilogue: "store", rows: 67, cols: 72, n: 13, softcap: 1.5, chunkRows: 5 },
    { dtype: "F32", epilogue: "add", rows: 67, cols: 200, n: 1, chunkRows: 5 },
    { dtype: "BF16", epilogue: "add", rows: 131, cols: 72, n: 5, norm: true, chunkRows: 64 },
    { dtype: "BF16", epilogue: "glu-silu", rows: 67, cols: 72, n: 13, norm: true, chunkRows: 5 },
    { dtype: "F16", epilogue: "glu-silu", rows: 131, cols: 72, n: 1, chunkRows: 65 },
    { dtype: "F16", epilogue: "glu-gelu", rows: 67, cols: 200, n: 5, norm: true, chunkRows: 5 },
    { dtype: "F32", epilogue: "glu-gelu", rows: 131, cols: 72, n: 13, chunkRows: 7 },
  ];
  for (const c of cases) await checkMatmul(c);
});

Deno.test("matmul with 8 and 16 rows per invocation and 64-invocation workgroups (larger chunks) matches the CPU reference", async () => {
  // The op picks rows per invocation and workgroup size by chunk rows and token count; these
  // chunks are large enough for the 8- and 16-row blocks and, at 4099 rows, 64-wide workgroups.
  const cases: MatmulCase[] = [
    { dtype: "BF16", epilogue: "glu-silu", rows: 1031, cols: 72, n: 1, norm: true },
    { dtype: "F16", epilogue: "add", rows: 1031, cols: 72, n: 5 },
    { dtype: "F32", epilogue: "store", rows: 4099, cols: 16, n: 1, softcap: 1.5 },
    { dtype: "BF16", epilogue: "store", rows: 4099, cols: 16, n: 8, norm: true },
    { dtype: "F16", epilogue: "glu-gelu", rows: 517, cols: 200, n: 9, norm: true },
    { dtype: "BF16", epilogue: "add", rows: 1031, cols: 72, n: 4, chunkRows: 600 },
  ];
  for (const c of cases) await checkMatmul(c);
});

Deno.test("every matmul variant (4, 8 and 16 rows; 1, 2, 3, 4 and 8 tokens per invocation) matches the CPU reference for 1..9 tokens", async () => {
  // Tokens 1..4 take the exact quad, 5..9 the 8-token variant (9: a second, partial block); odd
  // row counts leave partial row groups; epilogues, dtypes and the fused norm rotate.
  const epilogues: Epilogue[] = ["store", "add", "glu-silu", "glu-gelu"];
  const cases: MatmulCase[] = [];
  for (let n = 1; n <= 9; n++) {
    for (const [i, rows] of [4, 8, 16].entries()) {
      cases.push({
        dtype: DTYPES[(n + i) % DTYPES.length],
        epilogue: epilogues[(n + i) % epilogues.length],
        rows: [37, 67, 131][(n + 2 * i) % 3],
        cols: [72, 200, 40][(n + i) % 3],
        n,
        norm: (n + i) % 2 === 0,
        xPad: n % 3 === 0 ? 4 : undefined,
        // x through its uniform binding (it fits) or, every other case, its storage binding.
        geometry: { rows, xUniform: (n + i) % 2 === 0 },
      });
    }
  }
  // Token blocks other than the op's: more columns than tokens, several blocks of 2 and 3.
  cases.push(
    { dtype: "BF16", epilogue: "store", rows: 67, cols: 72, n: 3, geometry: { tokens: 8 } },
    {
      dtype: "F16",
      epilogue: "glu-silu",
      rows: 37,
      cols: 40,
      n: 7,
      norm: true,
      geometry: { tokens: 2 },
    },
    { dtype: "F32", epilogue: "add", rows: 131, cols: 72, n: 8, geometry: { tokens: 3, rows: 4 } },
    {
      dtype: "BF16",
      epilogue: "store",
      rows: 1031,
      cols: 16,
      n: 6,
      norm: true,
      geometry: { wg: 64 },
    },
  );
  for (const c of cases) await checkMatmul(c);
});

Deno.test("a GLU matmul over 2048 or more columns takes 4 rows per stream, the others 8; the choice matches the CPU reference", async () => {
  await withBuffers((b) => {
    const rowsOf = (epilogue: Epilogue, cols: number, n = 1) => {
      const stack = epilogue === "add" ? 1 : 2;
      const w = b.track(createMatrix(device, "BF16", 64, cols, "w", { stack }));
      const x = b.upload(new Float32Array(8 * cols), "x");
      const y = b.upload(new Float32Array(8 * 64), "y");
      const op = matmulOp(ctx, { w, x, xStride: cols, y, yStride: 64, epilogue });
      return Number(pipelineLabels(op, n)[0].match(/\["ROWS",(\d+)\]/)![1]);
    };
    assert.equal(rowsOf("glu-silu", 2048), 4);
    assert.equal(rowsOf("glu-gelu", 2304, 3), 4);
    assert.equal(rowsOf("glu-silu", 1024), 8);
    assert.equal(rowsOf("add", 2048), 8);
  });
  assert.equal(matmulGeometry(8192, 1, { glu: true, cols: GLU_WIDE_COLS }).rows, 4);
  assert.equal(matmulGeometry(8192, 8, { glu: true, cols: GLU_WIDE_COLS - 8 }).rows, 8);
  await checkMatmul({
    dtype: "BF16",
    epilogue: "glu-silu",
    rows: 37,
    cols: 2048,
    n: 2,
    norm: true,
  });
  await checkMatmul({ dtype: "F16", epilogue: "glu-gelu", rows: 21, cols: 2056, n: 6 });
});

Deno.test("matmul reads x through a uniform binding exactly when the forward's rows of x fit in 64 KiB; both paths match the CPU reference", async () => {
  await withBuffers((b) => {
    const w = b.track(createMatrix(device, "BF16", 16, 2000, "w"));
    const y = b.upload(new Float32Array(16 * 16), "y");
    const big = b.upload(new Float32Array(16 * 2000), "x"); // 128,000 bytes
    const small = b.upload(new Float32Array(4 * 2000), "x"); // 32,000 bytes
    const op = (x: GPUBuffer, xUniform?: boolean) =>
      matmulOp(ctx, {
        w,
        x,
        xStride: 2000,
        y,
        yStride: 16,
        epilogue: "store",
        geometry: { xUniform },
      });
    const uniform = (labels: string[]) => labels.every((l) => l.includes("X_UNIFORM"));
    const storage = (labels: string[]) => labels.every((l) => !l.includes("X_UNIFORM"));
    // 8 rows of 2000 floats = 64,000 bytes fit; 9 do not.
    assert.ok(uniform(pipelineLabels(op(big), 8)));
    assert.ok(storage(pipelineLabels(op(big), 9)));
    // The binding cannot be larger than the buffer: 4 rows fit in the small one, 5 would not.
    assert.ok(uniform(pipelineLabels(op(small), 4)));
    assert.ok(storage(pipelineLabels(op(small), 5)));
    assert.ok(storage(pipelineLabels(op(big, false), 1)));
    // A buffer that cannot be a uniform is always read through storage.
    const plain = b.own(device.createBuffer({ size: 64, usage: GPUBufferUsage.STORAGE }));
    const noUniform = matmulOp(ctx, {
      w: b.track(createMatrix(device, "F32", 4, 16, "w")),
      x: plain,
      xStride: 16,
      y,
      yStride: 4,
      epilogue: "store",
    });
    assert.ok(storage(pipelineLabels(noUniform, 1)));
  });
  // Both paths on either side of the boundary (cols 2000: 8 tokens fit, 9 do not).
  const cases: MatmulCase[] = [
    { dtype: "BF16", epilogue: "store", rows: 67, cols: 2000, n: 8, norm: true },
    { dtype: "BF16", epilogue: "store", rows: 67, cols: 2000, n: 9, norm: true },
    { dtype: "F16", epilogue: "add", rows: 37, cols: 2000, n: 8, geometry: { xUniform: false } },
    { dtype: "F32", epilogue: "glu-silu", rows: 37, cols: 2000, n: 6, lastOnly: true },
  ];
  for (const c of cases) await checkMatmul(c);
});

Deno.test("matmul reads the norm gain through a uniform binding when its buffer can be one; both paths match the CPU reference", async () => {
  await withBuffers((b) => {
    const w = b.track(createMatrix(device, "BF16", 16, 72, "w"));
    const x = b.upload(new Float32Array(72), "x");
    const y = b.upload(new Float32Array(16), "y");
    const gain = new Float32Array(72);
    const op = (g: GPUBuffer) =>
      matmulOp(ctx, {
        w,
        x,
        xStride: 72,
        y,
        yStride: 16,
        epilogue: "store",
        norm: { gain: g, eps: 1e-5 },
      });
    assert.ok(pipelineLabels(op(b.upload(gain, "gain")), 1)[0].includes('["GAIN_UNIFORM",true]'));
    assert.ok(!pipelineLabels(op(storageOnly(b, gain)), 1)[0].includes("GAIN_UNIFORM"));
  });
  const cases: MatmulCase[] = [
    { dtype: "BF16", epilogue: "store", rows: 67, cols: 72, n: 1, norm: true, gainStorage: true },
    {
      dtype: "F32",
      epilogue: "glu-silu",
      rows: 37,
      cols: 200,
      n: 8,
      norm: true,
      gainStorage: true,
    },
    { dtype: "F16", epilogue: "add", rows: 37, cols: 40, n: 3, norm: true, gainStorage: true },
    {
      dtype: "BF16",
      epilogue: "glu-gelu",
      rows: 37,
      cols: 2048,
      n: 2,
      norm: true,
      gainStorage: true,
    },
  ];
  for (const c of cases) await checkMatmul(c);
});

Deno.test("matmul recorded for more tokens than state.n computes and writes only state.n tokens", async () => {
  const cases: MatmulCase[] = [
    { dtype: "BF16", epilogue: "store", rows: 131, cols: 72, n: 3, recordN: 8, norm: true },
    { dtype: "F16", epilogue: "glu-silu", rows: 1031, cols: 72, n: 5, recordN: 9, norm: true },
    { dtype: "F32", epilogue: "add", rows: 67, cols: 200, n: 1, recordN: 8 },
    { dtype: "BF16", epilogue: "store", rows: 67, cols: 72, n: 6, recordN: 8, lastOnly: true },
  ];
  for (const c of cases) await checkMatmul(c);
});

Deno.test("matmul with no tokens (state.n = 0, a stopped draft's no-op step) writes nothing, lastOnly too", async () => {
  // Before, lastOnly took row n - 1 = 2^32 - 1 of x (clamped) and wrote a whole row of logits.
  const cases: MatmulCase[] = [
    { dtype: "BF16", epilogue: "store", rows: 131, cols: 72, n: 0, recordN: 1, norm: true },
    { dtype: "BF16", epilogue: "store", rows: 131, cols: 72, n: 0, recordN: 1, lastOnly: true },
    { dtype: "F16", epilogue: "store", rows: 67, cols: 72, n: 0, recordN: 8, norm: true },
    { dtype: "F32", epilogue: "add", rows: 67, cols: 200, n: 0, recordN: 1 },
    { dtype: "BF16", epilogue: "glu-silu", rows: 67, cols: 72, n: 0, recordN: 1, lastOnly: true },
  ];
  for (const c of cases) await checkMatmul(c);
});

Deno.test("matmul with lastOnly reads only the last token's row and writes row 0, like the prefill logits", async () => {
  const cases: MatmulCase[] = [
    { dtype: "BF16", epilogue: "store", rows: 131, cols: 72, n: 1, norm: true, softcap: 1.5 },
    { dtype: "BF16", epilogue: "store", rows: 131, cols: 72, n: 5, norm: true, softcap: 1.5 },
    { dtype: "F32", epilogue: "store", rows: 67, cols: 200, n: 13, norm: true },
    { dtype: "F16", epilogue: "store", rows: 67, cols: 72, n: 13, norm: true, chunkRows: 5 },
    { dtype: "F32", epilogue: "store", rows: 67, cols: 72, n: 7, xPad: 4, chunkRows: 9 },
  ];
  for (const c of cases) await checkMatmul({ ...c, lastOnly: true });
});

// --- embed -----------------------------------------------------------------------------------

Deno.test("embedding lookup from a row-chunked table matches the CPU reference for F32, F16 and BF16 tables", async () => {
  const vocab = 37;
  for (const dtype of DTYPES) {
    for (
      const { cols, chunkRows, scale } of [
        { cols: 72, chunkRows: 5, scale: 1 },
        { cols: 200, chunkRows: 0, scale: Math.sqrt(200) },
        { cols: 520, chunkRows: 11, scale: Math.sqrt(520) },
      ]
    ) {
      const label = `embed ${JSON.stringify({ dtype, vocab, cols, chunkRows, scale })}`;
      const rng = ref.mulberry32(ref.seedFrom(label));
      const table = ref.encodeWeights(dtype, ref.randomF32(rng, vocab * cols));
      // First and last ids, both sides of chunk boundaries, a repeat, and random ones: 9 tokens.
      const ids = new Uint32Array([0, vocab - 1, 4, 5, 10, 11, 4, ...ref.randomU32(rng, 2, vocab)]);
      const n = ids.length;
      const h0 = ref.randomF32(rng, (n + 1) * cols); // row n must stay untouched
      await withBuffers(async (b) => {
        const m = b.track(
          createMatrix(device, dtype, vocab, cols, "embed", { maxRows: chunkRows || undefined }),
        );
        assert.equal(m.chunks.length, chunkRows ? Math.ceil(vocab / chunkRows) : 1);
        writeMatrixRows(device, m, 0, table.bytes);
        const h = b.upload(h0, "h");
        const op = embedOp(ctx, { table: m, ids: b.upload(ids, "ids"), h, scale });
        run(op, 0, n);
        const got = await readF32(device, h, h0.length);
        const want = new Float32Array(h0);
        want.set(ref.embedRef(table.decoded, cols, ids, scale));
        assertClose(got, want, TOL, label, cols);
      });
    }
  }
});

// --- q/k/v projection with RoPE and the K/V append (matmul's rope-kv epilogue) --------------

interface RopeCase {
  nHeads: number;
  nKv: number;
  headDim: number;
  pos: number;
  n: number;
  dtype?: WeightDType;
  /** Input width (a multiple of 8); default 40. */
  cols?: number;
  /** Cache capacity past pos + n (negative: the last tokens do not fit); default 3. */
  spare?: number;
  /** Rows per weight chunk, a multiple of headDim (a small binding limit); absent: one chunk. */
  chunkRows?: number;
  /** Tokens the op is recorded for (state.n is n); default n. */
  recordN?: number;
  /** A variant other than the op's choice (tokens per invocation, workgroup size). */
  geometry?: Partial<MatmulGeometry>;
}

/** The first `count` values of a K/V cache texture (Buffers.kv), flat (ctxLen, nKv, headDim). */
async function readKv(
  kv: { texture: GPUTexture; layout: KvLayout },
  count: number,
): Promise<Float32Array> {
  const { width, height } = kv.layout;
  const rowBytes = Math.ceil((width * KV_TEXEL_BYTES) / 256) * 256; // copies align rows to 256
  const staging = device.createBuffer({
    size: rowBytes * height,
    usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST | GPUBufferUsage.STORAGE,
  });
  const encoder = device.createCommandEncoder();
  encoder.copyTextureToBuffer({ texture: kv.texture }, { buffer: staging, bytesPerRow: rowBytes }, [
    width,
    height,
  ]);
  device.queue.submit([encoder.finish()]);
  const padded = await readF32(device, staging, (rowBytes / 4) * height);
  staging.destroy();
  const flat = new Float32Array(width * 4 * height);
  for (let y = 0; y < height; y++) {
    flat.set(padded.subarray((y * rowBytes) / 4, (y * rowBytes) / 4 + width * 4), y * width * 4);
  }
  return flat.subarray(0, count);
}

/** Random inputs of a rope-kv case and what the CPU reference makes of them. */
function ropeCase(c: RopeCase) {
  const label = `matmul rope-kv ${JSON.stringify(c)}`;
  const rng = ref.mulberry32(ref.seedFrom(label));
  const cols = c.cols ?? 40;
  const rows = (c.nHeads + 2 * c.nKv) * c.headDim;
  const ctxLen = c.pos + c.n + (c.spare ?? 3);
  const cacheLen = ctxLen * c.nKv * c.headDim;
  const weights = ref.encodeWeights(
    c.dtype ?? "BF16",
    ref.randomF32(rng, rows * cols, -2 / Math.sqrt(cols), 2 / Math.sqrt(cols)),
  );
  const x = ref.randomF32(rng, c.n * cols, -2, 2);
  const gain = ref.randomF32(rng, cols, 0.5, 1.5);
  const eps = 1e-5;
  // The projection alone (store epilogue), then rotation and the cache append.
  const qkv = ref.matmulRef({
    w: weights.decoded,
    rows,
    cols,
    x,
    xStride: cols,
    y: new Float32Array(c.n * rows),
    yStride: rows,
    n: c.n,
    epilogue: "store",
    norm: { gain, eps },
  });
  const args: ref.RopeKvRefArgs = {
    ...c,
    ctx: ctxLen,
    qkv,
    cosSin: ref.ropeTable(ctxLen, c.headDim),
    q: ref.randomF32(rng, (c.n + 1) * c.nHeads * c.headDim),
    kCache: ref.randomF32(rng, cacheLen),
    vCache: ref.randomF32(rng, cacheLen),
  };
  return { label, rows, cols, ctxLen, cacheLen, weights, x, gain, eps, args };
}

/** The fused op over a rope case's inputs; q and the caches start as the case's random values. */
function ropeOp(b: Buffers, c: RopeCase, r: ReturnType<typeof ropeCase>) {
  const dtype = c.dtype ?? "BF16";
  const maxRows = c.chunkRows || undefined;
  const w = b.track(
    createMatrix(device, dtype, r.rows, r.cols, "w", { rowAlign: c.headDim, maxRows }),
  );
  assert.equal(w.chunks.length, c.chunkRows ? Math.ceil(r.rows / c.chunkRows) : 1);
  writeMatrixRows(device, w, 0, r.weights.bytes);
  const q = b.upload(r.args.q, "q");
  const cache = { nKv: c.nKv, headDim: c.headDim, ctxLen: r.ctxLen };
  const k = b.kv(r.args.kCache, cache, "k");
  const v = b.kv(r.args.vCache, cache, "v");
  const op = matmulOp(ctx, {
    w,
    x: b.upload(r.x, "x"),
    xStride: r.cols,
    y: q,
    yStride: c.nHeads * c.headDim,
    epilogue: "rope-kv",
    norm: { gain: b.upload(r.gain, "gain"), eps: r.eps },
    rope: {
      nHeads: c.nHeads,
      nKv: c.nKv,
      headDim: c.headDim,
      ctxLen: r.ctxLen,
      cosSin: b.upload(r.args.cosSin, "cos_sin"),
      k: k.view,
      v: v.view,
      kvWidth: k.layout.width,
    },
    geometry: c.geometry,
  });
  return { op, q, k, v };
}

/**
 * Runs the fused q/k/v + RoPE + K/V append on random input; q and both caches compared whole.
 * Returns the caches' layout.
 */
async function checkRopeKv(c: RopeCase): Promise<KvLayout> {
  const r = ropeCase(c);
  return await withBuffers(async (b) => {
    const { op, q, k, v } = ropeOp(b, c, r);
    run(op, c.pos, c.n, c.recordN);
    const want = ref.ropeKvRef(r.args);
    const row = c.nKv * c.headDim;
    const label = r.label;
    assertClose(await readF32(device, q, r.args.q.length), want.q, TOL, `${label} q`, c.headDim);
    assertClose(await readKv(k, r.cacheLen), want.kCache, TOL, `${label} k cache`, row);
    assertClose(await readKv(v, r.cacheLen), want.vCache, TOL, `${label} v cache`, row);
    return k.layout;
  });
}

Deno.test("q/k/v projection with RoPE and K/V append matches the CPU reference at position 0, all dtypes", async () => {
  for (const dtype of DTYPES) {
    await checkRopeKv({ nHeads: 4, nKv: 2, headDim: 32, pos: 0, n: 5, dtype });
    await checkRopeKv({ nHeads: 6, nKv: 3, headDim: 64, pos: 0, n: 1, dtype, cols: 72 });
    await checkRopeKv({ nHeads: 3, nKv: 1, headDim: 24, pos: 0, n: 3, dtype, cols: 200 });
  }
});

Deno.test("q/k/v projection with RoPE and K/V append matches the CPU reference at later positions, 1..13 tokens", async () => {
  await checkRopeKv({ nHeads: 4, nKv: 2, headDim: 32, pos: 9, n: 7 });
  await checkRopeKv({ nHeads: 6, nKv: 3, headDim: 64, pos: 70, n: 1 });
  await checkRopeKv({ nHeads: 6, nKv: 2, headDim: 64, pos: 13, n: 13 });
  await checkRopeKv({ nHeads: 4, nKv: 4, headDim: 160, pos: 40, n: 3, cols: 24 });
  await checkRopeKv({ nHeads: 5, nKv: 5, headDim: 8, pos: 2, n: 9, cols: 8 });
});

Deno.test("q/k/v + RoPE in every tokens-per-invocation variant, 64-invocation workgroups and row chunks", async () => {
  for (const tokens of [1, 2, 3, 4, 8]) {
    for (const n of [1, 3, 5, 9]) {
      await checkRopeKv({ nHeads: 3, nKv: 1, headDim: 24, pos: 4, n, geometry: { tokens } });
    }
  }
  await checkRopeKv({ nHeads: 32, nKv: 8, headDim: 64, pos: 5, n: 2, geometry: { wg: 64 } });
  // Chunks of 2 and 3 heads' rows: the split falls inside q, between k and v, inside v.
  await checkRopeKv({ nHeads: 4, nKv: 2, headDim: 32, pos: 3, n: 5, chunkRows: 64 });
  await checkRopeKv({ nHeads: 3, nKv: 2, headDim: 16, pos: 0, n: 3, chunkRows: 48, dtype: "F32" });
});

Deno.test("q/k/v + RoPE recorded for more tokens than state.n, or past the cache's end, writes only what fits", async () => {
  await checkRopeKv({ nHeads: 4, nKv: 2, headDim: 32, pos: 9, n: 3, recordN: 8 });
  await checkRopeKv({ nHeads: 6, nKv: 3, headDim: 64, pos: 0, n: 1, recordN: 9 });
  await checkRopeKv({ nHeads: 4, nKv: 2, headDim: 32, pos: 6, n: 5, spare: -2 });
});

Deno.test("K/V caches taller than a texture put whole positions side by side; RoPE writes and attention reads them there", async () => {
  assert.deepEqual(kvLayout(2, 32, 1000, 16384), {
    positionTexels: 16,
    positionsPerRow: 1,
    width: 16,
    height: 1000,
  });
  assert.deepEqual(kvLayout(2, 32, 1000, 300), {
    positionTexels: 16,
    positionsPerRow: 4,
    width: 64,
    height: 250,
  });
  assert.equal(maxKvContext(2, 32, 300), 18 * 300); // 18 positions of 16 texels a row
  // Two positions a row (Buffers.kv's texture limit), an odd count of them in the last row.
  const rope = await checkRopeKv({ nHeads: 2, nKv: 1, headDim: 16, pos: 20, n: 5 });
  assert.deepEqual([rope.positionsPerRow, rope.width, rope.height], [2, 8, 14]);
  const gqa = { nHeads: 4, nKv: 2, headDim: 32, window: 0, softcap: 0 };
  const attention = await checkAttention({ ...gqa, pos: 40, n: 2 });
  assert.deepEqual([attention.positionsPerRow, attention.height], [2, 24]);
});

Deno.test("a weight matrix lives in textures no taller than the limit; a row wider than a texture is a one-line ModelError", async () => {
  const limit = device.limits.maxTextureDimension2D;
  await withBuffers((b) => {
    // Gate and up stacked: 2 x rows per texture, so a limit of 10 rows holds 5 of each.
    const m = b.track(createMatrix(device, "BF16", 12, 16, "w", { stack: 2, maxRows: 10 }));
    assert.deepEqual(m.chunks.map((c) => [c.rowStart, c.rows]), [[0, 5], [5, 5], [10, 2]]);
    assert.deepEqual(m.chunks.map((c) => [c.texture.width, c.texture.height]), [[2, 10], [2, 10], [
      2,
      4,
    ]]);
    assert.equal(m.chunks[0].texture.format, "rgba32uint");
    // A whole texture's width of bf16 weights fits; 8 more (one more texel) do not.
    b.track(createMatrix(device, "BF16", 1, limit * 8, "wide"));
    assert.throws(
      () => createMatrix(device, "BF16", 1, limit * 8 + 8, "wider"),
      (e: Error) =>
        e instanceof ModelError && /^wider: a weight row of \d+ bytes exceeds/.test(e.message) &&
        !e.message.includes("\n"),
    );
    assert.throws(
      () => createMatrix(device, "F32", 4, 16, "w", { stack: 2, maxRows: 1 }),
      ModelError,
    );
  });
});

Deno.test("the rope-kv epilogue refuses a chunk that starts inside a head, or shapes that do not match", async () => {
  const c: RopeCase = { nHeads: 2, nKv: 1, headDim: 16, pos: 0, n: 1 };
  const r = ropeCase(c);
  await withBuffers((b) => {
    // 24 rows per chunk: without createMatrix's row alignment a chunk starts mid-head.
    const w = b.track(createMatrix(device, "BF16", r.rows, r.cols, "w", { maxRows: 24 }));
    const x = b.upload(r.x, "x");
    const gain = b.upload(r.gain, "gain");
    const cache = b.kv(r.args.kCache, { nKv: 1, headDim: 16, ctxLen: r.ctxLen }, "k");
    const kv = { k: cache.view, v: cache.view };
    const base = {
      x,
      xStride: r.cols,
      y: x,
      yStride: 32,
      epilogue: "rope-kv" as const,
      norm: { gain, eps: r.eps },
      rope: { nHeads: 2, nKv: 1, headDim: 16, ctxLen: r.ctxLen, cosSin: x, ...kv, kvWidth: 4 },
    };
    assert.throws(() => matmulOp(ctx, { ...base, w }), /starts inside a head/);
    const whole = b.track(createMatrix(device, "BF16", r.rows, r.cols, "w"));
    assert.throws(() => matmulOp(ctx, { ...base, w: whole, yStride: 48 }), /do not match/);
    assert.throws(
      () => matmulOp(ctx, { ...base, w: whole, norm: undefined }),
      /needs rope and norm/,
    );
  });
});

// --- attention -------------------------------------------------------------------------------

interface AttentionCase {
  nHeads: number;
  nKv: number;
  headDim: number;
  window: number;
  softcap: number;
  pos: number;
  n: number;
  /** Tokens the op is recorded for (state.n is n); default n. */
  recordN?: number;
  /** Query heads and tokens per workgroup other than the op's choice (the bench's variants). */
  blocking?: AttentionBlocking;
}

/**
 * Attention over a cache the CPU filled for positions [0, pos + n); later positions hold NaN,
 * which any read past the causal limit would spread into the output.
 */
async function checkAttention(c: AttentionCase): Promise<KvLayout> {
  const label = `attention ${JSON.stringify(c)}`;
  const rng = ref.mulberry32(ref.seedFrom(label));
  const d = c.headDim;
  const ctxLen = c.pos + c.n + 5;
  const filled = (c.pos + c.n) * c.nKv * d;
  const cache = () => withHoles(ref.randomF32(rng, ctxLen * c.nKv * d), (i) => i >= filled);
  // Larger queries with a softcap, so scores reach the cap's nonlinear range.
  const qScale = c.softcap > 0 ? 40 : 4;
  const args: ref.AttentionRefArgs = {
    ...c,
    scale: 1 / Math.sqrt(d),
    q: ref.randomF32(rng, c.n * c.nHeads * d, -qScale, qScale),
    kCache: cache(),
    vCache: cache(),
  };
  const out0 = ref.randomF32(rng, (c.n + 1) * c.nHeads * d);
  return await withBuffers(async (b) => {
    const out = b.upload(out0, "out");
    const k = b.kv(args.kCache, { nKv: c.nKv, headDim: d, ctxLen }, "k");
    const v = b.kv(args.vCache, { nKv: c.nKv, headDim: d, ctxLen }, "v");
    const op = attentionOp(ctx, {
      nHeads: c.nHeads,
      nKv: c.nKv,
      headDim: d,
      window: c.window,
      scale: args.scale,
      softcap: c.softcap,
      q: b.upload(args.q, "q"),
      k: k.view,
      v: v.view,
      kvWidth: k.layout.width,
      out,
      blocking: c.blocking,
    });
    if (c.blocking) {
      // The variant asked for is the one dispatched.
      const [[pipeline, , , blocks]] = Recorder.tape((r) => op.record(r, c.n));
      const tokens = Math.min(c.blocking.tokens, c.n);
      assert.match(pipeline.label, new RegExp(`"HEADS",${c.blocking.heads}\\]`), label);
      assert.match(pipeline.label, new RegExp(`"TOKENS",${tokens}\\]`), label);
      assert.equal(blocks, Math.ceil(c.n / tokens), label);
    }
    run(op, c.pos, c.n, c.recordN);
    const want = new Float32Array(out0);
    want.set(ref.attentionRef(args));
    assertClose(await readF32(device, out, out0.length), want, TOL, label, c.nHeads * d);
    return k.layout;
  });
}

/** Every combination of GQA 4/2 and 6/3, head_dim 32 and 96, window 0 and 5, softcap 0 and 50. */
function attentionGrid(pos: number, n: number): AttentionCase[] {
  const cases: AttentionCase[] = [];
  for (const [nHeads, nKv] of [[4, 2], [6, 3]]) {
    for (const headDim of [32, 96]) {
      for (const window of [0, 5]) {
        for (const softcap of [0, 50]) {
          cases.push({ nHeads, nKv, headDim, window, softcap, pos, n });
        }
      }
    }
  }
  return cases;
}

Deno.test("attention of one new token at a nonzero position matches the causal CPU reference with GQA, sliding windows and softcaps", async () => {
  for (const c of attentionGrid(70, 1)) await checkAttention(c);
  for (const c of attentionGrid(3, 1)) await checkAttention(c);
});

Deno.test("attention of seven new tokens at a nonzero position matches the causal CPU reference with GQA, sliding windows and softcaps", async () => {
  // pos 62: the keys of the later tokens span two 64-key tiles.
  for (const c of attentionGrid(62, 7)) await checkAttention(c);
  for (const c of attentionGrid(2, 7)) await checkAttention(c);
});

Deno.test("attention of a first prefill at position 0 matches the CPU reference, also past one key tile", async () => {
  await checkAttention({ nHeads: 4, nKv: 2, headDim: 32, window: 0, softcap: 0, pos: 0, n: 7 });
  await checkAttention({ nHeads: 2, nKv: 1, headDim: 64, window: 0, softcap: 0, pos: 0, n: 67 });
  await checkAttention({ nHeads: 2, nKv: 2, headDim: 256, window: 0, softcap: 0, pos: 0, n: 3 });
});

Deno.test("attention blocks heads and tokens per workgroup by head_dim: GQA groups of 8, long contexts, 9 tokens", async () => {
  const base = { window: 0, softcap: 0 };
  // head_dim 64: a whole group of 8 heads per workgroup, one token at a time for n > 1.
  await checkAttention({ ...base, nHeads: 8, nKv: 1, headDim: 64, pos: 300, n: 1 });
  await checkAttention({ ...base, nHeads: 8, nKv: 1, headDim: 64, pos: 300, n: 9 });
  // head_dim 128: groups of 8 split into two workgroups of 4 heads; window and softcap.
  await checkAttention({
    nHeads: 16,
    nKv: 2,
    headDim: 128,
    window: 37,
    softcap: 50,
    pos: 90,
    n: 3,
  });
  // head_dim 32, group 2: blocks of 8 tokens, 9 tokens make two blocks of 5 and 4.
  await checkAttention({ ...base, nHeads: 4, nKv: 2, headDim: 32, pos: 130, n: 9 });
  await checkAttention({ nHeads: 4, nKv: 2, headDim: 32, window: 6, softcap: 50, pos: 17, n: 9 });
  // head_dim 256 and an odd group (3 heads): one head and one token per workgroup.
  await checkAttention({ ...base, nHeads: 3, nKv: 1, headDim: 256, pos: 20, n: 2 });
});

Deno.test("attention with the blockings the kernel bench times (heads, tokens per workgroup) matches the CPU reference", async () => {
  const base = { window: 0, softcap: 0 };
  // The bench's fixture variants, n = 1 and 8, and an odd token count (blocks of 3 over 7).
  for (const [heads, tokens] of [[1, 1], [2, 1], [2, 2], [1, 8], [2, 4], [2, 3]]) {
    for (const n of [1, 7, 8]) {
      const blocking = { heads, tokens };
      await checkAttention({ ...base, nHeads: 4, nKv: 2, headDim: 32, pos: 40, n, blocking });
    }
  }
  // 1B-like (group 4) with a window and softcap.
  const blocking = { heads: 4, tokens: 2 };
  await checkAttention({
    nHeads: 8,
    nKv: 2,
    headDim: 64,
    window: 9,
    softcap: 50,
    pos: 70,
    n: 5,
    blocking,
  });
});

Deno.test("attention recorded for more tokens than state.n writes only state.n tokens and reads no key past them", async () => {
  await checkAttention({
    nHeads: 4,
    nKv: 2,
    headDim: 32,
    window: 0,
    softcap: 0,
    pos: 40,
    n: 3,
    recordN: 8,
  });
  await checkAttention({
    nHeads: 6,
    nKv: 3,
    headDim: 96,
    window: 5,
    softcap: 50,
    pos: 7,
    n: 1,
    recordN: 9,
  });
});

Deno.test("q/k/v + RoPE followed by attention in one pass matches the CPU reference over a prefilled cache", async () => {
  const nHeads = 6, nKv = 3, headDim = 32, pos = 11, n = 5, window = 5, softcap = 50;
  const c: RopeCase = { nHeads, nKv, headDim, pos, n, spare: 8 };
  const r = ropeCase(c);
  const rotated = ref.ropeKvRef(r.args);
  const want = ref.attentionRef({
    nHeads,
    nKv,
    headDim,
    window,
    scale: 1 / Math.sqrt(headDim),
    softcap,
    pos,
    n,
    q: rotated.q,
    kCache: rotated.kCache,
    vCache: rotated.vCache,
  });
  await withBuffers(async (b) => {
    const shape = { nHeads, nKv, headDim };
    const { op, q, k, v } = ropeOp(b, c, r);
    const out = b.upload(new Float32Array(want.length), "out");
    const ops = [
      op,
      attentionOp(ctx, {
        ...shape,
        window,
        scale: 1 / Math.sqrt(headDim),
        softcap,
        q,
        k: k.view,
        v: v.view,
        kvWidth: k.layout.width,
        out,
      }),
    ];
    run(ops, pos, n);
    const label = "q/k/v + RoPE + attention";
    assertClose(await readF32(device, out, want.length), want, TOL, label, nHeads * headDim);
  });
});

// --- add_rmsnorm -----------------------------------------------------------------------------

Deno.test("add_rmsnorm with odd widths and token counts matches the CPU reference", async () => {
  // Amplitude 1e-3: mean(delta^2) ~ 3e-7, below eps = 1e-6, so the epsilon's placement shows.
  for (const [width, n, amp] of [[67, 5, 3], [131, 1, 3], [9, 3, 3], [333, 7, 3], [67, 3, 1e-3]]) {
    const label = `add_rmsnorm ${JSON.stringify({ width, n, amp })}`;
    const rng = ref.mulberry32(ref.seedFrom(label));
    const eps = 1e-6;
    const h0 = ref.randomF32(rng, (n + 1) * width, -4, 4); // row n must stay untouched
    const delta = ref.randomF32(rng, n * width, -amp, amp);
    const gain = ref.randomF32(rng, width, 0.5, 1.5);
    await withBuffers(async (b) => {
      const h = b.upload(h0, "h");
      const op = addRmsnormOp(ctx, {
        width,
        eps,
        delta: b.upload(delta, "delta"),
        gain: b.upload(gain, "gain"),
        h,
      });
      run(op, 0, n);
      const want = ref.addRmsnormRef(h0, delta, gain, width, n, eps);
      assertClose(await readF32(device, h, h0.length), want, TOL, label, width);
    });
  }
});

// --- stream_read -----------------------------------------------------------------------------

Deno.test("stream_read XORs each invocation's run of words like the CPU reference, from a buffer or a texture, partial runs too", async () => {
  // Whole runs; a partial last run (not a multiple of 4 vec4s either); more invocations than one
  // workgroup; reading a prefix of a longer source (the words past it must not count).
  for (
    const [vec4s, extra] of [[2 * STREAM_READ_RUN, 0], [3 * STREAM_READ_RUN + 7, 0], [1, 5], [
      70 * STREAM_READ_RUN - 3,
      9,
    ]]
  ) {
    for (const source of ["buffer", "texture"]) {
      const label = `stream_read ${JSON.stringify({ vec4s, extra, source })}`;
      const rng = ref.mulberry32(ref.seedFrom(label));
      const rows = Math.ceil((vec4s + extra) / STREAM_READ_RUN);
      const words = ref.randomU32(rng, rows * STREAM_READ_RUN * 4, 2 ** 32);
      await withBuffers(async (b) => {
        const src = source === "buffer"
          ? b.upload(words, "src")
          : b.ownTexture(weightTexture(device, STREAM_READ_RUN, rows, "src", words));
        const want = ref.streamReadRef(words.subarray(0, vec4s * 4), STREAM_READ_RUN);
        const out = b.upload(ref.randomU32(rng, want.length + 1, 2 ** 32), "out");
        const before = await readU32(device, out, want.length + 1);
        const op = streamReadOp(ctx, { src, bytes: vec4s * 16, out });
        assert.equal(op.invocations, want.length);
        const enc = device.createCommandEncoder();
        const rec = new Recorder(enc.beginComputePass());
        op.record(rec);
        rec.pass.end();
        device.queue.submit([enc.finish()]);
        const got = await readU32(device, out, want.length + 1);
        assert.deepEqual([...got.subarray(0, want.length)], [...want], label);
        assert.equal(got[want.length], before[want.length], `${label}: wrote past its invocations`);
      });
    }
  }
  assert.throws(() => streamReadOp(ctx, { src: ctx.state, bytes: 12, out: ctx.state }), RangeError);
  assert.throws(
    () => streamReadOp(ctx, { src: ctx.state, bytes: 16, out: ctx.state, run: 6 }),
    RangeError,
  );
  // A texture must be RUN texels wide and hold every run.
  await withBuffers((b) => {
    const texture = (width: number, height: number) =>
      b.ownTexture(weightTexture(device, width, height, "src"));
    const out = b.upload(new Uint32Array(4), "out");
    const bytes = 3 * STREAM_READ_RUN * 16;
    streamReadOp(ctx, { src: texture(STREAM_READ_RUN, 3), bytes, out });
    assert.throws(
      () => streamReadOp(ctx, { src: texture(STREAM_READ_RUN, 2), bytes, out }),
      RangeError,
    );
    assert.throws(() => streamReadOp(ctx, { src: texture(128, 6), bytes, out }), RangeError);
  });
});

// --- the test helpers themselves -------------------------------------------------------------

Deno.test("the bf16 and f16 test encoders round to nearest even and decode like the weight loader", () => {
  const bf16 = (x: number) => ref.bf16BitsToF32(ref.f32ToBf16Bits(x));
  assert.equal(bf16(1 + 2 ** -8), 1); // tie: to even
  assert.equal(bf16(1 + 3 * 2 ** -8), 1 + 2 ** -6); // tie: to even (up)
  assert.equal(bf16(1 + 2 ** -8 + 2 ** -20), 1 + 2 ** -7); // above the tie
  assert.equal(bf16(-2.5), -2.5);
  assert.equal(bf16(3.4e38), Infinity);
  assert.ok(Number.isNaN(bf16(NaN)));

  const f16 = (x: number) => ref.f16BitsToF32(ref.f32ToF16Bits(x));
  assert.equal(f16(1 + 2 ** -11), 1);
  assert.equal(f16(1 + 3 * 2 ** -11), 1 + 2 ** -9);
  assert.equal(f16(65519), 65504);
  assert.equal(f16(65520), Infinity);
  assert.equal(f16(2 ** -25), 0); // subnormal tie to even (0)
  assert.equal(f16(3 * 2 ** -25), 2 ** -23); // subnormal tie to even (2 units)
  assert.equal(f16(2 ** -14 - 2 ** -26), 2 ** -14); // rounds up into the normals
  const rng = ref.mulberry32(7);
  for (let i = 0; i < 2000; i++) {
    const x = Math.fround((rng() - 0.5) * 2 ** (rng() * 40 - 24));
    assert.equal(f16(x), Math.f16round(x), `f16 of ${x}`);
  }

  const values = ref.randomF32(rng, 64, -10, 10);
  for (const dtype of DTYPES) {
    const { bytes, decoded } = ref.encodeWeights(dtype, values);
    assert.deepEqual(toF32(dtype, bytes), decoded, `${dtype} decodes like toF32`);
  }
});
