/**
 * Run a container with runc or crun, and clean up whatever happens.
 *
 * {@link run} deletes a stale container of the same id, runs `runc run` in the
 * foreground, streams the container's output, stops it on abort or timeout
 * with `runc kill` (TERM, then KILL), and always deletes it. The container's
 * command exiting non-zero (or being killed) is a result; a runtime that could
 * not start the container is a {@link ContainerError}.
 *
 * @example
 * ```ts
 * import { OciSpec, Runc } from '@day11/container';
 * const id = Runc.newId();
 * await OciSpec.write(bundle, OciSpec.instantiate(template, { rootfs, cgroupsPath: id }));
 * const r = await Runc.run({ bundle, id, runtime: 'crun', timeoutMs: 3_600_000, logFile });
 * if (r.exitCode !== 0) console.log('build failed', r);
 * ```
 */
import { accessSync, createWriteStream, type WriteStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import {
  CommandError,
  Exec,
  ExecCodes,
  randomHex,
  type OutputStream,
  type RunResult as ExecResult,
} from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';

/** `runc`, `crun`, or the path of an OCI runtime with runc's command line. */
export type Runtime = 'runc' | 'crun' | (string & Record<never, never>);

/** The runtime option shared by every function here. */
export interface RuntimeOptions {
  /** Default `runc`. */
  runtime?: Runtime;
}

/** Valid container ids: what runc accepts, at most 128 characters. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

/** Default {@link RunOptions.killGraceMs}. */
export const DEFAULT_KILL_GRACE_MS = 1000;
/** After SIGKILL, how long the runtime gets to exit before its own process group is killed. */
const HARD_DEADLINE_MS = 5000;
/** Bound on any runtime command other than `run`, so cleanup never hangs. */
const COMMAND_TIMEOUT_MS = 30_000;

// ---------------------------------------------------------------- ids

let counter = 0;
/** Ids of the containers this process is running now (never swept). */
const active = new Set<string>();
/**
 * Ids made by {@link newId} and not run yet. No stale container can have
 * one (the pid is ours, the counter never repeats, plus 24 random bits), so
 * {@link run} skips its delete-before for them: one runtime process less.
 */
const fresh = new Set<string>();
/** Bound on {@link fresh}, for callers that make ids they never run. */
const FRESH_MAX = 10_000;

/**
 * A container id unique to this process and call: `<prefix>-<pid>-<n>-<random>`.
 * The pid lets {@link sweep} find containers whose owner died.
 *
 * @example
 * ```ts
 * Runc.newId(); // 'day11-4242-1-9f3a0c'
 * Runc.newId('build'); // 'build-4242-2-77e01b'
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_ID` when the prefix would make an invalid id.
 */
export function newId(prefix = 'day11'): string {
  counter += 1;
  const id = assertId(`${prefix}-${process.pid}-${counter}-${randomHex(3)}`);
  if (fresh.size >= FRESH_MAX) fresh.clear(); // forgetting only costs a delete
  fresh.add(id);
  return id;
}

/**
 * Returns `id` when it is a valid container id (see {@link ID_PATTERN}).
 *
 * @example
 * ```ts
 * Runc.assertId('day11-1-2-abc'); // ok
 * Runc.assertId('../etc'); // throws CONTAINER_BAD_ID
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_ID`.
 */
export function assertId(id: string): string {
  if (!ID_PATTERN.test(id)) {
    throw new ContainerError(ContainerCodes.BAD_ID, `Invalid container id ${JSON.stringify(id)}`, {
      hint: 'Use letters, digits, "_", "." and "-", starting with a letter or digit, at most 128 characters (Runc.newId() makes one)',
    });
  }
  return id;
}

// ---------------------------------------------------------------- run

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
  /** Called with each line the container writes. */
  onOutput?: (line: string, stream: OutputStream) => void;
  /** Appends every output line to this file (created if missing). */
  logFile?: string;
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
  const output = opts.logFile === undefined ? undefined : await openLog(opts.logFile);
  // Exec.run's own abort would kill runc, not the container; it is kept as the
  // last resort, fired only when the runtime outlives `runc kill` by far.
  const lastResort = new AbortController();
  const onOutput = (line: string, stream: OutputStream): void => {
    output?.write(`${line}\n`);
    opts.onOutput?.(line, stream);
  };
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
  const running = Exec.run(binary(opts), args, {
    privileged: true,
    allowNonZeroExit: true,
    signal: lastResort.signal,
    killGraceMs: 500,
    // Line taps cost a transform stream per output; skip them when nobody listens.
    ...((output !== undefined || opts.onOutput !== undefined) && { onOutput }),
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
    await checkStarted({ opts, result, runtimeLog, stopped: stopper.reason !== undefined });
    return { exitCode: result.exitCode, reason: stopper.reason };
  } finally {
    disarm();
    await stopper.settled();
    await closeLog(output);
  }
}

async function openLog(path: string): Promise<WriteStream> {
  const stream = createWriteStream(path, { flags: 'a' });
  await new Promise<void>((resolve, reject) => {
    stream.once('open', () => resolve());
    stream.once('error', (cause) =>
      reject(
        new ContainerError(
          ContainerCodes.BAD_ARGUMENT,
          `Cannot open log file ${path}: ${messageOf(cause)}`,
          { path, cause, hint: 'Check that its directory exists and is writable' },
        ),
      ),
    );
  });
  // A write error (e.g. a full disk) must not crash the process mid-run: it is
  // kept and reported when the log is closed.
  stream.on('error', (err) => {
    if (!writeErrors.has(stream)) writeErrors.set(stream, err);
  });
  return stream;
}

const writeErrors = new WeakMap<WriteStream, Error>();

async function closeLog(stream: WriteStream | undefined): Promise<void> {
  if (!stream) return;
  await new Promise<void>((resolve) => stream.end(() => resolve()));
  const err = writeErrors.get(stream);
  if (err) {
    throw new ContainerError(
      ContainerCodes.BAD_ARGUMENT,
      `Cannot write log file ${String(stream.path)}: ${err.message}`,
      { path: String(stream.path), cause: err, hint: 'Check free space on its filesystem' },
    );
  }
}

/**
 * A non-zero exit is the command's unless the runtime logged an error: then
 * the container never ran (bad config, missing executable, cgroups refused).
 */
async function checkStarted(ctx: {
  opts: RunOptions;
  result: ExecResult;
  runtimeLog: string;
  stopped: boolean;
}): Promise<void> {
  const { opts, result } = ctx;
  if (result.exitCode === 0 || ctx.stopped) return;
  const errors = await runtimeErrors(ctx.runtimeLog);
  if (!errors.length && !HYBRID_REFUSAL.test(result.stderr)) return;
  const detail = (errors.length ? errors.join('; ') : result.stderr).trim();
  if (HYBRID_REFUSAL.test(detail)) throw await hybridCgroupsError(opts, detail);
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

/** The runtime could not be run at all, or died (e.g. killed by a signal). */
function runtimeMissing(opts: RuntimeOptions, err: unknown): ContainerError {
  const missing = err instanceof CommandError && err.code === ExecCodes.COMMAND_NOT_FOUND;
  return new ContainerError(ContainerCodes.RUNTIME_FAILED, messageOf(err), {
    cause: err,
    hint: missing
      ? `Install it (apt-get install -y ${opts.runtime === 'crun' ? 'crun' : 'runc'}) or pass runtime: '/path/to/runtime'`
      : undefined,
  });
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

const STATE_ROOTS: Readonly<Record<string, string>> = { runc: '/run/runc', crun: '/run/crun' };

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

// ---------------------------------------------------------------- state, list, delete, sweep

/** A container as `runc state` / `runc list` report it. */
export interface ContainerState {
  id: string;
  pid: number;
  /** `creating`, `created`, `running`, `stopped` (or `paused`). */
  status: string;
  bundle: string;
  created: string;
}

/**
 * The state of container `id`, or `undefined` when it does not exist.
 *
 * @example
 * ```ts
 * const s = await Runc.state('day11-1-2-abc', { runtime: 'crun' });
 * if (s?.status === 'running') await Runc.delete(s.id);
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED` when the runtime fails otherwise.
 */
export async function state(
  id: string,
  opts: RuntimeOptions = {},
): Promise<ContainerState | undefined> {
  assertId(id);
  const r = await runtimeCommand(opts, ['state', id]);
  if (r.exitCode !== 0) {
    if (NOT_FOUND.test(r.stderr)) return undefined;
    throw commandFailed(opts, `state ${id}`, r);
  }
  return toState(parseJson(opts, 'state', r.stdout));
}

/**
 * Every container the runtime knows (`runc list --format json`; runc prints
 * `null` and crun `[]` when there is none).
 *
 * @example
 * ```ts
 * for (const c of await Runc.list({ runtime: 'crun' })) console.log(c.id, c.status);
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED`.
 */
export async function list(opts: RuntimeOptions = {}): Promise<ContainerState[]> {
  const r = await runtimeCommand(opts, ['list', '--format', 'json']);
  if (r.exitCode !== 0) throw commandFailed(opts, 'list', r);
  const json = parseJson(opts, 'list', r.stdout);
  return Array.isArray(json) ? json.map(toState) : [];
}

/**
 * Deletes container `id`, killing it first if it runs (`delete --force`).
 * Deleting a container that does not exist is not an error.
 *
 * @example
 * ```ts
 * await Runc.delete('day11-1-2-abc');
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED`.
 */
async function remove(id: string, opts: RuntimeOptions = {}): Promise<void> {
  assertId(id);
  const r = await runtimeCommand(opts, ['delete', '--force', id]);
  if (r.exitCode !== 0 && !NOT_FOUND.test(r.stderr)) throw commandFailed(opts, `delete ${id}`, r);
}
export { remove as delete };

/** Options of {@link sweep}. */
export interface SweepOptions extends RuntimeOptions {
  /** The prefix given to {@link newId} (default `day11`). */
  prefix?: string;
}

/**
 * Deletes the containers a dead process left behind: ids `<prefix>-<pid>-...`
 * (as made by {@link newId}) whose pid no longer runs, and this process's own
 * that no {@link run} is using. Returns the deleted ids.
 *
 * That includes, for runc and crun, a container whose runtime was killed while
 * creating it: its state directory has no state yet, so `list` does not show
 * it, and its cgroups have no record to be found by. Both are removed (the
 * cgroups from the top of each hierarchy and from below this process's own
 * cgroup, where a relative `cgroupsPath` puts them; best effort).
 *
 * @example
 * ```ts
 * const swept = await Runc.sweep({ runtime: 'runc' }); // at start-up, after a crash
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED`.
 */
export async function sweep(opts: SweepOptions = {}): Promise<string[]> {
  const owner = new RegExp(`^${escapeRegExp(opts.prefix ?? 'day11')}-(\\d+)-`);
  const orphaned = (id: string): boolean => {
    const pid = Number(owner.exec(id)?.[1] ?? NaN);
    if (Number.isNaN(pid) || active.has(id)) return false;
    return pid === process.pid || !isAlive(pid);
  };
  const swept: string[] = [];
  const listed = await list(opts);
  for (const c of listed) {
    if (!orphaned(c.id)) continue;
    await remove(c.id, opts);
    swept.push(c.id);
  }
  const known = new Set(listed.map((c) => c.id));
  for (const id of await stateDirNames(opts)) {
    if (known.has(id) || !orphaned(id)) continue;
    await removeHalfCreated(id, opts);
    swept.push(id);
  }
  return swept;
}

/** The container ids with a state directory, for runc and crun (whose state root is known). */
async function stateDirNames(opts: RuntimeOptions): Promise<string[]> {
  const root = STATE_ROOTS[binary(opts)];
  if (root === undefined) return [];
  const names = await readdir(root).catch(() => [] as string[]);
  return names.filter((name) => ID_PATTERN.test(name));
}

/**
 * A container its runtime did not finish creating: `delete --force` removes
 * the state directory (both runtimes accept it); its cgroups are removed here.
 */
async function removeHalfCreated(id: string, opts: RuntimeOptions): Promise<void> {
  await remove(id, opts);
  const dir = stateDir(id, opts);
  if (dir !== undefined) await rm(dir, { recursive: true, force: true });
  await removeCgroups(id);
}

/**
 * rmdir of cgroup `name` wherever a relative `cgroupsPath` may have put it:
 * at the top of every hierarchy under {@link CGROUP_ROOT} (v1 controllers,
 * v2 itself) and below this process's own cgroup. rmdir removes only an empty
 * cgroup (no process, no child): anything else is left as it is.
 */
async function removeCgroups(name: string): Promise<void> {
  const hierarchies = [CGROUP_ROOT];
  for (const entry of await readdir(CGROUP_ROOT).catch(() => [] as string[]))
    hierarchies.push(join(CGROUP_ROOT, entry));
  const own = await ownCgroupPaths();
  for (const hierarchy of hierarchies) {
    for (const parent of new Set(['/', ...own])) {
      await rmdir(join(hierarchy, parent, name)).catch(() => undefined);
    }
  }
}

/** The cgroup paths of this process, one per hierarchy (`/proc/self/cgroup`). */
async function ownCgroupPaths(): Promise<string[]> {
  const text = await readFile('/proc/self/cgroup', 'utf8').catch(() => '');
  return text
    .split('\n')
    .map((line) => line.split(':').slice(2).join(':'))
    .filter((path) => path.startsWith('/'));
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

// ---------------------------------------------------------------- crun and hybrid cgroups

/** crun 1.8's refusal of a hybrid cgroup layout whose cgroup2 still has controllers. */
const HYBRID_REFUSAL = /cgroups in hybrid mode not supported/;

/** Where cgroup hierarchies are mounted. */
const CGROUP_ROOT = '/sys/fs/cgroup';

/** Options of {@link prepareCrunCgroups}. */
export interface PrepareCgroupsOptions {
  /** Where the cgroup hierarchies are mounted (default `/sys/fs/cgroup`). */
  cgroupRoot?: string;
}

/**
 * Lets crun run on a hybrid cgroup layout: every controller the cgroup2
 * hierarchy (`<root>/unified`) still offers, e.g. `hugetlb`, gets a cgroup v1
 * hierarchy of its own (`mkdir -p <root>/hugetlb && mount -t cgroup -o hugetlb
 * cgroup <root>/hugetlb`). Idempotent: once moved, a controller is no longer
 * offered, and nothing is done on pure v1 or pure v2 machines. Privileged
 * (sudo -n when not root). Returns the controllers it moved.
 *
 * @example
 * ```ts
 * await Runc.prepareCrunCgroups(); // ['hugetlb'] the first time, [] after
 * ```
 * @throws {ContainerError} `CONTAINER_CRUN_HYBRID_CGROUPS` when a mount fails.
 */
export async function prepareCrunCgroups(opts: PrepareCgroupsOptions = {}): Promise<string[]> {
  const root = opts.cgroupRoot ?? CGROUP_ROOT;
  const moved: string[] = [];
  for (const controller of await unifiedControllers(root)) {
    const target = join(root, controller);
    if (await isMountPoint(target)) continue;
    try {
      await Exec.run('mkdir', ['-p', target], { privileged: true });
      await Exec.run('mount', ['-t', 'cgroup', '-o', controller, 'cgroup', target], {
        privileged: true,
      });
    } catch (cause) {
      throw new ContainerError(
        ContainerCodes.CRUN_HYBRID_CGROUPS,
        `Cannot give the ${controller} cgroup controller a v1 hierarchy at ${target}: ${messageOf(cause)}`,
        {
          path: target,
          cause,
          hint: `It may be in use in ${join(root, 'unified')}; use runtime 'runc', which supports this layout`,
        },
      );
    }
    moved.push(controller);
  }
  return moved;
}

/** Controllers offered by the cgroup2 hierarchy of a hybrid layout; [] when there is none. */
async function unifiedControllers(root: string): Promise<string[]> {
  const text = await readFile(join(root, 'unified', 'cgroup.controllers'), 'utf8').catch(() => '');
  return text.split(/\s+/).filter((c) => /^[a-z_]+$/.test(c));
}

async function isMountPoint(path: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  // Field 5 is the mount point, with spaces etc. octal-escaped.
  return info.split('\n').some((line) => line.split(' ')[4] === path);
}

async function hybridCgroupsError(opts: RunOptions, detail: string): Promise<ContainerError> {
  const controllers = await unifiedControllers(CGROUP_ROOT);
  const fix = (controllers.length ? controllers : ['hugetlb'])
    .map((c) => {
      const dir = join(CGROUP_ROOT, c);
      return `mkdir -p ${dir} && mount -t cgroup -o ${c} cgroup ${dir}`;
    })
    .join(' && ');
  return new ContainerError(
    ContainerCodes.CRUN_HYBRID_CGROUPS,
    `${binary(opts)} refused this machine's hybrid cgroup layout for container ${opts.id}: ${detail}`,
    {
      path: join(CGROUP_ROOT, 'unified'),
      hint: `The cgroup2 hierarchy still offers ${controllers.join(', ') || 'a controller'}; give it a v1 hierarchy as root: \`${fix}\` (Runc.prepareCrunCgroups() does this), or use runtime 'runc'`,
    },
  );
}

// ---------------------------------------------------------------- helpers

/** "container does not exist" (runc) or a missing state file (crun). */
const NOT_FOUND = /does not exist|No such file or directory|not found/i;

function binary(opts: RuntimeOptions): string {
  return opts.runtime || 'runc';
}

/** Any runtime command but `run`: privileged, bounded in time, non-zero exit returned. */
function runtimeCommand(opts: RuntimeOptions, args: readonly string[]): Promise<ExecResult> {
  return Exec.run(binary(opts), args, {
    privileged: true,
    allowNonZeroExit: true,
    timeoutMs: COMMAND_TIMEOUT_MS,
  }).catch((err: unknown) => {
    throw runtimeMissing(opts, err);
  });
}

function commandFailed(opts: RuntimeOptions, what: string, r: ExecResult): ContainerError {
  return new ContainerError(
    ContainerCodes.RUNTIME_FAILED,
    `\`${binary(opts)} ${what}\` exited with code ${r.exitCode}: ${r.stderr.trim()}`,
  );
}

function parseJson(opts: RuntimeOptions, what: string, text: string): unknown {
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

function toState(value: unknown): ContainerState {
  const v = (value ?? {}) as Record<string, unknown>;
  const str = (x: unknown): string => (typeof x === 'string' ? x : '');
  return {
    id: str(v['id']),
    pid: typeof v['pid'] === 'number' ? v['pid'] : 0,
    status: str(v['status']),
    bundle: str(v['bundle']),
    created: str(v['created']),
  };
}
