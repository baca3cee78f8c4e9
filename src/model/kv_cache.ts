/**
 * The K/V cache: preallocated per layer, indexed by position. Its length is the GPU `state.pos`
 * (the next position to write), so a rollback after rejected drafts is only `truncate(length)`:
 * stale entries past it are overwritten before they are ever read.
 */
import { GpuError } from "../errors.ts";
import { storageBuffer } from "../gpu/buffers.ts";
import type { ModelConfig } from "./config.ts";

export class KvCache {
  /** key[l], value[l]: (capacity, n_kv, head_dim) f32. */
  readonly keys: GPUBuffer[] = [];
  readonly values: GPUBuffer[] = [];

  constructor(
    private device: GPUDevice,
    private state: GPUBuffer,
    cfg: ModelConfig,
    readonly capacity: number,
    maxBinding: number,
  ) {
    const bytes = KvCache.check(cfg, capacity, maxBinding);
    for (let l = 0; l < cfg.numLayers; l++) {
      this.keys.push(storageBuffer(device, bytes, `k${l}`));
      this.values.push(storageBuffer(device, bytes, `v${l}`));
    }
  }

  /**
   * Bytes of one layer's keys (or values) for `capacity` tokens; a GpuError naming the limit and
   * the largest context that fits when one layer's buffer exceeds the storage binding limit.
   */
  static check(cfg: ModelConfig, capacity: number, maxBinding: number): number {
    const bytes = capacity * cfg.numKvHeads * cfg.headDim * 4;
    if (bytes > maxBinding) {
      const most = Math.floor(maxBinding / (cfg.numKvHeads * cfg.headDim * 4));
      throw new GpuError(
        `a context of ${capacity} tokens needs ${bytes} bytes of K/V per layer, over this GPU's ` +
          `storage binding limit of ${maxBinding} bytes: use --context ${most} or less`,
      );
    }
    return bytes;
  }

  /** Sets the cache length (state.pos): positions >= length are dropped. */
  truncate(length: number) {
    if (length < 0 || length > this.capacity) throw new RangeError(`bad cache length ${length}`);
    this.device.queue.writeBuffer(this.state, 0, new Uint32Array([length]));
  }

  destroy() {
    [...this.keys, ...this.values].forEach((b) => b.destroy());
  }
}
