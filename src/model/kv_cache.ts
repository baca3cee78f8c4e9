/**
 * The K/V cache: preallocated per layer, indexed by position. Its length is the GPU `state.pos`
 * (the next position to write), so a rollback after rejected drafts is only `truncate(length)`:
 * stale entries past it are overwritten before they are ever read.
 *
 * Each layer's keys and values live in rgba32float textures, which the q/k/v projection writes
 * and attention reads as storage textures: on lavapipe a storage-buffer load is a loop over the
 * SIMD lanes with a bounds check per lane and component, a storage texture's load one 16-byte load
 * per lane (kernels/attention.wgsl).
 */
import { GpuError } from "../errors.ts";
import type { ModelConfig } from "./config.ts";

/** Bytes of an rgba32float texel: 4 consecutive values of a head row. */
export const KV_TEXEL_BYTES = 16;

/**
 * How one layer's K (or V) cache lies in its texture: the (capacity, n_kv, head_dim) f32 values,
 * flattened, fill rows of `width` texels in order. A row holds `positionsPerRow` whole positions
 * (so a head row never straddles two rows): one, unless the context is taller than a texture.
 * The texel of flat vec4 index i is (i % width, i / width).
 */
export interface KvLayout {
  /** Texels per position: n_kv x head_dim / 4. */
  positionTexels: number;
  positionsPerRow: number;
  width: number;
  height: number;
}

/**
 * The layout of a `capacity`-token cache in textures of at most `maxDim` texels high: as few
 * positions per row as that allows. It fits when `width` <= `maxDim` too (KvCache.check).
 */
export function kvLayout(
  nKv: number,
  headDim: number,
  capacity: number,
  maxDim: number,
): KvLayout {
  const positionTexels = (nKv * headDim) / 4;
  const positionsPerRow = Math.ceil(capacity / maxDim);
  return {
    positionTexels,
    positionsPerRow,
    width: positionsPerRow * positionTexels,
    height: Math.ceil(capacity / positionsPerRow),
  };
}

/** Bytes of one layer's keys (or values) on the GPU in `layout`. */
export function kvLayerBytes(layout: KvLayout): number {
  return layout.width * layout.height * KV_TEXEL_BYTES;
}

/** The longest context whose K/V cache fits textures of at most `maxDim` x `maxDim` texels. */
export function maxKvContext(nKv: number, headDim: number, maxDim: number): number {
  return Math.floor(maxDim / ((nKv * headDim) / 4)) * maxDim;
}

/** A K/V texture of `layout`, filled with `values` (flat (capacity, n_kv, head_dim)) when given. */
export function kvTexture(
  device: GPUDevice,
  layout: KvLayout,
  label: string,
  values?: Float32Array,
): GPUTexture {
  const texture = device.createTexture({
    label,
    size: [layout.width, layout.height],
    format: "rgba32float",
    usage: GPUTextureUsage.STORAGE_BINDING | GPUTextureUsage.COPY_SRC |
      GPUTextureUsage.COPY_DST,
  });
  if (values) {
    const padded = new Float32Array(layout.width * layout.height * 4);
    padded.set(values);
    device.queue.writeTexture({ texture }, padded, { bytesPerRow: layout.width * KV_TEXEL_BYTES }, [
      layout.width,
      layout.height,
    ]);
  }
  return texture;
}

export class KvCache {
  /** keys[l], values[l]: (capacity, n_kv, head_dim) f32, laid out as `layout` says. */
  readonly keys: GPUTexture[] = [];
  readonly values: GPUTexture[] = [];

  /** `layout`: what KvCache.check returned for this capacity. */
  constructor(
    private device: GPUDevice,
    private state: GPUBuffer,
    cfg: ModelConfig,
    readonly capacity: number,
    readonly layout: KvLayout,
  ) {
    for (let l = 0; l < cfg.numLayers; l++) {
      this.keys.push(kvTexture(device, this.layout, `k${l}`));
      this.values.push(kvTexture(device, this.layout, `v${l}`));
    }
  }

  /**
   * The layout of one layer's cache in textures of at most `maxDim` x `maxDim` texels; a one-line
   * GpuError naming the limit and the longest context that fits when it does not fit.
   */
  static check(cfg: ModelConfig, capacity: number, maxDim: number): KvLayout {
    const layout = kvLayout(cfg.numKvHeads, cfg.headDim, capacity, maxDim);
    if (layout.width > maxDim) {
      throw new GpuError(
        `a context of ${capacity} tokens needs K/V textures ${layout.width} texels wide per ` +
          `layer, over this GPU's texture size limit of ${maxDim}: use --context ` +
          `${maxKvContext(cfg.numKvHeads, cfg.headDim, maxDim)} or less`,
      );
    }
    return layout;
  }

  /** Sets the cache length (state.pos): positions >= length are dropped. */
  truncate(length: number) {
    if (length < 0 || length > this.capacity) throw new RangeError(`bad cache length ${length}`);
    this.device.queue.writeBuffer(this.state, 0, new Uint32Array([length]));
  }

  destroy() {
    [...this.keys, ...this.values].forEach((t) => t.destroy());
  }
}
