/**
 * skipspec against the speed issue's peer, llama.cpp (node-llama-cpp 3.21.1, whose npm packages
 * ship its prebuilt CPU and Vulkan builds), on this machine: greedy decoding of the same fixture
 * (converted by bench/gguf.ts), the same prompt and token count, in cycles that time skipspec's
 * decode and each llama.cpp configuration back to back (this VM's speed drifts 1.5-2x within
 * minutes). llama.cpp runs on its CPU backend with 1 and 2 threads and, with --vulkan, on its
 * Vulkan backend forced onto this machine's Vulkan device: llama.cpp skips CPU-type Vulkan devices
 * such as lavapipe ("ggml_vulkan: No devices found"), so asked for Vulkan it runs on its CPU
 * backend unless GGML_VK_VISIBLE_DEVICES names the device. Each run's tokens must equal
 * skipspec's, which checks the conversion.
 *
 *   deno task bench:peer [--model fixtures/tiny-llama] [--tokens 128] [--cycles 3] [--vulkan]
 *
 * Needs the npm registry the first time (node-llama-cpp and its prebuilt binaries); not part of
 * the tests.
 */
import { parseArgs } from "node:util";
import { decode } from "../src/generate/decode.ts";
import { GREEDY } from "../src/gpu/ops.ts";
import { Model, NO_SKIP } from "../src/model/model.ts";
import { ModelTokenizer } from "../src/model/tokenizer.ts";
import { median } from "../src/bench/stats.ts";
import { llamaToGguf } from "./gguf.ts";

const { values: flags } = parseArgs({
  options: {
    model: { type: "string", default: "fixtures/tiny-llama" },
    prompt: { type: "string", default: "ROMEO:" },
    tokens: { type: "string", default: "128" },
    cycles: { type: "string", default: "3" },
    vulkan: { type: "boolean", default: false },
  },
});
const newTokens = Number(flags.tokens);
const gguf = await Deno.makeTempFile({ suffix: ".gguf" });
await Deno.writeFile(gguf, await llamaToGguf(flags.model));

const tokenizer = await ModelTokenizer.load(flags.model);
const prompt = tokenizer.encode(flags.prompt);
const model = await Model.load(flags.model);
const ours = async () => {
  const r = await decode(model, prompt, {
    maxNewTokens: newTokens,
    sampling: GREEDY,
    skip: NO_SKIP,
    stopTokens: [],
  });
  return { tokens: r.tokens, tps: (r.stats.generatedTokens - 1) / (r.stats.decodeMs / 1000) };
};
const reference = (await ours()).tokens; // also compiles skipspec's pipelines

// llama.cpp reads GGML_VK_VISIBLE_DEVICES when its Vulkan backend starts.
if (flags.vulkan) Deno.env.set("GGML_VK_VISIBLE_DEVICES", "0");
// A computed specifier: type checks and tests never fetch node-llama-cpp (~700 MB with its
// prebuilt builds); only running this bench does.
const { getLlama, LlamaLogLevel } = await import(["npm:node-llama-cpp", "3.21.1"].join("@"));
const peers: { label: string; run: () => Promise<{ tokens: number[]; tps: number }> }[] = [];
for (
  const [label, gpu, threads] of [
    ["llama.cpp CPU, 1 thread", false, 1],
    ["llama.cpp CPU, 2 threads", false, 2],
    ...(flags.vulkan ? [["llama.cpp Vulkan (lavapipe)", "vulkan", 2]] : []),
  ] as [string, false | "vulkan", number][]
) {
  const llama = await getLlama({ gpu, build: "never", logLevel: LlamaLogLevel.error });
  const m = await llama.loadModel({ modelPath: gguf, gpuLayers: gpu ? "max" : 0 });
  const context = await m.createContext({ contextSize: 1024, threads });
  const tokens = flags.vulkan && gpu ? Math.min(newTokens, 32) : newTokens;
  const run = async () => {
    const sequence = context.getSequence();
    const out: number[] = [];
    let first = 0;
    for await (const t of sequence.evaluate(prompt as never, { temperature: 0 })) {
      if (!out.length) first = performance.now();
      out.push(t as unknown as number);
      if (out.length >= tokens) break;
    }
    const tps = (out.length - 1) / ((performance.now() - first) / 1000);
    sequence.dispose();
    return { tokens: out, tps };
  };
  await run(); // warm-up (Vulkan compiles its shaders here)
  peers.push({ label, run });
}

const rows: Record<string, number[]> = { skipspec: [] };
for (let c = 0; c < Number(flags.cycles); c++) {
  rows.skipspec.push((await ours()).tps);
  for (const p of peers) {
    const r = await p.run();
    const agree = r.tokens.every((t, i) => t === reference[i]);
    if (!agree) console.error(`${p.label}: its greedy tokens differ from skipspec's`);
    (rows[p.label] ??= []).push(r.tps);
  }
  console.error(
    `cycle ${c + 1}: ${
      Object.entries(rows).map(([k, v]) => `${k} ${v.at(-1)!.toFixed(0)}`).join(", ")
    }`,
  );
}
console.log(`decode tok/s, ${newTokens} tokens of "${flags.prompt}", greedy, ${flags.model}:`);
for (const [label, v] of Object.entries(rows)) {
  const ratios = v.map((tps, i) => rows.skipspec[i] / tps);
  console.log(
    `${label.padEnd(28)} median ${median(v).toFixed(0).padStart(5)} (${
      v.map((x) => x.toFixed(0)).join(", ")
    })` +
      (label === "skipspec"
        ? ""
        : `  skipspec / this, per cycle: ${ratios.map((r) => r.toFixed(2)).join(", ")}`),
  );
}
await Deno.remove(gguf);
Deno.exit(0);
