/**
 * Cross-process locks. A lock is a file, `{dir}/<name>.lock`, that appears
 * whole with its holder in it (pid and process start time), so
 * {@link Recover.sweep} removes the lock of a killed process at once.
 *
 * The locks a process holds at once in one directory are names of one file:
 * its owner record there, an unnamed file (O_TMPFILE) written once. Taking a
 * lock is one link(2), which fails with EEXIST while someone holds it; giving
 * it back is one unlink(2). No inode is made or freed per lock: each is a
 * directory entry (a no-journal ext4 scans past every inode freed in the last
 * minutes on each allocation, and a build takes a lock per step). A lone
 * lock, and every lock where the filesystem has no unnamed files or /proc is
 * missing, is a file of its own, written under a temporary name and linked
 * into place.
 *
 * A held lock is kept fresh by touching its mtime every `staleMs / 2` (one
 * touch of the shared record refreshes every lock it is). Another process
 * takes over a lock that is stale (see {@link staleness}): not refreshed
 * within `staleMs` (its holder hung), its holder gone, or (a lock directory
 * of an older version) without an owner after {@link ORPHAN_GRACE_MS}. A
 * holder whose lock was taken over or removed sees it at its next refresh
 * (the name is no longer its file): its `signal` aborts with
 * `LAYER_LOCK_COMPROMISED`. Held locks are removed when the process exits,
 * also by a signal (signal-exit).
 *
 * Layer locks live in `{osDir}/.locks/build-xxxxxxxxxxxx.lock`, where Scan
 * does not look. Locks are re-entrant within one async call chain: code
 * running inside `withLayer(x)` may call `withLayer(x)` again (e.g.
 * `Commit.commit` under a caller's build lock) without deadlocking.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import {
  closeSync,
  existsSync,
  fstatSync,
  futimesSync,
  linkSync,
  lstatSync,
  openSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { link, lstat, mkdir, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import { name as layerName } from './layer-dir.js';
import { TempName, Proc, Sys, SysError } from '@day11/exec';

/** Directory of the layer lock files, inside `osDir`. */
export const LOCKS_DIR = '.locks';
/** Suffix of a lock. */
export const LOCK_SUFFIX = '.lock';
/** File inside a lock directory of an older version naming its holder. */
const OWNER_FILE = 'owner';
/** Default for {@link LockOptions.staleMs}. */
export const DEFAULT_STALE_MS = 10_000;
/** Default for {@link LockOptions.timeoutMs}. */
export const DEFAULT_TIMEOUT_MS = 5 * 60_000;
/** The shortest `staleMs` taken: a refresh every second at most. */
const MIN_STALE_MS = 2000;
/** How long the exit hook stays after the last lock is given back. */
const EXIT_HOOK_LINGER_MS = 1000;
/** A record touched longer ago than this is touched again before it is linked as a new lock. */
const FRESH_MS = 1000;

/** Options of {@link withPath} and {@link withLayer}. */
export interface LockOptions {
  /** Give up waiting after this long (default 5 minutes; `Infinity` waits forever). */
  timeoutMs?: number;
  /** A lock not refreshed for this long is stale and may be taken over (default 10 s, min 2 s). */
  staleMs?: number;
  /** Aborting stops waiting for the lock (rejects with the signal's reason). */
  signal?: AbortSignal;
  /**
   * Called once, when the lock is found held by someone else and the call
   * starts to wait for it: a caller can give back what it holds meanwhile
   * (the builder gives a step's place in line to steps it can start now).
   */
  onWait?: () => void;
}

/** Options of {@link withPath}. */
export interface PathLockOptions extends LockOptions {
  /** Where the lock goes (default `${path}.lock`). */
  lockfilePath?: string;
}

/** What the function run under a lock receives. */
export interface HeldLock {
  /** The lock file. */
  readonly path: string;
  /** Aborted (with a `LAYER_LOCK_COMPROMISED` error) if the lock is lost while held. */
  readonly signal: AbortSignal;
  /** Throws `LAYER_LOCK_COMPROMISED` if the lock was lost; call it right before a decisive step. */
  assertHeld(): void;
}

const held = new AsyncLocalStorage<ReadonlyMap<string, HeldLock>>();

/**
 * This process's owner record in one directory: an unnamed file holding its
 * pid and start time, linked as each lock taken there. It lives while one of
 * its locks is held: a file that had names and lost them all cannot be
 * linked again (the kernel allows that once, to a new O_TMPFILE file), so
 * the next lock after that makes a new record.
 */
class OwnerRecord {
  private users = 0;
  private touchedAt = Date.now();

  private constructor(
    private readonly records: Map<string, OwnerRecord | null>,
    private readonly dir: string,
    private readonly fd: number,
    readonly ino: number,
  ) {}

  /**
   * The record of directory `dir`, made when none is open; `undefined` where
   * the filesystem has no unnamed files (remembered for the directory).
   */
  static of(
    records: Map<string, OwnerRecord | null>,
    dir: string,
    text: string,
  ): OwnerRecord | undefined {
    const known = records.get(dir);
    if (known !== undefined) return known ?? undefined;
    let fd: number;
    try {
      fd = Sys.openUnnamedSync(dir, 0o644);
    } catch (cause) {
      // A missing directory is the caller's error to report; anything else: files of their own.
      if (!isMissing(cause)) records.set(dir, null);
      return undefined;
    }
    try {
      writeSync(fd, text);
      const record = new OwnerRecord(records, dir, fd, fstatSync(fd).ino);
      records.set(dir, record);
      return record;
    } catch {
      Sys.closeFdSync(fd);
      records.set(dir, null);
      return undefined;
    }
  }

  /** Links the record as `lockPath`: true when taken, false when the lock is held. */
  take(lockPath: string): boolean {
    this.users++;
    try {
      if (Date.now() - this.touchedAt > FRESH_MS) this.touch();
      Sys.linkOpenFileSync(this.fd, lockPath);
      return true;
    } catch (cause) {
      this.done();
      if (sysCode(cause) === 'EEXIST') return false;
      throw cause;
    }
  }

  /** Marks every lock of the record fresh. */
  touch(): void {
    const now = new Date();
    futimesSync(this.fd, now, now);
    this.touchedAt = now.getTime();
  }

  /** One lock of the record given back (or not taken); the last closes it. */
  done(): void {
    if (--this.users <= 0) this.close();
  }

  private close(): void {
    if (this.records.get(this.dir) === this) this.records.delete(this.dir);
    Sys.closeFdSync(this.fd);
  }
}

/** A lock this process holds. */
interface Holding {
  path: string;
  /** The lock's inode: the name still being it says the lock is still ours. */
  ino: number;
  record: OwnerRecord | undefined;
  /** A lock of its own: its open file (the record's otherwise). */
  fd?: number | undefined;
  controller: AbortController;
  refresh: NodeJS.Timeout;
}

/** Owner records by directory (`null`: none can be made there), and the locks held. */
const records = new Map<string, OwnerRecord | null>();
const holdings = new Set<Holding>();
let removeExitHook: (() => void) | undefined;

/**
 * Makes lock `lockPath` holding `text` (the owner): the shared record linked,
 * or a file of its own. Returns the holding's inode and record, or
 * `undefined` when the lock exists.
 */
function create(
  lockPath: string,
  text: string,
): { ino: number; record: OwnerRecord | undefined; fd?: number } | undefined {
  const dir = dirname(lockPath);
  // A lone lock is a file of its own (the record's link needs the FFI of
  // `Sys`, whose first load costs more than the file: a command taking one
  // lock does not pay for it); one taken while another is held there shares
  // the record, as a build's do.
  const record = records.has(dir) || heldIn(dir) ? OwnerRecord.of(records, dir, text) : undefined;
  if (record) {
    try {
      return record.take(lockPath) ? { ino: record.ino, record } : undefined;
    } catch (cause) {
      // The directory gone is the caller's to report; an ENOENT with the
      // directory there is /proc missing (the link goes through /proc/self/fd).
      if (isMissing(cause) && !existsSync(dir)) throw cause;
      // No /proc, EMLINK, …: files of their own in this directory from now on.
      records.set(dir, null);
    }
  }
  const temp = TempName.beside(lockPath);
  const fd = openSync(temp, 'wx', 0o644);
  let taken = false;
  try {
    writeSync(fd, text);
    const ino = fstatSync(fd).ino;
    linkSync(temp, lockPath);
    taken = true;
    // Kept open while held: its inode cannot be reused by another file meanwhile.
    return { ino, record: undefined, fd };
  } catch (cause) {
    if (errnoCode(cause) === 'EEXIST') return undefined;
    throw cause;
  } finally {
    if (!taken) closeSync(fd);
    // The lock's name keeps the file; a failed write leaves nothing.
    unlinkSync(temp);
  }
}

/** Whether this process holds a lock in directory `dir`. */
function heldIn(dir: string): boolean {
  for (const h of holdings) if (dirname(h.path) === dir) return true;
  return false;
}

/**
 * Checks that held lock `h` is still ours, and marks it fresh; aborts its
 * signal when it was taken over or removed.
 */
function refresh(h: Holding): void {
  let ino: number | undefined;
  try {
    ino = lstatSync(h.path).ino;
  } catch {
    ino = undefined;
  }
  if (ino !== h.ino) {
    const why = ino === undefined ? 'it was removed' : 'another process took it over';
    clearInterval(h.refresh);
    h.controller.abort(compromised(h.path, new Error(why)));
    return;
  }
  try {
    if (h.record) h.record.touch();
    else if (h.fd !== undefined) futimesSync(h.fd, new Date(), new Date());
  } catch {
    // Checked again at the next refresh.
  }
}

/** Removes held lock `h` if it is still ours. Synchronous: also run at exit. */
function removeHolding(h: Holding): void {
  if (!holdings.delete(h)) return;
  clearInterval(h.refresh);
  try {
    if (lstatSync(h.path).ino === h.ino) unlinkSync(h.path);
  } catch {
    // Gone already, or not ours any more: it goes stale or was taken over.
  }
  h.record?.done();
  if (h.fd !== undefined) closeSync(h.fd);
  if (holdings.size === 0) uninstallExitHookSoon();
}

/** What every lock of this process needs, made by the first: its owner text, and signal-exit. */
let ownerText: string | undefined;
let onExit: typeof import('signal-exit').onExit | undefined;
/** Takes the exit hook away a moment after the last lock went, unless another came. */
let hookLinger: NodeJS.Timeout | undefined;

async function prepare(): Promise<string> {
  ownerText ??= JSON.stringify(await Proc.self());
  // Loaded on first use: commands that take no lock start faster.
  onExit ??= (await import('signal-exit')).onExit;
  return ownerText;
}

/** Removes every lock still held when the process exits, also by a signal. */
function installExitHook(): void {
  clearTimeout(hookLinger);
  removeExitHook ??= onExit!(() => {
    for (const h of [...holdings]) removeHolding(h);
  });
}

/**
 * With no lock held, the exit hook goes (its signal listeners with it), a
 * little later: a build takes its next lock as it gives one back, and the
 * hook would come and go per step.
 */
function uninstallExitHookSoon(): void {
  clearTimeout(hookLinger);
  hookLinger = setTimeout(() => {
    if (holdings.size > 0) return;
    removeExitHook?.();
    removeExitHook = undefined;
  }, EXIT_HOOK_LINGER_MS);
  hookLinger.unref();
}

/**
 * Why lock `lockPath` is stale, or `undefined` when it is live or gone:
 * - `'expired'`: not refreshed within `staleMs`;
 * - `'owner-dead'`: the process it names no longer runs;
 * - `'orphaned'`: no owner {@link ORPHAN_GRACE_MS} after it was made (a lock
 *   directory of an older version whose holder died before writing it).
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
  if (st.mtimeMs < now - Math.max(staleMs, MIN_STALE_MS)) return 'expired';
  const holder = await owner(lockPath);
  if (holder) return (await Proc.isAlive(holder)) ? undefined : 'owner-dead';
  const createdMs = st.birthtimeMs || st.ctimeMs; // birthtime is 0 where unsupported
  return createdMs < now - ORPHAN_GRACE_MS ? 'orphaned' : undefined;
}

/** Why a lock is stale; see {@link staleness}. */
export type Staleness = 'expired' | 'owner-dead' | 'orphaned';

/**
 * Locks made here have their owner from birth; a lock directory without one
 * comes from an older version (which recorded the owner after `mkdir`). This
 * long after its creation, it lost its holder in between.
 */
export const ORPHAN_GRACE_MS = 2000;

/** The holder recorded in lock `lockPath`, or `undefined` (none, unreadable). */
export async function owner(lockPath: string): Promise<Proc.ProcessId | undefined> {
  try {
    return Proc.parse(JSON.parse(await readFile(lockPath, 'utf8')));
  } catch (err) {
    if (errnoCode(err) !== 'EISDIR') return undefined;
  }
  try {
    return Proc.parse(JSON.parse(await readFile(join(lockPath, OWNER_FILE), 'utf8')));
  } catch {
    return undefined;
  }
}

/**
 * Removes lock `lockPath` if it is stale (see {@link staleness}): moves it
 * aside, checks again what moved (between the check and the rename another
 * process may have taken over the dead lock with a fresh one, which is then
 * put back, unless the name is taken again), and deletes it. True when it
 * removed a stale lock. Throws what the rename or removal throws.
 *
 * @example
 * ```ts
 * if (await Lock.removeIfStale(`${layout}/index.json.lock`)) console.log('removed a dead lock');
 * ```
 */
export async function removeIfStale(
  lockPath: string,
  options: { staleMs?: number } = {},
): Promise<boolean> {
  if (!(await staleness(lockPath, options))) return false;
  const aside = TempName.beside(lockPath);
  try {
    await rename(lockPath, aside);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw err;
  }
  if (!(await staleness(aside, options))) {
    await putBack(aside, lockPath);
    return false;
  }
  await rm(aside, { recursive: true, force: true });
  return true;
}

/**
 * Puts a live lock moved aside back under its name, never over another
 * lock: a file by a link (rename(2) would replace one), a directory by a
 * rename (which fails on a non-empty one). Where the name was taken again,
 * the aside lock is dropped: its holder sees it lost.
 */
async function putBack(aside: string, lockPath: string): Promise<void> {
  const st = await lstat(aside).catch(() => undefined);
  if (st?.isDirectory()) {
    await rename(aside, lockPath).catch(() => undefined);
    return;
  }
  await link(aside, lockPath).catch(() => undefined);
  await unlink(aside).catch(() => undefined);
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
  // `.locks/` is made when a lock finds it missing, not checked for each lock.
  return lockAndRun(layerLockPath({ osDir, hash }), fn, lockOptions, true);
}

/**
 * Runs `fn` while holding a cross-process lock on `path` (which need not
 * exist). The lock is `${path}.lock` unless `lockfilePath` says otherwise;
 * its directory must exist. The lock is gone after `fn` settles.
 *
 * @example
 * ```ts
 * await Lock.withPath(join(layout, 'index.json'), async () => updateIndex(layout));
 * ```
 * @throws {LayerError} `LAYER_LOCK_TIMEOUT`, `LAYER_LOCK_COMPROMISED`, or
 *   `LAYER_WRITE_FAILED` when the lock cannot be created.
 */
export async function withPath<T>(
  path: string,
  fn: (lock: HeldLock) => Promise<T>,
  options: PathLockOptions = {},
): Promise<T> {
  return lockAndRun(resolve(options.lockfilePath ?? path + LOCK_SUFFIX), fn, options, false);
}

async function lockAndRun<T>(
  lockPath: string,
  fn: (lock: HeldLock) => Promise<T>,
  options: LockOptions,
  makeParent: boolean,
): Promise<T> {
  const outer = held.getStore();
  const already = outer?.get(lockPath);
  if (already) return fn(already);

  const holding = await acquire(lockPath, options, makeParent);
  const lock = heldLock(lockPath, holding.controller.signal);
  const inner = new Map(outer);
  inner.set(lockPath, lock);
  try {
    const result = await held.run(inner, () => fn(lock));
    lock.assertHeld();
    return result;
  } finally {
    removeHolding(holding);
  }
}

async function acquire(
  lockPath: string,
  options: LockOptions,
  makeParent: boolean,
): Promise<Holding> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const staleMs = Math.max(options.staleMs ?? DEFAULT_STALE_MS, MIN_STALE_MS);
  if (!(timeoutMs >= 0)) throw badOption('timeoutMs', timeoutMs);
  const deadline = Date.now() + timeoutMs;
  const text = ownerText !== undefined && onExit !== undefined ? ownerText : await prepare();
  installExitHook();
  try {
    let onWait = options.onWait;
    for (let backoff = 20; ; backoff = Math.min(backoff * 1.5, 500)) {
      options.signal?.throwIfAborted();
      let made;
      try {
        made = create(lockPath, text);
      } catch (cause) {
        if (!(makeParent && isMissing(cause))) throw cannotCreate(lockPath, cause);
        await ensureDir(dirname(lockPath));
        makeParent = false;
        continue;
      }
      if (made) return hold(lockPath, made, staleMs);
      let removed: boolean;
      try {
        removed = await removeIfStale(lockPath, { staleMs });
      } catch (cause) {
        throw cannotCreate(lockPath, cause);
      }
      if (removed) continue;
      if (Date.now() >= deadline) throw timedOut(lockPath, timeoutMs, staleMs);
      onWait?.(); // once: from here on this call waits
      onWait = undefined;
      const remaining = Math.max(0, deadline - Date.now());
      await sleep(Math.min(backoff * (0.5 + Math.random()), remaining), options.signal);
    }
  } finally {
    // No lock taken (timed out, aborted, failed): no hook either.
    if (holdings.size === 0) uninstallExitHookSoon();
  }
}

function hold(
  lockPath: string,
  made: { ino: number; record: OwnerRecord | undefined; fd?: number },
  staleMs: number,
): Holding {
  const holding: Holding = {
    path: lockPath,
    ...made,
    controller: new AbortController(),
    refresh: setInterval(() => refresh(holding), staleMs / 2),
  };
  // Refreshing must not keep the process alive; the exit hook removes the lock.
  holding.refresh.unref();
  holdings.add(holding);
  return holding;
}

function heldLock(path: string, signal: AbortSignal): HeldLock {
  return {
    path,
    signal,
    assertHeld() {
      if (signal.aborted) throw signal.reason;
    },
  };
}

async function ensureDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true });
  } catch (cause) {
    throw cannotCreate(dir, cause);
  }
}

/** ENOENT from node:fs or from a system call of `Sys`. */
function isMissing(cause: unknown): boolean {
  return sysCode(cause) === 'ENOENT';
}

function sysCode(cause: unknown): string | undefined {
  return cause instanceof SysError ? cause.errno : errnoCode(cause);
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
        'Another process holds it (its pid is in the lock file); wait for it, pass a longer timeoutMs, ' +
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
        'and do not delete locks of running processes',
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
