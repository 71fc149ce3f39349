/**
 * Run subprocesses. Every subprocess in day11 goes through {@link run}, so
 * sudo, cancellation, timeouts and error reporting behave the same everywhere.
 */
import * as ExitHooks from './exit-hooks.js';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { accessSync, constants, statSync } from 'node:fs';
import { join } from 'node:path';
import { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import type { ExecaError } from 'execa';
import { CommandError, ExecCodes, SysError, type CommandErrorDetails } from './errors.js';
import * as Sys from './sys.js';
import { pumpEvents, pumpLent, type OutputStream } from './pipe-pump.js';

export type { OutputStream } from './pipe-pump.js';

/** Options of {@link run}. */
export interface RunOptions {
  /** Needs root: when not root, the command runs as `sudo -n CMD ...` (never prompts). */
  privileged?: boolean;
  /** Aborting it kills the process (SIGTERM, then SIGKILL after `killGraceMs`). */
  signal?: AbortSignal;
  /** Kill the process after this many milliseconds. */
  timeoutMs?: number;
  /** Milliseconds between SIGTERM and SIGKILL on abort or timeout (default 2000). */
  killGraceMs?: number;
  cwd?: string;
  /** Extra environment variables, added to the current environment. */
  env?: Record<string, string | undefined>;
  /** Written to the process's standard input. */
  input?: string | Uint8Array;
  /** Called with each line of output as it arrives (the output is still kept in the result). */
  onOutput?: (line: string, stream: OutputStream) => void;
  /**
   * Streams the output instead of keeping it: each chunk of stdout and
   * stderr, as it arrives, and the next chunk of that stream is read only
   * once the returned promise settles, so a slow consumer slows the command
   * down (the pipe fills) instead of filling memory. The result's `stdout`
   * and `stderr` are then empty. If it rejects, the rest of that stream is
   * read and dropped, and `run` rejects with that error once the command has
   * ended. Takes the place of `onOutput`.
   */
  onData?: (chunk: Buffer, stream: OutputStream) => void | Promise<void>;
  /** Resolve (instead of reject) when the command exits non-zero. Default false. */
  allowNonZeroExit?: boolean;
}

/** What a finished command produced. */
export interface RunResult {
  stdout: string;
  stderr: string;
  exitCode: number;
  durationMs: number;
}

const STDERR_TAIL_BYTES = 4096;

/**
 * execa, loaded on the first {@link run}: its modules take ~150 ms to load,
 * more than a fully cached build's work, which spawns only through
 * {@link runStreamed}.
 */
let execaModule: Promise<typeof import('execa')> | undefined;
function loadExeca(): Promise<typeof import('execa')> {
  execaModule ??= import('execa');
  return execaModule;
}

/** True when this process runs as root (uid 0). */
export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

/**
 * The executable `cmd` would run as (a path, or a name looked up in `PATH`
 * as `execvp` does), without spawning it; undefined when there is none.
 *
 * @example
 * ```ts
 * if (!Exec.which('crun')) console.error('install crun');
 * ```
 */
export function which(cmd: string, path = process.env.PATH ?? ''): string | undefined {
  if (cmd.includes('/')) return isExecutable(cmd) ? cmd : undefined;
  for (const dir of path.split(':')) {
    const candidate = join(dir || '.', cmd);
    if (isExecutable(candidate)) return candidate;
  }
  return undefined;
}

function isExecutable(file: string): boolean {
  try {
    accessSync(file, constants.X_OK);
    return statSync(file).isFile();
  } catch {
    return false;
  }
}

/**
 * Runs `cmd args`, resolving with its output when it exits 0.
 *
 * @example
 * ```ts
 * const { stdout } = await Exec.run('runc', ['--version']);
 * await Exec.run('mount', ['-t', 'tmpfs', 'tmpfs', dir], { privileged: true });
 * ```
 * @throws {CommandError} on a non-zero exit (unless `allowNonZeroExit`), a signal,
 *   a timeout, an abort, or when the command cannot be started.
 */
export async function run(
  cmd: string,
  args: readonly string[] = [],
  opts: RunOptions = {},
): Promise<RunResult> {
  const privileged = opts.privileged === true;
  const [file, argv] = withSudo(cmd, args, privileged);
  const started = performance.now();
  const onData = opts.onData;
  const onOutput = onData ? undefined : opts.onOutput;
  const { execa } = await loadExeca();
  const subprocess = execa(file, argv, {
    cwd: opts.cwd,
    env: opts.env,
    input: opts.input,
    stdin: opts.input === undefined ? 'ignore' : 'pipe',
    ...(onOutput && {
      stdout: lineTap(onOutput, 'stdout'),
      stderr: lineTap(onOutput, 'stderr'),
    }),
    // Streamed: execa keeps nothing; the pumps below read both pipes.
    ...(onData && { buffer: false }),
    // Its own process group, so a timeout or abort kills grandchildren too:
    // a shell's child holding the output pipe open must not outlive the kill.
    detached: true,
    cleanup: false,
    reject: opts.allowNonZeroExit !== true,
    stripFinalNewline: false,
  });
  const killer = new GroupKiller(subprocess.pid, opts.killGraceMs ?? 2000);
  const stop = killer.arm(opts.timeoutMs, opts.signal);
  const pumped = onData && pumpBoth(subprocess, onData);
  let result;
  try {
    result = await subprocess;
    await pumped?.done;
  } catch (err) {
    throw toCommandError({ cmd, args, err: err as ExecaError, privileged, killer });
  } finally {
    stop();
  }
  // With allowNonZeroExit a non-zero exit resolves, but death by signal,
  // timeout or abort is never a result a caller can use.
  if (result.failed && (result.exitCode === undefined || killer.reason)) {
    throw toCommandError({ cmd, args, err: result as unknown as ExecaError, privileged, killer });
  }
  // The consumer's own error (e.g. a full disk under a log), as it threw it.
  if (pumped?.error !== undefined) throw pumped.error as Error;
  return {
    stdout: typeof result.stdout === 'string' ? result.stdout : '',
    stderr: typeof result.stderr === 'string' ? result.stderr : '',
    exitCode: result.exitCode ?? 0,
    durationMs: performance.now() - started,
  };
}

/** Reads both pipes of `subprocess` into `onData`, one chunk at a time each. */
function pumpBoth(
  subprocess: { stdout: Readable | null; stderr: Readable | null },
  onData: NonNullable<RunOptions['onData']>,
): { done: Promise<void>; error: unknown } {
  const state: { done: Promise<void>; error: unknown } = {
    done: Promise.resolve(),
    error: undefined,
  };
  const pump = async (stream: Readable | null, name: OutputStream): Promise<void> => {
    if (!stream) return;
    let failed = false;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (failed) continue; // drained, so the command never blocks on a full pipe
      try {
        await onData(chunk, name);
      } catch (err) {
        failed = true;
        state.error ??= err;
      }
    }
  };
  state.done = Promise.all([
    pump(subprocess.stdout, 'stdout'),
    pump(subprocess.stderr, 'stderr'),
  ]).then(() => undefined);
  // Awaited after the subprocess; a read error then surfaces there.
  state.done.catch(() => undefined);
  return state;
}

/** Process groups still running, killed if this process exits first. */
const liveGroups = new Set<number>();

function killLiveGroups(): void {
  for (const pgid of liveGroups) killGroup(pgid, 'SIGKILL');
}

function killGroup(pgid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // Already gone.
  }
}

/** Kills a subprocess's whole process group on timeout or abort: SIGTERM, then SIGKILL. */
class GroupKiller {
  reason: 'timeout' | 'abort' | undefined;
  private graceTimer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pgid: number | undefined,
    private readonly graceMs: number,
  ) {
    if (pgid !== undefined) {
      ExitHooks.add(killLiveGroups);
      liveGroups.add(pgid);
    }
  }

  /** Starts watching; returns the function that stops watching once the process is done. */
  arm(timeoutMs: number | undefined, signal: AbortSignal | undefined): () => void {
    const timer =
      timeoutMs === undefined ? undefined : setTimeout(() => this.kill('timeout'), timeoutMs);
    const onAbort = (): void => this.kill('abort');
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    return () => {
      clearTimeout(timer);
      clearTimeout(this.graceTimer);
      signal?.removeEventListener('abort', onAbort);
      if (this.pgid !== undefined) liveGroups.delete(this.pgid);
      if (liveGroups.size === 0) ExitHooks.remove(killLiveGroups);
    };
  }

  private kill(reason: 'timeout' | 'abort'): void {
    if (this.reason || this.pgid === undefined) return;
    this.reason = reason;
    killGroup(this.pgid, 'SIGTERM');
    const pgid = this.pgid;
    this.graceTimer = setTimeout(() => killGroup(pgid, 'SIGKILL'), this.graceMs);
  }
}

/** Options of {@link runStreamed}. */
export interface RunStreamedOptions {
  /** Needs root: when not root, the command runs as `sudo -n CMD ...` (never prompts). */
  privileged?: boolean;
  /** Aborting it kills the process group (SIGTERM, then SIGKILL after `killGraceMs`). */
  signal?: AbortSignal;
  /** Kill the process group after this many milliseconds. */
  timeoutMs?: number;
  /** Milliseconds between SIGTERM and SIGKILL on abort or timeout (default 2000). */
  killGraceMs?: number;
  /** Written to the process's standard input (default: none, /dev/null). */
  input?: string | Uint8Array;
  /** Each chunk of output, as {@link RunOptions.onData}: the next one is read once it settles. */
  onData: (chunk: Buffer, stream: OutputStream) => void | Promise<void>;
  /**
   * Lend the chunks instead of giving them: each is valid only until
   * `onData` returns or its promise settles, then the next read overwrites
   * it (copy what you keep). Each stream is read into one 64 KiB buffer, so
   * a command printing gigabytes allocates nothing per read and the RSS
   * stays flat. Default false: every chunk is a fresh buffer.
   */
  lendChunks?: boolean;
  /** Resolve (instead of reject) when the command exits non-zero. Default false. */
  allowNonZeroExit?: boolean;
}

/**
 * {@link run} with `onData`, for a hot path: the command is spawned with
 * Node's `child_process.spawn` directly, without execa's per-call work
 * (option normalisation, stream plumbing, result objects). The same
 * guarantees: its own process group, killed whole on abort or timeout
 * (SIGTERM, then SIGKILL) and when this process exits; output streamed
 * with backpressure, nothing kept; the same typed errors. `stdout` and
 * `stderr` of the result are empty.
 *
 * @example
 * ```ts
 * const r = await Exec.runStreamed('crun', ['run', '--bundle', bundle, id], {
 *   privileged: true,
 *   allowNonZeroExit: true,
 *   onData: (chunk, stream) => log.write(chunk, stream),
 * });
 * ```
 * @throws {CommandError} as {@link run}: a non-zero exit (unless `allowNonZeroExit`),
 *   death by a signal, a timeout, an abort, or a command that cannot be started;
 *   `onData`'s own error, as it threw it, once the command has ended.
 */
export async function runStreamed(
  cmd: string,
  args: readonly string[],
  opts: RunStreamedOptions,
): Promise<RunResult> {
  const privileged = opts.privileged === true;
  const [file, argv] = withSudo(cmd, args, privileged);
  const started = performance.now();
  const child = startChild(file, argv, opts.input);
  const killer = new GroupKiller(child.pid, opts.killGraceMs ?? 2000);
  const stop = killer.arm(opts.timeoutMs, opts.signal);
  const consumer: { error: unknown } = { error: undefined };
  const pump = opts.lendChunks === true ? pumpLent : pumpEvents;
  const pumped = Promise.all([
    pump(child.stdout, 'stdout', opts.onData, consumer),
    pump(child.stderr, 'stderr', opts.onData, consumer),
  ]);
  const ended = child.ended(pumped);
  let exit: Awaited<typeof ended>;
  try {
    exit = await ended;
    if (!('spawnError' in exit)) await pumped;
  } finally {
    stop();
  }
  const base = {
    command: cmd,
    args,
    stderrTail: '',
    timedOut: killer.reason === 'timeout',
    aborted: killer.reason === 'abort',
  };
  if ('spawnError' in exit) {
    const cause = exit.spawnError;
    const spawnCode = errnoOf(cause);
    throw classify({
      cmd,
      privileged,
      stderr: '',
      spawnCode,
      base: { ...base, exitCode: undefined, signal: undefined, cause },
    });
  }
  const { code, signal } = exit;
  const failed = code === null || (code !== 0 && (killer.reason || !opts.allowNonZeroExit));
  if (failed) {
    throw classify({
      cmd,
      privileged,
      stderr: '',
      spawnCode: undefined,
      base: { ...base, exitCode: code ?? undefined, signal: signal ?? undefined },
    });
  }
  if (consumer.error !== undefined) throw consumer.error as Error;
  return { stdout: '', stderr: '', exitCode: code, durationMs: performance.now() - started };
}

type Exit = { code: number | null; signal: NodeJS.Signals | null } | { spawnError: Error };

/** A command started for {@link runStreamed}, whichever way. */
interface Started {
  pid: number | undefined;
  stdout: Readable | null;
  stderr: Readable | null;
  /** How it ended, once its output (`pumped`) is read. */
  ended: (pumped: Promise<unknown>) => Promise<Exit>;
}

/**
 * Starts `file argv` in a process group of its own: through posix_spawn
 * (`Sys.spawnDetachedSync`: no fork of this process, whose cost grows with
 * its memory) where libc is at hand and there is no input to write, else
 * through Node's `spawn`. `DAY11_SPAWN=node` forces the latter.
 */
function startChild(
  file: string,
  argv: readonly string[],
  input: string | Uint8Array | undefined,
): Started {
  if (input === undefined && process.env.DAY11_SPAWN !== 'node' && Sys.libcAvailable()) {
    return startDetached(file, argv);
  }
  const child = spawn(file, argv, {
    // Its own process group (setsid), as in run().
    detached: true,
    stdio: [input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  const exit = exitOf(child);
  if (input !== undefined && child.stdin) {
    // A command that exits without reading its input is not an error of ours.
    child.stdin.on('error', () => undefined);
    child.stdin.end(input);
  }
  return { pid: child.pid, stdout: child.stdout, stderr: child.stderr, ended: () => exit };
}

function startDetached(file: string, argv: readonly string[]): Started {
  let child: Sys.DetachedChild;
  try {
    child = Sys.spawnDetachedSync(file, argv, process.env);
  } catch (err) {
    // Shaped as Node's own spawn error, which classify() reads.
    const errno = err instanceof SysError ? err.errno : undefined;
    const spawnError = Object.assign(new Error(`spawn ${file} ${errno ?? 'failed'}`), {
      code: errno,
      syscall: `spawn ${file}`,
      path: file,
      cause: err,
    });
    const ended = Promise.resolve<Exit>({ spawnError });
    return { pid: undefined, stdout: null, stderr: null, ended: () => ended };
  }
  const reader = (fd: number) => new Socket({ fd, readable: true, writable: false });
  return {
    pid: child.pid,
    stdout: reader(child.stdoutFd),
    stderr: reader(child.stderrFd),
    // Its pipes close as it exits (or later, if a descendant holds them, as
    // Node's 'close' waits for): reap it then.
    ended: (pumped) => pumped.then(() => reap(child.pid)),
  };
}

/**
 * Waits for the child `pid` to be reapable: it closed its output as it
 * exited, and becomes a zombie a moment later; a command that closed its
 * output and runs on is polled, less and less often.
 */
async function reap(pid: number): Promise<Exit> {
  for (let attempt = 0, pauseMs = 1; ; attempt++) {
    const exit = Sys.reapChildSync(pid);
    if (exit) return exit;
    if (attempt < 10) await new Promise((resolve) => setImmediate(resolve));
    else {
      await new Promise((resolve) => setTimeout(resolve, pauseMs));
      pauseMs = Math.min(pauseMs * 2, 100);
    }
  }
}

/** How `child` ended: `close` (exited, stdio closed), or an error when it could not be spawned. */
function exitOf(child: ChildProcess): Promise<Exit> {
  return new Promise((resolve) => {
    child.once('close', (code, signal) => resolve({ code, signal }));
    child.on('error', (err) => {
      // Later errors (a failed kill) do not end anything; 'close' still comes.
      if (child.pid === undefined) resolve({ spawnError: err });
    });
  });
}

/** Options of {@link runSync}: the subset of {@link RunOptions} that needs no event loop. */
export interface RunSyncOptions {
  /** Needs root: when not root, the command runs as `sudo -n CMD ...` (never prompts). */
  privileged?: boolean;
  /** Kill the process (SIGKILL) after this many milliseconds. */
  timeoutMs?: number;
  cwd?: string;
  /** Extra environment variables, added to the current environment. */
  env?: Record<string, string | undefined>;
  /** Written to the process's standard input. */
  input?: string | Uint8Array;
  /** Return (instead of throw) when the command exits non-zero. Default false. */
  allowNonZeroExit?: boolean;
}

/** Output of a synchronous command is capped: {@link runSync} is for short control commands. */
const SYNC_MAX_BUFFER = 16 * 1024 * 1024;

/**
 * Runs `cmd args` synchronously, blocking the event loop until it exits: for
 * the few places that cannot wait for a promise, such as a signal handler or
 * an exit hook (`ExitHooks.add`) that must stop a container before the process
 * dies. Everything else should use {@link run}.
 *
 * @example
 * ```ts
 * // In a SIGTERM handler: stop the container before the process goes.
 * Exec.runSync('runc', ['delete', '--force', id], { privileged: true, allowNonZeroExit: true, timeoutMs: 10_000 });
 * ```
 * @throws {CommandError} on a non-zero exit (unless `allowNonZeroExit`), death by
 *   a signal, a timeout (`EXEC_TIMED_OUT`), or when the command cannot be started.
 */
export function runSync(
  cmd: string,
  args: readonly string[] = [],
  opts: RunSyncOptions = {},
): RunResult {
  const privileged = opts.privileged === true;
  const [file, argv] = withSudo(cmd, args, privileged);
  const started = performance.now();
  const r = spawnSync(file, argv, {
    cwd: opts.cwd,
    env: { ...process.env, ...opts.env },
    input: opts.input,
    stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    timeout: opts.timeoutMs,
    // A hung control command must not hang its caller: no grace period.
    killSignal: 'SIGKILL',
    maxBuffer: SYNC_MAX_BUFFER,
    encoding: 'utf8',
  });
  const stdout = r.stdout ?? '';
  const stderr = r.stderr ?? '';
  const timedOut = errnoOf(r.error) === 'ETIMEDOUT';
  const failed = r.error !== undefined || r.status === null || r.signal !== null;
  if (failed || (r.status !== 0 && opts.allowNonZeroExit !== true)) {
    throw syncError({ cmd, args, privileged, r: { ...r, stderr }, timedOut });
  }
  return { stdout, stderr, exitCode: r.status ?? 0, durationMs: performance.now() - started };
}

function syncError(ctx: {
  cmd: string;
  args: readonly string[];
  privileged: boolean;
  r: {
    status: number | null;
    signal: NodeJS.Signals | null;
    error?: Error | undefined;
    stderr: string;
  };
  timedOut: boolean;
}): CommandError {
  const { cmd, args, privileged, r } = ctx;
  const spawnCode = errnoOf(r.error);
  // spawnSync reports a command it could not start as an error with no status.
  const notStarted = r.status === null && r.signal === null && !ctx.timedOut;
  return classify({
    cmd,
    privileged,
    stderr: r.stderr,
    spawnCode: notStarted ? spawnCode : undefined,
    base: {
      command: cmd,
      args,
      exitCode: r.status ?? undefined,
      signal: r.signal ?? undefined,
      stderrTail: tail(r.stderr),
      timedOut: ctx.timedOut,
      aborted: false,
      cause: r.error,
    },
  });
}

/** The errno code (`ENOENT`, `ETIMEDOUT`, ...) of a spawn error. */
function errnoOf(err: Error | undefined): string | undefined {
  const code = (err as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' ? code : undefined;
}

function withSudo(
  cmd: string,
  args: readonly string[],
  privileged: boolean,
): [string, readonly string[]] {
  if (!privileged || isRoot()) return [cmd, args];
  return ['sudo', ['-n', '--', cmd, ...args]];
}

function lineTap(onOutput: NonNullable<RunOptions['onOutput']>, stream: OutputStream) {
  return [
    function* tap(line: unknown) {
      onOutput(String(line), stream);
      yield line;
    },
    'pipe',
  ] as const;
}

function tail(text: string): string {
  return text.length <= STDERR_TAIL_BYTES ? text : text.slice(-STDERR_TAIL_BYTES);
}

function toCommandError({
  cmd,
  args,
  err,
  privileged,
  killer,
}: {
  cmd: string;
  args: readonly string[];
  err: ExecaError;
  privileged: boolean;
  killer: GroupKiller;
}): CommandError {
  const stderr = typeof err.stderr === 'string' ? err.stderr : '';
  const spawnCode = (err.cause as NodeJS.ErrnoException | undefined)?.code;
  return classify({
    cmd,
    privileged,
    stderr,
    spawnCode: err.exitCode === undefined ? spawnCode : undefined,
    base: {
      command: cmd,
      args,
      exitCode: err.exitCode,
      signal: err.signal,
      stderrTail: tail(stderr),
      timedOut: killer.reason === 'timeout',
      aborted: killer.reason === 'abort',
      cause: err,
    },
  });
}

function notFound(cmd: string, base: CommandErrorDetails): CommandError {
  return new CommandError(ExecCodes.COMMAND_NOT_FOUND, {
    ...base,
    hint: `\`${cmd}\` is not installed, not on PATH or not executable; install it (e.g. apt-get install -y ${cmd})`,
  });
}

/** The typed error for a failed command, shared by {@link run} and {@link runSync}. */
function classify(ctx: {
  cmd: string;
  privileged: boolean;
  stderr: string;
  /** The spawn error code when the command never started. */
  spawnCode: string | undefined;
  base: CommandErrorDetails;
}): CommandError {
  const { cmd, privileged, stderr, base } = ctx;
  const viaSudo = privileged && !isRoot();
  if (ctx.spawnCode === 'ENOENT' || ctx.spawnCode === 'EACCES') {
    // Without root, what could not start is sudo: the missing piece is the privilege.
    if (viaSudo) {
      return new CommandError(ExecCodes.NO_PRIVILEGE, {
        ...base,
        hint: `This step needs root, and \`sudo\` is not installed or not on PATH. Run as root, or install sudo and allow this user to run \`${cmd}\` without a password`,
      });
    }
    return notFound(cmd, base);
  }
  if (viaSudo && /sudo: (a password is required|.*not allowed|.*may not run)/.test(stderr)) {
    return new CommandError(ExecCodes.NO_PRIVILEGE, {
      ...base,
      hint: `This step needs root. Run as root, or allow this user to run \`${cmd}\` with passwordless sudo`,
    });
  }
  if (base.timedOut) return new CommandError(ExecCodes.TIMED_OUT, base);
  if (base.aborted) return new CommandError(ExecCodes.ABORTED, base);
  return new CommandError(ExecCodes.COMMAND_FAILED, base);
}
