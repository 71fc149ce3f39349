/**
 * Spare run directories, reused by the next run of the same runner.
 *
 * A run needs `{runDir}/work/` and `{runDir}/merged/` besides its upper; on
 * ext4 each directory made and removed costs a block allocation and free
 * (0.15–0.3 ms each, a dozen per run). After a clean run the directory,
 * empty but for `work/`, `merged/` and the bundle's `config.json` (and an
 * empty `runtime.log`), is kept — for the runner's lifetime, or `lingerMs` —
 * and given to the next run in the same `tmpDir`, which then only makes its
 * upper. Only a directory with nothing mounted below it is kept, and never
 * more than a few per `tmpDir`; the runner's `close` (and the process guard,
 * on a signal or at exit) removes them, and after a crash `recover()` does
 * (the pid is in the name).
 */
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { mountsUnderSync, removeTreeSync } from './mounts.js';

/** At most this many spares per `tmpDir` (the parallel runs of a busy runner). */
export const MAX_SPARES = 8;

/** What a run directory holds when it is kept: nothing else is reused. */
const SPARE_ENTRIES = ['merged', 'work'];

/**
 * Files a spare may keep: the next run overwrites `config.json`, and the
 * runtime appends to `runtime.log`, which must therefore be empty (a
 * successful run leaves it so): removing and re-creating them each run
 * costs two journal updates.
 */
const SPARE_FILES = new Set(['config.json', 'runtime.log']);

interface Spare {
  runDir: string;
  timer: NodeJS.Timeout | undefined;
}

/** Options of {@link SparePool.giveBack}. */
export interface GiveBackOptions {
  tmpDir: string;
  runDir: string;
  /**
   * The caller has just unmounted the overlay from `merged/` (empty before it
   * was mounted) and checked that nothing is mounted below `runDir`.
   */
  unmounted?: boolean;
}

/**
 * The spare run directories of one runner, per `tmpDir`.
 *
 * @example
 * ```ts
 * const spares = new SparePool({ lingerMs: Infinity, onChange: () => undefined });
 * const runDir = spares.take(tmpDir) ?? makeFresh(tmpDir);
 * spares.giveBack({ tmpDir, runDir, unmounted: true });
 * spares.removeAllSync();
 * ```
 */
export class SparePool {
  private readonly pools = new Map<string, Spare[]>();
  private readonly lingerMs: number;
  private readonly onChange: () => void;

  constructor(options: { lingerMs: number; onChange: () => void }) {
    this.lingerMs = options.lingerMs;
    this.onChange = options.onChange;
  }

  /** How many spares this pool keeps. */
  get size(): number {
    let n = 0;
    for (const pool of this.pools.values()) n += pool.length;
    return n;
  }

  /** A spare run directory of `tmpDir` (with `work/` and an empty `merged/`), or `undefined`. */
  take(tmpDir: string): string | undefined {
    const spare = this.pools.get(tmpDir)?.pop();
    if (spare === undefined) return undefined;
    clearTimeout(spare.timer);
    this.onChange();
    return spare.runDir;
  }

  /**
   * Keeps a run directory for the next run when it holds only `work/` and an
   * unmounted `merged/`; removes it otherwise, or when lingering is off or
   * the pool is full. Never throws.
   */
  giveBack(opts: GiveBackOptions): void {
    const pool = this.pools.get(opts.tmpDir) ?? [];
    if (this.lingerMs <= 0 || pool.length >= MAX_SPARES || !reusable(opts)) {
      removeTreeSync(opts.runDir);
      return;
    }
    const spare: Spare = { runDir: opts.runDir, timer: undefined };
    if (this.lingerMs !== Infinity) {
      spare.timer = setTimeout(() => this.expire(opts.tmpDir, spare), this.lingerMs);
      // A spare must not keep the process alive; the exit guard removes it.
      spare.timer.unref();
    }
    pool.push(spare);
    this.pools.set(opts.tmpDir, pool);
    this.onChange();
  }

  /** Removes every spare now, synchronously (close, signal teardown, exit). */
  removeAllSync(): void {
    for (const pool of this.pools.values()) {
      for (const spare of pool) {
        clearTimeout(spare.timer);
        removeTreeSync(spare.runDir);
      }
    }
    this.pools.clear();
    this.onChange();
  }

  private expire(tmpDir: string, spare: Spare): void {
    const pool = this.pools.get(tmpDir);
    const at = pool?.indexOf(spare) ?? -1;
    if (at < 0) return;
    pool!.splice(at, 1);
    if (pool!.length === 0) this.pools.delete(tmpDir);
    removeTreeSync(spare.runDir);
    this.onChange();
  }
}

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
