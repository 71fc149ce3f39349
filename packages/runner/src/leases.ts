/**
 * In-use leases on the layers of a runner's runs.
 *
 * A lease is one file written per layer (`InUse.acquire`). A runner leases a
 * layer once and counts its holders: the first run to need it acquires the
 * lease, later runs join it, and when the last one is done the lease
 * lingers — for the runner's lifetime by default, or `lingerMs` — so that a
 * builder running step after step over the same dependencies leases them
 * once. A lingering lease only delays a `Gc` of that layer; `releaseIdle` or
 * the runner's `close` ends it. Layers are leased in parallel.
 *
 * A layer is marked used (`last_used`) once per lease, when the runner lets
 * it go: with the default linger, once per layer in the runner's lifetime,
 * not once per step. While leased, `Gc` never deletes it, so a mark made
 * earlier would only be older; a runner killed before it lets go leaves the
 * layer's previous mark, which makes it look older to `Gc`, never in use.
 */
import { dirname, resolve } from 'node:path';
import { InUse, LastUsed } from '@day11/layer';

/**
 * A layer marked used less than this long ago is not marked again when a
 * lease ends (runs with `lingerMs: 0` end one per run): LRU order at
 * one-second resolution is all `Gc` needs, and 50 utimes per run are
 * journalled writes.
 */
const TOUCH_INTERVAL_MS = 1000;

interface Entry {
  dir: string;
  refs: number;
  /** Settles once the lease file is written; rejects if the layer cannot be leased. */
  lease: Promise<InUse.Lease>;
  /** The lease once acquired (for synchronous release). */
  acquired: InUse.Lease | undefined;
  /** When a lingering (unheld) lease is due for release (`performance.now()` time); else undefined. */
  releaseAt: number | undefined;
  /** Facts about the layer's files, true while the lease is held (see {@link LeaseTable.memo}). */
  memo: Map<string, unknown> | undefined;
}

/** Leases held by one run; release once. */
export interface LeaseSet {
  /** The leased layer directories (absolute, unique). */
  readonly dirs: readonly string[];
  /** Drops this run's hold; a lease nobody holds lingers (see {@link LeaseTable}). */
  release(): Promise<void>;
}

/**
 * The leases of one runner.
 *
 * @example
 * ```ts
 * const table = new LeaseTable({ lingerMs: Infinity, onChange: () => undefined });
 * const leases = await table.leaseAll([base.dir, ...buildDirs]);
 * try { await run(); } finally { await leases.release(); }
 * await table.releaseIdle();
 * ```
 */
export class LeaseTable {
  private readonly table = new Map<string, Entry>();
  /** Unheld leases waiting for their `releaseAt`; one timer serves them all. */
  private readonly lingering = new Set<Entry>();
  private sweeper: { timer: NodeJS.Timeout; at: number } | undefined;
  private readonly lingerMs: number;
  private readonly onChange: () => void;

  constructor(options: { lingerMs: number; onChange: () => void }) {
    this.lingerMs = options.lingerMs;
    this.onChange = options.onChange;
  }

  /** How many layers this table holds a lease on (held or lingering). */
  get size(): number {
    return this.table.size;
  }

  /**
   * Holds a lease on every layer directory in `dirs` (each `{osDir}/build-*`
   * with a `layer.json`); each is marked used when its lease ends. All or nothing: when one
   * cannot be leased, the holds taken are dropped and the error is thrown.
   *
   * @throws {LayerError} `LAYER_NOT_FOUND` for a layer that does not exist,
   *   `LAYER_BAD_ARGUMENT` for a directory that is not a layer, `LAYER_LOCK_TIMEOUT`.
   */
  async leaseAll(dirs: readonly string[]): Promise<LeaseSet> {
    const unique = [...new Set(dirs.map((d) => resolve(d)))];
    const fresh = unique.filter((dir) => !this.table.has(dir));
    const taking = this.acquire(fresh);
    const entries = unique.map((dir) => this.hold(dir, taking.get(dir)));
    // Joining leases this table already holds (a builder's next step) needs no waiting.
    if (entries.every((e) => e.acquired !== undefined))
      return this.leaseSet(unique, entries, false);
    const results = await Promise.allSettled(entries.map((e) => e.lease));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed) {
      // A run that never started has no next step to keep the leases for.
      await this.leaseSet(unique, entries, true).release();
      throw failed.reason;
    }
    return this.leaseSet(unique, entries, false);
  }

  /**
   * Starts leasing `dirs` (none of them held), all those of one cache at
   * once so that they share one record (see `InUse.acquireEach`); marked
   * used when each lease ends (finalRelease), not now.
   */
  private acquire(dirs: readonly string[]): Map<string, Promise<InUse.Lease>> {
    const byCache = new Map<string, string[]>();
    for (const dir of dirs) {
      const group = byCache.get(dirname(dir));
      if (group) group.push(dir);
      else byCache.set(dirname(dir), [dir]);
    }
    const leases = new Map<string, Promise<InUse.Lease>>();
    for (const [osDir, group] of byCache) {
      const each = InUse.acquireEach({ osDir, dirs: group, touch: false });
      for (const dir of group)
        leases.set(
          dir,
          each.then((m) => m.get(dir)!),
        );
    }
    return leases;
  }

  /**
   * A place to remember facts about a layer's files while this table holds
   * a lease on it (held or lingering), or `undefined` when it holds none. A
   * committed layer never changes, and `Gc` cannot delete a leased one, so
   * what is read once stays true until the lease goes — and the memo with it.
   */
  memo(layerDir: string): Map<string, unknown> | undefined {
    const entry = this.table.get(layerDir);
    if (entry?.acquired === undefined) return undefined;
    entry.memo ??= new Map();
    return entry.memo;
  }

  /** Releases now the leases no run holds any more but that still linger. */
  async releaseIdle(): Promise<void> {
    const idle = [...this.table.values()].filter((entry) => entry.refs === 0);
    await Promise.all(idle.map((e) => this.finalRelease(e)));
    this.armSweeper();
  }

  /**
   * Releases every lease, synchronously: for a dying process (signal,
   * exit). Never throws.
   */
  releaseAllSync(): void {
    for (const entry of this.table.values()) {
      try {
        if (entry.acquired === undefined) continue;
        entry.acquired.releaseSync();
        LastUsed.touchSyncUnlessRecent(entry.dir, TOUCH_INTERVAL_MS);
      } catch {
        // A lease of a dead process does not count, and Recover.sweep removes it.
      }
    }
    this.table.clear();
    this.lingering.clear();
    this.armSweeper();
    this.onChange();
  }

  /** Joins the lease of one layer, or starts it with `taking` (its lease being acquired). */
  private hold(dir: string, taking: Promise<InUse.Lease> | undefined): Entry {
    const existing = this.table.get(dir);
    if (existing) {
      existing.refs++;
      existing.releaseAt = undefined;
      this.lingering.delete(existing);
      return existing;
    }
    const lease = taking ?? this.acquire([dir]).get(dir)!;
    const entry: Entry = {
      dir,
      refs: 1,
      lease,
      acquired: undefined,
      releaseAt: undefined,
      memo: undefined,
    };
    lease.then(
      (l) => {
        entry.acquired = l;
        // Released (synchronously, by a signal) while still being acquired.
        if (this.table.get(dir) !== entry) l.release().catch(() => undefined);
      },
      () => {
        if (this.table.get(dir) === entry) this.table.delete(dir);
        this.onChange();
      },
    );
    this.table.set(dir, entry);
    this.onChange();
    return entry;
  }

  private leaseSet(dirs: readonly string[], entries: readonly Entry[], now: boolean): LeaseSet {
    let released = false;
    return {
      dirs,
      release: async () => {
        if (released) return;
        released = true;
        await Promise.all(entries.map((entry) => this.drop(entry, now)));
      },
    };
  }

  private async drop(entry: Entry, now: boolean): Promise<void> {
    if (--entry.refs > 0 || this.table.get(entry.dir) !== entry) return;
    if (now || this.lingerMs <= 0) return this.finalRelease(entry);
    if (this.lingerMs === Infinity) return; // until releaseIdle or the runner's close
    entry.releaseAt = performance.now() + this.lingerMs;
    this.lingering.add(entry);
    this.armSweeper(entry.releaseAt);
  }

  /**
   * Makes sure the sweeper wakes by `at` (50 layers, one timer). Without `at`,
   * re-arms it for the earliest `releaseAt` left, or stops it when none is.
   */
  private armSweeper(at?: number): void {
    const next = at ?? this.earliestReleaseAt();
    if (this.sweeper !== undefined) {
      // A new lease can only bring the wake-up earlier; a re-arm may also move it later.
      if (at !== undefined ? this.sweeper.at <= next : this.sweeper.at === next) return;
      clearTimeout(this.sweeper.timer);
      this.sweeper = undefined;
    }
    if (next === Infinity) return;
    const timer = setTimeout(() => this.sweep(), Math.max(0, next - performance.now()));
    // A lingering lease must not keep the process alive; the exit guard releases it.
    timer.unref();
    this.sweeper = { timer, at: next };
  }

  private earliestReleaseAt(): number {
    let next = Infinity;
    for (const entry of this.lingering) next = Math.min(next, entry.releaseAt ?? Infinity);
    return next;
  }

  private sweep(): void {
    this.sweeper = undefined;
    const now = performance.now();
    for (const entry of this.lingering) {
      if (entry.releaseAt !== undefined && entry.releaseAt <= now) {
        this.lingering.delete(entry);
        void this.finalRelease(entry);
      }
    }
    this.armSweeper();
  }

  private async finalRelease(entry: Entry): Promise<void> {
    if (this.table.get(entry.dir) !== entry || entry.refs > 0) return;
    this.table.delete(entry.dir);
    this.lingering.delete(entry);
    this.onChange();
    const lease = await entry.lease.catch(() => undefined);
    if (lease === undefined) return;
    // Before the lease goes, so that a Gc never sees the layer unleased and
    // with its old mark. utimes on an empty file: cheaper synchronously than
    // a round trip through the thread pool. Never throws.
    LastUsed.touchSyncUnlessRecent(entry.dir, TOUCH_INTERVAL_MS);
    // Best effort: a lease left behind stops counting when this process exits.
    await lease.release().catch(() => undefined);
  }
}
