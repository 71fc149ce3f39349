/**
 * `recover`: remove what a process killed inside `runInLayers` left behind
 * (SIGKILL, a power cut of the process, an OOM kill): its containers, its
 * overlay mounts and its temporary directories — in that order, because a
 * directory is never removed while something is mounted below it.
 */
import { lstat, readdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { ContainerError, Overlay, Runc } from '@day11/container';
import { CommandError, ExecCodes, Proc, TempName } from '@day11/exec';
import { Recover } from '@day11/layer';
import { RunnerCodes, RunnerError, errnoCode, messageOf } from './errors.js';
import { CONTAINER_PREFIX } from './run.js';

/**
 * Options of {@link recover}.
 *
 * @example
 * ```ts
 * await recover({ osDir: '/var/cache/day11', tmpDir: '/var/cache/day11/tmp', runtimes: ['crun'] });
 * ```
 */
export interface RecoverOptions {
  /** The layer cache: swept with `Recover.sweep` last (locks, leases, its own temporaries). */
  osDir: string;
  /** Where the runs made their temporary directories (`runInLayers`' `tmpDir`; default `osDir`). */
  tmpDir?: string;
  /** Runtimes whose orphaned containers are deleted (default runc and crun; a missing one is skipped). */
  runtimes?: readonly Runc.Runtime[];
  /**
   * `false`: the cache's sweep leaves the layer directories alone (see
   * `Recover.SweepOptions.layers`), as at a build's start. Default `true`.
   */
  layers?: boolean;
}

/**
 * What {@link recover} did.
 *
 * @example
 * ```ts
 * const { containers, unmounted, removed, left }: RecoverReport = await recover({ osDir });
 * ```
 */
export interface RecoverReport {
  /** Containers of dead processes deleted (`runtime:id`). */
  containers: string[];
  /** Mount points taken down below dead processes' temporary directories. */
  unmounted: string[];
  /** Temporary entries of dead processes removed from `tmpDir`. */
  removed: string[];
  /** Temporary entries left in place because a mount below them could not be removed. */
  left: string[];
  /** What `Recover.sweep(osDir)` of `@day11/layer` removed. */
  cache: Recover.SweepReport;
}

/**
 * Removes the leftovers of processes that died inside `runInLayers`:
 * deletes their containers (ids `day11-run-<pid>-...` whose pid is dead),
 * unmounts what is mounted below their temporary directories in `tmpDir`
 * (`.day11-tmp-<pid>-...`), removes those directories, then sweeps the cache
 * with `Recover.sweep`. What live processes own is never touched, so it is
 * safe to run at any time, e.g. at start-up.
 *
 * @example
 * ```ts
 * import { recover } from '@day11/runner';
 * const report = await recover({ osDir: '/var/cache/day11' });
 * if (report.left.length) console.warn('still mounted:', report.left);
 * ```
 * @throws {RunnerError} `RUNNER_CLEANUP_FAILED` when `tmpDir` cannot be read or an entry
 *   cannot be removed; `ContainerError` when a runtime fails otherwise than by being missing.
 */
export async function recover(opts: RecoverOptions): Promise<RecoverReport> {
  const osDir = resolve(opts.osDir);
  const tmpDir = resolve(opts.tmpDir ?? osDir);
  const containers = await sweepContainers(opts.runtimes ?? ['runc', 'crun']);
  const report: Progress = { unmounted: [], removed: [], left: [] };
  for (const name of await entries(tmpDir)) {
    const pid = TempName.ownerPid(name);
    // A layer a killed Gc set aside belongs to the cache (a live lease may hold it), not to a run.
    if (tmpDir === osDir && Recover.isSetAsideLayer(name)) continue;
    if (pid !== undefined) await recoverEntry(join(tmpDir, name), pid, report);
  }
  const cache = await Recover.sweep(osDir, opts.layers === false ? { layers: false } : {});
  return { containers, ...report, cache };
}

async function sweepContainers(runtimes: readonly Runc.Runtime[]): Promise<string[]> {
  // The runtimes at once: each sweep starts with a `list` subprocess.
  const perRuntime = await Promise.all(
    runtimes.map(async (runtime) => {
      try {
        const ids = await Runc.sweep({ runtime, prefix: CONTAINER_PREFIX, cgroups: false });
        return ids.map((id) => `${runtime}:${id}`);
      } catch (err) {
        if (!runtimeMissing(err)) throw err;
        return [];
      }
    }),
  );
  const swept = perRuntime.flat();
  // Once the runtimes deleted what they know: cgroups left with no record.
  for (const id of await Runc.sweepCgroups({ prefix: CONTAINER_PREFIX }))
    if (!swept.some((s) => s.endsWith(`:${id}`))) swept.push(`cgroup:${id}`);
  return swept;
}

function runtimeMissing(err: unknown): boolean {
  return (
    err instanceof ContainerError &&
    err.cause instanceof CommandError &&
    err.cause.code === ExecCodes.COMMAND_NOT_FOUND
  );
}

type Progress = Omit<RecoverReport, 'containers' | 'cache'>;

async function recoverEntry(path: string, pid: number, report: Progress): Promise<void> {
  const st = await lstat(path).catch(() => undefined);
  if (st === undefined || !(await Proc.ownerGone(pid, st.ctimeMs))) return;
  try {
    report.unmounted.push(...(await Overlay.unmountAll(path, { lazy: true })));
  } catch {
    // Reported below as left: what stays mounted keeps the directory.
  }
  if ((await Overlay.listMounts(path)).length > 0) {
    report.left.push(path);
    return;
  }
  try {
    await rm(path, { recursive: true, force: true });
  } catch (cause) {
    throw cannotRemove(path, cause);
  }
  report.removed.push(path);
}

async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw cannotRemove(dir, err);
  }
}

function cannotRemove(path: string, cause: unknown): RunnerError {
  return new RunnerError(
    RunnerCodes.CLEANUP_FAILED,
    `Cannot recover ${path}: ${messageOf(cause)}`,
    {
      path,
      cause,
      hint: 'Check permissions on the directory; run recover as the user (root) that ran the builds',
    },
  );
}
