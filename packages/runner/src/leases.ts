/**
 * In-use leases on the layers of a run, shared within this process.
 *
 * `InUse.acquire` takes each layer's lock to write a lease file, so eight
 * parallel runs over the same dependencies would queue on the same locks.
 * Here a layer is leased once per process and reference-counted: the first
 * run to need it acquires the lease, later runs join it, and the last one to
 * finish releases it — after `lingerMs` (1 s by default), so that a
 * builder running step after step over the same dependencies leases them
 * once. A lingering lease only delays a `Gc` of that layer; one timer serves
 * all lingering leases and never keeps the process alive, and an exit hook
 * releases them. Layers are leased in parallel, each under its own lock.
 */
import { dirname, resolve } from 'node:path';
import { InUse, LastUsed } from '@day11/layer';

interface Entry {
  dir: string;
  refs: number;
  /** Settles once the lease file is written; rejects if the layer cannot be leased. */
  lease: Promise<InUse.Lease>;
  /** The lease once acquired (for synchronous release). */
  acquired: InUse.Lease | undefined;
  /** When a lingering (unheld) lease is due for release (`performance.now()` time); else undefined. */
  releaseAt: number | undefined;
  /** When this process last marked the layer used (`performance.now()`). */
  touched: number;
  /** Facts about the layer's files, true while the lease is held (see {@link leaseMemo}). */
  memo: Map<string, unknown> | undefined;
}

/**
 * A layer marked used less than this long ago is not marked again: LRU order
 * at one-second resolution is all `Gc` needs, and 50 utimes per step are not free.
 */
const TOUCH_INTERVAL_MS = 1000;

const table = new Map<string, Entry>();

/** Default of {@link LeaseOptions.lingerMs}. */
const DEFAULT_LINGER_MS = 1000;

/**
 * While any lease is held (or lingers), an exit hook releases them all
 * synchronously, so a process that ends normally leaves no lease file.
 */
let exitHook = false;
function watchExit(): void {
  if (table.size > 0 && !exitHook) {
    exitHook = true;
    process.on('exit', releaseAllSync);
  } else if (table.size === 0 && exitHook) {
    exitHook = false;
    process.removeListener('exit', releaseAllSync);
  }
}

/** Leases held by one run; release once. */
export interface LeaseSet {
  /** The leased layer directories (absolute, unique). */
  readonly dirs: readonly string[];
  /** Drops this run's hold; a lease nobody holds is released (after `lingerMs`). */
  release(): Promise<void>;
}

/** Options of {@link leaseAll}. */
export interface LeaseOptions {
  /** Keep a lease this long after its last holder is done (default {@link DEFAULT_LINGER_MS}; 0: release at once). */
  lingerMs?: number;
}

/**
 * Holds a lease on every layer directory in `dirs` (each `{osDir}/build-*`
 * with a `layer.json`) and marks each used now. All or nothing: when one
 * cannot be leased, the holds taken are dropped and the error is thrown.
 *
 * @example
 * ```ts
 * const leases = await leaseAll([base.dir, ...buildDirs]);
 * try { await build(); } finally { await leases.release(); }
 * ```
 * @throws {LayerError} `LAYER_NOT_FOUND` for a layer that does not exist,
 *   `LAYER_BAD_ARGUMENT` for a directory that is not a layer, `LAYER_LOCK_TIMEOUT`.
 */
export async function leaseAll(
  dirs: readonly string[],
  opts: LeaseOptions = {},
): Promise<LeaseSet> {
  const unique = [...new Set(dirs.map((d) => resolve(d)))];
  const holds = unique.map(hold);
  const entries = holds.map((h) => h.entry);
  // Joining leases this process already holds (a builder's next step) needs no waiting.
  if (entries.every((e) => e.acquired !== undefined)) {
    return leaseSet(unique, entries, opts.lingerMs ?? DEFAULT_LINGER_MS);
  }
  const results = await Promise.allSettled(holds.map(ready));
  const failed = results.find((r) => r.status === 'rejected');
  if (failed) {
    // A run that never started has no next step to keep the leases for.
    await leaseSet(unique, entries, 0).release();
    throw failed.reason;
  }
  return leaseSet(unique, entries, opts.lingerMs ?? DEFAULT_LINGER_MS);
}

/** Joins or starts the lease of one layer. */
function hold(dir: string): Hold {
  const existing = table.get(dir);
  if (existing) {
    existing.refs++;
    existing.releaseAt = undefined;
    lingering.delete(existing);
    // Marking used is all a joiner does: utimes on an empty file, cheaper
    // synchronously than a round trip through the thread pool. Never throws.
    const now = performance.now();
    if (now - existing.touched >= TOUCH_INTERVAL_MS) {
      LastUsed.touchSync(dir);
      existing.touched = now;
    }
    return { entry: existing, joined: true };
  }
  // InUse.acquire marks the layer used (last_used) as it leases it.
  const lease = InUse.acquire({ osDir: dirname(dir), dirs: [dir] });
  const entry: Entry = {
    dir,
    refs: 1,
    lease,
    acquired: undefined,
    releaseAt: undefined,
    touched: performance.now(),
    memo: undefined,
  };
  lease.then(
    (l) => {
      entry.acquired = l;
      // Released (synchronously, by a signal) while still being acquired.
      if (table.get(dir) !== entry) l.release().catch(() => undefined);
    },
    () => {
      if (table.get(dir) === entry) table.delete(dir);
      watchExit();
    },
  );
  table.set(dir, entry);
  watchExit();
  return { entry, joined: false };
}

/** One run's hold on an entry. */
interface Hold {
  entry: Entry;
  /** The lease was already held (or lingering) when this run asked. */
  joined: boolean;
}

/** Waits for an entry's lease (already there, unless another run is still acquiring it). */
async function ready({ entry }: Hold): Promise<void> {
  await entry.lease;
}

function leaseSet(dirs: readonly string[], entries: readonly Entry[], lingerMs: number): LeaseSet {
  let released = false;
  return {
    dirs,
    async release() {
      if (released) return;
      released = true;
      await Promise.all(entries.map((entry) => drop(entry, lingerMs)));
    },
  };
}

async function drop(entry: Entry, lingerMs: number): Promise<void> {
  if (--entry.refs > 0 || table.get(entry.dir) !== entry) return;
  if (lingerMs > 0) {
    entry.releaseAt = performance.now() + lingerMs;
    lingering.add(entry);
    armSweeper(entry.releaseAt);
    return;
  }
  await finalRelease(entry);
}

/** Unheld leases waiting for their `releaseAt`; one timer serves them all. */
const lingering = new Set<Entry>();
let sweeper: { timer: NodeJS.Timeout; at: number } | undefined;

/**
 * Makes sure the sweeper wakes by `at` (50 layers, one timer). Without `at`,
 * re-arms it for the earliest `releaseAt` left, or stops it when none is.
 */
function armSweeper(at?: number): void {
  const next = at ?? earliestReleaseAt();
  if (sweeper !== undefined) {
    // A new lease can only bring the wake-up earlier; a re-arm may also move it later.
    if (at !== undefined ? sweeper.at <= next : sweeper.at === next) return;
    clearTimeout(sweeper.timer);
    sweeper = undefined;
  }
  if (next === Infinity) return;
  const timer = setTimeout(sweep, Math.max(0, next - performance.now()));
  // A lingering lease must not keep the process alive; exit releases it.
  timer.unref();
  sweeper = { timer, at: next };
}

function earliestReleaseAt(): number {
  let next = Infinity;
  for (const entry of lingering) next = Math.min(next, entry.releaseAt ?? Infinity);
  return next;
}

function sweep(): void {
  sweeper = undefined;
  const now = performance.now();
  for (const entry of lingering) {
    if (entry.releaseAt !== undefined && entry.releaseAt <= now) {
      lingering.delete(entry);
      void finalRelease(entry);
    }
  }
  armSweeper();
}

async function finalRelease(entry: Entry): Promise<void> {
  if (table.get(entry.dir) !== entry || entry.refs > 0) return;
  table.delete(entry.dir);
  lingering.delete(entry);
  watchExit();
  const lease = await entry.lease.catch(() => undefined);
  // Best effort: a lease left behind stops counting when this process exits.
  await lease?.release().catch(() => undefined);
}

/**
 * Releases every lease this process holds, synchronously: for a dying
 * process (signal handler, exit hook). Never throws.
 *
 * @example
 * ```ts
 * process.on('exit', releaseAllSync);
 * ```
 */
export function releaseAllSync(): void {
  for (const entry of table.values()) {
    lingering.delete(entry);
    table.delete(entry.dir);
    try {
      entry.acquired?.releaseSync();
    } catch {
      // A lease of a dead process does not count, and Recover.sweep removes it.
    }
  }
  armSweeper();
  watchExit();
}

/**
 * Releases now the leases no run holds any more but that still linger.
 *
 * @example
 * ```ts
 * await releaseIdleLeases();
 * ```
 */
export async function releaseIdleLeases(): Promise<void> {
  const idle = [...table.values()].filter((entry) => entry.refs === 0);
  await Promise.all(idle.map(finalRelease));
  armSweeper();
}

/**
 * A place to remember facts about a layer's files while this process holds
 * a lease on it (held or lingering), or `undefined` when it holds none. A
 * committed layer never changes, and `Gc` cannot delete a leased one, so
 * what is read once stays true until the lease goes — and the memo with it.
 *
 * @example
 * ```ts
 * const memo = leaseMemo(layerDir);
 * const etc = memo?.get('etc') ?? lstatSync(join(layerDir, 'fs/etc'));
 * ```
 */
export function leaseMemo(layerDir: string): Map<string, unknown> | undefined {
  const entry = table.get(layerDir);
  if (entry?.acquired === undefined) return undefined;
  entry.memo ??= new Map();
  return entry.memo;
}

/** How many layers this process holds a lease on (held or lingering); for tests. */
export function heldCount(): number {
  return table.size;
}
