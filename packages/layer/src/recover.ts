/**
 * Recovery: remove what killed processes left in a cache. Safe to run at any
 * time, also while other day11 processes work in the same cache: it never
 * touches what a live process owns.
 *
 * - temporary entries `.day11-tmp-<pid>-...` (`TempName` of `@day11/exec`: a commit's
 *   assembly directory, a layer set aside by Gc, a half-written file) whose
 *   process is dead, or whose pid now belongs to a process started after the
 *   entry was last changed. Looked for in `osDir`, in each layer directory
 *   (not inside `fs/`, which is build output), in `.locks/`, `packages/`
 *   and `packages/*` (where 0.1.0 made its temporary links).
 * - locks in `.locks/` that are stale (`Lock.staleness`): not refreshed
 *   within `staleMs`, whose recorded owner is dead, or (lock directories of
 *   an older version) that never got an owner.
 * - leases of dead processes.
 *
 * A layer that a killed `Gc` left set aside (`.day11-tmp-<pid>-<hex>-build-…`)
 * is deleted as any leftover, unless a live process holds a lease in it: a
 * lease written just before the rename moved with it (leases take no lock),
 * so its holder is using it. It is put back under its name (`restored`), or
 * left alone while that name is taken again (`leased`).
 *
 * A temporary directory with a mount at or below it (a killed runner's
 * overlay, say) is never removed: a recursive removal would walk into the
 * mounted filesystem and delete through it. It is reported in `mounted`;
 * unmount it first (`recover()` of `@day11/runner` does), then sweep again.
 *
 * All processes sharing the cache are assumed to share one pid namespace.
 */
import { existsSync, readdirSync } from 'node:fs';
import { lstat, readdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { mapLimit, Mountinfo, Proc, TempName } from '@day11/exec';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import * as InUse from './in-use.js';
import { FILES, isLayerName } from './layer-dir.js';
import * as Lock from './lock.js';
import { layerOfAside } from './set-aside.js';

/** What {@link sweep} removed (absolute paths), and what it found but left alone. */
export interface SweepReport {
  /** Temporary files and directories of dead processes. */
  temps: string[];
  /** Stale locks. */
  locks: string[];
  /** Leases of dead processes. */
  leases: string[];
  /** Layers a killed `Gc` set aside, put back because a live process leases them. */
  restored: string[];
  /**
   * Set-aside layers of killed processes left in place: a live process
   * leases them, and their name is taken again (a later sweep removes them).
   */
  leased: string[];
  /**
   * Temporary entries of dead processes left in place because something is
   * mounted at or below them (see the module doc).
   */
  mounted: string[];
  /**
   * `build-*` directories without `layer.json`. Commit never makes one, so they
   * come from elsewhere (an older tool, a hand edit); reported, not removed.
   */
  incompleteLayers: string[];
}

/** Options of {@link sweep}. */
export interface SweepOptions {
  /** A lock not refreshed for this long is stale (default and minimum as in `Lock`). */
  staleMs?: number;
  /**
   * `false`: leave the layer directories alone (their temporaries and dead
   * leases; `incompleteLayers` stays empty) and the id directories in
   * `packages/`, and sweep only the cache's top level, `.locks/` and
   * `packages/` itself: what a killed build or GC leaves that
   * matters to the next one. Reading every layer directory is most of a
   * sweep's cost in a large cache, and what it finds there (a killed export's
   * half-written blob, a dead lease, which GC ignores) stops nothing. Default `true`.
   */
  layers?: boolean;
}

/**
 * Removes the leftovers of killed processes from cache `osDir` (see the module
 * doc). A missing `osDir` gives an empty report.
 *
 * @example
 * ```ts
 * const report = await Recover.sweep('/var/cache/day11');
 * if (report.temps.length) console.warn(`removed ${report.temps.length} leftovers`);
 * ```
 * @throws {LayerError} `LAYER_WRITE_FAILED` when a leftover cannot be removed.
 */
export async function sweep(osDir: string, options: SweepOptions = {}): Promise<SweepReport> {
  const report: SweepReport = {
    temps: [],
    locks: [],
    leases: [],
    restored: [],
    leased: [],
    mounted: [],
    incompleteLayers: [],
  };
  const top = options.layers === false ? [] : await entries(osDir);
  const layerDirs = top.filter((n) => isLayerName(n)).map((n) => join(osDir, n));
  // Links are made in `packages/` itself; only older versions made them in
  // the id directories, so the quick sweep leaves those alone.
  const packageDirs =
    options.layers === false
      ? []
      : (await entries(join(osDir, 'packages')))
          // A temporary there is a link being made (swept with `packages/`), not an id.
          .filter((n) => !TempName.is(n))
          .map((n) => join(osDir, 'packages', n));
  // A build starts with this sweep, and a layer almost never holds anything to
  // sweep: two synchronous readdirs tell (10,000 layers through the thread pool,
  // four round trips each, took seconds); the few that need it go to the sweeps.
  const looks = layerDirs.map(lookAt);
  const dirs = [
    osDir,
    ...layerDirs.filter((_, i) => looks[i]!.temps),
    join(osDir, Lock.LOCKS_DIR),
    join(osDir, 'packages'),
    ...packageDirs,
  ];
  const swept = await mapLimit(dirs, SWEEP_CONCURRENCY, (dir) => sweepTemps(dir, dir === osDir));
  for (const { removed, mounted, restored, leased } of swept) {
    report.temps.push(...removed);
    report.mounted.push(...mounted);
    report.restored.push(...restored);
    report.leased.push(...leased);
  }
  report.locks.push(...(await sweepLocks(join(osDir, Lock.LOCKS_DIR), options)));
  const leased = layerDirs.filter((_, i) => looks[i]!.leases);
  for (const leases of await mapLimit(leased, SWEEP_CONCURRENCY, (dir) =>
    guard(dir, () => InUse.sweep(dir)),
  ))
    report.leases.push(...leases);
  // Looked at again: a commit in progress renames a complete layer into place.
  layerDirs.forEach((dir, i) => {
    if (
      looks[i]!.exists &&
      !looks[i]!.meta &&
      !existsSync(join(dir, FILES.meta)) &&
      existsSync(dir)
    )
      report.incompleteLayers.push(dir);
  });
  return report;
}

/**
 * Whether `name`, an entry of a cache directory, is a layer a `Gc` set aside
 * (a temporary name ending in the layer's): not a leftover to delete like
 * other temporary entries, since a live lease may hold it — {@link sweep}
 * puts it back or removes it by its leases.
 */
export function isSetAsideLayer(name: string): boolean {
  return layerOfAside('', name) !== undefined;
}

/** Directories swept at once: enough to keep the thread pool busy. */
const SWEEP_CONCURRENCY = 16;

/** Options of {@link sweepDirs}. */
export interface SweepDirsOptions extends SweepOptions {
  /** Directories whose temporary entries of dead processes go (each directory's own entries only). */
  dirs: readonly string[];
  /** Locks (as `Lock.withPath` makes them) to remove when stale. */
  locks?: readonly string[];
}

/** What {@link sweepDirs} removed, and what it left because of a mount below. */
export type SweepDirsReport = Pick<SweepReport, 'temps' | 'locks' | 'mounted'>;

/**
 * The sweep of {@link sweep} for a store outside the cache that follows the
 * same conventions (`TempName` names, `Lock.withPath` locks), such as an OCI
 * image layout: temporary entries of dead processes directly in each of
 * `dirs`, and the stale ones of `locks`. Missing directories and locks are
 * skipped. Safe while live processes work there.
 *
 * @example
 * ```ts
 * await Recover.sweepDirs({ dirs: [layout, `${layout}/blobs/sha256`], locks: [`${layout}/index.json.lock`] });
 * ```
 * @throws {LayerError} `LAYER_WRITE_FAILED` when a leftover cannot be removed.
 */
export async function sweepDirs(opts: SweepDirsOptions): Promise<SweepDirsReport> {
  const report: SweepDirsReport = { temps: [], locks: [], mounted: [] };
  for (const dir of opts.dirs) {
    const { removed, mounted } = await sweepTemps(dir);
    report.temps.push(...removed);
    report.mounted.push(...mounted);
  }
  for (const lock of opts.locks ?? [])
    if (await removeStaleLock(lock, opts)) report.locks.push(lock);
  return report;
}

interface SweptTemps {
  removed: string[];
  mounted: string[];
  restored: string[];
  leased: string[];
}

async function sweepTemps(dir: string, isCache = false): Promise<SweptTemps> {
  const removed: string[] = [];
  const mounted: string[] = [];
  const restored: string[] = [];
  const leased: string[] = [];
  for (const name of await entries(dir)) {
    const pid = TempName.ownerPid(name);
    if (pid === undefined) continue;
    const path = join(dir, name);
    const st = await lstat(path).catch(() => undefined);
    if (!st || !(await Proc.ownerGone(pid, st.ctimeMs))) continue;
    const layer = isCache && st.isDirectory() ? layerOfAside(dir, name) : undefined;
    if (layer !== undefined && (await InUse.isInUse(path))) {
      if (await putBack(path, layer)) restored.push(layer);
      else leased.push(path);
      continue;
    }
    // Read per entry, not per sweep: a mount made since must not be missed.
    if ((await Mountinfo.under(path)).length > 0) {
      mounted.push(path);
      continue;
    }
    await guard(path, () => rm(path, { recursive: true, force: true }));
    removed.push(path);
  }
  return { removed, mounted, restored, leased };
}

/**
 * Renames a set-aside layer back to `layer` unless that name is taken
 * (rename(2) would replace an empty directory, so it is looked at first).
 */
async function putBack(aside: string, layer: string): Promise<boolean> {
  if (await exists(layer)) return false;
  try {
    await rename(aside, layer);
    return true;
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOTEMPTY' || code === 'EEXIST' || code === 'ENOENT') return false;
    throw cannotRemove(aside, err);
  }
}

async function sweepLocks(locksDir: string, options: SweepOptions): Promise<string[]> {
  const removed: string[] = [];
  for (const name of await entries(locksDir)) {
    // A lock being assembled is a temporary entry, swept (or not) by sweepTemps.
    if (!name.endsWith(Lock.LOCK_SUFFIX) || TempName.is(name)) continue;
    const path = join(locksDir, name);
    if (await removeStaleLock(path, options)) removed.push(path);
  }
  return removed;
}

/** `Lock.removeIfStale`, its failures as this module's. */
function removeStaleLock(path: string, options: SweepOptions): Promise<boolean> {
  return guard(path, () => Lock.removeIfStale(path, options));
}

/** What a layer directory holds for the sweep, from its listing and its lease directory's. */
interface LayerLook {
  exists: boolean;
  meta: boolean;
  /** Temporary entries (of any process: the sweep judges which are dead). */
  temps: boolean;
  /** Lease files (live or dead: the sweep judges). */
  leases: boolean;
}

function lookAt(dir: string): LayerLook {
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch (err) {
    const code = errnoCode(err);
    if (code === 'ENOENT' || code === 'ENOTDIR')
      return { exists: false, meta: false, temps: false, leases: false };
    throw cannotRemove(dir, err);
  }
  let leases = false;
  if (names.includes(InUse.LEASE_DIR)) {
    try {
      leases = readdirSync(join(dir, InUse.LEASE_DIR)).length > 0;
    } catch {
      leases = true; // the sweep says what is wrong
    }
  }
  return {
    exists: true,
    meta: names.includes(FILES.meta),
    temps: names.some((n) => TempName.ownerPid(n) !== undefined),
    leases,
  };
}

/** Names in `dir`, or `[]` when it does not exist. */
async function entries(dir: string): Promise<string[]> {
  try {
    return await readdir(dir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return [];
    throw cannotRemove(dir, err);
  }
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

async function guard<T>(path: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw err instanceof LayerError ? err : cannotRemove(path, err);
  }
}

function cannotRemove(path: string, cause: unknown): LayerError {
  return new LayerError(LayerCodes.WRITE_FAILED, `Cannot sweep ${path}: ${messageOf(cause)}`, {
    path,
    cause,
    hint: 'Check permissions on the cache directory; run the sweep as the user that owns it',
  });
}
