/**
 * skipspec against the speed issue's peer, llama.cpp (node-llama-cpp 3.21.1, whose npm packages
 * ship its prebuilt CPU and Vulkan builds), on this machine: greedy decoding of the same fixture
 * (converted by bench/gguf.ts), the same prompt and token count, in cycles that time each
 * configuration back to back (this VM's speed drifts 1.5-2x within minutes). skipspec decodes, and
 * with --draft-model also speculates with that draft; llama.cpp runs on its CPU backend with 1 and
 * 2 threads (with --draft-model also with the draft as its speculative draft) and, with --vulkan,
 * on its Vulkan backend forced onto this machine's Vulkan device: llama.cpp skips CPU-type Vulkan
 * devices such as lavapipe ("ggml_vulkan: No devices found"), so asked for Vulkan it runs on its
 * CPU backend unless GGML_VK_VISIBLE_DEVICES names the device. Every run's tokens must equal
 * skipspec's greedy decode, which also checks the conversion.
 *
 *   deno task bench:peer [--model fixtures/tiny-llama] [--draft-model fixtures/tiny-draft]
 *                        [--tokens 128] [--cycles 3] [--vulkan]
 *
 * Needs the npm registry the first time (node-llama-cpp and its prebuilt binaries); not part of
 * the tests.
 */
import { parseArgs } from "node:util";
import { median } from "../src/bench/stats.ts";
import { decode } from "../src/generate/decode.ts";
import { speculate } from "../src/generate/speculate.ts";
import { GREEDY } from "../src/gpu/ops.ts";
import { Model, NO_SKIP } from "../src/model/model.ts";
import { ModelTokenizer } from "../src/model/tokenizer.ts";
import { llamaToGguf } from "./gguf.ts";

const { values: flags } = parseArgs({
  options: {
    model: { type: "string", default: "fixtures/tiny-llama" },
    "draft-model": { type: "string" },
    prompt: { type: "string", default: "ROMEO:" },
    tokens: { type: "string", default: "128" },
    cycles: { type: "string", default: "3" },
    vulkan: { type: "boolean", default: false },
  },
});
const newTokens = Number(flags.tokens);
const draftDir = flags["draft-model"];
const ggufOf = async (dir: string) => {
  const path = await Deno.makeTempFile({ suffix: ".gguf" });
  await Deno.writeFile(path, await llamaToGguf(dir));
  return path;
};
const gguf = await ggufOf(flags.model);
const draftGguf = draftDir ? await ggufOf(draftDir) : undefined;

/** A configuration to time: its greedy tokens and decode tok/s (after the first token). */
type Run = () => Promise<{ tokens: number[]; tps: number }>;
const runs: { label: string; run: Run }[] = [];

const prompt = (await ModelTokenizer.load(flags.model)).encode(flags.prompt);
const model = await Model.load(flags.model);
const draft = draftDir ? await Model.load(draftDir) : undefined;
const perSecond = (s: { generatedTokens: number; decodeMs: number }) =>
  (s.generatedTokens - 1) / (s.decodeMs / 1000);
runs.push({
  label: "skipspec",
  run: async () => {
    const opts = { maxNewTokens: newTokens, sampling: GREEDY, skip: NO_SKIP, stopTokens: [] };
    const r = await decode(model, prompt, opts);
    return { tokens: r.tokens, tps: perSecond(r.stats) };
  },
});
if (draft) {
  runs.push({
    label: "skipspec, draft",
    run: async () => {
      const r = await speculate(model, prompt, {
        maxNewTokens: newTokens,
        sampling: GREEDY,
        draft: { kind: "model", model: draft },
        stopTokens: [],
      });
      return { tokens: r.tokens, tps: perSecond(r.stats) };
    },
  });
}

// llama.cpp reads GGML_VK_VISIBLE_DEVICES when its Vulkan backend starts.
if (flags.vulkan) Deno.env.set("GGML_VK_VISIBLE_DEVICES", "0");
// A computed specifier: type checks and tests never fetch node-llama-cpp (~700 MB with its
// prebuilt builds); only running this bench does.
const { getLlama, LlamaLogLevel, DraftSequenceTokenPredictor } = await import(
  ["npm:node-llama-cpp", "3.21.1"].join("@")
);
const peers: [string, false | "vulkan", number, boolean][] = [
  ["llama.cpp CPU, 1 thread", false, 1, false],
  ["llama.cpp CPU, 2 threads", false, 2, false],
];
if (draftGguf) peers.push(["llama.cpp CPU, 2 threads, draft", false, 2, true]);
if (flags.vulkan) peers.push(["llama.cpp Vulkan (lavapipe)", "vulkan", 2, false]);
for (const [label, gpu, threads, drafting] of peers) {
  const llama = await getLlama({ gpu, build: "never", logLevel: LlamaLogLevel.error });
  const target = await llama.loadModel({ modelPath: gguf, gpuLayers: gpu ? "max" : 0 });
  const context = await target.createContext({ contextSize: 1024, threads });
  const draftContext = drafting
    ? await (await llama.loadModel({ modelPath: draftGguf, gpuLayers: 0 }))
      .createContext({ contextSize: 1024, threads })
    : undefined;
  const tokens = gpu ? Math.min(newTokens, 32) : newTokens; // ~10 tok/s on lavapipe
  runs.push({
    label,
    run: async () => {
      const draftSequence = draftContext?.getSequence();
      const sequence = context.getSequence(
        draftSequence
          ? { tokenPredictor: new DraftSequenceTokenPredictor(draftSequence) }
          : undefined,
      );
      const out: number[] = [];
      let first = 0;
      for await (const t of sequence.evaluate(prompt, { temperature: 0 })) {
        if (!out.length) first = performance.now();
        out.push(t);
        if (out.length >= tokens) break;
      }
      const tps = (out.length - 1) / ((performance.now() - first) / 1000);
      sequence.dispose();
      draftSequence?.dispose();
      return { tokens: out, tps };
    },
  });
}

const reference = (await runs[0].run()).tokens;
for (const r of runs.slice(1)) await r.run(); // warm-up: compiles skipspec's and Vulkan's shaders
const rows = new Map<string, number[]>(runs.map((r) => [r.label, []]));
for (let c = 0; c < Number(flags.cycles); c++) {
  for (const { label, run } of runs) {
    const r = await run();
    if (!r.tokens.every((t, i) => t === reference[i])) {
      console.error(`${label}: its greedy tokens differ from skipspec's decode`);
    }
    rows.get(label)!.push(r.tps);
  }
  const last = [...rows].map(([label, v]) => `${label} ${v.at(-1)!.toFixed(0)}`);
  console.error(`cycle ${c + 1}: ${last.join(", ")}`);
}
console.log(`decode tok/s, ${newTokens} tokens of "${flags.prompt}", greedy, ${flags.model}:`);
const ours = rows.get("skipspec")!;
for (const [label, v] of rows) {
  const each = v.map((x) => x.toFixed(0)).join(", ");
  const ratios = v.map((tps, i) => (ours[i] / tps).toFixed(2)).join(", ");
  const versus = label === "skipspec" ? "" : `  skipspec decode / this, per cycle: ${ratios}`;
  console.log(`${label.padEnd(32)} median ${median(v).toFixed(0).padStart(5)} (${each})${versus}`);
}
for (const path of [gguf, draftGguf]) if (path) await Deno.remove(path);
Deno.exit(0);
