/**
 * Reading the files a user points us at, with every way a read can fail turned into one typed,
 * one-line error that names the file: missing, a directory, not a regular file, unreadable (by the
 * OS or by Deno's permissions), empty, too large, not UTF-8, not JSON. Callers pick the error
 * class: ModelError (exit 3) for the model folder's files, InputError (exit 5) for the rest.
 */
import { SkipspecError } from "./errors.ts";

/** A SkipspecError subclass built from a message alone (ModelError, InputError, ...). */
export type ErrorClass = new (message: string) => SkipspecError;

export interface ReadOptions {
  /** How messages name the file (default: its path), e.g. "--resume /tmp/trials.jsonl". */
  label?: string;
  /** Largest accepted size in bytes (default 1 GiB): a bigger file is an error, not read. */
  maxBytes?: number;
  /** Accept a zero-byte file (default: an empty file is an error). */
  allowEmpty?: boolean;
}

const DEFAULT_MAX_BYTES = 1 << 30;
const MAX_DETAIL_CHARS = 160;
const MAX_NAME_CHARS = 200;

/** Text on one line: control characters escaped as in JSON. */
export function oneLine(text: string): string {
  // deno-lint-ignore no-control-regex
  return text.replace(/[\u0000-\u001f\u007f\u2028\u2029]/g, (c) => JSON.stringify(c).slice(1, -1));
}

/** A value read from a file, as short one-line JSON for a message: `"F64"`, `[1,2]`, `{"a":[...`. */
export function brief(value: unknown, maxChars = 60): string {
  const text = oneLine(JSON.stringify(value) ?? String(value));
  return text.length > maxChars ? `${text.slice(0, maxChars - 3)}...` : text;
}

/** A file's name for a message: on one line, and a pathological length cut in the middle. */
function fileName(label: string): string {
  const text = oneLine(label);
  return text.length > MAX_NAME_CHARS ? `${text.slice(0, 100)}...${text.slice(-97)}` : text;
}

/** An error's message (or a thrown value) as a short one-line detail. */
export function detail(e: unknown): string {
  const text = (e instanceof Error ? e.message : String(e)).replace(/\s+/g, " ").trim();
  return text.length > MAX_DETAIL_CHARS ? `${text.slice(0, MAX_DETAIL_CHARS - 3)}...` : text;
}

/**
 * The typed error for a failed file-system call on `label`'s file; a SkipspecError passes through
 * unchanged, and so does anything that is not a Deno file-system error (a bug keeps its stack).
 */
export function fileError(e: unknown, label: string, Err: ErrorClass): unknown {
  const name = fileName(label);
  if (e instanceof SkipspecError) return e;
  if (e instanceof Deno.errors.NotFound) return new Err(`${name}: file not found`);
  if (e instanceof Deno.errors.IsADirectory) {
    return new Err(`${name}: is a directory, expected a file`);
  }
  if (e instanceof Deno.errors.PermissionDenied) {
    return new Err(`${name}: permission denied (the file is not readable)`);
  }
  if (e instanceof Deno.errors.NotCapable) {
    return new Err(`${name}: not readable with this run's Deno permissions (--allow-read)`);
  }
  // Deno.errors classes, and the plain Errors with an OS error code (ENAMETOOLONG, ELOOP, ...).
  const os = e instanceof Error && typeof (e as { code?: unknown }).code === "string";
  if (os || Object.values(Deno.errors).some((C) => e instanceof C)) {
    return new Err(`${name}: cannot read (${detail(withoutCallSuffix(e as Error))})`);
  }
  return e;
}

/**
 * The OS error without the ": <call> '<path>'" that Deno appends to some of them (to a readFile's
 * only under some permission flags): the message names the file already, so it stays one short
 * line, the same however Deno runs.
 */
function withoutCallSuffix(e: Error): string {
  return e.message.replace(/: [a-z_]+ '.*'$/s, "");
}

/** Rejects what is not a regular file (a directory, a device, a pipe). */
function checkRegular(info: Deno.FileInfo, name: string, Err: ErrorClass) {
  if (info.isDirectory) throw new Err(`${name}: is a directory, expected a file`);
  if (!info.isFile) throw new Err(`${name}: is not a regular file`);
}

/** Rejects an empty or an over-large file. */
function checkSize(size: number, name: string, Err: ErrorClass, opts: ReadOptions) {
  const max = opts.maxBytes ?? DEFAULT_MAX_BYTES;
  if (size > max) throw new Err(`${name}: ${size} bytes is over the ${max}-byte limit`);
  if (size === 0 && !opts.allowEmpty) throw new Err(`${name}: the file is empty (0 bytes)`);
}

/** All bytes of a regular file. */
export async function readBytes(
  path: string,
  Err: ErrorClass,
  opts: ReadOptions = {},
): Promise<Uint8Array<ArrayBuffer>> {
  const label = opts.label ?? path;
  const name = fileName(label);
  try {
    const info = await Deno.stat(path);
    checkRegular(info, name, Err);
    checkSize(info.size, name, Err, opts);
    const bytes = await Deno.readFile(path);
    checkSize(bytes.length, name, Err, opts); // the file may have changed since the stat
    return bytes;
  } catch (e) {
    throw fileError(e, label, Err);
  }
}

/** All bytes of a regular file, synchronously. */
export function readBytesSync(
  path: string,
  Err: ErrorClass,
  opts: ReadOptions = {},
): Uint8Array<ArrayBuffer> {
  const label = opts.label ?? path;
  const name = fileName(label);
  try {
    const info = Deno.statSync(path);
    checkRegular(info, name, Err);
    checkSize(info.size, name, Err, opts);
    const bytes = Deno.readFileSync(path);
    checkSize(bytes.length, name, Err, opts); // the file may have changed since the stat
    return bytes;
  } catch (e) {
    throw fileError(e, label, Err);
  }
}

/** Strict UTF-8 text of `bytes` (a leading byte-order mark is dropped). */
export function decodeUtf8(bytes: Uint8Array, label: string, Err: ErrorClass): string {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new Err(`${fileName(label)} is not valid UTF-8 text`);
  }
}

/** JSON.parse, with a syntax error as a one-line typed error naming `label`. */
export function parseJson(text: string, label: string, Err: ErrorClass): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Err(`${fileName(label)} is not valid JSON (${detail(e)})`);
  }
}

/** The UTF-8 text of a regular file. */
export async function readText(
  path: string,
  Err: ErrorClass,
  opts: ReadOptions = {},
): Promise<string> {
  return decodeUtf8(await readBytes(path, Err, opts), opts.label ?? path, Err);
}

/** The UTF-8 text of a regular file, synchronously. */
export function readTextSync(path: string, Err: ErrorClass, opts: ReadOptions = {}): string {
  return decodeUtf8(readBytesSync(path, Err, opts), opts.label ?? path, Err);
}

/** The parsed JSON of a regular file (any JSON value; callers check its shape). */
export async function readJson(
  path: string,
  Err: ErrorClass,
  opts: ReadOptions = {},
): Promise<unknown> {
  return parseJson(await readText(path, Err, opts), opts.label ?? path, Err);
}

/** The parsed JSON of a regular file that must hold an object: `{...}`, not an array or a scalar. */
export async function readJsonObject(
  path: string,
  Err: ErrorClass,
  opts: ReadOptions = {},
): Promise<Record<string, unknown>> {
  const value = await readJson(path, Err, opts);
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    const got = value === null ? "null" : Array.isArray(value) ? "an array" : `a ${typeof value}`;
    throw new Err(`${fileName(opts.label ?? path)} must hold a JSON object, got ${got}`);
  }
  return value as Record<string, unknown>;
}

/**
 * Opens a regular file for reading (the caller closes it) and returns its size; for files read in
 * pieces (safetensors). Zero-byte files are allowed: the caller knows what size it needs.
 */
export async function openFile(
  path: string,
  Err: ErrorClass,
  label = path,
): Promise<{ file: Deno.FsFile; size: number }> {
  let file: Deno.FsFile | undefined;
  try {
    file = await Deno.open(path, { read: true });
    const info = await file.stat();
    checkRegular(info, fileName(label), Err);
    return { file, size: info.size };
  } catch (e) {
    file?.close();
    throw fileError(e, label, Err);
  }
}
