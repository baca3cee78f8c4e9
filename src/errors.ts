/**
 * Errors a user can meet. Each carries an exit code and a one-line message that says what was
 * wrong and, where there is one, what to do. `main.ts` prints `skipspec: <message>` and exits with
 * the code; anything that is not a SkipspecError is a bug and keeps its stack trace.
 */

/** Exit codes, documented in `--help` and the README. */
export const ExitCode = {
  ok: 0,
  /** An internal error (a bug): anything that is not a SkipspecError. */
  internal: 1,
  /** Unknown or malformed flags, conflicting options. */
  usage: 2,
  /** The model folder, its files or its config cannot be used. */
  badModel: 3,
  /** No WebGPU adapter, or the device cannot hold what was asked for. */
  noGpu: 4,
  /** Bad input other than the model: a prompt longer than the context, a bad skip set. */
  badInput: 5,
  /** Interrupted by the user (Ctrl-C). */
  interrupted: 130,
} as const;

export class SkipspecError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
    this.name = new.target.name;
  }
}

/** A command line that cannot be understood. */
export class UsageError extends SkipspecError {
  constructor(message: string) {
    super(message, ExitCode.usage);
  }
}

/** A model folder or file that cannot be loaded (malformed, unsupported, missing). */
export class ModelError extends SkipspecError {
  constructor(message: string) {
    super(message, ExitCode.badModel);
  }
}

/** No usable GPU, or a request beyond what the device can hold. */
export class GpuError extends SkipspecError {
  constructor(message: string) {
    super(message, ExitCode.noGpu);
  }
}

/** Input that does not fit: a prompt longer than the context, an invalid skip set. */
export class InputError extends SkipspecError {
  constructor(message: string) {
    super(message, ExitCode.badInput);
  }
}
