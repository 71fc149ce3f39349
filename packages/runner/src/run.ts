/**
 * One run: a command in a runc/crun container whose root filesystem is an
 * overlay of a base layer, dependency layers and a fresh upper — the one
 * place where `@day11/layer` and `@day11/container` meet. A runner
 * (`createRunner`) gives each run its leases and spare directories.
 */
import {
  chmodSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ContainerCodes, ContainerError, OciSpec, Overlay, Runc } from '@day11/container';
import { isDay11Error, type Day11Error, type OutputStream } from '@day11/exec';
import { LayerCodes, LayerDir, LayerMeta, Lineage, Stack, type Base } from '@day11/layer';
import { RunnerCodes, RunnerError, messageOf } from './errors.js';
import {
  chownLike,
  lstatOrUndefined,
  removeHosts,
  writeHosts,
  type WrittenHosts,
} from './hosts.js';
import type { LeaseSet, LeaseTable } from './leases.js';
import { planLowers } from './lowers.js';
import { mountsUnderSync, removeTree, unmountBelow } from './mounts.js';
import type { ActiveRun } from './guard.js';
import { makeRunDir, type SparePool } from './scratch.js';
import { runPaths } from './temp.js';
import { PhaseClock, type PhaseTiming } from './timing.js';
import { clearVolatileMark, RUN_MOUNT_OPTIONS } from './volatile.js';

/** The merged lower inside a run directory, when the stack is deeper than the kernel mounts. */
const MERGED_LOWER = 'lower';

/**
 * Prefix of the runner's container ids: `day11-run-<pid>-<n>-<hex>` (see
 * `Runc.newId`); `recover` sweeps the ones whose pid is dead.
 *
 * @example
 * ```ts
 * const mine = (await Runc.list()).filter((c) => c.id.startsWith(`${CONTAINER_PREFIX}-`));
 * ```
 */
export const CONTAINER_PREFIX = 'day11-run';

/**
 * What `prepUpper` is given.
 *
 * @example
 * ```ts
 * const prepUpper = async ({ upper }: PrepUpperContext) => {
 *   await mkdir(join(upper, 'home/opam'), { recursive: true });
 * };
 * ```
 */
export interface PrepUpperContext {
  /** The upper directory, not mounted yet: what is put here is in the container and in the layer. */
  upper: string;
  /** The lower directories that will be mounted under it, topmost first (read them, never write). */
  lowers: readonly string[];
}

/**
 * Options of {@link runInLayers}.
 *
 * @example
 * ```ts
 * const options: RunInLayersOptions = { base, buildDirs: [dep.dir], spec, runtime: 'crun' };
 * ```
 */
export interface RunInLayersOptions {
  /** The base layer (from `Import` of `@day11/layer`); its `dir/fs` is the bottom of the stack. */
  base: Base;
  /**
   * The exact stack above the base, topmost first: layer directories
   * (`{osDir}/build-*`), every layer the command should see — the ones it
   * builds on and every layer those were built on (their `parent_hashes`).
   * Checked against what each layer recorded: a list that leaves one out,
   * misorders or repeats one is refused (`RUNNER_BAD_ARGUMENT` naming it).
   * Give this or {@link RunInLayersOptions.deps}.
   */
  buildDirs?: readonly string[] | undefined;
  /**
   * The layers the command builds on — its direct dependencies, layer
   * directories in any order — each brought with every layer it was built
   * on, as recorded (`Lineage.stackFor` of `@day11/layer`: the order
   * `@day11/build` gives stacks). The result's `buildDirs` and
   * `parentHashes` say what it expanded to. Give this or `buildDirs`.
   */
  deps?: readonly string[] | undefined;
  /**
   * Seeds the upper before the overlay is mounted (files, mkdirs, chowns the
   * container needs). If it throws, the run is abandoned and nothing is left.
   */
  prepUpper?: (ctx: PrepUpperContext) => void | Promise<void>;
  /**
   * The container: a spec from `OciSpec.make({...})` or its template
   * (`OciSpec.template(...)`, e.g. stored with a layer). The run sets the
   * rootfs and the cgroup.
   */
  spec: OciSpec.Template | OciSpec.Spec;
  /** `runc` (default), `crun`, or the path of a runtime with runc's command line. */
  runtime?: Runc.Runtime;
  /**
   * Aborting stops the run. Before the container starts, `runInLayers`
   * rejects with `RUNNER_ABORTED` and leaves nothing; once it runs, the
   * container is stopped and the result has `aborted: true`.
   */
  signal?: AbortSignal;
  /** Stop the container after this many milliseconds (`timedOut: true`); the set-up is not counted. */
  timeoutMs?: number;
  /** Milliseconds between SIGTERM and SIGKILL when stopping the container (default 1000). */
  killGraceMs?: number;
  /**
   * Where the run's temporary directory goes (default: the cache directory,
   * the parent of `base.dir`). It must be on the cache's filesystem: the
   * merged lower is hardlinked from the layers, and `Commit.commit` renames
   * the upper into the cache.
   */
  tmpDir?: string;
  /** Called with each line the container writes (a line past 64 KiB comes in pieces). */
  onOutput?: (line: string, stream: OutputStream) => void;
  /** Appends the container's output to this file as it comes (nothing of it is kept in memory). */
  logFile?: string;
  /**
   * Most bytes of output written to `logFile` (default `Runc.DEFAULT_LOG_CAP`
   * of `@day11/container`, 64 MiB; `Infinity`: no cap): past it the log keeps
   * the first and the last half with a marker between. The run's result never
   * depends on it.
   */
  logCap?: number;
  /**
   * For `runInLayers` only: keep the in-use leases and the scratch directory
   * this long after the call (default 1000 ms; 0 releases them at once), for
   * the next call of this process: consecutive calls then lease their layers
   * once and make one directory each. A runner (`createRunner`) keeps them
   * for its own lifetime instead.
   */
  lingerMs?: number;
  /**
   * A limit on containers running at once, shared by runs that may be
   * prepared side by side: awaited once the overlay is mounted, just before
   * the runtime starts; the function it resolves to is called as soon as the
   * container is gone (on every path). The wait is the `slot_wait` phase; an
   * abort ends it at once (`RUNNER_ABORTED`, a slot granted later is given
   * back). A
   * builder gives it to prepare and commit other steps while its `jobs`
   * containers run.
   *
   * @example
   * ```ts
   * const containers = new Semaphore(2); // of @day11/exec
   * await runner.run({ base, deps, spec, containerSlot: () => containers.acquire() });
   * ```
   */
  containerSlot?: () => Promise<() => void>;
}

/**
 * What {@link runInLayers} returns.
 *
 * @example
 * ```ts
 * const { run, upper, timing }: RunInLayersResult = await runInLayers(options);
 * ```
 */
export interface RunInLayersResult {
  /** How the container ended: exit code, signal, timedOut, aborted, duration. */
  run: Runc.RunResult;
  /**
   * The upper, now the caller's: on the cache's filesystem, ready for
   * `Commit.commit`, or to be removed. Its name carries this process's pid,
   * so `Recover.sweep` or {@link recover} removes it if the process dies first.
   */
  upper: string;
  /** `[phase, seconds]` for every phase, in order (see `PHASES`). */
  timing: PhaseTiming;
  /** The stack the command ran over, topmost first (with `deps`: what they expanded to). */
  buildDirs: string[];
  /**
   * The hashes of that stack, topmost first — the full hash each layer
   * recorded, else its 12 digits: the `parent_hashes` to commit the upper with.
   */
  parentHashes: string[];
}

/** The state of one run, as the synchronous teardown also sees it. */
export interface Run extends ActiveRun {
  readonly upper: string;
  readonly work: string;
  mount: Overlay.OverlayMount | undefined;
  leases: LeaseSet | undefined;
  /** The runtime was asked to run the container: an abort is a result from then on. */
  started: boolean;
  /** The deepest layers were merged into `{runDir}/lower` (a stack past the kernel's limit). */
  mergedLower: boolean;
  /** The `/etc/hosts` this run put in the upper, if it did. */
  hosts: WrittenHosts | undefined;
  /** The container's spec, made (and so validated) before anything is on disk. */
  readonly spec: OciSpec.Spec;
  /** The id the container will have (set as `containerId` once the runtime is asked). */
  readonly id: string;
}

/** Validated options. */
export interface Checked extends RunInLayersOptions {
  /** Exactly one of `buildDirs` and `deps`. */
  stackGiven: 'buildDirs' | 'deps';
  tmpDir: string;
  tmpDirGiven: boolean;
  runtime: Runc.Runtime;
  lingerMs: number;
}

/** What a run needs from its runner. */
export interface RunHost {
  readonly leases: LeaseTable;
  readonly spares: SparePool;
  /** Checks `buildDirs` against the records, remembering what it learnt of them. */
  readonly checker: Lineage.StackChecker;
  /** The run has begun: the runner tracks it (and the guard, its runner). */
  started(run: Run): void;
  /** The run is over, whatever the outcome. */
  ended(run: Run): void;
}

/**
 * Default of {@link RunInLayersOptions.lingerMs}, in milliseconds.
 *
 * @example
 * ```ts
 * await runInLayers({ base, buildDirs, spec, lingerMs: DEFAULT_LINGER_MS * 10 });
 * ```
 */
export const DEFAULT_LINGER_MS = 1000;

/**
 * Carries out one run for `host` (see `Runner.run` for the steps and the
 * guarantees).
 */
export async function executeRun(host: RunHost, o: Checked): Promise<RunInLayersResult> {
  const clock = new PhaseClock();
  if (o.signal?.aborted) throw aborted(o.signal, undefined);
  const run = newRun(host, o);
  host.started(run);
  try {
    await clock.time('mkdirs', () => makeDirs(run, o));
    const { result, stack } = await execute(host, run, o, clock);
    await clock.time('cleanup', () => handOver(host, run, o));
    if (run.interrupted) throw interrupted(run, undefined);
    return { run: result, upper: run.handover, timing: clock.timing(), ...stack };
  } catch (err) {
    await abandon(run);
    throw classify(err, run, o);
  } finally {
    host.ended(run);
  }
}

function newRun(host: RunHost, o: Checked): Run & { spare: boolean } {
  const fresh = runPaths(o.tmpDir);
  const id = Runc.newId(CONTAINER_PREFIX);
  // Made (and so validated) before a spare is taken: a bad spec leaves nothing.
  const spec = OciSpec.instantiate(o.spec, {
    rootfs: join(fresh.runDir, 'merged'),
    cgroupsPath: id,
  });
  const spare = host.spares.take(o.tmpDir);
  const runDir = spare ?? fresh.runDir;
  const merged = join(runDir, 'merged');
  spec.root.path = merged;
  // The handover name is always new: the caller may still hold the last one.
  const handover = fresh.handover;
  return {
    spare: spare !== undefined,
    runDir,
    merged,
    spec,
    id,
    upper: join(runDir, 'upper'),
    work: join(runDir, 'work'),
    handover,
    runtime: o.runtime,
    containerId: undefined,
    interrupted: undefined,
    mount: undefined,
    leases: undefined,
    started: false,
    mergedLower: false,
    hosts: undefined,
  };
}

/**
 * The run's directories. Synchronous, as are the other few-syscall steps
 * here: each call takes microseconds, a thread-pool round trip far more.
 */
function makeDirs(run: Run & { spare: boolean }, o: Checked): void {
  if (!run.spare) {
    mkdirSync(o.tmpDir, { recursive: true });
    if (o.tmpDirGiven) assertSameFilesystem(o.tmpDir, o.base.dir);
    makeRunDir(run.runDir);
  }
  mkdirSync(run.upper);
}

/** The upper must be renamed into the cache, and the merged lower hardlinks the layers. */
function assertSameFilesystem(tmpDir: string, layerDir: string): void {
  if (statSync(tmpDir).dev === statSync(layerDir).dev) return;
  throw new RunnerError(
    RunnerCodes.BAD_ARGUMENT,
    `Invalid runInLayers option tmpDir: ${tmpDir} is on another filesystem than the cache ${dirname(layerDir)}`,
    {
      path: tmpDir,
      hint: 'Leave tmpDir out (the cache directory is the default), or pick a directory on the same filesystem',
    },
  );
}

/** Steps 2 to 5 and the unmount; the caller cleans up. */
async function execute(
  host: RunHost,
  run: Run,
  o: Checked,
  clock: PhaseClock,
): Promise<{ result: Runc.RunResult; stack: RunStack }> {
  const stack = await clock.time('touch', () => leaseStack(host, run, o));
  const layerDirs = [...stack.buildDirs, o.base.dir];
  stopIfAsked(run, o);
  const plan = await clock.time('plan', () =>
    planLowers({
      layerDirs,
      upper: run.upper,
      work: run.work,
      target: run.merged,
      mergeTarget: join(run.runDir, MERGED_LOWER),
    }),
  );
  if (plan.mergeTarget !== undefined) {
    const target = plan.mergeTarget;
    run.mergedLower = true;
    await clock.time('merge', () =>
      Stack.merge({ layerDirs: plan.merge, target, signal: o.signal }),
    );
  }
  stopIfAsked(run, o);
  await clock.time('prep_upper', () => prepareUpper(host, run, o, plan.lowers));
  stopIfAsked(run, o);
  run.mount = await clock.time('overlay_mount', () =>
    Overlay.mount({
      lowers: plan.lowers,
      upper: run.upper,
      work: run.work,
      target: run.merged,
      options: RUN_MOUNT_OPTIONS,
      signal: o.signal,
    }),
  );
  stopIfAsked(run, o);
  const release = await clock.time('slot_wait', () => takeSlot(o));
  let result: Runc.RunResult;
  try {
    stopIfAsked(run, o);
    result = await clock.time('runc_run', () => runContainer(run, o));
  } finally {
    release?.();
  }
  await clock.time('overlay_umount', () => unmount(run));
  return { result, stack };
}

/** The stack a run went over, for its result. */
type RunStack = Pick<RunInLayersResult, 'buildDirs' | 'parentHashes'>;

/**
 * Step 2: the stack — `deps` expanded, or `buildDirs` checked against what
 * the layers recorded — every layer of it leased.
 */
async function leaseStack(host: RunHost, run: Run, o: Checked): Promise<RunStack> {
  const records = new Records(host.leases);
  const expansion = o.stackGiven === 'deps' ? new Expansion(host.leases, o) : undefined;
  const buildDirs = expansion
    ? (expansion.known() ?? (await expand(o, records)))
    : o.buildDirs!.map((d) => resolve(d));
  run.leases = await host.leases.leaseAll([...buildDirs, o.base.dir]);
  records.keep();
  expansion?.keep(buildDirs);
  if (o.stackGiven === 'buildDirs') {
    const layers = [...buildDirs].reverse();
    await host.checker
      .check({ base: o.base, layers, metaOf: records.metaOf })
      .catch((err: unknown) => {
        throw isDay11Error(err, LayerCodes.BAD_STACK) ? stackRefused('buildDirs', err) : err;
      });
  }
  const parentHashes: string[] = [];
  for (const dir of buildDirs) {
    const read = records.metaOf(dir);
    const meta = read instanceof Promise ? await read : read;
    parentHashes.push(meta.hash ?? LayerDir.hashPrefix(basename(dir))!);
  }
  return { buildDirs: [...buildDirs], parentHashes };
}

/**
 * What `deps` expanded to, remembered while the first of them is leased:
 * records never change, so the same deps on the same base give the same stack.
 */
class Expansion {
  private readonly first: string;
  private readonly key: string;

  constructor(
    private readonly leases: LeaseTable,
    o: Checked,
  ) {
    const dirs = o.deps!.map((d) => resolve(d));
    this.first = dirs[0] ?? '';
    this.key = `stack of ${o.base.hash} ${[...dirs].sort().join(' ')}`;
  }

  known(): string[] | undefined {
    return this.leases.memo(this.first)?.get(this.key) as string[] | undefined;
  }

  keep(buildDirs: string[]): void {
    this.leases.memo(this.first)?.set(this.key, buildDirs);
  }
}

/** `deps` with everything they were built on, topmost first, on `base`. */
async function expand(o: Checked, records: Records): Promise<string[]> {
  const osDir = dirname(resolve(o.base.dir));
  const deps = o.deps!.map((d) => LayerDir.hashPrefix(basename(d))!);
  if (deps.length === 0) return [];
  const stack = await Lineage.stackFor({ osDir, deps, metaOf: records.metaOf }).catch(
    (err: unknown) => {
      throw isDay11Error(err, LayerCodes.BAD_STACK) ? stackRefused('deps', err) : err;
    },
  );
  if (stack.base.hash !== o.base.hash) {
    throw badArgument(
      `the layers were built on the base ${stack.base.image} (${LayerDir.name(stack.base.hash)}), not on ${o.base.image} (${LayerDir.name(o.base.hash)})`,
      'deps',
    );
  }
  return [...stack.layers].reverse();
}

function stackRefused(option: 'buildDirs' | 'deps', cause: Day11Error): RunnerError {
  return new RunnerError(
    RunnerCodes.BAD_ARGUMENT,
    `Invalid runInLayers option ${option}: ${cause.message}`,
    {
      cause,
      hint:
        option === 'buildDirs'
          ? 'List every layer the command should see, topmost first: the layers it builds on and all they were built on — or pass deps: [their directories] and the stack is found from their records'
          : (cause.hint ?? 'Rebuild the layers whose records disagree'),
    },
  );
}

/**
 * The `layer.json` of a run's layers, read once per lease: a committed
 * layer never changes and a leased one cannot be collected, so a builder's
 * next step over the same layers reads nothing.
 */
class Records {
  private readonly read = new Map<string, LayerMeta.LayerMeta>();

  constructor(private readonly leases: LeaseTable) {}

  readonly metaOf = (dir: string): LayerMeta.LayerMeta | Promise<LayerMeta.LayerMeta> => {
    const key = resolve(dir);
    const known = (this.leases.memo(key)?.get(META) ?? this.read.get(key)) as
      LayerMeta.LayerMeta | undefined;
    if (known !== undefined) return known;
    // Read synchronously (one small file, microseconds); any failure goes
    // through LayerMeta.load, which gives it its typed error.
    const path = LayerMeta.file(key);
    let text: string;
    try {
      text = readFileSync(path, 'utf8');
    } catch {
      return LayerMeta.load(key);
    }
    const meta = LayerMeta.parse(text, path);
    this.read.set(key, meta);
    this.leases.memo(key)?.set(META, meta);
    return meta;
  };

  /** Remembers what was read before the layers were leased, now that they are. */
  keep(): void {
    for (const [dir, meta] of this.read) this.leases.memo(dir)?.set(META, meta);
  }
}

const META = 'layer.json';

/** The upper root as a copy-up would make it, then the caller's files, then /etc/hosts. */
async function prepareUpper(
  host: RunHost,
  run: Run,
  o: Checked,
  lowers: readonly string[],
): Promise<void> {
  copyRootAttributes(lowers[0], run.upper);
  if (o.prepUpper) {
    try {
      await o.prepUpper({ upper: run.upper, lowers });
    } catch (cause) {
      throw new RunnerError(
        RunnerCodes.PREP_UPPER_FAILED,
        `prepUpper failed for ${run.upper}: ${messageOf(cause)}`,
        {
          path: run.upper,
          cause,
          hint: 'The run was abandoned and its files removed; fix the callback and run again',
        },
      );
    }
  }
  const lstatLowerEtc = (lower: string): Stats | undefined => lstatEtcOf(host.leases, lower);
  run.hosts = writeHosts({ upper: run.upper, lowers, hostname: run.spec.hostname, lstatLowerEtc });
}

const NO_ENTRY = Symbol('no entry');

/**
 * `{lower}/etc` of a layer this process leases is read once per lease: a
 * builder's steps over the same 50 layers would otherwise look in each for
 * an `/etc` every time. Other lowers (the merged one) are read each time.
 */
function lstatEtcOf(leases: LeaseTable, lower: string): Stats | undefined {
  const memo = basename(lower) === 'fs' ? leases.memo(dirname(lower)) : undefined;
  if (memo === undefined) return lstatOrUndefined(join(lower, 'etc'));
  const known = memo.get('etc') as Stats | typeof NO_ENTRY | undefined;
  if (known !== undefined) return known === NO_ENTRY ? undefined : known;
  const st = lstatOrUndefined(join(lower, 'etc'));
  memo.set('etc', st ?? NO_ENTRY);
  return st;
}

/**
 * The merged root shows the upper root's mode and owner: give it those of
 * the stack's root, or every layer would record (and export) a changed `/`.
 */
function copyRootAttributes(topLower: string | undefined, upper: string): void {
  if (topLower === undefined) return;
  const root = lstatSync(topLower);
  const mode = root.mode & 0o7777;
  const now = lstatSync(upper);
  if (now.uid !== root.uid || now.gid !== root.gid) {
    chownLike(upper, root);
    chmodSync(upper, mode); // after chown, which may clear set-id bits
  } else if ((now.mode & 0o7777) !== mode) {
    chmodSync(upper, mode);
  }
}

async function runContainer(run: Run, o: Checked): Promise<Runc.RunResult> {
  const { id, spec } = run;
  // Not OciSpec.write: its temp file, fsync and rename protect readers of a
  // shared bundle across a crash; this one is private, read once, and thrown
  // away with the run. instantiate() has validated the spec.
  writeFileSync(join(run.runDir, 'config.json'), JSON.stringify(spec));
  run.containerId = id;
  run.started = true;
  try {
    return await Runc.run({
      bundle: run.runDir,
      id,
      runtime: o.runtime,
      runtimeLog: join(run.runDir, 'runtime.log'),
      ...(o.signal && { signal: o.signal }),
      ...(o.timeoutMs !== undefined && { timeoutMs: o.timeoutMs }),
      ...(o.killGraceMs !== undefined && { killGraceMs: o.killGraceMs }),
      ...(o.onOutput && { onOutput: o.onOutput }),
      ...(o.logFile !== undefined && { logFile: o.logFile }),
      ...(o.logCap !== undefined && { logCap: o.logCap }),
    });
  } finally {
    // Runc.run deletes the container on every path.
    run.containerId = undefined;
  }
}

async function unmount(run: Run): Promise<void> {
  // Lazily if still busy after the retries: the container is gone by now, so
  // only a stray host process can hold it, and it must not keep the run alive.
  // No sync: the mount is volatile (see volatile.ts for why that is safe).
  await run.mount?.unmount({ lazy: true });
  run.mount = undefined;
  // A work directory still marked cannot be mounted again: not kept as a spare.
  if (!clearVolatileMark(run.work)) rmSync(run.work, { recursive: true, force: true });
}

/**
 * Step 6 on success: the upper moves out (a rename), the run's own files
 * go, and the directory is kept for the next run or removed.
 */
async function handOver(host: RunHost, run: Run, o: Checked): Promise<void> {
  // Nothing may stay mounted below the run (the unmount succeeded, but a
  // stray bind mount would be deleted through): one read of mountinfo.
  if (mountsUnderSync(run.runDir).length > 0) await unmountBelow(run.runDir);
  if (run.hosts) removeHosts(run.upper, run.hosts);
  renameSync(run.upper, run.handover);
  // config.json stays for the next run to overwrite; giveBack keeps the
  // directory only if the runtime left its log empty.
  if (run.mergedLower) rmSync(join(run.runDir, MERGED_LOWER), { recursive: true, force: true });
  host.spares.giveBack({ tmpDir: o.tmpDir, runDir: run.runDir, unmounted: true });
  await run.leases?.release();
  run.leases = undefined;
}

/** Step 6 on failure: everything goes, the upper too. Best effort, never throws. */
async function abandon(run: Run): Promise<void> {
  await run.mount?.unmount({ lazy: true }).catch(() => undefined);
  run.mount = undefined;
  await removeTree(run.runDir).catch(() => undefined);
  await removeTree(run.handover).catch(() => undefined);
  await run.leases?.release().catch(() => undefined);
  run.leases = undefined;
}

/**
 * The container slot, or none without `containerSlot`. An abort ends the
 * wait at once; a slot granted after it is given back as it comes.
 */
async function takeSlot(o: Checked): Promise<(() => void) | undefined> {
  if (o.containerSlot === undefined) return undefined;
  const granted = o.containerSlot();
  const signal = o.signal;
  if (signal === undefined) return granted;
  let onAbort: (() => void) | undefined;
  const abort = new Promise<never>((_, reject) => {
    onAbort = () => reject(aborted(signal, undefined));
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([granted, abort]);
  } catch (err) {
    granted.then(
      (release) => release(),
      () => undefined,
    );
    throw err;
  } finally {
    signal.removeEventListener('abort', onAbort!);
  }
}

function stopIfAsked(run: Run, o: Checked): void {
  if (run.interrupted) throw interrupted(run, undefined);
  if (o.signal?.aborted) throw aborted(o.signal, undefined);
}

/** The error a failed run rejects with: interruption and abort take precedence. */
function classify(err: unknown, run: Run, o: Checked): unknown {
  if (err instanceof RunnerError) return err;
  if (run.interrupted) return interrupted(run, err);
  if (o.signal?.aborted && !run.started) return aborted(o.signal, err);
  if (isDay11Error(err, ContainerCodes.RUNTIME_FAILED) && err.path === run.runDir)
    return notStarted(err, run);
  return err;
}

/**
 * The runtime names the bundle's `config.json`, which went with the run:
 * say what in the spec to check instead.
 */
function notStarted(err: ContainerError, run: Run): ContainerError {
  const { args, cwd, env } = run.spec.process;
  const path = env.find((e) => e.startsWith('PATH='))?.slice('PATH='.length) ?? '';
  const sources = run.spec.mounts.filter((m) => m.type === 'bind').map((m) => m.source);
  return new ContainerError(
    ContainerCodes.RUNTIME_FAILED,
    err.message.replace(` (bundle ${run.runDir})`, ''),
    {
      cause: err,
      hint:
        `Check the spec given to runInLayers: ${JSON.stringify(args[0])} must be in the stack's files ` +
        `(on PATH=${path} unless a path), the working directory ${cwd} must exist or be creatable` +
        (sources.length
          ? `, and the bind mounts' sources (${sources.join(', ')}) must exist`
          : '') +
        '. The run and its bundle were removed',
    },
  );
}

function aborted(signal: AbortSignal, cause: unknown): RunnerError {
  return new RunnerError(
    RunnerCodes.ABORTED,
    'runInLayers was aborted before the container started',
    {
      cause: cause ?? signal.reason,
      hint: 'Nothing was left behind; run it again when wanted',
    },
  );
}

function interrupted(run: Run, cause: unknown): RunnerError {
  return new RunnerError(
    RunnerCodes.INTERRUPTED,
    `runInLayers was interrupted by ${run.interrupted ?? 'a signal'}: the container, the overlay and ${run.runDir} were removed`,
    { path: run.runDir, cause },
  );
}

// ---------------------------------------------------------------- options

export function check(opts: RunInLayersOptions): Checked {
  const base = opts?.base as Partial<Base> | undefined;
  if (typeof base?.dir !== 'string' || !base.dir || typeof base.hash !== 'string') {
    throw badArgument('base must be a Base ({ hash, dir, image }) from @day11/layer', 'base');
  }
  const stackGiven = checkStackOption(opts, base.dir);
  if (opts.timeoutMs !== undefined && !(opts.timeoutMs > 0)) {
    throw badArgument(`timeoutMs must be a positive number, got ${opts.timeoutMs}`, 'timeoutMs');
  }
  for (const option of ['prepUpper', 'containerSlot'] as const) {
    if (opts[option] !== undefined && typeof opts[option] !== 'function')
      throw badArgument(`${option} must be a function`, option);
  }
  if (opts.tmpDir !== undefined && (typeof opts.tmpDir !== 'string' || opts.tmpDir === '')) {
    throw badArgument('tmpDir must be a directory path', 'tmpDir');
  }
  const tmpDir = resolve(opts.tmpDir ?? dirname(resolve(base.dir)));
  if (opts.lingerMs !== undefined && !(opts.lingerMs >= 0)) {
    throw badArgument(`lingerMs must be a number >= 0, got ${opts.lingerMs}`, 'lingerMs');
  }
  return {
    ...opts,
    stackGiven,
    tmpDir,
    tmpDirGiven: opts.tmpDir !== undefined,
    runtime: opts.runtime ?? 'runc',
    lingerMs: opts.lingerMs ?? DEFAULT_LINGER_MS,
  };
}

/** Which of `buildDirs` and `deps` is given (exactly one must be), checked. */
function checkStackOption(opts: RunInLayersOptions, baseDir: string): 'buildDirs' | 'deps' {
  const given = (['buildDirs', 'deps'] as const).filter((k) => opts[k] !== undefined);
  if (given.length !== 1) {
    throw badArgument(
      given.length === 0
        ? 'give buildDirs (the exact stack, topmost first) or deps (the layers to build on, with the stacks they recorded)'
        : 'give buildDirs or deps, not both',
      'buildDirs',
    );
  }
  const option = given[0]!;
  const dirs: unknown = opts[option];
  if (!Array.isArray(dirs) || dirs.some((d) => typeof d !== 'string' || !d)) {
    throw badArgument(`${option} must be an array of layer directories`, option);
  }
  const osDir = dirname(resolve(baseDir));
  const stray =
    option === 'deps' ? (dirs as string[]).find((d) => !isLayerOf(osDir, d)) : undefined;
  if (stray !== undefined) {
    throw badArgument(
      `${stray} is not a layer directory (build-<12 hex>) of the cache ${osDir}`,
      option,
    );
  }
  return option;
}

function isLayerOf(osDir: string, dir: string): boolean {
  const abs = resolve(dir);
  return dirname(abs) === osDir && LayerDir.isLayerName(basename(abs));
}

function badArgument(message: string, option: string): RunnerError {
  return new RunnerError(
    RunnerCodes.BAD_ARGUMENT,
    `Invalid runInLayers option ${option}: ${message}`,
    {
      hint: 'See the RunInLayersOptions documentation',
    },
  );
}
