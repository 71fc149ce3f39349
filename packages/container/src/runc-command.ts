/**
 * The OCI runtime as a command: which binary, how every command but `run` is
 * called (privileged, bounded in time), and how its failures read.
 */
import { join } from 'node:path';
import { CommandError, Exec, ExecCodes, type RunResult as ExecResult } from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';
import { assertId } from './runc-ids.js';

/** `runc`, `crun`, or the path of an OCI runtime with runc's command line. */
export type Runtime = 'runc' | 'crun' | (string & Record<never, never>);

/** The runtime option shared by every function here. */
export interface RuntimeOptions {
  /** Default `runc`. */
  runtime?: Runtime;
}

/** Bound on any runtime command other than `run`, so cleanup never hangs. */
const COMMAND_TIMEOUT_MS = 30_000;

/** "container does not exist" (runc) or a missing state file (crun). */
export const NOT_FOUND = /does not exist|No such file or directory|not found/i;

/**
 * The runtime binary of `opts` (default `runc`).
 *
 * @example
 * ```ts
 * binary({ runtime: 'crun' }); // 'crun'
 * ```
 */
export function binary(opts: RuntimeOptions): string {
  return opts.runtime || 'runc';
}

/**
 * Any runtime command but `run`: privileged, bounded in time, non-zero exit returned.
 *
 * @example
 * ```ts
 * const r = await runtimeCommand({ runtime: 'crun' }, ['state', id]);
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED` when the runtime cannot be run at all.
 */
export async function runtimeCommand(
  opts: RuntimeOptions,
  args: readonly string[],
): Promise<ExecResult> {
  // Spawned directly (the runtime's small answers kept here), as the runs are.
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const r = await Exec.runStreamed(binary(opts), args, {
    privileged: true,
    allowNonZeroExit: true,
    timeoutMs: COMMAND_TIMEOUT_MS,
    onData: (chunk, stream) => void (stream === 'stdout' ? out : err).push(chunk),
  }).catch((cause: unknown) => {
    throw runtimeMissing(opts, cause);
  });
  return {
    ...r,
    stdout: Buffer.concat(out).toString('utf8'),
    stderr: Buffer.concat(err).toString('utf8'),
  };
}

/**
 * The error for a runtime command that exited non-zero.
 *
 * @example
 * ```ts
 * if (r.exitCode !== 0) throw commandFailed(opts, 'list', r);
 * ```
 */
export function commandFailed(opts: RuntimeOptions, what: string, r: ExecResult): ContainerError {
  return new ContainerError(
    ContainerCodes.RUNTIME_FAILED,
    `\`${binary(opts)} ${what}\` exited with code ${r.exitCode}: ${r.stderr.trim()}`,
  );
}

/**
 * The JSON a runtime command printed (`null` for nothing).
 *
 * @example
 * ```ts
 * const json = parseJson(opts, 'list', r.stdout);
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED` when it is not JSON.
 */
export function parseJson(opts: RuntimeOptions, what: string, text: string): unknown {
  try {
    return JSON.parse(text.trim() || 'null') as unknown;
  } catch (cause) {
    throw new ContainerError(
      ContainerCodes.RUNTIME_FAILED,
      `\`${binary(opts)} ${what}\` printed something that is not JSON: ${text.slice(0, 200)}`,
      { cause },
    );
  }
}

/**
 * The runtime could not be run at all, or died (e.g. killed by a signal).
 *
 * @example
 * ```ts
 * await Exec.run(binary(opts), args).catch((err: unknown) => { throw runtimeMissing(opts, err); });
 * ```
 */
export function runtimeMissing(opts: RuntimeOptions, err: unknown): ContainerError {
  const missing = err instanceof CommandError && err.code === ExecCodes.COMMAND_NOT_FOUND;
  return new ContainerError(ContainerCodes.RUNTIME_FAILED, messageOf(err), {
    cause: err,
    hint: missing
      ? `Install it (apt-get install -y ${opts.runtime === 'crun' ? 'crun' : 'runc'}) or pass runtime: '/path/to/runtime'`
      : undefined,
  });
}

/**
 * Where `runc` and `crun` keep a container's state when run as root (the
 * default `--root`), or `undefined` for another runtime, whose layout is unknown.
 *
 * @example
 * ```ts
 * Runc.stateDir('day11-1-2-abc', { runtime: 'crun' }); // '/run/crun/day11-1-2-abc'
 * ```
 */
export function stateDir(id: string, opts: RuntimeOptions = {}): string | undefined {
  const root = STATE_ROOTS[binary(opts)];
  return root === undefined ? undefined : join(root, assertId(id));
}

/** Where runc and crun keep container state as root (their default `--root`). */
export const STATE_ROOTS: Readonly<Record<string, string>> = {
  runc: '/run/runc',
  crun: '/run/crun',
};
