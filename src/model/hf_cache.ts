/**
 * `--model` names a folder, or a Hugging Face repo id (`org/name`) already downloaded into the
 * standard HF cache, resolved offline: nothing here touches the network. The cache is
 * `$HF_HUB_CACHE` (or the legacy `$HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`, else
 * `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`, as huggingface_hub does.
 * Layout: `models--org--name/refs/<revision>` holds a commit hash, and
 * `models--org--name/snapshots/<commit>/` the files (symlinks into `blobs/`).
 */
import { join } from "node:path";
import { ModelError, UsageError } from "../errors.ts";
import { brief, readText } from "../files.ts";

/** The environment variables read here, by name (deno.json grants exactly these). */
export const HF_ENV_VARS = [
  "HF_HUB_CACHE",
  "HUGGINGFACE_HUB_CACHE",
  "HF_HOME",
  "XDG_CACHE_HOME",
  "HOME",
] as const;

export const DEFAULT_REVISION = "main";

/** `org/name` as the Hub spells repo ids: two plain name segments. */
const REPO_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;
const COMMIT = /^[0-9a-f]{40}$/;

export function isRepoId(arg: string): boolean {
  return REPO_ID.test(arg) && !arg.includes("..");
}

type Env = (name: (typeof HF_ENV_VARS)[number]) => string | undefined;

/** An unset or empty variable is absent (a permission error still surfaces as one line). */
const processEnv: Env = (name) => Deno.env.get(name) || undefined;

/** The hub cache folder, from the environment as huggingface_hub reads it. */
export function hubCacheDir(env: Env = processEnv): string {
  const home = () => {
    const h = env("HOME");
    if (h === undefined) {
      throw new ModelError(
        "cannot find the Hugging Face cache: HOME is not set (set HF_HUB_CACHE or HF_HOME)",
      );
    }
    return h;
  };
  const expand = (p: string) => (p === "~" || p.startsWith("~/") ? home() + p.slice(1) : p);
  const hub = env("HF_HUB_CACHE") ?? env("HUGGINGFACE_HUB_CACHE");
  if (hub !== undefined) return expand(hub);
  const hfHome = env("HF_HOME");
  if (hfHome !== undefined) return join(expand(hfHome), "hub");
  const xdg = env("XDG_CACHE_HOME");
  return join(xdg !== undefined ? expand(xdg) : join(home(), ".cache"), "huggingface", "hub");
}

async function kind(path: string): Promise<"dir" | "file" | undefined> {
  try {
    return (await Deno.stat(path)).isDirectory ? "dir" : "file";
  } catch (e) {
    if (e instanceof Deno.errors.NotFound || e instanceof Deno.errors.NotADirectory) {
      return undefined;
    }
    throw e;
  }
}

/**
 * The model folder `arg` names: a local path that exists wins; otherwise an `org/name` repo id in
 * the HF cache at `revision` (a ref such as "main", or a commit hash). A missing model is a
 * one-line ModelError that names the folder looked in.
 */
export async function resolveModelDir(
  arg: string,
  revision?: string,
  env: Env = processEnv,
): Promise<string> {
  if (await kind(arg) !== undefined) {
    if (revision !== undefined) {
      throw new UsageError(
        `--revision selects a version of a Hugging Face repo id, but ${arg} is a local folder`,
      );
    }
    return arg;
  }
  if (!isRepoId(arg)) throw new ModelError(`${arg}: model folder not found`);
  const rev = revision ?? DEFAULT_REVISION;
  const parts = rev.split("/");
  if (rev === "" || rev.startsWith("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
    throw new UsageError(`--revision "${rev}" is not a branch, tag or commit hash`);
  }
  const hub = hubCacheDir(env);
  const repoDir = join(hub, `models--${arg.replace("/", "--")}`);
  if (await kind(repoDir) !== "dir") {
    throw new ModelError(
      `model "${arg}" not found: no folder ${arg} here, and no ${repoDir} in the Hugging Face ` +
        `cache (download it first, e.g. "huggingface-cli download ${arg}"; skipspec never ` +
        `downloads)`,
    );
  }
  let commit: string;
  if (COMMIT.test(rev) && await kind(join(repoDir, "snapshots", rev)) === "dir") {
    commit = rev;
  } else {
    const ref = join(repoDir, "refs", ...parts);
    if (await kind(ref) !== "file") {
      throw new ModelError(
        `model "${arg}": revision "${rev}" is not in the cache (no ${ref}, and no snapshot ` +
          `${join(repoDir, "snapshots", rev)})`,
      );
    }
    const text = await readText(ref, ModelError, { maxBytes: 4096 });
    commit = text.trim();
    if (!COMMIT.test(commit)) {
      throw new ModelError(`${ref}: does not hold a commit hash (got ${brief(commit)})`);
    }
  }
  const snapshot = join(repoDir, "snapshots", commit);
  if (await kind(snapshot) !== "dir") {
    throw new ModelError(
      `model "${arg}": revision "${rev}" is commit ${commit}, but ${snapshot} is missing`,
    );
  }
  return snapshot;
}
