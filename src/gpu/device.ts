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

/**
 * lavapipe (Mesa's CPU Vulkan driver) hands every dispatch to worker threads, which costs about
 * 20 us per dispatch against 2.5 us when it runs them on the submitting thread; decoding the
 * fixtures, a few hundred small dispatches per token, measured 1.3-1.4x faster single-threaded.
 * So unless the user chose (LP_NUM_THREADS set, e.g. for large models on many cores), run it
 * single-threaded. Other drivers ignore the variable. Must happen before the first adapter.
 */
function singleThreadedLavapipe() {
  try {
    if (Deno.env.get("LP_NUM_THREADS") === undefined) Deno.env.set("LP_NUM_THREADS", "0");
  } catch {
    // No env permission: keep the driver's default.
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

/** Opens (once) the default adapter's device, requesting its full limits and shader-f16. */
export function openGpu(): Promise<Gpu> {
  opened ??= requestGpu();
  return opened;
}

async function requestGpu(): Promise<Gpu> {
  if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
    throw new GpuError("this Deno has no WebGPU (navigator.gpu is missing)");
  }
  if (Deno.env.get("SKIPSPEC_NO_GPU") === "1") throw new GpuError(NO_ADAPTER); // tests simulate a missing adapter
  singleThreadedLavapipe();
  const adapter = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
  if (!adapter) throw new GpuError(NO_ADAPTER);
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
  };
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
