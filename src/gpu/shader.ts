/**
 * Kernel sources and compiled pipelines. Each op is one `.wgsl` file in `kernels/`, imported as
 * text so `deno compile` carries them. Variants (weight dtype, epilogue, tokens per workgroup) come
 * from a tiny preprocessor: `#include "file"`, `#if NAME` / `#elif NAME` / `#else` / `#endif`, and
 * `const NAME` lines for numeric defines. Pipelines are cached by (kernel, defines).
 */
import addRmsnorm from "../../kernels/add_rmsnorm.wgsl" with { type: "text" };
import attention from "../../kernels/attention.wgsl" with { type: "text" };
import draftSample from "../../kernels/draft_sample.wgsl" with { type: "text" };
import embed from "../../kernels/embed.wgsl" with { type: "text" };
import logitsProcessing from "../../kernels/logits_processing.wgsl" with { type: "text" };
import matmul from "../../kernels/matmul.wgsl" with { type: "text" };
import sample from "../../kernels/sample.wgsl" with { type: "text" };
import speculation from "../../kernels/speculation.wgsl" with { type: "text" };
import state from "../../kernels/state.wgsl" with { type: "text" };
import streamRead from "../../kernels/stream_read.wgsl" with { type: "text" };
import verify from "../../kernels/verify.wgsl" with { type: "text" };
import verifyBegin from "../../kernels/verify_begin.wgsl" with { type: "text" };
import weightDtype from "../../kernels/weight_dtype.wgsl" with { type: "text" };

const SOURCES: Record<string, string> = {
  "add_rmsnorm.wgsl": addRmsnorm,
  "attention.wgsl": attention,
  "draft_sample.wgsl": draftSample,
  "embed.wgsl": embed,
  "logits_processing.wgsl": logitsProcessing,
  "matmul.wgsl": matmul,
  "sample.wgsl": sample,
  "speculation.wgsl": speculation,
  "state.wgsl": state,
  "stream_read.wgsl": streamRead,
  "verify.wgsl": verify,
  "verify_begin.wgsl": verifyBegin,
  "weight_dtype.wgsl": weightDtype,
};

export type KernelName =
  | "add_rmsnorm"
  | "attention"
  | "draft_sample"
  | "embed"
  | "matmul"
  | "sample"
  | "stream_read"
  | "verify"
  | "verify_begin";
/** Flags (true: defined) and numeric constants (emitted as `const NAME: u32`). */
export type Defines = Record<string, boolean | number>;

/** Expands includes and conditionals; numeric defines become WGSL constants. */
export function preprocess(file: string, defines: Defines): string {
  const constants = Object.entries(defines)
    .filter(([, v]) => typeof v === "number")
    .map(([k, v]) => `const ${k}: u32 = ${v}u;`);
  return [...constants, expand(file, defines, new Set())].join("\n");
}

function expand(file: string, defines: Defines, seen: Set<string>): string {
  const source = SOURCES[file];
  if (source === undefined) throw new Error(`unknown kernel source ${file}`);
  if (seen.has(file)) return "";
  seen.add(file);
  const out: string[] = [];
  // Each open #if: whether its current branch is live, and whether any branch was taken.
  const stack: { live: boolean; taken: boolean }[] = [];
  const live = () => stack.every((s) => s.live);
  for (const line of source.split("\n")) {
    const directive = line.trim().match(/^#(\w+)\s*(.*)$/);
    if (!directive) {
      if (live()) out.push(line);
      continue;
    }
    const [, word, arg] = directive;
    const top = stack[stack.length - 1];
    if (word === "if") {
      const on = Boolean(defines[arg]);
      stack.push({ live: on, taken: on });
    } else if (word === "elif" && top) {
      const on = !top.taken && Boolean(defines[arg]);
      top.live = on;
      top.taken ||= on;
    } else if (word === "else" && top) {
      top.live = !top.taken;
      top.taken = true;
    } else if (word === "endif" && top) {
      stack.pop();
    } else if (word === "include") {
      if (live()) out.push(expand(arg.replace(/"/g, ""), defines, seen));
    } else {
      throw new Error(`${file}: bad directive ${line.trim()}`);
    }
  }
  if (stack.length) throw new Error(`${file}: unterminated #if`);
  return out.join("\n");
}

/** Compiles and caches compute pipelines for one device. */
export class Pipelines {
  #cache = new Map<string, GPUComputePipeline>();
  constructor(readonly device: GPUDevice) {}

  get(kernel: KernelName, defines: Defines = {}): GPUComputePipeline {
    const key = kernel + JSON.stringify(Object.entries(defines).sort());
    let pipeline = this.#cache.get(key);
    if (!pipeline) {
      const code = preprocess(`${kernel}.wgsl`, defines);
      const module = this.device.createShaderModule({ label: key, code });
      pipeline = this.device.createComputePipeline({
        label: key,
        layout: "auto",
        compute: { module, entryPoint: "main" },
      });
      this.#cache.set(key, pipeline);
    }
    return pipeline;
  }
}
