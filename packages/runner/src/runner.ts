/**
 * `createRunner`: an object that runs commands over stacks of layers and
 * owns what runs share — the in-use leases on layers, the spare scratch
 * directories, the runs in progress — until `close()`.
 */
import { dirname, resolve } from 'node:path';
import type { Runc } from '@day11/container';
import { Lineage } from '@day11/layer';
import { RunnerCodes, RunnerError } from './errors.js';
import { teardownRunSync, update, type Guarded } from './guard.js';
import { LeaseTable } from './leases.js';
import {
  check,
  executeRun,
  type Run,
  type RunHost,
  type RunInLayersOptions,
  type RunInLayersResult,
} from './run.js';
import { SparePool } from './scratch.js';

/**
 * Options of {@link createRunner}.
 *
 * @example
 * ```ts
 * const options: RunnerOptions = { osDir: '/var/cache/day11', runtime: 'crun' };
 * ```
 */
export interface RunnerOptions {
  /** The layer cache. Runs make their temporary directories here unless `tmpDir` says otherwise. */
  osDir: string;
  /** Where runs make their temporary directories; on the cache's filesystem (default `osDir`). */
  tmpDir?: string | undefined;
  /** `runc` (default), `crun`, or the path of a runtime with runc's command line. */
  runtime?: Runc.Runtime | undefined;
  /**
   * How long a lease nobody holds, or a spare directory, is kept for the
   * next run (default: until `releaseIdle` or `close`). Set it for a
   * long-lived runner that should let `Gc` collect layers it stopped using.
   */
  lingerMs?: number | undefined;
}

/**
 * What {@link Runner.run} takes: `runInLayers`' options; `runtime` and
 * `tmpDir` default to the runner's.
 */
export type RunOptions = Omit<RunInLayersOptions, 'lingerMs'>;

/**
 * A runner: runs share its leases and spare directories, which it keeps
 * until {@link Runner.close}.
 *
 * @example
 * ```ts
 * const runner = createRunner({ osDir: '/var/cache/day11', runtime: 'crun' });
 * try {
 *   for (const step of steps) {
 *     const { run, upper, timing, parentHashes } = await runner.run({ base, deps: step.deps, spec: step.spec });
 *     await Commit.commit({ osDir, hash: step.hash, upper, meta: { ...step.meta, parent_hashes: parentHashes, exit_status: run.exitCode ?? 137, timing } });
 *   }
 * } finally {
 *   await runner.close();
 * }
 * ```
 */
export interface Runner {
  /** The layer cache. */
  readonly osDir: string;
  /**
   * Runs the container of `spec` over an overlay of a stack of layers on
   * `base` — `deps` with everything they were built on, or the exact
   * `buildDirs` (topmost first) — with a fresh upper, and hands the upper to
   * the caller:
   *
   * 1. makes `{tmpDir}/.day11-tmp-<pid>-<hex>-run/` with `upper/`, `work/`, `merged/`
   *    (or reuses a spare one);
   * 2. finds the stack from the records of `deps`, or checks `buildDirs`
   *    against them (each `layer.json` read once per lease), and leases every
   *    layer (base included) for the whole run, marking each used, so `Gc`
   *    never deletes one under the mount;
   * 3. plans the lowers: each layer its own lowerdir, unless more are given
   *    than the kernel takes, when the deepest are merged;
   * 4. calls `prepUpper`, then writes `/etc/hosts` into the upper;
   * 5. mounts the overlay on `merged/`, writes the bundle, runs the runtime;
   * 6. unmounts, takes the runner's `/etc/hosts` back out of the upper when
   *    the command left it as written, moves the upper out, removes the rest —
   *    in every outcome: a non-zero exit, an exception, an abort, a timeout,
   *    SIGINT/SIGTERM/SIGHUP.
   *
   * It never writes `layer.json` or a sidecar: the caller commits the upper
   * (`Commit.commit` of `@day11/layer`) or throws it away. When it rejects,
   * nothing is left, not even the upper.
   *
   * @throws {RunnerError} `RUNNER_BAD_ARGUMENT` (also for a `buildDirs` that
   *   lacks, misorders or repeats a layer of the recorded stacks), `RUNNER_PREP_UPPER_FAILED`,
   *   `RUNNER_ABORTED` (before the container started), `RUNNER_INTERRUPTED`
   *   (a signal tore the run down), `RUNNER_CLEANUP_FAILED`, `RUNNER_CLOSED`.
   * @throws {LayerError} `LAYER_NOT_FOUND` when a layer does not exist (or was
   *   collected), `LAYER_MERGE_FAILED`, `LAYER_LOCK_TIMEOUT`.
   * @throws {ContainerError} `CONTAINER_BAD_SPEC`, `CONTAINER_MOUNT_FAILED`,
   *   `CONTAINER_RUNTIME_FAILED` (the container could not start), ...
   */
  run(options: RunOptions): Promise<RunInLayersResult>;
  /**
   * Releases now the leases no run holds and removes the spare directories
   * (e.g. before `Gc.prune` in the same process). Runs in progress keep theirs.
   */
  releaseIdle(): Promise<void>;
  /**
   * Stops the runs in progress (their containers are stopped: a run already
   * started resolves with `aborted: true`), waits for them, then releases
   * every lease and removes every spare directory. Idempotent; `run`
   * afterwards rejects with `RUNNER_CLOSED`.
   */
  close(): Promise<void>;
}

/**
 * Makes a runner over cache `osDir`.
 *
 * @example
 * ```ts
 * import { createRunner } from '@day11/runner';
 * const runner = createRunner({ osDir: '/var/cache/day11' });
 * const { run, upper } = await runner.run({ base, buildDirs: [dep.dir], spec });
 * await runner.close();
 * ```
 * @throws {RunnerError} `RUNNER_BAD_ARGUMENT` for a bad option.
 */
export function createRunner(options: RunnerOptions): Runner {
  if (typeof options?.osDir !== 'string' || options.osDir === '') {
    throw new RunnerError(RunnerCodes.BAD_ARGUMENT, 'Invalid runner option osDir: not a path', {
      hint: 'Pass the layer cache directory, e.g. /var/cache/day11',
    });
  }
  if (options.lingerMs !== undefined && !(options.lingerMs >= 0)) {
    throw new RunnerError(
      RunnerCodes.BAD_ARGUMENT,
      `Invalid runner option lingerMs: must be a number >= 0, got ${options.lingerMs}`,
      { hint: 'Leave it out to keep leases until close()' },
    );
  }
  return new LayerRunner(options);
}

class LayerRunner implements Runner, RunHost, Guarded {
  readonly osDir: string;
  readonly leases: LeaseTable;
  readonly spares: SparePool;
  readonly checker = new Lineage.StackChecker();
  private readonly active = new Set<Run>();
  private readonly pending = new Set<Promise<unknown>>();
  private readonly stopping = new AbortController();
  private closing: Promise<void> | undefined;

  constructor(private readonly options: RunnerOptions) {
    this.osDir = resolve(options.osDir);
    const lingerMs = options.lingerMs ?? Infinity;
    const onChange = (): void => update(this, !this.closed);
    this.leases = new LeaseTable({ lingerMs, onChange });
    this.spares = new SparePool({ lingerMs, onChange });
  }

  private get closed(): boolean {
    return this.closing !== undefined;
  }

  async run(options: RunOptions): Promise<RunInLayersResult> {
    if (this.closed) {
      throw new RunnerError(RunnerCodes.CLOSED, 'This runner was closed', {
        hint: 'Make a new one with createRunner',
      });
    }
    const o = check({
      ...options,
      runtime: options.runtime ?? this.options.runtime,
      tmpDir: options.tmpDir ?? this.options.tmpDir ?? this.osDir,
    });
    // The runs' temp dirs are the cache's own unless the base lives elsewhere.
    o.tmpDirGiven = o.tmpDir !== dirname(resolve(o.base.dir));
    o.signal = options.signal
      ? AbortSignal.any([options.signal, this.stopping.signal])
      : this.stopping.signal;
    const job = executeRun(this, o);
    this.pending.add(job);
    try {
      return await job;
    } finally {
      this.pending.delete(job);
    }
  }

  async releaseIdle(): Promise<void> {
    this.spares.removeAllSync();
    await this.leases.releaseIdle();
  }

  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stopping.abort(
        new RunnerError(RunnerCodes.CLOSED, 'The runner was closed during the run'),
      );
      await Promise.allSettled([...this.pending]);
      await this.releaseIdle();
      update(this, false);
    })();
    return this.closing;
  }

  // ------------------------------------------------------------ RunHost

  started(run: Run): void {
    this.active.add(run);
    update(this);
  }

  ended(run: Run): void {
    this.active.delete(run);
    update(this, !this.closed || this.holdsAnything());
  }

  // ------------------------------------------------------------ Guarded

  hasActiveRuns(): boolean {
    return this.active.size > 0;
  }

  holdsAnything(): boolean {
    return this.active.size > 0 || this.leases.size > 0 || this.spares.size > 0;
  }

  teardownSync(sig: NodeJS.Signals | undefined): void {
    for (const run of this.active) {
      run.interrupted = sig ?? 'SIGTERM';
      teardownRunSync(run);
    }
    this.active.clear();
    this.leases.releaseAllSync();
    this.spares.removeAllSync();
  }
}
