/** The machine a bench ran on: Deno, OS, CPUs, and the WebGPU adapter's identity and limits. */
import type { Gpu } from "../gpu/device.ts";
import type { MachineInfo } from "./report.ts";

export function machineInfo(gpu: Gpu): MachineInfo {
  const info = gpu.adapterInfo;
  return {
    deno: Deno.version.deno,
    v8: Deno.version.v8,
    os: Deno.build.os,
    arch: Deno.build.arch,
    cpus: navigator.hardwareConcurrency,
    adapter: {
      vendor: info.vendor,
      architecture: info.architecture,
      device: info.device,
      description: info.description,
      isFallback: gpu.isFallback,
    },
    features: [...gpu.device.features].sort(),
    limits: gpu.limits,
    lavapipeThreads: gpu.lavapipeThreads,
  };
}
