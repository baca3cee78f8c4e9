/**
 * File faults a user meets through the CLI: a truncated download, zero-byte files, a directory
 * where a file belongs, an unreadable file. Each is one line that names the file, with exit 3 for
 * the model's files (5 for a skip-set file), and no stack trace.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { ModelError } from "../src/errors.ts";
import { fileError, readBytes } from "../src/files.ts";
import { assertOneLineError, FIXTURE, modelWith, type Run, skipspec } from "./helpers/cli.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const decode = (
  dir: string,
) => ["decode", "--model", dir, "--prompt", "x", "--max-new-tokens", "1"];
const MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json"];
/** Whether mode 000 stops this process reading a file: not as root (or with CAP_DAC_OVERRIDE). */
async function chmodDeniesReads(): Promise<boolean> {
  const probe = await Deno.makeTempFile();
  try {
    await Deno.chmod(probe, 0o000);
    await Deno.readFile(probe);
    return false;
  } catch (e) {
    if (e instanceof Deno.errors.PermissionDenied) return true;
    throw e;
  } finally {
    await Deno.remove(probe);
  }
}
const CHMOD_DENIES = await chmodDeniesReads();

/** A copy of tiny-llama with some files replaced (see modelWith), removed after `fn`. */
async function withModel(
  replace: Record<string, string | Uint8Array>,
  fn: (dir: string) => Promise<void>,
) {
  const dir = await modelWith(FIXTURE, replace);
  try {
    await fn(dir);
  } finally {
    await Deno.chmod(dir, 0o755);
    await Deno.remove(dir, { recursive: true });
  }
}

/** The pattern of a one-line error about `file` of the model folder. */
const about = (file: string, problem: string) =>
  new RegExp(`${file.replaceAll(".", "\\.")}:? .*${problem}`);

Deno.test("a truncated model.safetensors (shorter than its header says) is a one-line model error", async () => {
  const bytes = await Deno.readFile(join(FIXTURE, "model.safetensors"));
  await withModel({ "model.safetensors": bytes.subarray(0, bytes.length * 0.6) }, async (dir) => {
    assertOneLineError(
      await skipspec(decode(dir)),
      3,
      about("model.safetensors", "shorter than its header says \\(a truncated download\\?\\)"),
    );
  });
  await withModel({ "model.safetensors": bytes.subarray(0, 100) }, async (dir) => {
    assertOneLineError(
      await skipspec(decode(dir)),
      3,
      about("model.safetensors", "runs past the end of the 100-byte file"),
    );
  });
});

Deno.test("zero-byte model files are one-line model errors naming the file", async () => {
  const expected: Record<string, string> = {
    "model.safetensors": "file is 0 bytes, too short",
    "config.json": "the file is empty \\(0 bytes\\)",
    "tokenizer.json": "the file is empty \\(0 bytes\\)",
  };
  for (const file of MODEL_FILES) {
    await withModel({ [file]: new Uint8Array(0) }, async (dir) => {
      assertOneLineError(await skipspec(decode(dir)), 3, about(file, expected[file]));
    });
  }
});

Deno.test("a directory where a model file belongs is a one-line model error naming it", async () => {
  for (const file of MODEL_FILES) {
    await withModel({}, async (dir) => {
      await Deno.remove(join(dir, file));
      await Deno.mkdir(join(dir, file));
      assertOneLineError(await skipspec(decode(dir)), 3, about(file, "is a directory"));
    });
  }
});

Deno.test("a directory given as --skip FILE is a one-line input error", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assertOneLineError(
      await skipspec(["decode", "--prompt", "x", "--skip", dir]),
      5,
      /--skip .*: is a directory, expected a file/,
    );
  } finally {
    await Deno.remove(dir);
  }
});

/** Runs the CLI with read access to everything but `denied` (Deno's own permission check). */
async function skipspecDenied(args: string[], denied: string): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-read", `--deny-read=${denied}`, "--allow-env", MAIN, ...args],
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).output();
  const text = new TextDecoder();
  return { code: out.code, stdout: text.decode(out.stdout), stderr: text.decode(out.stderr) };
}

Deno.test("a model file this run may not read (Deno permissions) is a one-line model error naming it", async () => {
  for (const file of MODEL_FILES) {
    await withModel({}, async (dir) => {
      const run = await skipspecDenied(decode(dir), join(dir, file));
      assertOneLineError(run, 3, about(file, "read"));
    });
  }
});

Deno.test({
  name: CHMOD_DENIES
    ? "a model file with mode 000 is a one-line model error naming it"
    : "a model file with mode 000 is a one-line model error (skipped: this user reads any file, e.g. root)",
  ignore: !CHMOD_DENIES,
  fn: async () => {
    for (const file of MODEL_FILES) {
      await withModel({}, async (dir) => {
        await Deno.chmod(join(dir, file), 0o000);
        assertOneLineError(await skipspec(decode(dir)), 3, about(file, "(permission denied|read)"));
      });
    }
  },
});

Deno.test("an OS error names the file once: Deno's appended \": <call> '<path>'\" is dropped, whatever the permission flags", async () => {
  const dir = await Deno.makeTempDir();
  const long = join(dir, "x".repeat(300));
  const want = /^.*x\.\.\.x+: cannot read \(File name too long \(os error 36\)\)$/;
  // Deno appends the call and path to a stat's error always, to a readFile's only under some flags.
  await assert.rejects(() => readBytes(long, ModelError), (e: Error) => want.test(e.message));
  const appended = Object.assign(
    new Error(`File name too long (os error 36): readfile '${long}'`),
    {
      code: "ENAMETOOLONG",
    },
  );
  const error = fileError(appended, long, ModelError) as Error;
  assert.ok(error instanceof ModelError);
  assert.match(error.message, want);
  await Deno.remove(dir);
});
