/**
 * `--model org/name` resolved offline from a Hugging Face cache: a fake cache in a temporary folder
 * (snapshots are symlinks to the fixture files, as the Hub's are to its blobs), refs by name,
 * commit hashes, the environment variables in huggingface_hub's order, a local folder winning over
 * a repo id, and one-line errors that name the folder looked in.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { hubCacheDir, isRepoId, resolveModelDir } from "../src/model/hf_cache.ts";
import { assertOneLineError, FIXTURE, skipspec } from "./helpers/cli.ts";

const DRAFT = new URL("../fixtures/tiny-draft", import.meta.url).pathname;
const LLAMA_COMMIT = "1".repeat(40);
const DRAFT_COMMIT = "abcdef0123456789abcdef0123456789abcdef01";

/** A hub cache folder holding models--acme--tiny: refs/main -> main's model, refs/v1 -> draft. */
async function fakeHub(hub: string, main = { commit: LLAMA_COMMIT, from: FIXTURE }) {
  const repo = join(hub, "models--acme--tiny");
  const snapshots = main.commit === DRAFT_COMMIT
    ? [main]
    : [main, { commit: DRAFT_COMMIT, from: DRAFT }];
  for (const { commit, from } of snapshots) {
    const snap = join(repo, "snapshots", commit);
    await Deno.mkdir(snap, { recursive: true });
    for (const entry of Deno.readDirSync(from)) {
      await Deno.symlink(join(from, entry.name), join(snap, entry.name));
    }
  }
  await Deno.mkdir(join(repo, "refs"), { recursive: true });
  await Deno.writeTextFile(join(repo, "refs", "main"), main.commit);
  await Deno.writeTextFile(join(repo, "refs", "v1"), DRAFT_COMMIT + "\n");
  return repo;
}

const root = await Deno.makeTempDir({ prefix: "skipspec-hf-" });
globalThis.addEventListener("unload", () => Deno.removeSync(root, { recursive: true }));
const HUB = join(root, "hub");
const REPO = await fakeHub(HUB);
/** A second cache whose main is the draft model, to tell which cache a run used. */
const OTHER = join(root, "other-hub");
await fakeHub(OTHER, { commit: DRAFT_COMMIT, from: DRAFT });

/** Where the child's Deno keeps its module cache: moving HOME or XDG_CACHE_HOME must not move it. */
const DENO_DIR = JSON.parse(
  new TextDecoder().decode(
    (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"], stdout: "piped" })
      .output()).stdout,
  ),
).denoDir;

/**
 * A child environment with the cache variables of this process cleared (empty counts as unset)
 * but those given. Only those set here: an empty XDG_CACHE_HOME would also turn off Mesa's shader
 * cache, and compiling lavapipe's shaders afresh takes many seconds.
 */
function env(vars: Record<string, string>): Record<string, string> {
  const names = ["HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"];
  const cleared = Object.fromEntries(
    names.filter((n) => Deno.env.get(n) !== undefined).map((n) => [n, ""]),
  );
  return { ...cleared, DENO_DIR, ...vars };
}

/** `info --model ... --json`: which folder it resolved, and how many layers the model there has. */
async function resolved(args: string[], vars: Record<string, string>, cwd?: string) {
  const r = await skipspec(["info", ...args, "--json"], env(vars), { cwd });
  assert.equal(r.code, 0, r.stderr);
  const { model } = JSON.parse(r.stdout);
  return { dir: model.dir as string, layers: model.layers as number };
}

Deno.test("--model org/name decodes from the snapshot that refs/main names", async () => {
  const ref = JSON.parse(await Deno.readTextFile(join(FIXTURE, "reference.json"))).cases[0];
  const args = ["--prompt", ref.prompt, "--temperature", "0", "--max-new-tokens", "4", "--json"];
  const r = await skipspec(["decode", "--model", "acme/tiny", ...args], env({ HF_HUB_CACHE: HUB }));
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.equal(out.model, join(REPO, "snapshots", LLAMA_COMMIT));
  assert.deepEqual(out.tokens, ref.greedy_ids.slice(0, 4));
});

Deno.test("--revision picks a ref by name or a commit by hash; speculate resolves --draft-model too", async () => {
  const vars = { HF_HUB_CACHE: HUB };
  const draftSnapshot = join(REPO, "snapshots", DRAFT_COMMIT);
  assert.deepEqual(await resolved(["--model", "acme/tiny", "--revision", "v1"], vars), {
    dir: draftSnapshot,
    layers: 2,
  });
  assert.deepEqual(await resolved(["--model", "acme/tiny", "--revision", DRAFT_COMMIT], vars), {
    dir: draftSnapshot,
    layers: 2,
  });
  const mainSnapshot = join(REPO, "snapshots", LLAMA_COMMIT);
  assert.deepEqual(await resolved(["--model", "acme/tiny", "--revision", "main"], vars), {
    dir: mainSnapshot,
    layers: 12,
  });
  const spec = await skipspec([
    "speculate",
    "--model",
    "acme/tiny",
    "--draft-model",
    "acme/tiny",
    "--draft-revision",
    "v1",
    "--prompt",
    "ROMEO:",
    "--temperature",
    "0",
    "--max-new-tokens",
    "4",
    "--json",
  ], env(vars));
  assert.equal(spec.code, 0, spec.stderr);
  assert.equal(JSON.parse(spec.stdout).draftModel, draftSnapshot);
});

Deno.test("a missing repo, revision or snapshot is a one-line model error naming the folder (exit 3)", async () => {
  const vars = env({ HF_HUB_CACHE: HUB });
  const missing = await skipspec(["decode", "--model", "acme/absent", "--prompt", "x"], vars);
  assertOneLineError(missing, 3, /model "acme\/absent" not found/);
  assert.ok(missing.stderr.includes(join(HUB, "models--acme--absent")), missing.stderr);
  assert.match(missing.stderr, /never downloads/);

  const noRef = await skipspec(["info", "--model", "acme/tiny", "--revision", "v9"], vars);
  assertOneLineError(noRef, 3, /revision "v9" is not in the cache/);
  assert.ok(noRef.stderr.includes(join(REPO, "refs", "v9")), noRef.stderr);

  const noCommit = await skipspec(
    ["info", "--model", "acme/tiny", "--revision", "f".repeat(40)],
    vars,
  );
  assertOneLineError(noCommit, 3, /is not in the cache/);

  // A ref naming a commit whose snapshot is gone (a half-deleted cache).
  await Deno.writeTextFile(join(REPO, "refs", "gone"), "2".repeat(40));
  const gone = await skipspec(["info", "--model", "acme/tiny", "--revision", "gone"], vars);
  assertOneLineError(gone, 3, /is commit 2{40}, but .*snapshots\/2{40} is missing/);

  // A ref file that does not hold a commit hash cannot send the lookup out of the cache.
  await Deno.writeTextFile(join(REPO, "refs", "evil"), "../../../../etc");
  const evil = await skipspec(["info", "--model", "acme/tiny", "--revision", "evil"], vars);
  assertOneLineError(evil, 3, /does not hold a commit hash/);
  const escape = await skipspec(["info", "--model", "acme/tiny", "--revision", "../x"], vars);
  assertOneLineError(escape, 2, /--revision "\.\.\/x" is not a branch, tag or commit hash/);

  // A path that is no repo id keeps the plain message.
  const path = await skipspec(["decode", "--model", "/nonexistent/model", "--prompt", "x"], vars);
  assertOneLineError(path, 3, /\/nonexistent\/model: model folder not found/);
  const localRevision = await skipspec(["info", "--model", FIXTURE, "--revision", "v1"], vars);
  assertOneLineError(localRevision, 2, /--revision .* is a local folder/);
});

Deno.test("the cache is HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub", async () => {
  const home = join(root, "home");
  await Deno.mkdir(join(home, ".cache", "huggingface"), { recursive: true });
  await Deno.symlink(OTHER, join(home, ".cache", "huggingface", "hub"));
  const hfHome = join(root, "hf-home");
  await Deno.mkdir(hfHome);
  await Deno.symlink(HUB, join(hfHome, "hub"));
  const xdg = join(root, "xdg");
  await Deno.mkdir(join(xdg, "huggingface"), { recursive: true });
  await Deno.symlink(HUB, join(xdg, "huggingface", "hub"));
  const model = ["--model", "acme/tiny"];

  // HOME alone: the draft (OTHER's main); each variable above it takes over.
  assert.equal((await resolved(model, { HOME: home })).layers, 2);
  assert.equal((await resolved(model, { HOME: home, XDG_CACHE_HOME: xdg })).layers, 12);
  const hfHomeRun = await resolved(model, { HOME: home, HF_HOME: hfHome });
  assert.equal(hfHomeRun.dir, join(hfHome, "hub", "models--acme--tiny", "snapshots", LLAMA_COMMIT));
  const both = await resolved(model, { HOME: home, HF_HOME: hfHome, HF_HUB_CACHE: OTHER });
  assert.equal(both.dir, join(OTHER, "models--acme--tiny", "snapshots", DRAFT_COMMIT));
  // The error names the folder of the variable in force.
  const missing = await skipspec(["info", "--model", "acme/absent"], env({ HF_HOME: hfHome }));
  assertOneLineError(missing, 3, /not found/);
  assert.ok(missing.stderr.includes(join(hfHome, "hub", "models--acme--absent")), missing.stderr);
});

Deno.test("a local folder that exists wins over a repo id of the same name", async () => {
  const cwd = join(root, "work");
  await Deno.mkdir(join(cwd, "acme"), { recursive: true });
  await Deno.symlink(DRAFT, join(cwd, "acme", "tiny"));
  const run = await resolved(["--model", "acme/tiny"], { HF_HUB_CACHE: HUB }, cwd);
  assert.deepEqual(run, { dir: "acme/tiny", layers: 2 });
});

Deno.test("hubCacheDir() follows huggingface_hub's order; empty variables count as unset", () => {
  const from = (vars: Record<string, string>) => hubCacheDir((name) => vars[name] || undefined);
  assert.equal(from({ HOME: "/h" }), "/h/.cache/huggingface/hub");
  assert.equal(from({ HOME: "/h", XDG_CACHE_HOME: "/x" }), "/x/huggingface/hub");
  assert.equal(from({ HOME: "/h", XDG_CACHE_HOME: "/x", HF_HOME: "~/hf" }), "/h/hf/hub");
  assert.equal(
    from({ HOME: "/h", HF_HOME: "/hf", HUGGINGFACE_HUB_CACHE: "/legacy" }),
    "/legacy",
  );
  assert.equal(
    from({ HF_HOME: "/hf", HUGGINGFACE_HUB_CACHE: "/legacy", HF_HUB_CACHE: "/hub" }),
    "/hub",
  );
  assert.equal(from({ HOME: "/h", HF_HUB_CACHE: "" }), "/h/.cache/huggingface/hub");
  assert.throws(() => from({}), /HOME is not set/);
});

Deno.test("isRepoId() takes org/name only; resolveModelDir() never reads outside the cache", async () => {
  for (const id of ["acme/tiny", "meta-llama/Llama-3.2-1B", "google/gemma-2-2b-it", "a.b/c_d"]) {
    assert.ok(isRepoId(id), id);
  }
  for (const id of ["tiny", "/abs/path", "./acme/tiny", "a/b/c", "../x", "acme/..", "a/.."]) {
    assert.ok(!isRepoId(id), id);
  }
  const fromHub = (name: string) => (name === "HF_HUB_CACHE" ? HUB : undefined);
  assert.equal(
    await resolveModelDir("acme/tiny", undefined, fromHub),
    join(REPO, "snapshots", LLAMA_COMMIT),
  );
  await assert.rejects(resolveModelDir("acme/tiny", "/etc", fromHub), /not a branch/);
});
