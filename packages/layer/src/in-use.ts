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
 * {@link acquire} writes a lease under the layer's lock after checking the
 * layer exists; `Gc.prune` deletes a layer only under the same lock after
 * checking it has no live lease. So either the lease is taken first and the
 * layer survives, or the layer is collected first and acquire fails.
 */
import { rmSync } from 'node:fs';
import { access, lstat, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { randomHex, Proc } from '@day11/exec';
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
  /** Options for the per-layer locks taken while leasing. */
  lock?: Lock.LockOptions;
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
  const dirs = [...new Set(options.dirs.map((d) => checkLayerDir(options.osDir, d)))].sort();
  const files: string[] = [];
  const lease = leaseOf(dirs, files);
  try {
    for (const dir of dirs) files.push(await leaseOne(options, dir));
  } catch (err) {
    await lease.release().catch(() => undefined);
    throw err;
  }
  return lease;
}

function leaseOf(dirs: readonly string[], files: string[]): Lease {
  let released = false;
  return {
    dirs,
    async release() {
      if (released) return;
      released = true;
      await Promise.all(files.map(removeLease));
    },
    releaseSync() {
      if (released) return;
      released = true;
      for (const file of files) removeLeaseSync(file);
    },
  };
}

async function leaseOne(options: AcquireOptions, dir: string): Promise<string> {
  const hash = hashPrefix(basename(dir))!;
  return Lock.withLayer({ osDir: options.osDir, hash, ...options.lock }, async (held) => {
    try {
      await access(join(dir, FILES.meta));
    } catch (cause) {
      throw new LayerError(
        LayerCodes.NOT_FOUND,
        `Cannot lease the layer ${dir}: it does not exist`,
        {
          path: dir,
          cause,
          hint: 'It was never committed or was garbage-collected; build it again',
        },
      );
    }
    held.assertHeld();
    const file = await writeLease(dir);
    await LastUsed.touch(dir);
    return file;
  });
}

async function writeLease(dir: string): Promise<string> {
  const me = await Proc.self();
  const file = join(dir, LEASE_DIR, `${me.pid}-${randomHex(6)}${LEASE_SUFFIX}`);
  const record = { pid: me.pid, start: me.start, acquired_at: new Date().toISOString() };
  try {
    await mkdir(dirname(file), { recursive: true });
    await writeFile(file, `${JSON.stringify(record)}\n`, { flag: 'wx' });
  } catch (cause) {
    throw new LayerError(
      LayerCodes.WRITE_FAILED,
      `Cannot write the lease ${file}: ${messageOf(cause)}`,
      {
        path: file,
        cause,
        hint: 'Check that the layer directory is writable and the disk is not full',
      },
    );
  }
  return file;
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
    rmSync(file, { force: true });
  } catch (cause) {
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
