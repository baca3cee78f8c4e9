/** The WebGPU adapter and device, opened once per process with the adapter's own limits. */
import { GpuError } from "../errors.ts";

export interface Gpu {
  device: GPUDevice;
  adapterInfo: GPUAdapterInfo;
  /** True on software adapters such as lavapipe. */
  isFallback: boolean;
  features: string[];
  /** Largest storage-buffer binding: tensors above it are split by rows. */
  maxBinding: number;
  maxBufferSize: number;
  /** Every limit of the adapter, by WebGPU name. */
  limits: Record<string, number>;
  /** LP_NUM_THREADS when the adapter was created (lavapipe's worker threads; "0": none). */
  lavapipeThreads: string | null;
}

const NO_ADAPTER = "no WebGPU adapter found: install a GPU driver with Vulkan support, " +
  "or on a CPU-only machine the software driver lavapipe (apt-get install -y mesa-vulkan-drivers)";

let opened: Promise<Gpu> | undefined;
const gpuErrors: string[] = [];
/** Why the device was lost, once it was (destroyed, driver reset, ...). */
let lost: GPUDeviceLostInfo | undefined;

/**
 * Throws the first GPU error (invalid shader, validation, out of memory) raised since the last
 * check. WebGPU reports these asynchronously, so callers check after each readback.
 */
export function throwIfGpuError() {
  if (lost) throw deviceLostError();
  if (gpuErrors.length === 0) return;
  const first = gpuErrors[0].trim().split("\n").map((l) => l.trim()).filter(Boolean).slice(0, 3);
  gpuErrors.length = 0;
  throw new GpuError(`GPU error: ${first.join(" ")}`);
}

/** What the process will run, as far as the driver's threading is concerned. */
export interface GpuWorkload {
  /** Mean bytes of a weight matrix of the largest model the process will run. */
  meanMatrixBytes: number;
}

/** A model whose mean weight matrix is at least this big runs on every core (see below). */
export const THREADED_MATRIX_BYTES = 1 << 20;

/**
 * Worker threads for lavapipe (Mesa's CPU Vulkan driver), as LP_NUM_THREADS: "0" runs every
 * dispatch on the submitting thread. Handing a dispatch to workers costs ~20 us against ~2.5 us,
 * and only its workgroups are split, so small matrices lose and large ones gain. Decode tok/s,
 * threaded over single, on a 2-core VM (interleaved runs, by mean bytes per weight matrix):
 * the fixtures (60 KB) 0.6-0.7x, hidden 256 (0.3 MB) 0.92-0.97x, hidden 576 (1.9 MB) 1.27-1.29x,
 * hidden 896 (5 MB) 1.5-1.9x, Llama-3.2-1B (22 MB) 1.0-1.7x (prefill 1.8-1.9x). A value the user
 * set wins; no workload (tests, `info`) means single-threaded. Other drivers ignore the variable.
 */
export function lavapipeThreads(
  userSetting: string | undefined,
  workload: GpuWorkload | undefined,
  cores: number,
): string {
  if (userSetting !== undefined) return userSetting;
  const threaded = workload !== undefined && workload.meanMatrixBytes >= THREADED_MATRIX_BYTES;
  return threaded ? String(Math.max(1, cores)) : "0";
}

/**
 * Runs `open` (which creates the adapter and device: lavapipe reads LP_NUM_THREADS then) with the
 * threading lavapipeThreads chooses, then restores the environment, so child processes choose for
 * themselves. Returns the value the driver saw (null without env permission and no setting).
 */
async function withLavapipeThreads<T>(
  workload: GpuWorkload | undefined,
  open: () => Promise<T>,
): Promise<{ result: T; threads: string | null }> {
  let userSetting: string | undefined;
  try {
    userSetting = Deno.env.get("LP_NUM_THREADS");
  } catch {
    return { result: await open(), threads: null }; // no env permission: the driver's default
  }
  const threads = lavapipeThreads(userSetting, workload, navigator.hardwareConcurrency);
  if (userSetting !== undefined) return { result: await open(), threads };
  Deno.env.set("LP_NUM_THREADS", threads);
  try {
    return { result: await open(), threads };
  } finally {
    Deno.env.delete("LP_NUM_THREADS");
  }
}

function deviceLostError(detail = ""): GpuError {
  const why = lost ? `${lost.reason}${lost.message ? `: ${lost.message}` : ""}` : detail;
  return new GpuError(`the GPU device was lost (${why.split("\n")[0]}); output so far is above`);
}

/** `e` as the one-line device-lost GpuError when it says the device is gone; else `e`. */
export function asDeviceLost(e: unknown): unknown {
  if (e instanceof GpuError) return e;
  const message = (e as Error)?.message ?? String(e);
  return lost || /device (is|was) lost|destroyed/i.test(message) ? deviceLostError(message) : e;
}

/**
 * Maps a staging buffer for reading. A failed map means the device is gone (lost, reset,
 * destroyed): that becomes a one-line GpuError instead of a DOMException, after giving the
 * device's `lost` promise a moment to say why.
 */
export async function mapForRead(buffer: GPUBuffer, offset?: number, size?: number) {
  try {
    await buffer.mapAsync(GPUMapMode.READ, offset, size);
  } catch (e) {
    if (!lost) await new Promise((resolve) => setTimeout(resolve, 50));
    throw deviceLostError((e as Error).message);
  }
}

/**
 * Opens (once) the default adapter's device, requesting its full limits and shader-f16. The first
 * call's workload sets lavapipe's threading for the process (see lavapipeThreads).
 */
export function openGpu(workload?: GpuWorkload): Promise<Gpu> {
  opened ??= requestGpu(workload);
  return opened;
}

async function requestGpu(workload: GpuWorkload | undefined): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new GpuError("this Deno has no WebGPU (navigator.gpu is missing)");
  }
  if (Deno.env.get("SKIPSPEC_NO_GPU") === "1") throw new GpuError(NO_ADAPTER); // tests simulate a missing adapter
  const { result: found, threads } = await withLavapipeThreads(workload, requestDevice);
  if (!found) throw new GpuError(NO_ADAPTER);
  const { adapter, device } = found;
  // Deno's GPU type lacks the standard wgslLanguageFeatures (Deno 2.9 has the property).
  checkWgslFeatures(
    (navigator.gpu as { wgslLanguageFeatures?: ReadonlySetLike<string> })
      .wgslLanguageFeatures,
  );
  const limits = adapter.limits;
  lost = undefined;
  device.lost.then((info) => {
    lost = info;
    opened = undefined; // the next openGpu() asks for a new device
  });
  device.addEventListener("uncapturederror", (e) => {
    gpuErrors.push((e as GPUUncapturedErrorEvent).error.message);
  });
  return {
    device,
    adapterInfo: adapter.info,
    isFallback: adapter.info.isFallbackAdapter,
    features: [...adapter.features],
    maxBinding: limits.maxStorageBufferBindingSize,
    maxBufferSize: limits.maxBufferSize,
    limits: limitsRecord(limits),
    lavapipeThreads: threads,
  };
}

/** WGSL language features the kernels need (weights are read-only storage textures). */
export const REQUIRED_WGSL_FEATURES = ["readonly_and_readwrite_storage_textures"];

/** Throws a one-line GpuError naming the first of REQUIRED_WGSL_FEATURES `available` lacks. */
export function checkWgslFeatures(available: ReadonlySetLike<string> | undefined): void {
  for (const feature of REQUIRED_WGSL_FEATURES) {
    if (!available?.has(feature)) {
      throw new GpuError(
        `this WebGPU lacks the WGSL feature ${feature} (skipspec reads weights through ` +
          "read-only storage textures): use Deno 2.9 or newer",
      );
    }
  }
}

/** The default adapter and a device with its full limits and features we use; null: no adapter. */
async function requestDevice(): Promise<{ adapter: GPUAdapter; device: GPUDevice } | null> {
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) return null;
  const limits = adapter.limits;
  const requiredFeatures: GPUFeatureName[] = [];
  for (const f of ["shader-f16", "timestamp-query"] as GPUFeatureName[]) {
    if (adapter.features.has(f)) requiredFeatures.push(f);
  }
  const device = await adapter.requestDevice({
    requiredFeatures,
    requiredLimits: {
      maxStorageBufferBindingSize: limits.maxStorageBufferBindingSize,
      maxBufferSize: limits.maxBufferSize,
      maxTextureDimension2D: limits.maxTextureDimension2D,
      maxStorageBuffersPerShaderStage: limits.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupStorageSize: limits.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: limits.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: limits.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupsPerDimension: limits.maxComputeWorkgroupsPerDimension,
    },
  });
  return { adapter, device };
}

/** GPUSupportedLimits (prototype getters) as a plain record. */
function limitsRecord(limits: GPUSupportedLimits): Record<string, number> {
  const out: Record<string, number> = {};
  for (const key in limits) {
    const value = (limits as unknown as Record<string, unknown>)[key];
    if (typeof value === "number") out[key] = value;
  }
  return out;
}
