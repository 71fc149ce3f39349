/**
 * Containers as the runtime knows them: their state, the list, deleting one,
 * sweeping those of dead processes, and the synchronous kill-and-delete of a
 * dying process.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { lstat, readdir, rm } from 'node:fs/promises';
import { basename } from 'node:path';
import { Exec, Proc } from '@day11/exec';
import { findCgroups, removeCgroupDir, removeCgroups, removeCgroupsSync } from './runc-cgroups.js';
import {
  NOT_FOUND,
  STATE_ROOTS,
  binary,
  commandFailed,
  parseJson,
  runtimeCommand,
  stateDir,
  type RuntimeOptions,
} from './runc-command.js';
import { ID_PATTERN, active, assertId } from './runc-ids.js';

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
export async function remove(id: string, opts: RuntimeOptions = {}): Promise<void> {
  assertId(id);
  const r = await runtimeCommand(opts, ['delete', '--force', id]);
  if (r.exitCode !== 0 && !NOT_FOUND.test(r.stderr)) throw commandFailed(opts, `delete ${id}`, r);
}
export { remove as delete };

/** Options of {@link sweep}. */
export interface SweepOptions extends RuntimeOptions {
  /** The prefix given to {@link newId} (default `day11`). */
  prefix?: string;
  /** Also remove orphaned cgroups found by name, whatever their runtime (default true; see {@link sweepCgroups}). */
  cgroups?: boolean;
}

/**
 * Deletes the containers a dead process left behind: ids `<prefix>-<pid>-...`
 * (as made by {@link newId}) whose pid no longer runs, and this process's own
 * that no {@link run} is using. Returns the deleted ids.
 *
 * That includes, for runc and crun, a container whose runtime was killed while
 * creating it: its state directory has no state yet, so `list` does not show
 * it, and its cgroups have no record to be found by. Both are removed; and
 * so are cgroups named like such an id wherever they are in any hierarchy
 * (a relative `cgroupsPath` puts them below the cgroup the runtime ran in),
 * with any process left in them, when nothing else of the container is
 * left to find them by (best effort).
 *
 * @example
 * ```ts
 * const swept = await Runc.sweep({ runtime: 'runc' }); // at start-up, after a crash
 * ```
 * @throws {ContainerError} `CONTAINER_RUNTIME_FAILED`.
 */
export async function sweep(opts: SweepOptions = {}): Promise<string[]> {
  const owner = new RegExp(`^${escapeRegExp(opts.prefix ?? 'day11')}-(\\d+)-`);
  /** An id whose process is gone: the one rule of `Proc.ownerGone`, with `changedMs` its creation. */
  const orphaned = async (id: string, changedMs: number): Promise<boolean> => {
    const pid = Number(owner.exec(id)?.[1] ?? NaN);
    if (Number.isNaN(pid) || active.has(id)) return false;
    return pid === process.pid || (await Proc.ownerGone(pid, changedMs));
  };
  const swept: string[] = [];
  const stateNames = await stateDirNames(opts);
  // Every container a runtime knows has a state directory under its root:
  // with none of ours there, `list` (a subprocess, most of a sweep's cost) has nothing to show.
  const mayHaveOurs =
    STATE_ROOTS[binary(opts)] === undefined || stateNames.some((id) => owner.test(id));
  const listed = mayHaveOurs ? await list(opts) : [];
  for (const c of listed) {
    if (!(await orphaned(c.id, Date.parse(c.created)))) continue;
    await remove(c.id, opts);
    swept.push(c.id);
  }
  const known = new Set(listed.map((c) => c.id));
  for (const id of stateNames) {
    if (known.has(id)) continue;
    const st = await lstat(stateDir(id, opts)!).catch(() => undefined);
    if (st === undefined || !(await orphaned(id, st.ctimeMs))) continue;
    await removeHalfCreated(id, opts);
    swept.push(id);
  }
  if (opts.cgroups !== false) {
    for (const id of await sweepCgroups(opts)) if (!swept.includes(id)) swept.push(id);
  }
  return swept;
}

/**
 * Removes the cgroups of containers a dead process left behind, found by
 * name in every hierarchy (`<prefix>-<pid>-...` whose pid no longer runs):
 * a runtime killed while creating a container leaves them with no record.
 * Whatever the runtime; call it after each runtime's {@link sweep} with
 * `cgroups: false`, so that a container its runtime still knows is deleted
 * by it first. Returns the container ids whose cgroups were removed.
 */
export async function sweepCgroups(opts: { prefix?: string } = {}): Promise<string[]> {
  const owner = new RegExp(`^${escapeRegExp(opts.prefix ?? 'day11')}-(\\d+)-`);
  const swept: string[] = [];
  for (const dir of await findCgroups((name) => owner.test(name) && ID_PATTERN.test(name))) {
    const id = basename(dir);
    const pid = Number(owner.exec(id)?.[1] ?? NaN);
    if (Number.isNaN(pid) || active.has(id)) continue;
    const st = await lstat(dir).catch(() => undefined);
    if (st === undefined) continue;
    if (pid !== process.pid && !(await Proc.ownerGone(pid, st.ctimeMs))) continue;
    if ((await removeCgroupDir(dir)) && !swept.includes(id)) swept.push(id);
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

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
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

/** Options of {@link killAndDeleteSync}. */
export interface KillAndDeleteOptions extends RuntimeOptions {
  /** The container id. */
  id: string;
}

/**
 * Kills and deletes container `id` synchronously, for a process that is
 * about to die (a signal handler, an `exit` hook): first SIGKILL to any
 * process whose command line names the id (a `runc run` that has not
 * created the container yet would otherwise create it after we are gone),
 * then `delete --force`, then its cgroups go with whatever is still in them
 * (a runtime killed while creating the container has no state to delete
 * them by). Never throws: what is left is for {@link sweep}.
 *
 * @example
 * ```ts
 * ExitHooks.add(() => Runc.killAndDeleteSync({ runtime: 'crun', id }));
 * ```
 */
export function killAndDeleteSync(opts: KillAndDeleteOptions): void {
  if (!ID_PATTERN.test(opts.id)) return;
  killProcessesMentioning(opts.id);
  try {
    Exec.runSync(binary(opts), ['delete', '--force', opts.id], {
      privileged: true,
      allowNonZeroExit: true,
      timeoutMs: 10_000,
    });
  } catch {
    // sweep() deletes it later (its id carries the owner's pid).
  }
  removeCgroupsSync(opts.id);
}

/** SIGKILLs the processes whose command line has `word` as an argument. */
function killProcessesMentioning(word: string): void {
  let pids: string[];
  try {
    pids = readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  } catch {
    return;
  }
  for (const pid of pids) {
    if (Number(pid) === process.pid) continue;
    try {
      const args = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
      if (args.includes(word)) process.kill(Number(pid), 'SIGKILL');
    } catch {
      // Gone, or not ours to read.
    }
  }
}
