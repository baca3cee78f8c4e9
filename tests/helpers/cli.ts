/** Running the CLI as a user does, and checking its errors (shared by the CLI test files). */
import assert from "node:assert/strict";
import { join } from "node:path";

export const MAIN = new URL("../../main.ts", import.meta.url).pathname;
export const CONFIG = new URL("../../deno.json", import.meta.url).pathname;
export const FIXTURE = new URL("../../fixtures/tiny-llama", import.meta.url).pathname;
export const GEMMA = new URL("../../fixtures/tiny-gemma2", import.meta.url).pathname;

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The deno.json tasks, as shipped. */
export const TASKS: Record<string, string> = JSON.parse(
  Deno.readTextFileSync(new URL("../../deno.json", import.meta.url)),
).tasks;

/** The permission flags of a `deno run ... main.ts` task: what comes between `run` and main.ts. */
export function taskPermissions(task: string): string[] {
  const words = TASKS[task].split(/\s+/);
  const from = words.indexOf("run") + 1, to = words.indexOf("main.ts");
  if (from === 0 || to < from) throw new Error(`task ${task} is not "deno run <flags> main.ts"`);
  return words.slice(from, to);
}

/** What the `skipspec` task grants: every CLI test runs with exactly these. */
export const PERMISSIONS = taskPermissions("skipspec");

/** Runs `main.ts` with the permissions the deno.json tasks grant (plus `write` where asked). */
export async function skipspec(
  args: string[],
  env: Record<string, string> = {},
  opts: { write?: string; cwd?: string } = {},
): Promise<Run> {
  const child = spawnSkipspec(args, env, opts);
  const timer = setTimeout(() => child.kill(), 240_000); // a hang fails the test instead of CI
  const out = await child.output();
  clearTimeout(timer);
  const decoder = new TextDecoder();
  return { code: out.code, stdout: decoder.decode(out.stdout), stderr: decoder.decode(out.stderr) };
}

export function spawnSkipspec(
  args: string[],
  env: Record<string, string> = {},
  opts: { write?: string; cwd?: string } = {},
): Deno.ChildProcess {
  const write = opts.write === undefined ? [] : [`--allow-write=${opts.write}`];
  return new Deno.Command(Deno.execPath(), {
    // --config: the import map holds whatever the working directory (opts.cwd) is.
    args: ["run", ...PERMISSIONS, ...write, "--config", CONFIG, MAIN, ...args],
    env,
    cwd: opts.cwd,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
}

/** stderr minus Deno's harmless XDG_RUNTIME_DIR notice. */
export function errorLines(r: Run): string[] {
  return r.stderr.split("\n").filter((l) => l.trim() && !l.includes("XDG_RUNTIME_DIR"));
}

export function assertOneLineError(r: Run, code: number, pattern: RegExp) {
  const lines = errorLines(r);
  assert.equal(r.code, code, `exit code; stderr: ${r.stderr}`);
  assert.equal(lines.length, 1, `one line expected, got:\n${lines.join("\n")}`);
  assert.match(lines[0], /^skipspec: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(r.stderr, /\n\s+at /, "no stack trace");
}

/** A copy of a fixture model folder with some files replaced, in a temporary directory. */
export async function modelWith(
  base: string,
  replace: Record<string, string | Uint8Array>,
): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "skipspec-model-" });
  for (const entry of Deno.readDirSync(base)) {
    await Deno.copyFile(join(base, entry.name), join(dir, entry.name));
  }
  for (const [name, content] of Object.entries(replace)) {
    if (typeof content === "string") await Deno.writeTextFile(join(dir, name), content);
    else await Deno.writeFile(join(dir, name), content);
  }
  return dir;
}

export async function editedConfig(
  base: string,
  edit: (c: Record<string, unknown>) => void,
): Promise<string> {
  const config = JSON.parse(await Deno.readTextFile(join(base, "config.json")));
  edit(config);
  return JSON.stringify(config);
}
