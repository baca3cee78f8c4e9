/**
 * GPU time from `timestamp-query`, where the adapter has it (lavapipe does; many browsers
 * quantise it): the time of a compute pass, and per-kernel time with one pass per dispatch. Unlike
 * wall-clock around a readback, this leaves out Deno's ~10 ms wait in mapAsync.
 */
import { type Gpu, mapForRead } from "./device.ts";
import { Recorder } from "./ops.ts";

/** Most timestamps in one query set (WebGPU's limit is 4096). */
const MAX_QUERIES = 4096;

export interface KernelTime {
  /** The pipeline's label: kernel name and defines (kernels/<name>.wgsl). */
  kernel: string;
  calls: number;
  /** GPU time of all calls, in milliseconds. */
  ms: number;
}

/** A Recorder that wraps every dispatch in its own timed pass. */
class TimedDispatches extends Recorder {
  readonly labels: string[] = [];
  constructor(private encoder: GPUCommandEncoder, private querySet: GPUQuerySet) {
    super(undefined as unknown as GPUComputePassEncoder);
  }
  override dispatch(pipeline: GPUComputePipeline, group: GPUBindGroup, x: number, y = 1, z = 1) {
    const i = this.dispatches;
    if (2 * i + 2 > MAX_QUERIES) throw new RangeError(`more than ${MAX_QUERIES / 2} dispatches`);
    const pass = this.encoder.beginComputePass({
      timestampWrites: {
        querySet: this.querySet,
        beginningOfPassWriteIndex: 2 * i,
        endOfPassWriteIndex: 2 * i + 1,
      },
    });
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(x, y, z);
    pass.end();
    this.labels.push(pipeline.label);
    this.dispatches++;
  }
}

export class GpuTimer {
  /** Most passes passesMs times in one command buffer (two timestamps each). */
  static readonly MAX_PASSES = MAX_QUERIES / 2;
  #querySet: GPUQuerySet;
  #resolve: GPUBuffer;
  #read: GPUBuffer;

  private constructor(private device: GPUDevice) {
    this.#querySet = device.createQuerySet({ type: "timestamp", count: MAX_QUERIES });
    this.#resolve = device.createBuffer({
      size: MAX_QUERIES * 8,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.#read = device.createBuffer({
      size: MAX_QUERIES * 8,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /** A timer, or undefined when the device lacks `timestamp-query`. */
  static for(gpu: Gpu): GpuTimer | undefined {
    if (!gpu.device.features.has("timestamp-query")) return undefined;
    return new GpuTimer(gpu.device);
  }

  /** Milliseconds of GPU time of one compute pass holding what `record` records. */
  async passMs(record: (rec: Recorder) => void): Promise<number> {
    const [ms] = await this.passesMs([{ record }]);
    return ms;
  }

  /**
   * Milliseconds of GPU time of each of `passes`, recorded as compute passes of one command buffer
   * (one readback for all), each after its `before` (e.g. a copy that sets the state it runs in).
   */
  async passesMs(
    passes: { before?: (encoder: GPUCommandEncoder) => void; record: (rec: Recorder) => void }[],
  ): Promise<number[]> {
    if (passes.length > GpuTimer.MAX_PASSES) {
      throw new RangeError(`more than ${GpuTimer.MAX_PASSES} passes`);
    }
    const encoder = this.device.createCommandEncoder();
    passes.forEach((p, i) => {
      p.before?.(encoder);
      const rec = new Recorder(encoder.beginComputePass({
        timestampWrites: {
          querySet: this.#querySet,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      }));
      p.record(rec);
      rec.pass.end();
    });
    const stamps = await this.#readTimestamps(encoder, 2 * passes.length);
    return passes.map((_, i) => Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6);
  }

  /** GPU time per pipeline of what `record` records, one timed pass per dispatch. */
  async kernelMs(record: (rec: Recorder) => void): Promise<KernelTime[]> {
    const encoder = this.device.createCommandEncoder();
    const rec = new TimedDispatches(encoder, this.#querySet);
    record(rec);
    const stamps = await this.#readTimestamps(encoder, 2 * rec.dispatches);
    const byKernel = new Map<string, KernelTime>();
    rec.labels.forEach((kernel, i) => {
      const entry = byKernel.get(kernel) ?? { kernel, calls: 0, ms: 0 };
      entry.calls++;
      entry.ms += Number(stamps[2 * i + 1] - stamps[2 * i]) / 1e6;
      byKernel.set(kernel, entry);
    });
    return [...byKernel.values()].sort((a, b) => b.ms - a.ms);
  }

  async #readTimestamps(encoder: GPUCommandEncoder, count: number): Promise<BigInt64Array> {
    encoder.resolveQuerySet(this.#querySet, 0, count, this.#resolve, 0);
    encoder.copyBufferToBuffer(this.#resolve, 0, this.#read, 0, count * 8);
    this.device.queue.submit([encoder.finish()]);
    await mapForRead(this.#read, 0, count * 8);
    const stamps = new BigInt64Array(this.#read.getMappedRange(0, count * 8).slice(0));
    this.#read.unmap();
    return stamps;
  }

  destroy() {
    this.#querySet.destroy();
    this.#resolve.destroy();
    this.#read.destroy();
  }
}
