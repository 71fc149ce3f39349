/**
 * Run a container in the foreground with runc or crun, stop it on abort or
 * timeout (TERM, then KILL), and delete it whatever happens.
 */
import { accessSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Exec, type OutputStream } from '@day11/exec';
import { ContainerCodes, ContainerError } from './errors.js';
import { OutputLog } from './output-log.js';
import { remove } from './runc-admin.js';
import { HYBRID_REFUSAL, hybridCgroupsError } from './runc-cgroups.js';
import {
  binary,
  runtimeCommand,
  runtimeMissing,
  stateDir,
  type RuntimeOptions,
} from './runc-command.js';
import { active, assertId, fresh } from './runc-ids.js';

/** Default {@link RunOptions.killGraceMs}. */
export const DEFAULT_KILL_GRACE_MS = 1000;
/** After SIGKILL, how long the runtime gets to exit before its own process group is killed. */
const HARD_DEADLINE_MS = 5000;

/** Options of {@link run}. */
export interface RunOptions extends RuntimeOptions {
  /** The bundle directory holding `config.json`. */
  bundle: string;
  /** The container id (see {@link newId}). */
  id: string;
  /** Aborting stops the container: TERM, then KILL after `killGraceMs`. */
  signal?: AbortSignal;
  /** Stop the container after this many milliseconds, as for `signal`. */
  timeoutMs?: number;
  /** Milliseconds between SIGTERM and SIGKILL (default {@link DEFAULT_KILL_GRACE_MS}). */
  killGraceMs?: number;
  /** Called with each line the container writes (a line past 64 KiB comes in pieces). */
  onOutput?: (line: string, stream: OutputStream) => void;
  /**
   * Appends the container's output to this file (created, mode 0600, if
   * missing) as it comes, stdout and stderr interleaved line by line. Nothing
   * of the output is kept in memory.
   */
  logFile?: string;
  /**
   * Most bytes of output this run writes to `logFile` (default
   * `DEFAULT_LOG_CAP`, 64 MiB; `Infinity`: no cap). Past it the log keeps the
   * first and the last half, with a one-line marker saying how much was left
   * out in between; the command itself is never stopped or failed for it.
   */
  logCap?: number;
  /** The container's standard input (default: empty, /dev/null; never a terminal). */
  stdin?: string | Uint8Array;
  /**
   * Where the runtime writes its own JSON log (`--log`), read to tell a
   * container that never started from a failing command. Default: a file in
   * a temporary directory removed after the run. Give a path inside a
   * directory you clean up (e.g. the bundle) when a crash of this process
   * must leave nothing in the system temp directory.
   */
  runtimeLog?: string;
}

/** How a container run ended. */
export interface RunResult {
  /**
   * The runtime's exit status: the command's exit code, or 128 + n when it was
   * killed by signal n. `null` when there is none: aborted before it started,
   * or the runtime itself had to be killed.
   */
  exitCode: number | null;
  /** The signal that killed the command, inferred from an exit status above 128. */
  signal: NodeJS.Signals | undefined;
  /** Stopped because `timeoutMs` passed. */
  timedOut: boolean;
  /** Stopped because `signal` was aborted. */
  aborted: boolean;
  durationMs: number;
}

/**
 * Runs the container of `bundle` as `id` in the foreground and waits for it.
 * Deletes a stale container with that id first (unless `id` is fresh from
 * {@link newId}) and the container after, on every path (unless the runtime
 * exited by itself and has removed it already, as `runc run` and `crun run`
 * do). On abort or timeout it sends TERM (`runc kill id TERM`), then
 * KILL to every process (`runc kill --all id KILL`) after `killGraceMs`.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * const r = await Runc.run({
 *   bundle: '/tmp/day11-b',
 *   id: Runc.newId(),
 *   signal: ac.signal,
 *   timeoutMs: 60_000,
 *   onOutput: (line, stream) => console.log(stream, line),
 * });
 * // r: { exitCode: 0, signal: undefined, timedOut: false, aborted: false, durationMs: 31 }
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED` when the runtime is missing or
 *   could not start the container (with its stderr), `CONTAINER_CRUN_HYBRID_CGROUPS`
 *   when crun refuses the cgroup layout, `CONTAINER_BAD_ID` for a bad id.
 */
export async function run(opts: RunOptions): Promise<RunResult> {
  const { id } = opts;
  assertId(id);
  const started = performance.now();
  const elapsed = (): number => performance.now() - started;
  const isFresh = fresh.delete(id);
  active.add(id);
  try {
    if (!isFresh) await remove(id, opts);
    if (opts.signal?.aborted) return outcome({ exitCode: null, reason: 'abort', ms: elapsed() });
    const logDir =
      opts.runtimeLog === undefined ? await mkdtemp(join(tmpdir(), 'day11-runtime-')) : undefined;
    const runtimeLog = opts.runtimeLog ?? join(logDir!, 'runtime.log');
    let failure: unknown;
    let exitedByItself = false;
    try {
      const { exitCode, reason } = await runForeground(opts, runtimeLog);
      exitedByItself = exitCode !== null;
      return outcome({ exitCode, reason, ms: elapsed() });
    } catch (err) {
      failure = err;
      throw err;
    } finally {
      if (logDir !== undefined) await rm(logDir, { recursive: true, force: true });
      // Delete on every path; a failed delete matters only when nothing else failed.
      if (!(exitedByItself && removedByRuntime(id, opts))) {
        await remove(id, opts).catch((err: unknown) => {
          if (failure === undefined) throw err;
        });
      }
    }
  } finally {
    active.delete(id);
  }
}

type StopReason = 'timeout' | 'abort';

function outcome(r: { exitCode: number | null; reason: StopReason | undefined; ms: number }) {
  return {
    exitCode: r.exitCode,
    signal: signalOf(r.exitCode),
    timedOut: r.reason === 'timeout',
    aborted: r.reason === 'abort',
    durationMs: r.ms,
  } satisfies RunResult;
}

/** Shells report death by signal n as 128 + n; so do runc and crun. */
function signalOf(exitCode: number | null): NodeJS.Signals | undefined {
  if (exitCode === null || exitCode <= 128) return undefined;
  const n = exitCode - 128;
  const entry = Object.entries(osConstants.signals).find(([, num]) => num === n);
  return entry?.[0] as NodeJS.Signals | undefined;
}

async function runForeground(
  opts: RunOptions,
  runtimeLog: string,
): Promise<{ exitCode: number | null; reason: StopReason | undefined }> {
  // Streamed to the log (capped) and the listener; never gathered in memory.
  const output = await OutputLog.open({
    path: opts.logFile,
    capBytes: opts.logCap,
    onOutput: opts.onOutput,
  });
  // Exec.runStreamed's own abort would kill runc, not the container; it is kept as the
  // last resort, fired only when the runtime outlives `runc kill` by far.
  const lastResort = new AbortController();
  const args = [
    '--log',
    runtimeLog,
    '--log-format',
    'json',
    'run',
    '--bundle',
    opts.bundle,
    opts.id,
  ];
  // Spawned directly (child_process), not through execa: this is the hot path of every step.
  const running = Exec.runStreamed(binary(opts), args, {
    privileged: true,
    allowNonZeroExit: true,
    signal: lastResort.signal,
    killGraceMs: 500,
    // Read into one buffer per stream: a step printing GBs allocates nothing per read.
    lendChunks: true,
    onData: (chunk, stream) => output.write(chunk, stream),
    ...(opts.stdin !== undefined && { input: opts.stdin }),
  });
  const stopper = new Stopper(opts, lastResort, running);
  const disarm = stopper.arm(opts.timeoutMs, opts.signal);
  try {
    const result = await running.catch((err: unknown) => {
      if (lastResort.signal.aborted) return undefined;
      throw runtimeMissing(opts, err);
    });
    if (result === undefined) return { exitCode: null, reason: stopper.reason };
    await checkStarted({
      opts,
      exitCode: result.exitCode,
      stderr: output.stderrHead,
      runtimeLog,
      stopped: stopper.reason !== undefined,
    });
    return { exitCode: result.exitCode, reason: stopper.reason };
  } finally {
    disarm();
    await stopper.settled();
    await output.close();
  }
}

/**
 * A non-zero exit is the command's unless the runtime logged an error: then
 * the container never ran (bad config, missing executable, cgroups refused).
 */
async function checkStarted(ctx: {
  opts: RunOptions;
  exitCode: number;
  /** The first few KiB of stderr. */
  stderr: string;
  runtimeLog: string;
  stopped: boolean;
}): Promise<void> {
  const { opts } = ctx;
  if (ctx.exitCode === 0 || ctx.stopped) return;
  const errors = await runtimeErrors(ctx.runtimeLog);
  if (!errors.length && !HYBRID_REFUSAL.test(ctx.stderr)) return;
  const detail = (errors.length ? errors.join('; ') : ctx.stderr).trim();
  if (HYBRID_REFUSAL.test(detail)) throw await hybridCgroupsError({ ...opts, detail });
  throw new ContainerError(
    ContainerCodes.RUNTIME_FAILED,
    `${binary(opts)} could not start container ${opts.id} (bundle ${opts.bundle}): ${detail}`,
    {
      path: opts.bundle,
      hint: `Check ${join(opts.bundle, 'config.json')}: the rootfs, args[0] on the PATH, and the mounts`,
    },
  );
}

/** The `error`/`fatal` messages of the runtime's JSON log. */
async function runtimeErrors(logPath: string): Promise<string[]> {
  const text = await readFile(logPath, 'utf8').catch(() => '');
  const messages: string[] = [];
  for (const line of text.split('\n')) {
    try {
      const entry = JSON.parse(line) as { level?: unknown; msg?: unknown };
      if ((entry.level === 'error' || entry.level === 'fatal') && typeof entry.msg === 'string') {
        messages.push(entry.msg);
      }
    } catch {
      // Not a JSON line (or the last, empty one).
    }
  }
  return messages;
}

/**
 * Stops a running container on timeout or abort: TERM (retried until the
 * container exists), KILL to all its processes after the grace period
 * (repeated), and, if the runtime still has not exited long after, the
 * runtime's own process group.
 */
class Stopper {
  reason: StopReason | undefined;
  private done = false;
  private loop: Promise<void> = Promise.resolve();
  private readonly finished: Promise<unknown>;

  constructor(
    private readonly opts: RunOptions,
    private readonly lastResort: AbortController,
    running: Promise<unknown>,
  ) {
    this.finished = running.then(
      () => (this.done = true),
      () => (this.done = true),
    );
  }

  arm(timeoutMs: number | undefined, signal: AbortSignal | undefined): () => void {
    const timer =
      timeoutMs === undefined ? undefined : setTimeout(() => this.stop('timeout'), timeoutMs);
    const onAbort = (): void => this.stop('abort');
    if (signal?.aborted) onAbort();
    else signal?.addEventListener('abort', onAbort, { once: true });
    return () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
    };
  }

  /** Resolves once the kill loop (if any) has ended. */
  settled(): Promise<void> {
    return this.loop;
  }

  private stop(reason: StopReason): void {
    if (this.reason || this.done) return;
    this.reason = reason;
    this.loop = this.killLoop();
  }

  private async killLoop(): Promise<void> {
    const grace = this.opts.killGraceMs ?? DEFAULT_KILL_GRACE_MS;
    const t0 = performance.now();
    let termSent = false;
    let lastKill = -Infinity;
    while (!this.done) {
      const t = performance.now() - t0;
      if (t >= grace + HARD_DEADLINE_MS) {
        this.lastResort.abort();
        return;
      }
      if (t >= grace && t - lastKill >= 500) {
        lastKill = t;
        await killAll(this.opts.id, this.opts);
      } else if (t < grace && !termSent) {
        // Fails while the container is still being created: retried next turn.
        termSent = await kill(this.opts.id, 'TERM', this.opts);
      }
      await Promise.race([delay(100), this.finished]);
    }
  }
}

async function kill(
  id: string,
  signal: string,
  opts: RuntimeOptions,
  all = false,
): Promise<boolean> {
  const args = ['kill', ...(all ? ['--all'] : []), id, signal];
  try {
    const r = await runtimeCommand(opts, args);
    return r.exitCode === 0;
  } catch {
    return false;
  }
}

/** KILL every process of the container; plain `kill` when `--all` is refused. */
async function killAll(id: string, opts: RuntimeOptions): Promise<void> {
  if (!(await kill(id, 'KILL', opts, true))) await kill(id, 'KILL', opts);
}

/**
 * A foreground `runc run`/`crun run` that exits by itself has deleted its
 * container; its state directory says so without starting another process.
 * Anything uncertain (another runtime, no permission to look) is "no".
 */
function removedByRuntime(id: string, opts: RuntimeOptions): boolean {
  const dir = stateDir(id, opts);
  if (dir === undefined) return false;
  try {
    // One stat, synchronously: a thread-pool round trip costs more.
    accessSync(dir);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}
