/**
 * Spare run directories, reused by the next run of this process.
 *
 * A run needs `{runDir}/work/` and `{runDir}/merged/` besides its upper; on
 * ext4 each directory made and removed costs a block allocation and free
 * (0.15–0.3 ms each, a dozen per run). After a clean run the directory,
 * empty but for `work/`, `merged/` and the bundle's `config.json` (and an
 * empty `runtime.log`), is kept for `lingerMs` and given to the next run in
 * the same `tmpDir`, which then only makes its upper. Only a
 * directory with nothing mounted below it is kept, and never more than a
 * few per `tmpDir`; an exit hook (and the signal teardown) removes them,
 * and after a crash `recover()` does (the pid is in the name).
 */
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { mountsUnderSync, removeTreeSync } from './mounts.js';

/** At most this many spares per `tmpDir` (the parallel runs of a busy process). */
export const MAX_SPARES = 8;

/** What a run directory holds when it is kept: nothing else is reused. */
const SPARE_ENTRIES = ['merged', 'work'];

interface Spare {
  runDir: string;
  timer: NodeJS.Timeout | undefined;
}

const pools = new Map<string, Spare[]>();
let exitHook = false;

/**
 * A spare run directory of `tmpDir` (with `work/` and an empty `merged/`),
 * or `undefined` when there is none.
 *
 * @example
 * ```ts
 * const runDir = takeSpare(tmpDir) ?? makeFresh(tmpDir);
 * ```
 */
export function takeSpare(tmpDir: string): string | undefined {
  const spare = pools.get(tmpDir)?.pop();
  if (spare === undefined) return undefined;
  clearTimeout(spare.timer);
  watchExit();
  return spare.runDir;
}

/**
 * Keeps a run directory for the next run when it holds only `work/` and an
 * unmounted `merged/`; removes it otherwise, or when `lingerMs` is 0 or the
 * pool is full. Never throws.
 *
 * @example
 * ```ts
 * giveBack({ tmpDir, runDir, lingerMs: 1000 });
 * ```
 */
export function giveBack(opts: GiveBackOptions): void {
  const pool = pools.get(opts.tmpDir) ?? [];
  if (opts.lingerMs <= 0 || pool.length >= MAX_SPARES || !reusable(opts)) {
    removeTreeSync(opts.runDir);
    return;
  }
  const spare: Spare = { runDir: opts.runDir, timer: undefined };
  spare.timer = setTimeout(() => expire(opts.tmpDir, spare), opts.lingerMs);
  // A spare must not keep the process alive; the exit hook removes it.
  spare.timer.unref();
  pool.push(spare);
  pools.set(opts.tmpDir, pool);
  watchExit();
}

/** Options of {@link giveBack}. */
export interface GiveBackOptions {
  tmpDir: string;
  runDir: string;
  lingerMs: number;
  /**
   * The caller has just unmounted the overlay from `merged/` (empty before it
   * was mounted) and checked that nothing is mounted below `runDir`.
   */
  unmounted?: boolean;
}

/**
 * Files a spare may keep: the next run overwrites `config.json`, and the
 * runtime appends to `runtime.log`, which must therefore be empty (a
 * successful run leaves it so): removing and re-creating them each run
 * costs two journal updates.
 */
const SPARE_FILES = new Set(['config.json', 'runtime.log']);

function reusable({ runDir, unmounted }: GiveBackOptions): boolean {
  try {
    const entries = readdirSync(runDir, { withFileTypes: true });
    const dirs = entries.filter((e) => e.isDirectory()).map((e) => e.name);
    if (dirs.sort().join('/') !== SPARE_ENTRIES.join('/')) return false;
    const files = entries.filter((e) => !e.isDirectory());
    if (files.some((e) => !e.isFile() || !SPARE_FILES.has(e.name))) return false;
    if (files.some((e) => e.name === 'runtime.log' && statSync(join(runDir, e.name)).size > 0)) {
      return false;
    }
    // Just unmounted by the caller: merged/ is the bare mount point again.
    if (unmounted === true) return true;
    if (readdirSync(join(runDir, 'merged')).length > 0) return false;
    return mountsUnderSync(runDir).length === 0;
  } catch {
    return false;
  }
}

function expire(tmpDir: string, spare: Spare): void {
  const pool = pools.get(tmpDir);
  const at = pool?.indexOf(spare) ?? -1;
  if (at < 0) return;
  pool!.splice(at, 1);
  if (pool!.length === 0) pools.delete(tmpDir);
  removeTreeSync(spare.runDir);
  watchExit();
}

/**
 * Removes every spare now, synchronously (exit hook, signal teardown, tests).
 *
 * @example
 * ```ts
 * removeAllSparesSync();
 * ```
 */
export function removeAllSparesSync(): void {
  for (const pool of pools.values()) {
    for (const spare of pool) {
      clearTimeout(spare.timer);
      removeTreeSync(spare.runDir);
    }
  }
  pools.clear();
  watchExit();
}

/** How many spares this process keeps (for tests). */
export function spareCount(): number {
  let n = 0;
  for (const pool of pools.values()) n += pool.length;
  return n;
}

function watchExit(): void {
  const any = spareCount() > 0;
  if (any && !exitHook) {
    exitHook = true;
    process.on('exit', removeAllSparesSync);
  } else if (!any && exitHook) {
    exitHook = false;
    process.removeListener('exit', removeAllSparesSync);
  }
}

/**
 * Makes a fresh run directory with `work/` and `merged/` (mode 0700: the
 * run's files are nobody else's business until handed over).
 *
 * @example
 * ```ts
 * makeRunDir('/var/cache/day11/.day11-tmp-42-ab12cd34-run');
 * ```
 */
export function makeRunDir(runDir: string): void {
  mkdirSync(runDir, { mode: 0o700 });
  for (const name of SPARE_ENTRIES) mkdirSync(join(runDir, name));
}
