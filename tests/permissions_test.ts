/**
 * Least privilege: the deno.json tasks grant read, the environment variables skipspec reads by
 * name, and write for the two commands that write files the user names (tune-skip, bench); never network, subprocesses, FFI or everything. Each task runs
 * here as shipped (`deno task <name>` with small arguments) to show that the narrow grant works,
 * lavapipe included; and the variables the source reads must match the grant exactly.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { HF_ENV_VARS } from "../src/model/hf_cache.ts";
import { assertOneLineError, errorLines, type Run, taskPermissions, TASKS } from "./helpers/cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const SHIPPED = ["skipspec", "demo", "tune-skip", "bench", "compile"];
const FORBIDDEN =
  /(^|\s)(-A|--allow-all|--allow-net|--allow-run|--allow-ffi|--allow-sys|--allow-import)(=|\s|$)/;

/** The flags of a task before its script (`deno run|compile <flags> ... main.ts`). */
function flagsOf(task: string): string[] {
  const words = TASKS[task].split(/\s+/);
  return words.slice(2, words.indexOf("main.ts")).filter((w) => w.startsWith("--allow"));
}

/** The variables named in --allow-env=A,B,... */
function envList(task: string): string[] {
  const flag = flagsOf(task).find((f) => f.startsWith("--allow-env")) ?? "";
  assert.ok(flag.startsWith("--allow-env="), `${task}: --allow-env must list its variables`);
  return flag.slice("--allow-env=".length).split(",").sort();
}

Deno.test("the shipped tasks grant no network, subprocess, FFI or blanket access, and read/env/write narrowly", () => {
  for (const task of SHIPPED) {
    const text = TASKS[task];
    assert.ok(text, `task ${task} exists`);
    assert.doesNotMatch(text, FORBIDDEN, task);
    const flags = flagsOf(task);
    const write = flags.filter((f) => f.startsWith("--allow-write"));
    const writes = task === "tune-skip" || task === "bench";
    assert.deepEqual(write, writes ? ["--allow-write"] : [], `${task}: write access`);
    for (const flag of flags) {
      assert.match(flag, /^--allow-(read|env=[A-Z0-9_,]+|write)$/, `${task}: ${flag}`);
    }
    assert.deepEqual(envList(task), envList("skipspec"), `${task}: the same variables`);
  }
  // The compiled binary carries the run tasks' permissions.
  assert.deepEqual(flagsOf("compile"), taskPermissions("skipspec"));
});

Deno.test("--allow-env lists exactly the variables the source reads by name", async () => {
  const read = new Set<string>(HF_ENV_VARS);
  const files = [join(ROOT, "main.ts")];
  const walk = async (dir: string) => {
    for await (const e of Deno.readDir(dir)) {
      const path = join(dir, e.name);
      if (e.isDirectory) await walk(path);
      else if (e.name.endsWith(".ts")) files.push(path);
    }
  };
  await walk(join(ROOT, "src"));
  for (const file of files) {
    const text = await Deno.readTextFile(file);
    for (const m of text.matchAll(/Deno\.env\.(get|set|has|delete)\(\s*"([^"]+)"/g)) read.add(m[2]);
    // Anything else must not reach the environment: no listing it all, no Node's process.env, and
    // a name that is not a literal only where the names are declared (hf_cache.ts).
    assert.doesNotMatch(text, /Deno\.env\.toObject|process\.env/, file);
    if (!file.endsWith("hf_cache.ts")) {
      assert.doesNotMatch(text, /Deno\.env\.(get|set|has|delete)\(\s*[^"\s]/, file);
    }
  }
  assert.deepEqual(envList("skipspec"), [...read].sort());
});

/** `deno task <name> ...args` from the repository root, as a user runs it. */
async function task(name: string, args: string[]): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["task", "-q", name, ...args],
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

function assertWorks(r: Run, what: string) {
  assert.equal(r.code, 0, `${what}: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /Requires \w+ access|NotCapable|PermissionDenied/, what);
}

Deno.test("deno task skipspec decodes and reports info under its narrow permissions", async () => {
  const r = await task("skipspec", [
    "decode",
    "--prompt",
    "ROMEO:",
    "--temperature",
    "0",
    "--max-new-tokens",
    "2",
  ]);
  assertWorks(r, "decode");
  assert.ok(r.stdout.trim().length > 0);
  assert.match(errorLines(r).join("\n"), /2 tokens, decode/);
  const info = await task("skipspec", ["info", "--model", "fixtures/tiny-llama", "--json"]);
  assertWorks(info, "info");
  assert.equal(JSON.parse(info.stdout).model.fits, true);
});

Deno.test("deno task demo runs as shipped (fewer tokens)", async () => {
  const r = await task("demo", ["--max-new-tokens", "2"]);
  assertWorks(r, "demo");
  assert.match(r.stderr, /speed-up [\d.]+x .*identical to plain decode/);
});

Deno.test("deno task tune-skip writes its outputs, and only there", async () => {
  const out = await Deno.makeTempDir({ prefix: "skipspec-perm-" });
  const prompts = join(out, "prompts.txt");
  await Deno.writeTextFile(prompts, "ROMEO:\n");
  // The fixture's logged cost model, so that no time goes into measuring one.
  const log = await Deno.readTextFile(join(ROOT, "fixtures/tiny-llama/trials.jsonl"));
  const costModel = join(out, "cost.json");
  await Deno.writeTextFile(
    costModel,
    JSON.stringify(JSON.parse(log.split("\n")[0]).header.costModel),
  );
  const r = await task("tune-skip", [
    "--model",
    "fixtures/tiny-llama",
    "--prompts",
    prompts,
    "--cost-model",
    costModel,
    "--trials",
    "1",
    "--max-new-tokens",
    "4",
    "--draft-max",
    "2",
    "--out",
    out,
    "--quiet",
  ]);
  assertWorks(r, "tune-skip");
  for (const file of ["skip.json", "trials.jsonl", "convergence.svg"]) {
    assert.ok((await Deno.stat(join(out, file))).isFile, file);
  }
  await Deno.remove(out, { recursive: true });
});

Deno.test("deno task bench runs as shipped and writes its --json report", async () => {
  const dir = await Deno.makeTempDir({ prefix: "skipspec-bench-task-" });
  const json = join(dir, "bench.json");
  const r = await task("bench", [
    "--model",
    "fixtures/tiny-draft",
    "--new-tokens",
    "4",
    "--repeats",
    "1",
    "--prompt-count",
    "1",
    "--json",
    json,
  ]);
  assertWorks(r, "bench");
  assert.match(r.stdout, /tiny-draft/);
  assert.equal(JSON.parse(await Deno.readTextFile(json)).models.length, 1);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("the grant is enforced: without env access the CLI stops with a one-line error", async () => {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", join(ROOT, "main.ts"), "decode", "--prompt", "x"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  const r = {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
  };
  assertOneLineError(r, 5, /Requires env access to "SKIPSPEC_NO_GPU"/);
});
