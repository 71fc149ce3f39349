/**
 * Garbage collection: remove least-recently-used layers, never one in use,
 * and never one that a layer left in the cache was built on (its parents
 * and its base stay as long as it does).
 *
 * Disk usage is real usage (`st_blocks × 512`), and a file hardlinked into
 * several layers (as `Stack.merge` and imports do) is counted once in the
 * total. A shared inode is attributed to the layer whose deletion frees it:
 * the last of its layers deleted, in plan order. So a planned layer's `bytes`
 * is exactly what deleting it frees after the layers before it in the plan,
 * and the planned `bytes` add up to `totalBytes - totalAfterBytes`. An inode
 * also linked from outside the cache is never freed, so never attributed.
 */
import { rm, rmdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { measure } from './disk-usage.js';
import { LayerCodes, LayerError, messageOf } from './errors.js';
import * as InUse from './in-use.js';
import * as LastUsed from './last-used.js';
import {
  defaultThreads,
  surveyLayers,
  type LayerSurvey,
  type SurveyFailure,
} from './layer-survey.js';
import { hashPrefix, NAME_HASH_LENGTH, path as layerPath } from './layer-dir.js';
import * as Lock from './lock.js';
import * as Scan from './scan.js';
import { setAside, type SetAside } from './set-aside.js';

/** Options of {@link plan}. */
export interface GcOptions {
  /** The cache directory. */
  osDir: string;
  /** Only layers last used before this (a Date or epoch ms) are candidates. */
  before?: Date | number;
  /** Delete the oldest candidates until the layers' total real disk usage is at most this. */
  keepBytes?: number;
}

/** Options of {@link prune}. */
export interface PruneOptions extends GcOptions {
  /** Only plan: delete nothing. */
  dryRun?: boolean;
  /** How long to wait for a layer's lock before skipping it as busy (default 2 s). */
  lockTimeoutMs?: number;
}

/** A layer the plan deletes. */
export interface PlannedDeletion {
  /** The layer directory. */
  dir: string;
  /** Its name, `build-xxxxxxxxxxxx`. */
  name: string;
  /** Its LRU time (epoch ms): `last_used`, else `layer.json` `created_at`, else the dir's mtime. */
  lastUsed: number;
  /** Bytes its deletion frees, after the deletions before it (see the module doc). */
  bytes: number;
}

/** What {@link plan} decided. */
export interface GcPlan {
  /** Real disk usage of all layers now. */
  totalBytes: number;
  /** Real disk usage of all layers once the plan is carried out. */
  totalAfterBytes: number;
  /** The layers to delete, least recently used first. */
  deletions: PlannedDeletion[];
  /** Layers that a live lease protects. */
  inUse: string[];
}

/** A layer prune did not delete although planned. */
export interface SkippedLayer {
  /** The layer directory, still in place. */
  dir: string;
  /** `'in-use'`, `'busy'` (its lock was held), `'used-since-plan'`, or `'vanished'`. */
  reason: 'in-use' | 'busy' | 'used-since-plan' | 'vanished';
}

/** What {@link prune} did. `deletions` and `totalAfterBytes` describe what was actually deleted. */
export interface PruneResult extends GcPlan {
  /** True when nothing was deleted because `dryRun` was asked for. */
  dryRun: boolean;
  /** Candidates left in place because something changed since the plan. */
  skipped: SkippedLayer[];
  /** Registry links (`packages/{id}/build-*`) removed because their layer is gone. */
  unlinked: string[];
}

interface Survey {
  layers: SurveyedLayer[];
  inodes: Map<string, InodeInfo>;
  totalBytes: number;
}

interface SurveyedLayer {
  dir: string;
  name: string;
  hashPrefix: string;
  /** What it was built on (its recorded parents and base): their name hashes, concatenated. */
  parents: string;
  lastUsed: number;
  inUse: boolean;
  /** Bytes of its inodes no other link can hold (directories, files with one link). */
  ownBytes: number;
  /** Links to each inode with several links (`nlink > 1`) inside this layer. */
  links: Map<string, number>;
}

interface InodeInfo {
  bytes: number;
  nlink: number;
  /** Links to it in all layers. */
  links: number;
  /** Links left once the deletions so far are done. */
  remaining: number;
}

/**
 * Decides which layers a prune would delete, deleting nothing.
 *
 * @example
 * ```ts
 * const p = await Gc.plan({ osDir, keepBytes: 50e9, before: Date.now() - 7 * 86400_000 });
 * console.log(`would free ${p.totalBytes - p.totalAfterBytes} bytes`, p.deletions);
 * ```
 * @throws {LayerError} `LAYER_BAD_ARGUMENT` for a bad `before`/`keepBytes` or when
 *   neither is given; `LAYER_GC_FAILED` when the cache cannot be read.
 */
export async function plan(options: GcOptions): Promise<GcPlan> {
  return run(options, async () => undefined);
}

/**
 * Deletes least-recently-used layers as {@link plan} decides, re-checking each
 * under its lock: a layer leased, locked, or used since the plan is skipped
 * and the next candidate is tried. A deleted layer first disappears with one
 * rename to a temporary name, then is removed; leases take no lock, so what
 * was renamed is checked for one again, and put back (`in-use`) when a lease
 * moved with it.
 *
 * @example
 * ```ts
 * const r = await Gc.prune({ osDir, keepBytes: 50e9 });
 * for (const d of r.deletions) console.log(`removed ${d.name} (${d.bytes} bytes)`);
 * ```
 * @throws {LayerError} as {@link plan}, and `LAYER_GC_FAILED` when a deletion fails.
 */
export async function prune(options: PruneOptions): Promise<PruneResult> {
  if (options.dryRun) return { ...(await plan(options)), dryRun: true, skipped: [], unlinked: [] };
  const skipped: SkippedLayer[] = [];
  const result = await run(options, async (layer) => {
    const reason = await deleteLayer(options, layer);
    if (reason) skipped.push({ dir: layer.dir, reason });
    return reason;
  });
  const unlinked = result.deletions.length > 0 ? await removeDanglingLinks(options.osDir) : [];
  return { ...result, dryRun: false, skipped, unlinked };
}

/**
 * Removes registry links (`packages/{id}/build-*`) whose layer is gone, and
 * id directories left empty. A link re-made meanwhile by a build points at a
 * layer that exists again, and is kept.
 */
async function removeDanglingLinks(osDir: string): Promise<string[]> {
  const packagesDir = join(osDir, 'packages');
  const removed: string[] = [];
  for (const link of await Scan.symlinks(packagesDir)) {
    if (link.exists) continue;
    await rm(link.path, { force: true });
    removed.push(link.path);
    // Fails (harmlessly) while the id still has other links.
    await rmdir(dirname(link.path)).catch(() => undefined);
  }
  return removed;
}

/**
 * Removes layer `hash` of `osDir` now — e.g. a recorded failure that a build
 * is about to retry — under the layer's lock (a caller already holding it,
 * as a builder does, keeps it). The layer disappears with one rename, then
 * is deleted. Resolves false when there was no such layer.
 *
 * @example
 * ```ts
 * await Lock.withLayer({ osDir, hash }, async () => {
 *   await Gc.removeLayer({ osDir, hash });
 *   await rebuild();
 * });
 * ```
 * @throws {LayerError} `LAYER_GC_FAILED` when the layer is in use (a live
 *   lease) or cannot be removed; lock errors.
 */
export async function removeLayer({
  osDir,
  hash,
}: {
  osDir: string;
  hash: string;
}): Promise<boolean> {
  const dir = layerPath({ osDir, hash });
  const aside = await Lock.withLayer({ osDir, hash }, async (held) => {
    if (await InUse.isInUse(dir)) throw inUse(dir);
    held.assertHeld();
    let outcome: SetAside;
    try {
      outcome = await setAside(dir);
    } catch (err) {
      throw gcFailed(`Cannot remove the layer ${dir}`, dir, err);
    }
    if ('aside' in outcome) return outcome.aside;
    if (outcome.skipped === 'vanished') return undefined;
    throw inUse(dir);
  });
  if (aside === undefined) return false;
  try {
    await rm(aside, { recursive: true, force: true });
  } catch (cause) {
    throw gcFailed(`Removed the layer ${dir} from view but cannot delete ${aside}`, aside, cause);
  }
  return true;
}

function inUse(dir: string): LayerError {
  return new LayerError(LayerCodes.GC_FAILED, `Cannot remove the layer ${dir}: it is in use`, {
    path: dir,
    hint: 'Wait for the builds and runs using it to finish',
  });
}

/** Real disk usage of the tree at `path` in bytes, each hardlinked inode once. */
export async function diskUsage(path: string): Promise<number> {
  return measure(path);
}

/**
 * The walk shared by plan and prune. A layer is needed while any layer that
 * stays is built on it (its recorded parents and base), so only layers
 * nothing left stands on are candidates: least recently used first, and
 * deleting one may make what it stood on a candidate in turn. Each is handed
 * to `tryDelete` (which returns why it was not deleted, or undefined).
 */
async function run(
  options: GcOptions,
  tryDelete: (layer: SurveyedLayer) => Promise<SkippedLayer['reason'] | undefined>,
): Promise<GcPlan> {
  const { before, keepBytes } = checkOptions(options);
  const survey = await surveyCache(options.osDir);
  const byPrefix = new Map(survey.layers.map((l) => [l.hashPrefix, l]));
  const standingOn = new Map<SurveyedLayer, SurveyedLayer[]>();
  const dependents = new Map<SurveyedLayer, number>();
  for (const layer of survey.layers) {
    const below = new Set<SurveyedLayer>();
    for (let at = 0; at < layer.parents.length; at += NAME_HASH_LENGTH) {
      const l = byPrefix.get(layer.parents.slice(at, at + NAME_HASH_LENGTH));
      if (l !== undefined && l !== layer) below.add(l);
    }
    standingOn.set(layer, [...below]);
    for (const l of below) dependents.set(l, (dependents.get(l) ?? 0) + 1);
  }
  const eligible = (l: SurveyedLayer): boolean =>
    !l.inUse && (before === undefined || l.lastUsed < before);
  const queue = new LruQueue(survey.layers.filter((l) => !dependents.get(l) && eligible(l)));
  let total = survey.totalBytes;
  const deletions: PlannedDeletion[] = [];
  for (let layer = queue.pop(); layer !== undefined; layer = queue.pop()) {
    if (keepBytes !== undefined && total <= keepBytes) break;
    if ((await tryDelete(layer)) !== undefined) continue;
    const bytes = release(survey.inodes, layer);
    total -= bytes;
    deletions.push({ dir: layer.dir, name: layer.name, lastUsed: layer.lastUsed, bytes });
    for (const below of standingOn.get(layer)!) {
      const left = dependents.get(below)! - 1;
      dependents.set(below, left);
      if (left === 0 && eligible(below)) queue.push(below);
    }
  }
  const inUse = survey.layers.filter((l) => l.inUse).map((l) => l.dir);
  return { totalBytes: survey.totalBytes, totalAfterBytes: total, deletions, inUse };
}

/** Layers least recently used first (then by name): a binary heap. */
class LruQueue {
  private readonly heap: SurveyedLayer[] = [];

  constructor(layers: SurveyedLayer[]) {
    for (const l of layers) this.push(l);
  }

  push(layer: SurveyedLayer): void {
    const h = this.heap;
    h.push(layer);
    for (let i = h.length - 1; i > 0;) {
      const parent = (i - 1) >> 1;
      if (!before(h[i]!, h[parent]!)) break;
      [h[i], h[parent]] = [h[parent]!, h[i]!];
      i = parent;
    }
  }

  pop(): SurveyedLayer | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last !== undefined) {
      h[0] = last;
      for (let i = 0; ;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

function before(a: SurveyedLayer, b: SurveyedLayer): boolean {
  return a.lastUsed < b.lastUsed || (a.lastUsed === b.lastUsed && a.name < b.name);
}

/** Drops a deleted layer's links; returns the bytes of the inodes left with none. */
function release(inodes: Map<string, InodeInfo>, layer: SurveyedLayer): number {
  let freed = layer.ownBytes;
  for (const [key, links] of layer.links) {
    const info = inodes.get(key)!;
    info.remaining -= links;
    // Freed only when no layer links it and nothing outside the cache does.
    if (info.remaining === 0 && info.nlink <= info.links) freed += info.bytes;
  }
  return freed;
}

function checkOptions(options: GcOptions): {
  before: number | undefined;
  keepBytes: number | undefined;
} {
  const { before, keepBytes } = options;
  const beforeMs = before instanceof Date ? before.getTime() : before;
  if (before !== undefined && (typeof beforeMs !== 'number' || !Number.isFinite(beforeMs))) {
    throw badOption(
      `before is not a valid date: ${String(before)}`,
      'Pass a valid Date or epoch milliseconds',
    );
  }
  if (keepBytes !== undefined && !(Number.isFinite(keepBytes) && keepBytes >= 0)) {
    throw badOption(
      `keepBytes must be a non-negative number, got ${keepBytes}`,
      'Pass the bytes to keep, e.g. 50e9',
    );
  }
  if (before === undefined && keepBytes === undefined) {
    throw badOption(
      'neither before nor keepBytes given',
      'Pass before (only layers last used before it go) and/or keepBytes (the size to shrink to); nothing is deleted by default',
    );
  }
  return { before: beforeMs, keepBytes };
}

function badOption(why: string, hint: string): LayerError {
  return new LayerError(LayerCodes.BAD_ARGUMENT, `Invalid garbage-collection options: ${why}`, {
    hint,
  });
}

/**
 * Every layer with what it stands on, its LRU time, whether it is in use,
 * and its real disk usage: inodes with one link (most, and every directory)
 * are summed per layer; only inodes with several links are tracked one by
 * one, as only they can be shared between layers.
 */
async function surveyCache(osDir: string): Promise<Survey> {
  let names: string[];
  let surveys: Map<string, LayerSurvey | SurveyFailure>;
  try {
    names = await Scan.names(osDir);
    surveys = await surveyLayers(osDir, names, defaultThreads(names.length));
  } catch (cause) {
    throw gcFailed(`Cannot survey the layers of ${osDir}`, osDir, cause);
  }
  const inodes = new Map<string, InodeInfo>();
  const layers: SurveyedLayer[] = [];
  let totalBytes = 0;
  for (const name of names) {
    const dir = join(osDir, name);
    const s = surveys.get(name)!;
    if ('error' in s) {
      const cause = Object.assign(new Error(s.error.message), { code: s.error.code });
      throw gcFailed(`Cannot measure the layer ${dir}`, dir, cause);
    }
    const links = new Map<string, number>();
    for (const [key, shared] of s.shared) {
      links.set(key, shared.links);
      let info = inodes.get(key);
      if (info === undefined) {
        info = { bytes: shared.bytes, nlink: shared.nlink, links: 0, remaining: 0 };
        inodes.set(key, info);
        totalBytes += shared.bytes;
      }
      info.links += shared.links;
      info.remaining += shared.links;
    }
    totalBytes += s.ownBytes;
    layers.push({
      dir,
      name,
      hashPrefix: hashPrefix(name)!,
      parents: s.parents,
      lastUsed: s.lastUsed,
      // Only a layer with a lease directory can hold a lease: the others need no look.
      inUse: s.leased && (await InUse.isInUse(dir)),
      ownBytes: s.ownBytes,
      links,
    });
  }
  return { layers, inodes, totalBytes };
}

type Outcome = { skipped: SkippedLayer['reason'] } | { aside: string };

/** Under the layer's lock: re-check, then make it disappear with one rename, then remove it. */
async function deleteLayer(
  options: PruneOptions,
  layer: SurveyedLayer,
): Promise<SkippedLayer['reason'] | undefined> {
  let outcome: Outcome;
  try {
    outcome = await Lock.withLayer(
      { osDir: options.osDir, hash: layer.hashPrefix, timeoutMs: options.lockTimeoutMs ?? 2000 },
      (held) => hideLayer(layer, held),
    );
  } catch (err) {
    if (err instanceof LayerError && err.code === LayerCodes.LOCK_TIMEOUT) return 'busy';
    throw gcFailed(`Cannot delete the layer ${layer.dir}`, layer.dir, err);
  }
  if ('skipped' in outcome) return outcome.skipped;
  try {
    await rm(outcome.aside, { recursive: true, force: true });
  } catch (cause) {
    throw gcFailed(
      `Removed the layer ${layer.dir} from view but cannot delete ${outcome.aside}`,
      outcome.aside,
      cause,
    );
  }
  return undefined;
}

async function hideLayer(layer: SurveyedLayer, held: Lock.HeldLock): Promise<Outcome> {
  if (await InUse.isInUse(layer.dir)) return { skipped: 'in-use' };
  const now = await LastUsed.get(layer.dir);
  if (now !== undefined && now > layer.lastUsed) return { skipped: 'used-since-plan' };
  held.assertHeld();
  // Leases are taken without the lock: setAside looks again once the layer is out of view.
  return setAside(layer.dir);
}

function gcFailed(what: string, path: string, cause: unknown): LayerError {
  return new LayerError(LayerCodes.GC_FAILED, `${what}: ${messageOf(cause)}`, {
    path,
    cause,
    hint: `Check permissions and retry; \`day11 recover --cache ${dirname(path)}\` (Recover.sweep) removes what is left in .day11-tmp-* directories`,
  });
}
