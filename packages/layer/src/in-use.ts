/**
 * Leases: a running build's claim on the layers it mounts, so Gc never deletes
 * a layer under a live overlay mount.
 *
 * A lease is a small file `{layerDir}/.in-use/<pid>-<random>.lease` holding
 * `{ pid, start, acquired_at }` (`start` is the process start time from
 * `/proc/<pid>/stat`). It lives inside the layer so it disappears with it, and
 * it counts only while that exact process runs: a lease of a killed process,
 * or of a pid since reused by another process, is ignored, and removed by
 * `Recover.sweep`.
 *
 * The leases taken at once (a run's stack) share one record: an unnamed file
 * (O_TMPFILE) written once and hard-linked into each layer's `.in-use/`, so a
 * lease costs a directory entry, not an inode. Where the filesystem cannot
 * (no O_TMPFILE, no /proc), each lease is a file of its own, as before.
 *
 * {@link acquire} takes no lock: a lease is one write (a link, or an exclusive
 * create of the file; its name alone, with the pid, already counts), then a
 * check that no one holds the layer's lock and that the layer is still in
 * place. `Gc` deletes a layer under its lock by renaming it aside, then looks
 * for a lease again in what it moved: a lease written before the rename moved
 * with the layer and makes Gc put it back; one written after finds no
 * directory. When the check after the write finds the layer missing
 * (collected, or aside for that re-check) or its lock held (a Gc may have
 * looked for leases just before this one was written, and would set the layer
 * aside for a moment), acquire decides under the layer's lock, after Gc is
 * done; a Gc locking the layer after that check finds the lease before it
 * moves anything. So either the lease is taken first and the layer survives,
 * or the layer is collected first and acquire fails. A Gc killed with a layer
 * aside leaves it to `Recover.sweep`, which puts it back when a live lease is
 * in it.
 */
import { accessSync, mkdirSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { lstat, readdir, readFile, rm } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { randomHex, Proc, Sys, SysError } from '@day11/exec';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import * as LastUsed from './last-used.js';
import { FILES, hashPrefix } from './layer-dir.js';
import * as Lock from './lock.js';

/** Directory of the leases inside a layer directory. */
export const LEASE_DIR = '.in-use';
/** Suffix of a lease file. */
const LEASE_SUFFIX = '.lease';

/** Leases held on some layers; release them when the build is done. */
export interface Lease {
  /** The leased layer directories, sorted. */
  readonly dirs: readonly string[];
  /** Removes the lease files. Idempotent. */
  release(): Promise<void>;
  /**
   * {@link release}, synchronously: for a signal handler or a
   * exit hook (`ExitHooks` of @day11/exec), where nothing can be awaited. Idempotent, and
   * a no-op after `release()` (and vice versa).
   */
  releaseSync(): void;
}

/** One lease found on a layer. */
export interface LeaseHolder {
  /** The lease file. */
  file: string;
  /** The holding process. */
  pid: number;
  /** Its start time (`/proc/<pid>/stat` field 22), when recorded. */
  start: string | undefined;
  /** When the lease was taken (ISO-8601), when recorded. */
  acquiredAt: string | undefined;
  /** Whether the holder still runs; only live leases protect a layer. */
  alive: boolean;
}

/** Options of {@link acquire}. */
export interface AcquireOptions {
  /** The cache directory; every entry of `dirs` must be a `build-*` directory directly in it. */
  osDir: string;
  /** The layer directories to lease. */
  dirs: readonly string[];
  /** Options for the layer lock taken when a layer is found missing (see the module doc). */
  lock?: Lock.LockOptions;
  /**
   * Mark each layer used now (`last_used`; default true). A runner that
   * marks its layers once, when it lets them go, passes false.
   */
  touch?: boolean;
}

/**
 * Leases every layer of `dirs` for this process, and marks them used now
 * (`last_used`). All or nothing: if one layer is missing, the leases taken so
 * far are released.
 *
 * @example
 * ```ts
 * const lease = await InUse.acquire({ osDir, dirs: [base.dir, ...depDirs] });
 * try { await runBuild(); } finally { await lease.release(); }
 * ```
 * @throws {LayerError} `LAYER_NOT_FOUND` when a layer does not exist (or was just
 *   collected), `LAYER_BAD_ARGUMENT` for a directory that is not a layer of `osDir`,
 *   `LAYER_LOCK_TIMEOUT`, `LAYER_WRITE_FAILED`.
 */
export async function acquire(options: AcquireOptions): Promise<Lease> {
  const each = await acquireEach(options);
  const leases = [...each.values()];
  const dirs = leases.map((l) => l.dirs[0]!);
  return {
    dirs,
    async release() {
      for (const lease of leases) await lease.release();
    },
    releaseSync() {
      for (const lease of leases) lease.releaseSync();
    },
  };
}

/**
 * {@link acquire}, with a lease of its own for each layer (keyed by its
 * absolute directory), to release one by one; the leases share one record.
 * All or nothing, as `acquire`.
 *
 * @example
 * ```ts
 * const leases = await InUse.acquireEach({ osDir, dirs, touch: false });
 * await leases.get(resolve(dirs[0]))!.release(); // the others stay
 * ```
 * @throws {LayerError} as {@link acquire}.
 */
export async function acquireEach(options: AcquireOptions): Promise<Map<string, Lease>> {
  const dirs = [...new Set(options.dirs.map((d) => checkLayerDir(options.osDir, d)))].sort();
  const me = await Proc.self();
  const record = `${JSON.stringify({ pid: me.pid, start: me.start, acquired_at: new Date().toISOString() })}\n`;
  const shared = dirs.length > 1 ? SharedRecord.open(options.osDir, record) : undefined;
  let taken: Array<PromiseSettledResult<string>>;
  try {
    taken = await Promise.allSettled(
      dirs.map((dir) => leaseOne(options, dir, me, { record, shared })),
    );
  } finally {
    // Its names keep it; the descriptor is no longer needed.
    shared?.close();
  }
  const leases = new Map<string, Lease>();
  taken.forEach((t, i) => {
    if (t.status === 'fulfilled') leases.set(dirs[i]!, leaseOf([dirs[i]!], [t.value]));
  });
  const failed = taken.find((t) => t.status === 'rejected');
  if (failed) {
    for (const lease of leases.values()) await lease.release().catch(() => undefined);
    throw failed.reason;
  }
  return leases;
}

/**
 * The record of the leases taken at once: an unnamed file in the cache
 * directory, linked into each layer (see the module doc).
 */
class SharedRecord {
  private constructor(private fd: number | undefined) {}

  /** The record written to a new unnamed file; undefined where that cannot be done. */
  static open(osDir: string, record: string): SharedRecord | undefined {
    let fd: number;
    try {
      fd = Sys.openUnnamedSync(osDir);
    } catch {
      return undefined; // no O_TMPFILE here (or no koffi): a file per lease
    }
    try {
      writeSync(fd, record);
      return new SharedRecord(fd);
    } catch {
      Sys.closeFdSync(fd);
      return undefined;
    }
  }

  /**
   * Names the record `file`: true once linked; false when it could not be
   * (the caller writes a file of its own, which also tells a missing layer).
   */
  link(file: string): boolean {
    const fd = this.fd;
    if (fd === undefined) return false;
    let linked: boolean;
    try {
      linked = inLeaseDir(file, () => Sys.linkOpenFileSync(fd, file));
    } catch {
      linked = false;
    }
    // EXDEV, EMLINK, no /proc, a layer gone, …: files of their own from now on.
    if (!linked) this.close();
    return linked;
  }

  close(): void {
    if (this.fd !== undefined) Sys.closeFdSync(this.fd);
    this.fd = undefined;
  }
}

function leaseOf(dirs: readonly string[], files: string[]): Lease {
  let released = false;
  return {
    dirs,
    async release() {
      if (released) return;
      released = true;
      // A few microseconds each: cheaper synchronously than through the thread pool.
      for (const file of files) removeLeaseSync(file);
    },
    releaseSync() {
      if (released) return;
      released = true;
      for (const file of files) removeLeaseSync(file);
    },
  };
}

async function leaseOne(
  options: AcquireOptions,
  dir: string,
  me: Proc.ProcessId,
  { record, shared }: { record: string; shared: SharedRecord | undefined },
): Promise<string> {
  const file = join(dir, LEASE_DIR, `${me.pid}-${randomHex(6)}${LEASE_SUFFIX}`);
  const hash = hashPrefix(basename(dir))!;
  // The fast path: one link (or write), then no one holds the layer's lock
  // and the layer is still where it was. A Gc holding the lock may have
  // looked for leases before this one and be about to set the layer aside
  // (it puts it back when it finds the lease, but a mount meanwhile would
  // fail): then the lease is decided under the lock, once that Gc is done.
  // A Gc taking the lock after this look finds the lease and skips the layer.
  if (
    (shared?.link(file) || writeLease(file, record)) &&
    !exists(Lock.layerLockPath({ osDir: options.osDir, hash })) &&
    hasMeta(dir)
  ) {
    if (options.touch !== false) await LastUsed.touch(dir);
    return file;
  }
  // Missing, set aside by a Gc re-checking it, or its lock held: decide once that Gc is done.
  return Lock.withLayer({ osDir: options.osDir, hash, ...options.lock }, async (held) => {
    if (!hasMeta(dir)) {
      await rm(file, { force: true }).catch(() => undefined);
      throw new LayerError(
        LayerCodes.NOT_FOUND,
        `Cannot lease the layer ${dir}: it does not exist`,
        {
          path: dir,
          hint: 'It was never committed or was garbage-collected; build it again',
        },
      );
    }
    held.assertHeld();
    // Put back by Gc with the lease in it, or written only now.
    if (!exists(file) && !writeLease(file, record)) {
      throw cannotWrite(file, new Error('the layer directory vanished under its lock'));
    }
    if (options.touch !== false) await LastUsed.touch(dir);
    return file;
  });
}

/**
 * Creates the lease file (exclusively: the name is new); false when the
 * layer directory is not there. The name carries the pid, so a lease counts
 * from the moment it exists, even before its record is written.
 * Synchronous, as the checks around it: a few syscalls of microseconds each,
 * where a round trip through the thread pool costs far more (50 per run).
 */
function writeLease(file: string, record: string): boolean {
  try {
    return inLeaseDir(file, () => writeFileSync(file, record, { flag: 'wx' }));
  } catch (cause) {
    throw cannotWrite(file, cause);
  }
}

/**
 * Runs `create` (which makes `file` in its layer's lease directory), making
 * that directory first when it is missing (the first lease of the layer);
 * false when the layer directory itself is not there. Throws what `create`
 * or mkdir throws otherwise.
 */
function inLeaseDir(file: string, create: () => void): boolean {
  for (let attempt = 0; ; attempt++) {
    try {
      create();
      return true;
    } catch (cause) {
      if (!isMissing(cause)) throw cause;
      if (attempt > 0) return false;
    }
    try {
      mkdirSync(dirname(file));
    } catch (cause) {
      if (errnoCode(cause) === 'ENOENT') return false;
      if (errnoCode(cause) !== 'EEXIST') throw cause;
    }
  }
}

/** ENOENT from node:fs or from a system call of `Sys`. */
function isMissing(cause: unknown): boolean {
  return errnoCode(cause) === 'ENOENT' || (cause instanceof SysError && cause.errno === 'ENOENT');
}

function cannotWrite(file: string, cause: unknown): LayerError {
  return new LayerError(
    LayerCodes.WRITE_FAILED,
    `Cannot write the lease ${file}: ${messageOf(cause)}`,
    {
      path: file,
      cause,
      hint: 'Check that the layer directory is writable and the disk is not full',
    },
  );
}

function hasMeta(dir: string): boolean {
  return exists(join(dir, FILES.meta));
}

function exists(path: string): boolean {
  try {
    accessSync(path);
    return true;
  } catch {
    return false;
  }
}

async function removeLease(file: string): Promise<void> {
  try {
    await rm(file, { force: true });
  } catch (cause) {
    throw cannotRemoveLease(file, cause);
  }
}

function removeLeaseSync(file: string): void {
  try {
    // unlink, not rmSync: that one lstats first and goes through its recursive machinery.
    unlinkSync(file);
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return;
    throw cannotRemoveLease(file, cause);
  }
}

function cannotRemoveLease(file: string, cause: unknown): LayerError {
  return new LayerError(
    LayerCodes.WRITE_FAILED,
    `Cannot remove the lease ${file}: ${messageOf(cause)}`,
    {
      path: file,
      cause,
      hint: `The lease stops counting when this process exits; \`day11 recover --cache ${dirname(dirname(dirname(file)))}\` (Recover.sweep) then removes it`,
    },
  );
}

function checkLayerDir(osDir: string, dir: string): string {
  const abs = resolve(dir);
  if (dirname(abs) !== resolve(osDir) || hashPrefix(basename(abs)) === undefined) {
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Cannot lease ${dir}: not a layer directory of ${osDir}`,
      {
        path: dir,
        hint: 'Pass layer directories {osDir}/build-xxxxxxxxxxxx, as made by LayerDir.path',
      },
    );
  }
  return abs;
}

/**
 * Every lease on layer `dir` with whether its holder still runs; `[]` for a
 * layer without leases or a missing layer.
 *
 * @example
 * ```ts
 * for (const h of await InUse.holders(dir)) if (h.alive) console.log(`used by pid ${h.pid}`);
 * ```
 */
export async function holders(dir: string): Promise<LeaseHolder[]> {
  const leaseDir = join(dir, LEASE_DIR);
  let names: string[];
  try {
    names = await readdir(leaseDir);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return [];
    throw err;
  }
  const found = await Promise.all(
    names.filter((n) => n.endsWith(LEASE_SUFFIX)).map((n) => readLease(join(leaseDir, n))),
  );
  return found.filter((h) => h !== undefined);
}

async function readLease(file: string): Promise<LeaseHolder | undefined> {
  let record: { pid?: unknown; start?: unknown; acquired_at?: unknown } = {};
  try {
    record = JSON.parse(await readFile(file, 'utf8')) as typeof record;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
  }
  const acquiredAt = typeof record.acquired_at === 'string' ? record.acquired_at : undefined;
  const id = Proc.parse(record);
  if (id) return { file, ...id, acquiredAt, alive: await Proc.isAlive(id) };
  // A lease still being written (or torn by a crash) has only the pid in its name.
  const pid = Number(/^(\d+)-/.exec(basename(file))?.[1]);
  const st = await lstat(file).catch(() => undefined);
  if (!st || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  const alive = !(await Proc.ownerGone(pid, st.ctimeMs));
  return { file, pid, start: undefined, acquiredAt, alive };
}

/** True when a live process holds a lease on layer `dir`. */
export async function isInUse(dir: string): Promise<boolean> {
  return (await holders(dir)).some((h) => h.alive);
}

/** Removes the leases of dead holders on layer `dir`; returns the removed files. */
export async function sweep(dir: string): Promise<string[]> {
  const dead = (await holders(dir)).filter((h) => !h.alive);
  for (const h of dead) await removeLease(h.file);
  return dead.map((h) => h.file);
}
