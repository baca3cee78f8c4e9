/**
 * Moves tensors from safetensors files to the GPU. Matrices keep their stored dtype (bf16 and f16
 * are widened in the shaders) and are streamed in pieces, never held whole in JS memory, into
 * textures (see WeightMatrix); a matrix taller than a texture is split by rows. Small vectors (norm
 * gains) are widened to f32 here, with Gemma's (1 + w) added once.
 */
import { ModelError } from "../errors.ts";
import { align4, storageBuffer } from "../gpu/buffers.ts";
import type { WeightMatrix } from "../gpu/ops.ts";
import type { ModelConfig } from "./config.ts";
import { DTYPE_BYTES, readTensorPieces, type TensorInfo } from "./safetensors.ts";

/** Streams a tensor's bytes in pieces (`readTensorPieces` for files; generated for synthetic). */
export type ReadPieces = (
  t: TensorInfo,
  onPiece: (bytes: Uint8Array<ArrayBuffer>, offset: number) => void | Promise<void>,
  pieceBytes: number,
) => Promise<void>;

/** Where a model's config and tensors come from: a model folder, or a synthetic shape. */
export interface WeightSource {
  /** The folder, or `synthetic:<shape>`. */
  name: string;
  cfg: ModelConfig;
  tensors: Map<string, TensorInfo>;
  read: ReadPieces;
}

/** Parameters of a tensor set: the sum of its element counts. */
export function parameterCount(tensors: Map<string, TensorInfo>): number {
  let count = 0;
  for (const t of tensors.values()) count += t.shape.reduce((a, b) => a * b, 1);
  return count;
}

/** Mean bytes of a tensor set's matrices (2-D tensors): what sets lavapipe's threading. */
export function meanMatrixBytes(tensors: Map<string, TensorInfo>): number {
  const matrices = [...tensors.values()].filter((t) => t.shape.length === 2);
  const bytes = matrices.reduce((sum, t) => sum + t.byteLength, 0);
  return matrices.length === 0 ? 0 : bytes / matrices.length;
}

const PIECE_BYTES = 64 << 20;

/** Bytes of a weight texture's texel: an rgba32uint holds 8 half-precision or 4 f32 weights. */
export const TEXEL_BYTES = 16;

/**
 * A texture laid out as weights are: `height` rows of `width` rgba32uint texels, filled with
 * `contents` (row by row) when given. It is written before use (COPY_DST): one that wgpu must zero
 * itself leaves lavapipe's timestamps of every later pass missing its first dispatch (bench's
 * kernel table read ~0.05 ms per call).
 */
export function weightTexture(
  device: GPUDevice,
  width: number,
  height: number,
  label: string,
  contents?: Uint32Array<ArrayBuffer>,
): GPUTexture {
  const texture = device.createTexture({
    label,
    size: [width, height],
    format: "rgba32uint",
    usage: GPUTextureUsage.STORAGE_BINDING |
      GPUTextureUsage.COPY_DST,
  });
  if (contents) {
    const bytesPerRow = width * TEXEL_BYTES;
    device.queue.writeTexture({ texture }, contents, { bytesPerRow }, [width, height]);
  }
  return texture;
}

/**
 * Row ranges of at most `maxRows` texture rows each (`stack` matrices stacked per chunk), each
 * starting at a multiple of `rowAlign` rows (the fused q/k/v + RoPE kernel needs whole heads).
 */
export function planChunks(rows: number, maxRows: number, stack = 1, rowAlign = 1) {
  const perChunk = Math.floor(maxRows / (stack * rowAlign)) * rowAlign;
  if (perChunk < 1) {
    throw new ModelError(
      `${stack * rowAlign} weight rows exceed the GPU's texture height limit of ${maxRows}`,
    );
  }
  const chunks: { rowStart: number; rows: number }[] = [];
  for (let start = 0; start < rows; start += perChunk) {
    chunks.push({ rowStart: start, rows: Math.min(perChunk, rows - start) });
  }
  return chunks;
}

/**
 * An empty matrix of `rows` output rows in textures (see WeightMatrix); with stack 2 each chunk
 * holds [part 0 rows; part 1 rows]. `maxRows` (tests) lowers the texture height per chunk.
 */
export function createMatrix(
  device: GPUDevice,
  dtype: WeightMatrix["dtype"],
  rows: number,
  cols: number,
  label: string,
  { stack = 1, rowAlign = 1, maxRows = device.limits.maxTextureDimension2D } = {},
): WeightMatrix {
  const rowBytes = cols * DTYPE_BYTES[dtype];
  if (cols % 8 !== 0) {
    // The kernels read weights in aligned blocks of 8 (kernels/weight_dtype.wgsl).
    throw new ModelError(
      `${label}: a column count that is a multiple of 8 is needed (got ${cols})`,
    );
  }
  const width = rowBytes / TEXEL_BYTES;
  if (width > device.limits.maxTextureDimension2D) {
    throw new ModelError(
      `${label}: a weight row of ${rowBytes} bytes exceeds the GPU's texture width limit ` +
        `(${device.limits.maxTextureDimension2D} texels of ${TEXEL_BYTES} bytes)`,
    );
  }
  const chunks = planChunks(rows, maxRows, stack, rowAlign).map((c) => ({
    ...c,
    texture: weightTexture(device, width, c.rows * stack, `${label}[${c.rowStart}]`),
  }));
  return { dtype, rows, cols, chunks };
}

/** Writes whole rows [firstRow, firstRow + bytes / rowBytes) of stacked part `part`. */
export function writeMatrixRows(
  device: GPUDevice,
  m: WeightMatrix,
  firstRow: number,
  bytes: Uint8Array<ArrayBuffer>,
  part = 0,
) {
  const rowBytes = m.cols * DTYPE_BYTES[m.dtype];
  const count = bytes.byteLength / rowBytes;
  for (const chunk of m.chunks) {
    const from = Math.max(firstRow, chunk.rowStart);
    const to = Math.min(firstRow + count, chunk.rowStart + chunk.rows);
    if (from >= to) continue;
    device.queue.writeTexture(
      { texture: chunk.texture, origin: [0, part * chunk.rows + from - chunk.rowStart] },
      bytes.buffer,
      { offset: bytes.byteOffset + (from - firstRow) * rowBytes, bytesPerRow: rowBytes },
      [rowBytes / TEXEL_BYTES, to - from],
    );
  }
}

/** Loads named tensors of one model onto the GPU, reporting bytes as they arrive. */
export class WeightLoader {
  bytesLoaded = 0;
  constructor(
    private device: GPUDevice,
    private tensors: Map<string, TensorInfo>,
    private onProgress: (bytes: number) => void = () => {},
    private read: ReadPieces = readTensorPieces,
  ) {}

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string, shape: number[]): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new ModelError(`missing tensor "${name}" in model.safetensors`);
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new ModelError(
        `tensor "${name}" has shape [${t.shape}], expected [${shape}] from config.json`,
      );
    }
    return t;
  }

  /**
   * One matrix from tensors stacked by rows (e.g. q, k and v projections), each (rows_i, cols);
   * with `glu`, exactly two tensors (gate, up) stacked per chunk for the fused GLU epilogue;
   * chunks (when the matrix is taller than a texture) start at multiples of `rowAlign` rows.
   */
  async matrix(
    names: [string, number][],
    cols: number,
    { glu = false, rowAlign = 1 } = {},
  ): Promise<WeightMatrix> {
    const infos = names.map(([name, rows]) => this.info(name, [rows, cols]));
    const dtype = infos[0].dtype;
    const mixed = infos.find((t) => t.dtype !== dtype);
    if (mixed) {
      throw new ModelError(`tensor "${mixed.name}" is ${mixed.dtype}, its siblings ${dtype}`);
    }
    const totalRows = glu ? names[0][1] : names.reduce((sum, [, rows]) => sum + rows, 0);
    const m = createMatrix(this.device, dtype, totalRows, cols, names[0][0], {
      stack: glu ? 2 : 1,
      rowAlign,
    });
    const rowBytes = cols * DTYPE_BYTES[dtype];
    let rowBase = 0;
    for (const [i, info] of infos.entries()) {
      const part = glu ? i : 0;
      const pieceBytes = Math.max(1, Math.floor(PIECE_BYTES / rowBytes)) * rowBytes;
      await this.read(info, (bytes, offset) => {
        writeMatrixRows(this.device, m, rowBase + offset / rowBytes, bytes, part);
        this.progress(bytes.byteLength);
      }, pieceBytes);
      if (!glu) rowBase += names[i][1];
    }
    return m;
  }

  /** A small tensor widened to f32 (e.g. a norm gain, plus `add` for Gemma's 1 + w). */
  async vectorF32(name: string, length: number, add = 0): Promise<Float32Array<ArrayBuffer>> {
    const info = this.info(name, [length]);
    const out = new Float32Array(length);
    await this.read(info, (bytes, offset) => {
      const values = toF32(info.dtype, bytes);
      out.set(values, offset / DTYPE_BYTES[info.dtype]);
      this.progress(bytes.byteLength);
    }, PIECE_BYTES);
    if (add !== 0) { for (let i = 0; i < length; i++) out[i] = Math.fround(out[i] + add); }
    return out;
  }

  async vector(name: string, length: number, add = 0): Promise<GPUBuffer> {
    const values = await this.vectorF32(name, length, add);
    // Also a uniform: matmul reads norm gains through a uniform binding (kernels/matmul.wgsl).
    const buffer = storageBuffer(this.device, align4(values.byteLength), name, { uniform: true });
    this.device.queue.writeBuffer(buffer, 0, values);
    return buffer;
  }

  private progress(bytes: number) {
    this.bytesLoaded += bytes;
    this.onProgress(this.bytesLoaded);
  }
}

/** Widens stored values to f32 (exactly: bf16 is an f32's top half; f16 is a subset of f32). */
export function toF32(dtype: WeightMatrix["dtype"], bytes: Uint8Array): Float32Array<ArrayBuffer> {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = bytes.byteLength / DTYPE_BYTES[dtype];
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    if (dtype === "F32") out[i] = view.getFloat32(i * 4, true);
    else if (dtype === "BF16") out[i] = bf16ToF32(view.getUint16(i * 2, true));
    else out[i] = f16ToF32(view.getUint16(i * 2, true));
  }
  return out;
}

const widen = new DataView(new ArrayBuffer(4));

export function bf16ToF32(bits: number): number {
  widen.setUint32(0, bits << 16);
  return widen.getFloat32(0);
}

export function f16ToF32(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * 2 ** -24;
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * 2 ** (exponent - 15);
}
