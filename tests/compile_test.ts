/**
 * `deno compile` builds a standalone binary that carries its kernels and the default model and
 * runs `decode` from any working directory, with the `compile` task's permissions (the run tasks'
 * narrow grant, see permissions_test.ts). Building needs Deno's `denort` runtime, downloaded
 * from Deno's servers or given by DENORT_BIN; where neither works the test is skipped, saying why.
 */
import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;
const outDir = await Deno.makeTempDir({ prefix: "skipspec-bin-" });
const binary = `${outDir}/skipspec`;

async function build(): Promise<string | undefined> {
  // The `compile` task's own command line, writing to a temporary folder instead of dist/.
  const task: string = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`)).tasks.compile;
  const args = task.split(" ").slice(1).map((a) => (a === "dist/skipspec" ? binary : a));
  const out = await new Deno.Command(Deno.execPath(), {
    args,
    cwd: ROOT,
    env: { NO_COLOR: "1" },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.success) return undefined;
  const log = new TextDecoder().decode(out.stderr);
  const lines = log.split("\n").map((l) => l.trim());
  const reason = lines.filter((l) => /error/i.test(l)).pop() ?? lines.find((l) => l) ??
    "unknown error";
  return reason.trim();
}

const skipReason = await build();
if (skipReason) {
  console.log(
    `compile_test: skipped: deno compile could not get its denort runtime (${skipReason}); ` +
      `set DENORT_BIN to a local denort to run it`,
  );
}

Deno.test({
  name: "the compiled binary runs decode on its embedded model from another working directory",
  ignore: skipReason !== undefined,
  async fn() {
    const ref =
      JSON.parse(await Deno.readTextFile(`${ROOT}/fixtures/tiny-llama/reference.json`)).cases[0];
    const out = await new Deno.Command(binary, {
      args: [
        "decode",
        "--prompt",
        ref.prompt,
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--json",
      ],
      cwd: outDir,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.deepEqual(
      JSON.parse(new TextDecoder().decode(out.stdout)).tokens,
      ref.greedy_ids.slice(0, 12),
    );
    // Its env grant covers the GPU setup and the HF cache lookup: info and a missing repo id.
    const info = await new Deno.Command(binary, { args: ["info", "--json"], stdout: "piped" })
      .output();
    assert.equal(info.code, 0);
    assert.ok(JSON.parse(new TextDecoder().decode(info.stdout)).adapter.limits.maxBufferSize > 0);
    const missing = await new Deno.Command(binary, {
      args: ["info", "--model", "acme/absent"],
      env: { HF_HUB_CACHE: outDir },
      stderr: "piped",
    }).output();
    assert.equal(missing.code, 3);
    assert.match(new TextDecoder().decode(missing.stderr), /models--acme--absent/);
    await Deno.remove(outDir, { recursive: true });
  },
});
