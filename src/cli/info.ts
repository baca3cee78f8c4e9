/**
 * `skipspec info`: what this machine offers (the WebGPU adapter, its features and limits, Deno's
 * version) and, with --model, what a model needs from it: parameters, dtype, bytes of weights on
 * the GPU, the K/V cache for the context, and whether every buffer fits the device's limits. The
 * model is not loaded: the figures come from config.json and the safetensors headers.
 */
import { InputError, ModelError, UsageError } from "../errors.ts";
import { readJson } from "../files.ts";
import { openGpu } from "../gpu/device.ts";
import { type ModelConfig, resolveConfig } from "../model/config.ts";
import { KV_TEXEL_BYTES, kvLayerBytes, kvLayout, maxKvContext } from "../model/kv_cache.ts";
import { DTYPE_BYTES, loadSafetensorsIndex, type TensorInfo } from "../model/safetensors.ts";
import { TEXEL_BYTES } from "../model/weights.ts";
import { helpText, parseFlags } from "./flags.ts";
import { MODEL_FLAGS, modelDir } from "./session.ts";

export const INFO_SUMMARY =
  "The GPU adapter, its features and limits, Deno's version; with --model, whether it fits.";

const FLAGS = {
  ...MODEL_FLAGS,
  "model": { ...MODEL_FLAGS.model, default: undefined },
  "context": {
    type: "int",
    help: "K/V cache length to check (default: min(max_position_embeddings, 4096), as decode)",
    min: 2,
  },
  "json": { type: "boolean", help: "print everything as one JSON object", default: false },
  "help": { type: "boolean", help: "show this help" },
} as const;

/** Tokens in one forward at most (Model.load's default maxBatch). */
const MAX_BATCH = 128;

/** PCI / Khronos vendor ids as adapters report them. */
const VENDORS: Record<number, string> = {
  0x1002: "AMD",
  0x1010: "Imagination",
  0x106b: "Apple",
  0x10de: "NVIDIA",
  0x13b5: "ARM",
  0x5143: "Qualcomm",
  0x8086: "Intel",
  0x10005: "Mesa",
};

export interface AdapterReport {
  description: string;
  vendor: string;
  /** The vendor id's name where it is a known PCI / Khronos id. */
  vendorName?: string;
  architecture: string;
  device: string;
  isFallbackAdapter: boolean;
  features: string[];
  limits: Record<string, number>;
}

export interface FitCheck {
  what: string;
  bytes: number;
  limit: string;
  limitBytes: number;
  ok: boolean;
}

export interface ModelReport {
  dir: string;
  architecture: string;
  layers: number;
  hiddenSize: number;
  vocabSize: number;
  parameters: number;
  /** Parameters per stored dtype. */
  dtypes: Record<string, number>;
  /** The dtype holding most parameters. */
  dtype: string;
  /** Matrices stay in their dtype on the GPU; vectors (norms) are widened to f32. */
  weightBytesOnGpu: number;
  maxPositionEmbeddings: number;
  contextLength: number;
  /** K and V of all layers, f32. */
  kvCacheBytes: number;
  /** The longest context whose K/V cache fits the limits. */
  maxContextLength: number;
  activationBytes: number;
  /** Weights + K/V cache + activations (WebGPU does not report the device's memory size). */
  totalBytes: number;
  checks: FitCheck[];
  fits: boolean;
}

export async function runInfo(argv: string[]): Promise<number> {
  const flags = parseFlags("info", FLAGS, argv);
  if (flags.help) {
    console.log(helpText("skipspec info [flags]", INFO_SUMMARY, FLAGS));
    return 0;
  }
  if (flags.context !== undefined && flags.model === undefined) {
    throw new UsageError("info: --context is checked against a model: give --model too");
  }
  // The model's files first: a missing or malformed model is its own error, GPU or not.
  const dir = flags.model === undefined ? undefined : await modelDir(flags);
  const files = dir === undefined ? undefined : await readModel(dir);
  const adapter = await describeGpu();
  const model = files && dir !== undefined
    ? modelReport(dir, files.cfg, files.tensors, adapter.limits, flags.context)
    : undefined;
  const deno = { ...Deno.version, os: Deno.build.os, arch: Deno.build.arch };
  if (flags.json) console.log(JSON.stringify({ deno, adapter, ...(model ? { model } : {}) }));
  else console.log(formatInfo(deno, adapter, model));
  return 0;
}

async function describeGpu(): Promise<AdapterReport> {
  // openGpu() gives the one-line error when there is no adapter.
  const gpu = await openGpu();
  const limits = gpu.limits;
  const info = gpu.adapterInfo;
  const id = Number(info.vendor);
  const vendorName = info.vendor !== "" && Number.isInteger(id) ? VENDORS[id] : undefined;
  return {
    description: info.description,
    vendor: info.vendor,
    ...(vendorName ? { vendorName } : {}),
    architecture: info.architecture,
    device: info.device,
    isFallbackAdapter: gpu.isFallback,
    features: [...gpu.features].sort(),
    limits,
  };
}

async function readModel(dir: string) {
  const raw = await readJson(`${dir}/config.json`, ModelError);
  return { cfg: resolveConfig(raw), tensors: await loadSafetensorsIndex(dir) };
}

/** What loading `tensors` with `cfg` at `context` tokens needs, against the adapter's limits. */
export function modelReport(
  dir: string,
  cfg: ModelConfig,
  tensors: Map<string, TensorInfo>,
  limits: Record<string, number>,
  context?: number,
): ModelReport {
  const contextLength = context ?? Math.min(cfg.maxPositions, 4096);
  if (contextLength > cfg.maxPositions) {
    throw new InputError(
      `context length ${contextLength} is outside 2..${cfg.maxPositions} (max_position_embeddings)`,
    );
  }
  const maxBinding = limits.maxStorageBufferBindingSize;
  const dtypes: Record<string, number> = {};
  let parameters = 0, weightBytes = 0;
  let widest = { name: "", bytes: 0 };
  for (const t of tensors.values()) {
    const count = t.shape.reduce((a, b) => a * b, 1);
    parameters += count;
    dtypes[t.dtype] = (dtypes[t.dtype] ?? 0) + count;
    // An untied model's lm_head is loaded; a tied one's (if present) is not.
    if (t.name === "lm_head.weight" && cfg.tieWordEmbeddings) continue;
    if (t.shape.length < 2) {
      weightBytes += count * 4; // widened to f32 (src/model/weights.ts vectorF32)
      continue;
    }
    weightBytes += t.byteLength;
    // Matrices live in textures a row of texels per weight row, split by rows into chunks no
    // taller than a texture (src/model/weights.ts createMatrix): only a row's width can exceed it.
    const rowBytes = (count / t.shape[0]) * DTYPE_BYTES[t.dtype];
    if (rowBytes > widest.bytes) widest = { name: t.name, bytes: rowBytes };
  }
  const dtype = Object.entries(dtypes).sort((a, b) => b[1] - a[1])[0]?.[0] ?? "none";
  const maxDim = limits.maxTextureDimension2D;
  const kv = kvLayout(cfg.numKvHeads, cfg.headDim, contextLength, maxDim);
  const kvPerLayer = kvLayerBytes(kv);
  const maxBatch = Math.min(MAX_BATCH, contextLength);
  const qDim = cfg.numHeads * cfg.headDim;
  const widestActivation = Math.max(
    cfg.hiddenSize,
    qDim + 2 * cfg.numKvHeads * cfg.headDim,
    cfg.intermediateSize,
  );
  const logitRow = cfg.vocabSize * 4;
  const logitRows = Math.max(1, Math.min(maxBatch, Math.floor(maxBinding / logitRow)));
  const activationBytes = maxBatch * 4 *
      (2 * cfg.hiddenSize + 3 * qDim + 2 * cfg.numKvHeads * cfg.headDim + cfg.intermediateSize) +
    logitRows * logitRow;
  const kvCacheBytes = 2 * cfg.numLayers * kvPerLayer;
  const check = (what: string, bytes: number, limit: string, limitBytes: number): FitCheck => ({
    what,
    bytes,
    limit,
    limitBytes,
    ok: bytes <= limitBytes,
  });
  const binding = "maxStorageBufferBindingSize";
  const checks = [
    check(
      `widest weight row (${widest.name})`,
      widest.bytes,
      `maxTextureDimension2D x ${TEXEL_BYTES} bytes`,
      limits.maxTextureDimension2D * TEXEL_BYTES,
    ),
    // K/V caches live in textures with whole positions in each row (src/model/kv_cache.ts): a
    // context longer than a texture is tall puts more positions in a row, up to its width.
    check(
      `K/V cache per layer (${contextLength} tokens): texture row`,
      kv.width * KV_TEXEL_BYTES,
      `maxTextureDimension2D x ${KV_TEXEL_BYTES} bytes`,
      maxDim * KV_TEXEL_BYTES,
    ),
    check(
      `widest activation (${maxBatch} tokens)`,
      maxBatch * widestActivation * 4,
      binding,
      maxBinding,
    ),
    check("one row of logits", logitRow, binding, maxBinding),
  ];
  return {
    dir,
    architecture: cfg.architecture,
    layers: cfg.numLayers,
    hiddenSize: cfg.hiddenSize,
    vocabSize: cfg.vocabSize,
    parameters,
    dtypes,
    dtype,
    weightBytesOnGpu: weightBytes,
    maxPositionEmbeddings: cfg.maxPositions,
    contextLength,
    kvCacheBytes,
    maxContextLength: Math.min(cfg.maxPositions, maxKvContext(cfg.numKvHeads, cfg.headDim, maxDim)),
    activationBytes,
    totalBytes: weightBytes + kvCacheBytes + activationBytes,
    checks,
    fits: checks.every((c) => c.ok),
  };
}

const bytes = (n: number) =>
  n >= 1e9
    ? `${(n / 1e9).toFixed(2)} GB`
    : n >= 1e6
    ? `${(n / 1e6).toFixed(1)} MB`
    : `${(n / 1e3).toFixed(1)} kB`;
const count = (n: number) =>
  n >= 1e9 ? `${(n / 1e9).toFixed(2)}B` : n >= 1e6 ? `${(n / 1e6).toFixed(2)}M` : `${n}`;

function formatInfo(
  deno: typeof Deno.version & { os: string; arch: string },
  a: AdapterReport,
  m: ModelReport | undefined,
): string {
  const width = Math.max(...Object.keys(a.limits).map((k) => k.length)) + 2;
  const lines = [
    `Deno ${deno.deno} (V8 ${deno.v8}, TypeScript ${deno.typescript}), ${deno.os} ${deno.arch}`,
    `adapter: ${a.description || a.device || "unknown"}`,
    `  vendor ${a.vendor || "?"}${a.vendorName ? ` (${a.vendorName})` : ""}, architecture ${
      a.architecture || "?"
    }, device ${a.device || "?"}`,
    `  fallback (software) adapter: ${a.isFallbackAdapter ? "yes" : "no"}`,
    `features: ${a.features.join(", ") || "none"}`,
    "limits:",
    ...Object.entries(a.limits).map(([k, v]) => `  ${k.padEnd(width)}${v}`),
  ];
  if (m) {
    const kinds = Object.entries(m.dtypes).map(([d, n]) => `${d} ${count(n)}`).join(", ");
    lines.push(
      `model: ${m.dir}`,
      `  ${m.architecture}, ${m.layers} layers, hidden ${m.hiddenSize}, vocab ${m.vocabSize}`,
      `  parameters ${count(m.parameters)} (${kinds}), dtype ${m.dtype}`,
      `  weights on the GPU ${bytes(m.weightBytesOnGpu)}`,
      `  context ${m.contextLength} tokens (max_position_embeddings ${m.maxPositionEmbeddings}), ` +
        `K/V cache ${bytes(m.kvCacheBytes)}, activations ${bytes(m.activationBytes)}`,
      `  total ${bytes(m.totalBytes)} (not checked against the GPU's memory: WebGPU does not ` +
        `report it)`,
      `  fits this device's limits: ${m.fits ? "yes" : "NO"}; longest context that fits: ` +
        `${m.maxContextLength} tokens`,
      ...m.checks.map((c) =>
        `    ${c.ok ? "ok " : "NO "} ${c.what}: ${c.bytes} bytes ${c.ok ? "<=" : ">"} ` +
        `${c.limit} ${c.limitBytes}`
      ),
    );
  }
  return lines.join("\n");
}
