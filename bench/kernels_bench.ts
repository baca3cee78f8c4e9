/**
 * Kernel workbench: times each kernel's variants (rows per invocation, workgroup size, head and
 * token blocking) on the fixture shapes (hidden 128, 4 q / 2 kv heads of 32, intermediate 384,
 * vocab 1024, bf16) and on a 1B-like shape (hidden 2048, 32 / 8 heads of 64, intermediate 8192),
 * for forwards of 1 and 8 tokens (matmul: 1, 2, 4 and 8), so the choices in src/gpu/ops.ts are
 * measured.
 *
 *   deno bench --allow-read --allow-env bench/       (deno task bench:kernels)
 *
 * Each iteration records DISPATCHES dispatches (the group name says when fewer) of one variant into
 * one compute pass, submits it and waits; Deno 2.9 adds a fixed ~10 ms to that wait, so every group
 * has a `readback only` baseline: a variant's cost per dispatch is (its time - baseline) / count. Variant names
 * give the defines (R = rows per invocation, T = tokens per invocation, WG = invocations per
 * workgroup, H = query heads per workgroup); `op` is what the op builder picks (matmul: the
 * variants override part of its choice, src/gpu/ops.ts matmulGeometry).
 */
import { storageBuffer } from "../src/gpu/buffers.ts";
import { openGpu } from "../src/gpu/device.ts";
import {
  type AttentionBlocking,
  attentionOp,
  type Epilogue,
  type MatmulGeometry,
  matmulGeometry,
  matmulOp,
  type Op,
  type OpContext,
  Recorder,
  STATE_BYTES,
  STREAM_READ_RUN,
  streamReadOp,
  type WeightMatrix,
} from "../src/gpu/ops.ts";
import { Pipelines } from "../src/gpu/shader.ts";
import { kvLayout, kvTexture } from "../src/model/kv_cache.ts";
import { createMatrix, TEXEL_BYTES, weightTexture, writeMatrixRows } from "../src/model/weights.ts";

/** Dispatches per iteration on the fixture shapes (fewer on the 1B-like ones: `reps`). */
const DISPATCHES = 200;
const ITERATIONS = 4;

const gpu = await openGpu();
const device = gpu.device;
const ctx: OpContext = {
  device,
  pipelines: new Pipelines(device),
  state: storageBuffer(device, STATE_BYTES, "state"),
};

/** Deterministic values in [-a, a). */
function values(count: number, a = 1, seed = 1): Float32Array<ArrayBuffer> {
  const out = new Float32Array(count);
  let s = seed >>> 0;
  for (let i = 0; i < count; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = (s / 2 ** 32 * 2 - 1) * a;
  }
  return out;
}

function f32Buffer(count: number, a = 1, label = "data"): GPUBuffer {
  const buffer = storageBuffer(device, count * 4, label, { uniform: true });
  device.queue.writeBuffer(buffer, 0, values(count, a));
  return buffer;
}

/** K and V caches of `ctxLen` positions filled with values, as the model lays them out. */
function kvCaches(ctxLen: number, nKv: number, headDim: number) {
  const layout = kvLayout(nKv, headDim, ctxLen, device.limits.maxTextureDimension2D);
  const cache = (label: string) =>
    kvTexture(device, layout, label, values(ctxLen * nKv * headDim)).createView();
  return { k: cache("k"), v: cache("v"), kvWidth: layout.width };
}

/** A bf16 matrix (rows x cols), `stack` matrices per chunk (2: gate and up). */
function bf16Matrix(rows: number, cols: number, stack = 1): WeightMatrix {
  const m = createMatrix(device, "BF16", rows, cols, "w", { stack });
  const bits = new Uint16Array(rows * cols);
  const f = values(rows * cols, 2 / Math.sqrt(cols));
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < bits.length; i++) bits[i] = u[i] >>> 16;
  for (let part = 0; part < stack; part++) {
    writeMatrixRows(device, m, 0, new Uint8Array(bits.buffer), part);
  }
  return m;
}

/** One bench: `reps` recordings of `record` per iteration, state = { pos, n }. */
function bench(
  group: string,
  name: string,
  pos: number,
  n: number,
  record: (r: Recorder) => void,
  reps = DISPATCHES,
) {
  Deno.bench({
    name,
    group,
    n: ITERATIONS,
    warmup: 1,
    async fn() {
      device.queue.writeBuffer(ctx.state, 0, new Uint32Array([pos, n, 0, 0]));
      const encoder = device.createCommandEncoder();
      const rec = new Recorder(encoder.beginComputePass());
      for (let i = 0; i < reps; i++) record(rec);
      rec.pass.end();
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
    },
  });
}

function baseline(group: string) {
  Deno.bench({
    name: "readback only",
    group,
    baseline: true,
    n: ITERATIONS,
    warmup: 1,
    async fn() {
      const encoder = device.createCommandEncoder();
      encoder.beginComputePass().end();
      device.queue.submit([encoder.finish()]);
      await device.queue.onSubmittedWorkDone();
    },
  });
}

function opBench(group: string, name: string, op: Op, pos: number, n: number, reps = DISPATCHES) {
  bench(group, name, pos, n, (r) => op.record(r, n), reps);
}

// --- matmul ----------------------------------------------------------------------------------

interface MatmulShape {
  name: string;
  rows: number;
  cols: number;
  epilogue: Epilogue;
  norm: boolean;
}

function matmulBenches(
  prefix: string,
  shapes: MatmulShape[],
  variants: Partial<MatmulGeometry>[],
  reps = DISPATCHES,
) {
  for (const s of shapes) {
    const glu = s.epilogue.startsWith("glu");
    const w = bf16Matrix(s.rows, s.cols, glu ? 2 : 1);
    const io = {
      x: f32Buffer(8 * s.cols),
      y: f32Buffer(8 * s.rows),
      gain: f32Buffer(s.cols, 1.5),
    };
    const op = (geometry?: Partial<MatmulGeometry>) =>
      matmulOp(ctx, {
        w,
        x: io.x,
        xStride: s.cols,
        y: io.y,
        yStride: s.rows,
        epilogue: s.epilogue,
        norm: s.norm ? { gain: io.gain, eps: 1e-5 } : undefined,
        geometry,
      });
    for (const n of [1, 2, 4, 8]) {
      const group = `${prefix} matmul ${s.name} ${s.rows}x${s.cols} n=${n} (${reps} dispatches)`;
      baseline(group);
      const chosen = matmulGeometry(s.rows, n, { glu, cols: s.cols });
      opBench(group, `op (R=${chosen.rows} T=${chosen.tokens} WG=${chosen.wg})`, op(), 40, n, reps);
      for (const v of variants) {
        // Token variants only where they differ from the op's choice for this n.
        if (v.tokens !== undefined && (v.tokens >= n || n === 1)) continue;
        const name = Object.entries(v).map(([k, x]) =>
          k === "xUniform"
            ? `x ${x ? "uniform" : "storage"}`
            : `${k === "wg" ? "WG" : k[0].toUpperCase()}=${x}`
        );
        opBench(group, name.join(" "), op(v), 40, n, reps);
      }
    }
  }
}

matmulBenches(
  "fixture",
  [
    { name: "qkv (norm)", rows: 256, cols: 128, epilogue: "store", norm: true },
    { name: "o_proj (add)", rows: 128, cols: 128, epilogue: "add", norm: false },
    { name: "gate/up (norm, glu)", rows: 384, cols: 128, epilogue: "glu-silu", norm: true },
    { name: "down (add)", rows: 128, cols: 384, epilogue: "add", norm: false },
    { name: "lm head (norm)", rows: 1024, cols: 128, epilogue: "store", norm: true },
  ],
  [
    { rows: 4 },
    { rows: 8 },
    { rows: 16 },
    { rows: 8, wg: 64 },
    { tokens: 2 },
    { tokens: 4 },
    { rows: 8, tokens: 4 },
    { xUniform: false },
  ],
);

matmulBenches(
  "1B-like",
  [
    { name: "gate/up (norm, glu)", rows: 8192, cols: 2048, epilogue: "glu-silu", norm: true },
    { name: "down (add)", rows: 2048, cols: 8192, epilogue: "add", norm: false },
  ],
  [
    { rows: 4, wg: 64 },
    { rows: 8, wg: 8 },
    { rows: 8, wg: 64 },
    { rows: 16, wg: 64 },
    { tokens: 4 },
    { xUniform: false },
  ],
  10,
);

// --- q/k/v projection: plain store against the fused RoPE + K/V append ---------------------------

/**
 * The q/k/v projection of one layer (bf16, fused RMSNorm) with the rope-kv epilogue against the
 * same projection that only stores q/k/v: what rotating and appending to the caches in the
 * epilogue costs, where before it took a dispatch of its own.
 */
function qkvRopeBenches(
  s: { name: string; nHeads: number; nKv: number; headDim: number; hidden: number; ctxLen: number },
  reps = DISPATCHES,
) {
  const d = s.headDim;
  const rows = (s.nHeads + 2 * s.nKv) * d;
  const w = bf16Matrix(rows, s.hidden);
  const x = f32Buffer(8 * s.hidden);
  const norm = { gain: f32Buffer(s.hidden, 1.5), eps: 1e-5 };
  const rope = {
    nHeads: s.nHeads,
    nKv: s.nKv,
    headDim: d,
    ctxLen: s.ctxLen,
    cosSin: f32Buffer(s.ctxLen * d),
    ...kvCaches(s.ctxLen, s.nKv, d),
  };
  const store = matmulOp(ctx, {
    w,
    x,
    xStride: s.hidden,
    y: f32Buffer(8 * rows),
    yStride: rows,
    epilogue: "store",
    norm,
  });
  const fused = matmulOp(ctx, {
    w,
    x,
    xStride: s.hidden,
    y: f32Buffer(8 * s.nHeads * d),
    yStride: s.nHeads * d,
    epilogue: "rope-kv",
    norm,
    rope,
  });
  for (const n of [1, 8]) {
    const group = `${s.name} qkv ${rows}x${s.hidden} n=${n} (${reps} dispatches)`;
    baseline(group);
    opBench(group, "store q/k/v", store, 40, n, reps);
    opBench(group, "rope-kv (RoPE + K/V append fused)", fused, 40, n, reps);
  }
}

qkvRopeBenches({ name: "fixture", nHeads: 4, nKv: 2, headDim: 32, hidden: 128, ctxLen: 512 });
qkvRopeBenches(
  { name: "1B-like", nHeads: 32, nKv: 8, headDim: 64, hidden: 2048, ctxLen: 2048 },
  10,
);

// --- attention -----------------------------------------------------------------------------

interface AttentionBenchShape {
  name: string;
  nHeads: number;
  nKv: number;
  headDim: number;
  ctxLen: number;
}

function attentionBenches(
  s: AttentionBenchShape,
  positions: number[],
  variants: number[][],
  reps = DISPATCHES,
) {
  const d = s.headDim;
  const io = {
    q: f32Buffer(8 * s.nHeads * d),
    ...kvCaches(s.ctxLen, s.nKv, d),
    out: f32Buffer(8 * s.nHeads * d),
  };
  const shape = { nHeads: s.nHeads, nKv: s.nKv, headDim: d };
  const op = (blocking?: AttentionBlocking) =>
    attentionOp(ctx, { ...shape, window: 0, scale: 1 / Math.sqrt(d), softcap: 0, ...io, blocking });
  const attention = op();
  for (const n of [1, 8]) {
    for (const pos of positions) {
      const group = `${s.name} attention pos=${pos} n=${n} (${reps} dispatches)`;
      baseline(group);
      opBench(group, "op", attention, pos, n, reps);
      for (const [heads, tokens] of variants) {
        opBench(group, `H=${heads} T=${Math.min(tokens, n)}`, op({ heads, tokens }), pos, n, reps);
      }
    }
  }
}

attentionBenches(
  { name: "fixture", nHeads: 4, nKv: 2, headDim: 32, ctxLen: 512 },
  [40, 200],
  // The op's choice is at most 8 (head, token) units per workgroup: H=2 T=4 for n = 8.
  [[1, 1], [2, 1], [2, 2], [1, 8], [2, 4]],
);
attentionBenches(
  { name: "1B-like", nHeads: 32, nKv: 8, headDim: 64, ctxLen: 2048 },
  [1000],
  [[1, 1], [4, 1], [2, 2], [4, 2]],
  20,
);
attentionBenches(
  { name: "Gemma-2-like", nHeads: 8, nKv: 4, headDim: 256, ctxLen: 2048 },
  [1000],
  [[1, 1], [2, 1], [2, 4]],
  10,
);

// --- stream_read (bench --memcpy's weight-read ceiling): storage buffer or texture ----------

{
  const bytes = 64 << 20;
  const src = storageBuffer(device, bytes, "stream src");
  const out = storageBuffer(device, bytes / 16, "stream out");
  const group = "stream_read 64 MiB (4 dispatches)";
  baseline(group);
  for (const run of [64, STREAM_READ_RUN, 1024, 4096]) {
    const op = streamReadOp(ctx, { src, bytes, out, run });
    bench(group, `storage, run ${run} vec4s`, 0, 1, (r) => op.record(r), 4);
  }
  // As weights are held (src/gpu/ops.ts WeightMatrix): rows of texels, one run per row.
  const rowBytes = STREAM_READ_RUN * TEXEL_BYTES;
  const rows = Math.min(device.limits.maxTextureDimension2D, bytes / rowBytes);
  const words = new Uint32Array(rows * rowBytes / 4).map((_, i) => Math.imul(i, 2654435761));
  const texture = weightTexture(device, STREAM_READ_RUN, rows, "stream texture", words);
  const op = streamReadOp(ctx, { src: texture, bytes: rows * rowBytes, out });
  bench(
    group,
    `texture, run ${STREAM_READ_RUN} vec4s (bench --memcpy)`,
    0,
    1,
    (r) => op.record(r),
    4,
  );
}
