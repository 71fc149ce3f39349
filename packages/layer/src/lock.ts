/**
 * Cross-process locks on top of proper-lockfile: a lock is a directory that
 * appears atomically (assembled under a temporary name, then renamed into
 * place), kept fresh by touching its mtime, and taken over by others when its
 * mtime is older than `staleMs` (the holder died or hung).
 *
 * Layer locks live in `{osDir}/.locks/build-xxxxxxxxxxxx.lock`, where Scan does
 * not look. Each lock directory holds an `owner` file (pid and process start
 * time) from the moment it exists, so {@link Recover.sweep} can remove the lock
 * of a killed process at once instead of waiting for it to go stale.
 *
 * Locks are re-entrant within one async call chain: code running inside
 * `withLayer(x)` may call `withLayer(x)` again (e.g. `Commit.commit` under a
 * caller's build lock) without deadlocking.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import * as fs from 'node:fs';
import { lstat, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import { name as layerName } from './layer-dir.js';
import { TempName, Proc } from '@day11/exec';

/** Directory of the layer lock files, inside `osDir`. */
export const LOCKS_DIR = '.locks';
/** Suffix of a lock directory. */
export const LOCK_SUFFIX = '.lock';
/** File inside a lock directory naming its holder. */
const OWNER_FILE = 'owner';
/** Default for {@link LockOptions.staleMs} (proper-lockfile's default). */
export const DEFAULT_STALE_MS = 10_000;
/** Default for {@link LockOptions.timeoutMs}. */
export const DEFAULT_TIMEOUT_MS = 5 * 60_000;

/** Options of {@link withPath} and {@link withLayer}. */
export interface LockOptions {
  /** Give up waiting after this long (default 5 minutes; `Infinity` waits forever). */
  timeoutMs?: number;
  /** A lock not refreshed for this long is stale and may be taken over (default 10 s, min 2 s). */
  staleMs?: number;
  /** Aborting stops waiting for the lock (rejects with the signal's reason). */
  signal?: AbortSignal;
}

/** Options of {@link withPath}. */
export interface PathLockOptions extends LockOptions {
  /** Where the lock directory goes (default `${path}.lock`). */
  lockfilePath?: string;
}

/** What the function run under a lock receives. */
export interface HeldLock {
  /** The lock directory. */
  readonly path: string;
  /** Aborted (with a `LAYER_LOCK_COMPROMISED` error) if the lock is lost while held. */
  readonly signal: AbortSignal;
  /** Throws `LAYER_LOCK_COMPROMISED` if the lock was lost; call it right before a decisive step. */
  assertHeld(): void;
}

const held = new AsyncLocalStorage<ReadonlyMap<string, HeldLock>>();

/**
 * proper-lockfile takes a lock with `mkdir` and removes it with `rmdir`. Ours
 * appear and disappear whole, with their owner file inside (see
 * {@link createWithOwner} and {@link removeWithOwner}): release, stale
 * take-over and exit cleanup all go through these.
 */
const lockFs = {
  ...fs,
  mkdir: (path: string, cb: (err: NodeJS.ErrnoException | null) => void) => {
    createWithOwner(path).then(
      () => cb(null),
      (err: NodeJS.ErrnoException) => cb(err),
    );
  },
  rmdir: (path: string, cb: (err: NodeJS.ErrnoException | null) => void) => {
    removeWithOwner(path).then(
      () => cb(null),
      (err: NodeJS.ErrnoException) => cb(err),
    );
  },
  rmdirSync: (path: string) => {
    const aside = TempName.beside(path);
    fs.renameSync(path, aside);
    fs.rmSync(aside, { recursive: true, force: true });
  },
};

/**
 * Makes lock directory `lockPath` as `mkdir` would (failing with `EEXIST` when
 * it exists), but complete: the directory is assembled with its owner file
 * under a temporary name beside it and renamed into place. A lock therefore
 * never exists without its owner, and a holder killed at any moment leaves
 * either a temporary directory of a dead pid or a lock whose owner is dead:
 * `Recover.sweep` removes both at once. (A plain `mkdir` then a write left an
 * owner-less lock that recovery had to leave alone for {@link ORPHAN_GRACE_MS}
 * and that blocked the next taker until it went stale.)
 */
async function createWithOwner(lockPath: string): Promise<void> {
  const temp = TempName.beside(lockPath);
  try {
    await mkdir(temp);
    await writeFile(join(temp, OWNER_FILE), JSON.stringify(await Proc.self()));
    // rename(2) would replace an empty directory: an existing lock, even one
    // made by mkdir alone, must fail as mkdir does.
    if (await exists(lockPath)) throw alreadyExists(lockPath);
    await rename(temp, lockPath);
  } catch (err) {
    await rm(temp, { recursive: true, force: true }).catch(() => undefined);
    const code = errnoCode(err);
    throw code === 'ENOTEMPTY' || code === 'EEXIST' ? alreadyExists(lockPath) : err;
  }
}

/**
 * Removes a lock directory as `rmdir` would, but atomically: it is renamed
 * aside first, so a kill never leaves it without its owner file (a recursive
 * removal deletes the file first); the aside name is a temp of this process.
 */
async function removeWithOwner(lockPath: string): Promise<void> {
  const aside = TempName.beside(lockPath);
  await rename(lockPath, aside);
  await rm(aside, { recursive: true, force: true });
}

function alreadyExists(path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`EEXIST: lock exists, mkdir '${path}'`), {
    code: 'EEXIST',
    path,
  });
}

async function exists(path: string): Promise<boolean> {
  return lstat(path).then(
    () => true,
    () => false,
  );
}

/** `{osDir}/.locks/build-xxxxxxxxxxxx.lock`, the lock of layer `hash`. */
export function layerLockPath({ osDir, hash }: { osDir: string; hash: string }): string {
  return join(osDir, LOCKS_DIR, layerName(hash) + LOCK_SUFFIX);
}

/**
 * Runs `fn` while holding the cross-process lock of layer `hash`.
 *
 * @example
 * ```ts
 * await Lock.withLayer({ osDir, hash }, async () => {
 *   if (!(await LayerMeta.find(LayerDir.path({ osDir, hash })))) await build();
 * });
 * ```
 * @throws {LayerError} `LAYER_LOCK_TIMEOUT` when the lock is not free within `timeoutMs`,
 *   `LAYER_LOCK_COMPROMISED` when it was lost while `fn` ran.
 */
export async function withLayer<T>(
  options: { osDir: string; hash: string } & LockOptions,
  fn: (lock: HeldLock) => Promise<T>,
): Promise<T> {
  const { osDir, hash, ...lockOptions } = options;
  const lockfilePath = layerLockPath({ osDir, hash });
  await ensureDir(join(osDir, LOCKS_DIR));
  return withPath(lockfilePath, fn, { ...lockOptions, lockfilePath });
}

/**
 * Runs `fn` while holding a cross-process lock on `path` (which need not
 * exist). The lock directory is `${path}.lock` unless `lockfilePath` says
 * otherwise; its parent must exist. The lock directory is gone after `fn` settles.
 *
 * @example
 * ```ts
 * await Lock.withPath(join(layout, 'index.json'), async () => updateIndex(layout));
 * ```
 * @throws {LayerError} `LAYER_LOCK_TIMEOUT`, `LAYER_LOCK_COMPROMISED`, or
 *   `LAYER_WRITE_FAILED` when the lock directory cannot be created.
 */
export async function withPath<T>(
  path: string,
  fn: (lock: HeldLock) => Promise<T>,
  options: PathLockOptions = {},
): Promise<T> {
  const lockPath = resolve(options.lockfilePath ?? path + LOCK_SUFFIX);
  const outer = held.getStore();
  const already = outer?.get(lockPath);
  if (already) return fn(already);

  const lock = await acquire(lockPath, options);
  const inner = new Map(outer);
  inner.set(lockPath, lock.held);
  try {
    const result = await held.run(inner, () => fn(lock.held));
    lock.held.assertHeld();
    return result;
  } finally {
    await lock.release();
  }
}

interface Acquired {
  held: HeldLock;
  release(): Promise<void>;
}

async function acquire(lockPath: string, options: LockOptions): Promise<Acquired> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const staleMs = Math.max(options.staleMs ?? DEFAULT_STALE_MS, 2000);
  if (!(timeoutMs >= 0)) throw badOption('timeoutMs', timeoutMs);
  const deadline = Date.now() + timeoutMs;
  for (let backoff = 20; ; backoff = Math.min(backoff * 1.5, 500)) {
    options.signal?.throwIfAborted();
    const controller = new AbortController();
    const lock = heldLock(lockPath, controller.signal);
    let release: (() => Promise<void>) | undefined;
    try {
      // Loaded on first use: commands that take no lock (layers ls, gc --dry-run) start faster.
      const { default: lockfile } = await import('proper-lockfile');
      release = await lockfile.lock(lockPath, {
        lockfilePath: lockPath,
        realpath: false,
        stale: staleMs,
        retries: 0,
        fs: lockFs,
        // Called from a timer: never throw here, fail the operation instead.
        onCompromised: (cause) => controller.abort(compromised(lockPath, cause)),
      });
    } catch (cause) {
      if (errnoCode(cause) !== 'ELOCKED') throw cannotCreate(lockPath, cause);
      if (Date.now() >= deadline) throw timedOut(lockPath, timeoutMs, staleMs);
      const remaining = Math.max(0, deadline - Date.now());
      await sleep(Math.min(backoff * (0.5 + Math.random()), remaining), options.signal);
      continue;
    }
    const releaseOnce = () => release().catch(ignoreReleaseError);
    return { held: lock, release: releaseOnce };
  }
}

/**
 * A lock that cannot be removed (already compromised, or removed by someone
 * else) is not ours any more; if it is still on disk it goes stale and is
 * taken over, so there is nothing useful to report.
 */
function ignoreReleaseError(): void {}

function heldLock(path: string, signal: AbortSignal): HeldLock {
  return {
    path,
    signal,
    assertHeld() {
      if (signal.aborted) throw signal.reason;
    },
  };
}

/** The holder recorded in lock directory `lockPath`, or `undefined` (none yet, unreadable). */
export async function owner(lockPath: string): Promise<Proc.ProcessId | undefined> {
  try {
    return Proc.parse(JSON.parse(await readFile(join(lockPath, OWNER_FILE), 'utf8')));
  } catch {
    return undefined;
  }
}

/**
 * Locks made here have their owner from birth; a lock without one comes from
 * elsewhere (an older version recorded the owner after `mkdir`). This long
 * after its creation, it lost its holder in between.
 */
export const ORPHAN_GRACE_MS = 2000;

/** Why a lock directory is stale; see {@link staleness}. */
export type Staleness = 'expired' | 'owner-dead' | 'orphaned';

/**
 * Why lock directory `lockPath` is stale, or `undefined` when it is live or gone:
 * - `'expired'`: not refreshed within `staleMs` (proper-lockfile's rule);
 * - `'owner-dead'`: the process in its owner file no longer runs;
 * - `'orphaned'`: no owner file {@link ORPHAN_GRACE_MS} after it was created
 *   (its holder died between `mkdir` and recording itself).
 */
export async function staleness(
  lockPath: string,
  { staleMs = DEFAULT_STALE_MS }: { staleMs?: number } = {},
): Promise<Staleness | undefined> {
  let st;
  try {
    st = await stat(lockPath);
  } catch {
    return undefined;
  }
  const now = Date.now();
  if (st.mtimeMs < now - Math.max(staleMs, 2000)) return 'expired';
  const holder = await owner(lockPath);
  if (holder) return (await Proc.isAlive(holder)) ? undefined : 'owner-dead';
  const createdMs = st.birthtimeMs || st.ctimeMs; // birthtime is 0 where unsupported
  return createdMs < now - ORPHAN_GRACE_MS ? 'orphaned' : undefined;
}

async function ensureDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (cause) {
    throw cannotCreate(dir, cause);
  }
}

/** Waits `ms`, rejecting with the signal's reason as soon as it is aborted. */
async function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  try {
    await delay(ms, undefined, signal && { signal });
  } catch (err) {
    signal?.throwIfAborted();
    throw err;
  }
}

/** How a user removes a dead process's lock at `lockPath`, when `day11 recover` can. */
function sweepOf(lockPath: string): string {
  const parent = dirname(lockPath);
  return basename(parent) === LOCKS_DIR
    ? `run \`day11 recover --cache ${dirname(parent)}\` (Recover.sweep) `
    : '';
}

function timedOut(lockPath: string, timeoutMs: number, staleMs: number): LayerError {
  return new LayerError(
    LayerCodes.LOCK_TIMEOUT,
    `Timed out after ${timeoutMs} ms waiting for the lock ${lockPath}`,
    {
      path: lockPath,
      hint:
        'Another process holds it (see its owner file); wait for it, pass a longer timeoutMs, ' +
        `or if no day11 process is running, ${sweepOf(lockPath)}(a dead holder's lock also expires after ${staleMs} ms)`,
    },
  );
}

function compromised(lockPath: string, cause: unknown): LayerError {
  return new LayerError(
    LayerCodes.LOCK_COMPROMISED,
    `Lost the lock ${lockPath} while holding it: ${messageOf(cause)}`,
    {
      path: lockPath,
      cause,
      hint:
        'Something removed the lock or the event loop stalled past staleMs; retry the operation, ' +
        'and do not delete lock directories of running processes',
    },
  );
}

function cannotCreate(path: string, cause: unknown): LayerError {
  return new LayerError(
    LayerCodes.WRITE_FAILED,
    `Cannot create the lock ${path}: ${messageOf(cause)}`,
    {
      path,
      cause,
      hint: 'Check that the parent directory exists and is writable',
    },
  );
}

function badOption(name: string, value: unknown): LayerError {
  return new LayerError(LayerCodes.BAD_ARGUMENT, `Invalid lock option ${name}: ${String(value)}`, {
    hint: `Pass a non-negative number of milliseconds for ${name}`,
  });
}
