/**
 * Commit: turn a finished overlay upper into a layer, atomically.
 *
 * Everything is assembled in a temporary directory of `osDir`
 * (`.day11-tmp-<pid>-<hex>-build-xxxxxxxxxxxx`): the upper is moved in as `fs/`
 * (a rename, nothing is copied), then `layer.log`, the sidecars, `last_used`
 * and last `layer.json` are written. One rename under the layer's lock makes
 * the layer visible. A process killed at any point leaves at most the
 * temporary directory and a lock, which `Recover.sweep` removes; never a
 * partial `build-*` directory (OBuilder's rule: on failure nothing is recorded).
 * The files inside the temporary directory are written in place: no one else
 * sees that directory until it is complete, so they need no rename of their own.
 *
 * Durability (power loss, not only a kill, which loses nothing the page cache
 * holds): before the rename, `layer.json`, the sidecars and the temporary
 * directory are fsynced, together, so a layer that is visible after a crash
 * of the machine has its metadata; after the rename, `osDir` is fsynced so
 * the layer stays visible. That is three fsyncs at once and one after, where
 * a file written atomically on its own needs two each. The step's own output
 * (`fs/`, and a log copied or moved in) is not synced: a killed process loses
 * nothing of it, and a caller that must survive power loss syncs it first.
 */
import {
  closeSync,
  constants,
  fsync,
  lstatSync,
  mkdirSync,
  openSync,
  renameSync,
  writeSync,
} from 'node:fs';
import { chmod, copyFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { measure } from './disk-usage.js';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import * as InUse from './in-use.js';
import * as LastUsed from './last-used.js';
import * as CacheDir from './cache-dir.js';
import {
  DIR_MODE as LAYER_DIR_MODE,
  FILE_MODE as LAYER_FILE_MODE,
  FILES,
  path as layerPath,
} from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';
import * as Lock from './lock.js';
import * as Sidecar from './sidecar.js';
import { TempName, Atomic } from '@day11/exec';

/**
 * `layer.json` as given to {@link commit}: the {@link LayerMeta.LayerRecord}
 * fields (see there what each means), `created_at` and `disk_usage` optional,
 * `hash` taken from the commit's own. Only these: a misspelt field
 * (`createdAt`, `diskUsage`) does not compile, and at run time a camelCase
 * spelling of one is refused. A record read back (`LayerMeta.load`) may be
 * passed whole; keys it has beyond these are stored as they are.
 */
export type CommitMeta = Omit<LayerMeta.LayerRecord, 'created_at' | 'disk_usage' | 'hash'> & {
  /** Default: now. */
  created_at?: string;
  /** Default (or 0): measured from the upper. */
  disk_usage?: number;
};

/**
 * The build log: its text, or a file to copy (the caller keeps that file),
 * or with `move: true` a file of the cache's filesystem to rename in: the
 * layer's then (deleted with the surplus copy when another commit of the
 * layer won), put back when the commit fails.
 */
export type CommitLog = string | Uint8Array | { file: string; move?: boolean };

/** Points of a commit reported to {@link CommitOptions.onStep}. */
export type CommitStep = 'assembling' | 'assembled' | 'locked' | 'renamed';

/** Options of {@link commit}. */
export interface CommitOptions {
  /** The cache directory; created if missing. */
  osDir: string;
  /** The layer hash (12–64 lowercase hex). */
  hash: string;
  /**
   * The finished upper directory, on the same filesystem as `osDir`. Commit
   * takes ownership: it becomes the layer's `fs/`, or is deleted when the layer
   * already exists. If commit rejects, the upper is put back where it was.
   */
  upper: string;
  /**
   * `layer.json`. `created_at` defaults to now. `disk_usage` left out or 0 is
   * replaced by the real disk usage of the upper (`st_blocks × 512`, each
   * hardlinked inode once); a positive value is kept as given.
   */
  meta: CommitMeta;
  /** `layer.log`: text or bytes, or `{ file }` to copy (or move); left out gives an empty log. */
  log?: CommitLog;
  /** Sidecars to write, by file name (`build.json`, ...); each value a JSON object. */
  sidecars?: Readonly<Record<string, unknown>>;
  /** Options for the layer lock. */
  lock?: Lock.LockOptions;
  /** Called as the commit passes each step (progress reporting, crash tests). */
  onStep?: (step: CommitStep) => void | Promise<void>;
}

/** What {@link commit} did. */
export interface CommitResult {
  /** The layer directory, `{osDir}/build-{hash[:12]}`. */
  dir: string;
  /** True when this call made the layer; false when it already existed. */
  committed: boolean;
  /** When this call made the layer: its `layer.json` as written (no need to read it back). */
  meta?: LayerMeta.LayerMeta | undefined;
}

/**
 * Makes the layer `hash` from `upper`, atomically and at most once: when another
 * process (or an earlier call) already committed it, resolves with
 * `committed: false`, deletes `upper` and marks the existing layer used. A
 * `build-*` directory without a readable `layer.json` (which commit never
 * makes) is replaced, unless a live lease protects it.
 *
 * @example
 * ```ts
 * const { dir, committed } = await Commit.commit({
 *   osDir, hash, upper: '/var/cache/day11/.day11-tmp-123-ab-upper',
 *   meta: { exit_status: 0, parent_hashes: deps, uid: 0, gid: 0, base_hash, timing, failed_dep: null },
 *   log: { file: logPath },
 *   sidecars: { 'build.json': { pkg: 'hello.1.0' } },
 * });
 * ```
 * @throws {LayerError} `LAYER_COMMIT_FAILED` (upper missing, on another filesystem,
 *   a write failed), `LAYER_BAD_ARGUMENT` / `LAYER_BAD_HASH` / `LAYER_SIDECAR_INVALID`
 *   for bad input, `LAYER_LOCK_TIMEOUT`, `LAYER_LOCK_COMPROMISED`.
 */
export async function commit(options: CommitOptions): Promise<CommitResult> {
  const dir = layerPath({ osDir: options.osDir, hash: options.hash });
  const checked = validate(options);
  await prepare(options);
  if (isCommitted(dir, options.hash)) return alreadyThere(dir, options.upper);

  const temp = TempName.beside(dir);
  const progress: Progress = { upperMoved: false, logMoved: false, published: false };
  let committed: boolean;
  try {
    await step(options, 'assembling');
    await assemble({ options, checked, temp, progress });
    await step(options, 'assembled');
    committed = await Lock.withLayer(
      { osDir: options.osDir, hash: options.hash, ...options.lock },
      (held) => publish({ options, temp, dir, held, progress }),
    );
  } catch (err) {
    // After the rename the layer is complete and visible: a later failure
    // (a lock lost on the way out, a hook) does not undo the commit.
    if (progress.published) return { dir, committed: true, meta: checked.record };
    await undo(options, temp, progress);
    throw wrap(err, `Cannot commit ${options.upper} as ${dir}`, dir);
  }
  // Lost the race: our copy (holding the upper) is surplus.
  if (!committed) return alreadyThere(dir, temp);
  return { dir, committed, meta: checked.record };
}

/** How far a commit got, for cleaning up after a failure. */
interface Progress {
  upperMoved: boolean;
  logMoved: boolean;
  published: boolean;
}

interface Publish {
  options: CommitOptions;
  temp: string;
  dir: string;
  held: Lock.HeldLock;
  progress: Progress;
}

/** What {@link validate} made of the options: everything to write, checked. */
interface Checked {
  /** `layer.json`, checked (in the schema's key order); `disk_usage` is filled in by assemble. */
  record: LayerMeta.LayerMeta;
  /** Each sidecar's file name and text. */
  sidecars: [name: string, text: string][];
}

/** Checks (once: the record is written as checked) and serialises what commit writes. */
function validate(options: CommitOptions): Checked {
  const sidecars = Object.entries(options.sidecars ?? {}).map(([name, value]): [string, string] => [
    name,
    Sidecar.text(name, value),
  ]);
  const full = options.hash.length === 64 ? { hash: options.hash } : {};
  const record = {
    ...options.meta,
    ...full,
    created_at: options.meta.created_at || new Date().toISOString(),
    disk_usage: 0,
  };
  const parsed = LayerMeta.validate(record);
  const problems = parsed.success
    ? []
    : parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
  if ((options.meta.disk_usage ?? 0) < 0) problems.push('disk_usage: must not be negative');
  problems.push(...misspelt(options.meta));
  if (problems.length > 0 || !parsed.success) {
    const why = problems.join('; ');
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Invalid layer metadata for ${options.hash}: ${why}`,
      {
        cause: parsed.error,
        hint: 'Pass meta with the LayerMeta fields (exit_status, parent_hashes, uid, gid, base_hash, timing, failed_dep)',
      },
    );
  }
  return { record: parsed.data, sidecars };
}

/** Keys that are a `layer.json` field spelt in camelCase (`createdAt`), which would be stored beside it. */
function misspelt(meta: object): string[] {
  const fields: readonly string[] = LayerMeta.FIELDS;
  return Object.keys(meta)
    .map((key) => [key, key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)] as const)
    .filter(([key, snake]) => snake !== key && fields.includes(snake))
    .map(([key, snake]) => `${key}: not a layer.json field; the field is ${snake}`);
}

/** Checks the upper and makes `osDir`; fails before anything moves. */
async function prepare({ osDir, upper }: CommitOptions): Promise<void> {
  const fail = (why: string, hint: string, cause?: unknown) =>
    new LayerError(LayerCodes.COMMIT_FAILED, `Cannot commit ${upper}: ${why}`, {
      path: upper,
      cause,
      hint,
    });
  let upperStat;
  try {
    upperStat = lstatSync(upper);
  } catch (cause) {
    throw fail(messageOf(cause), 'Pass the upper directory of a finished build', cause);
  }
  if (!upperStat.isDirectory())
    throw fail('not a directory', 'Pass the upper directory of a finished build');
  if (upperStat.dev !== (await cacheDevice(osDir))) {
    throw fail(
      `it is on another filesystem than ${osDir}`,
      'Create the upper inside the cache (e.g. a temp dir in osDir) so it can be renamed, not copied',
    );
  }
}

/**
 * Makes `osDir` a safe cache directory (`CacheDir.ensure`) and returns its
 * device. A directory as ensure leaves it (this user's, mode 0700, not a
 * symlink) needs nothing more than the one lstat that says so.
 */
async function cacheDevice(osDir: string): Promise<number> {
  const st = lstatSync(osDir, { throwIfNoEntry: false });
  const mine = st !== undefined && st.uid === (process.geteuid?.() ?? st.uid);
  if (st?.isDirectory() && mine && (st.mode & 0o7777) === CacheDir.CACHE_MODE) return st.dev;
  await CacheDir.ensure(osDir);
  return (await stat(osDir)).dev;
}

/**
 * Whether layer `hash` is already in `dir`. A layer there whose recorded
 * full hash is another one is a collision of the 12-digit directory name:
 * an error, never a silent "already there". `likelyMissing` unless a
 * rename just found the directory there: a commit is asked for a layer the
 * caller did not find.
 */
function isCommitted(dir: string, hash: string, likelyMissing = true): boolean {
  let meta: LayerMeta.LayerMeta | undefined;
  try {
    meta = LayerMeta.findSync(dir, { likelyMissing });
  } catch {
    return false; // corrupt: publish() decides what to do, under the lock
  }
  if (meta === undefined) return false;
  assertSameHash(meta, hash, dir);
  return true;
}

/**
 * Throws `LAYER_HASH_COLLISION` when the layer in `dir` records a full hash
 * other than `hash` (a 64-hex hash; a shorter one cannot be compared).
 *
 * @example
 * ```ts
 * assertSameHash(await LayerMeta.load(dir), wantedHash, dir);
 * ```
 */
export function assertSameHash(meta: LayerMeta.LayerMeta, hash: string, dir: string): void {
  if (hash.length !== 64 || meta.hash === undefined || meta.hash === hash) return;
  throw new LayerError(
    LayerCodes.HASH_COLLISION,
    `The layer directory ${dir} holds layer ${meta.hash}, not ${hash}: the two hashes share their first 12 digits`,
    {
      path: dir,
      hint: `The existing layer is left alone. Remove it if it is not needed (\`day11 layers rm --cache ${dirname(dir)} ${basename(dir)}\`), or change the step so its hash changes`,
    },
  );
}

async function alreadyThere(dir: string, upper: string): Promise<CommitResult> {
  await removeTree(upper);
  await LastUsed.touch(dir);
  return { dir, committed: false };
}

interface Assemble {
  options: CommitOptions;
  checked: Checked;
  temp: string;
  progress: Progress;
}

/**
 * Builds the layer in `temp`, complete and durable but not visible yet. Each
 * file is written once, in place, and the fsyncs run at once, in one journal
 * commit where the filesystem allows. The directory, the renames and the
 * small files are made synchronously: each is one short system call, where a
 * thread-pool round trip costs more than the call itself (on a 2-CPU VM a
 * `mkdir` took ~105 µs of CPU through the pool against ~30 called directly);
 * only the fsyncs, which wait for the disk, and a log given as text or
 * copied in leave the main thread.
 */
async function assemble({ options, checked, temp, progress }: Assemble): Promise<void> {
  // Private: what a build made (setuid binaries, world-writable directories)
  // and what it recorded (its env, its log) are no one else's to reach.
  mkdirSync(temp, { mode: LAYER_DIR_MODE });
  const fsDir = join(temp, FILES.fs);
  renameSync(options.upper, fsDir);
  progress.upperMoved = true;
  const synced: number[] = [];
  try {
    await writeLog(join(temp, FILES.log), options.log, progress);
    closeSync(create(join(temp, FILES.lastUsed), ''));
    for (const [name, text] of checked.sidecars) synced.push(create(join(temp, name), text));
    const given = options.meta.disk_usage ?? 0;
    checked.record.disk_usage = given > 0 ? given : await measure(fsDir);
    // layer.json last: a layer directory with it is complete by construction.
    synced.push(create(join(temp, FILES.meta), LayerMeta.text(checked.record)));
    await Promise.all([...synced.map((fd) => fsyncFd(fd)), Atomic.fsyncDir(temp)]);
  } finally {
    for (const fd of synced) closeSync(fd);
  }
}

const fsyncFd = promisify(fsync);

/** Makes file `path` (which must not exist) holding `text`; returns its open descriptor. */
function create(path: string, text: string): number {
  const fd = openSync(
    path,
    constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL,
    LAYER_FILE_MODE,
  );
  try {
    if (text !== '') writeSync(fd, text);
  } catch (err) {
    closeSync(fd);
    throw err;
  }
  return fd;
}

async function writeLog(
  path: string,
  log: CommitLog | undefined,
  progress: Progress,
): Promise<void> {
  if (log === undefined) return closeSync(create(path, ''));
  if (typeof log === 'string' || log instanceof Uint8Array)
    return writeFile(path, log, { flag: 'wx', mode: LAYER_FILE_MODE });
  if (log.move === true) {
    renameSync(log.file, path);
    progress.logMoved = true;
    // A runner writes its log private already: one lstat instead of a thread-pool chmod.
    if ((lstatSync(path).mode & 0o7777) === LAYER_FILE_MODE) return;
  } else {
    await copyFile(log.file, path);
  }
  await chmod(path, LAYER_FILE_MODE);
}

/**
 * Under the layer lock: re-check, then one rename. Returns false when the
 * layer is already there (another process won the race).
 */
async function publish({ options, temp, dir, held, progress }: Publish): Promise<boolean> {
  await step(options, 'locked');
  if (isCommitted(dir, options.hash)) return false;
  await clearBroken(dir);
  held.assertHeld();
  try {
    renameSync(temp, dir);
    progress.published = true;
  } catch (err) {
    // A non-empty target means someone committed it without our lock (a lost lock).
    const code = errnoCode(err);
    if ((code === 'ENOTEMPTY' || code === 'EEXIST') && isCommitted(dir, options.hash, false))
      return false;
    throw err;
  }
  await syncShared(options.osDir);
  await step(options, 'renamed');
  return true;
}

/**
 * The fsyncs of directories in flight, by path: the one running, and the one
 * queued behind it. It lives as long as a sync is in flight.
 */
const dirSyncs = new Map<string, { running: Promise<void>; next?: Promise<void> }>();

/**
 * fsyncs directory `dir` as `Atomic.fsyncDir` does, shared with concurrent
 * commits (a group commit): a call waits for an fsync that starts after it
 * was made, and every call made while one runs shares the next. Commits
 * running at once in one cache cost one fsync of it, not one each.
 */
function syncShared(dir: string): Promise<void> {
  const entry = dirSyncs.get(dir);
  if (entry === undefined) return startSync(dir);
  entry.next ??= entry.running.then(() => startSync(dir));
  return entry.next;
}

function startSync(dir: string): Promise<void> {
  const running: Promise<void> = Atomic.fsyncDir(dir).finally(() => {
    if (dirSyncs.get(dir)?.running === running && dirSyncs.get(dir)?.next === undefined)
      dirSyncs.delete(dir);
  });
  dirSyncs.set(dir, { running });
  return running;
}

/**
 * A `build-*` directory without a readable `layer.json` was not made by
 * commit (which renames complete layers only); replace it unless leased.
 */
async function clearBroken(dir: string): Promise<void> {
  if (lstatSync(dir, { throwIfNoEntry: false }) === undefined) return;
  if (await InUse.isInUse(dir)) {
    throw new LayerError(
      LayerCodes.COMMIT_FAILED,
      `Cannot replace the incomplete layer ${dir}: it is in use`,
      {
        path: dir,
        hint: 'Wait for the builds using it to finish, then commit again',
      },
    );
  }
  const aside = TempName.beside(dir);
  await rename(dir, aside);
  await removeTree(aside);
}

/** Puts the upper (and a moved log) back, and removes the temp dir; best effort. */
async function undo(options: CommitOptions, temp: string, progress: Progress): Promise<void> {
  if (progress.upperMoved) await rename(join(temp, FILES.fs), options.upper).catch(() => undefined);
  const log = options.log;
  if (progress.logMoved && typeof log === 'object' && 'file' in log)
    await rename(join(temp, FILES.log), log.file).catch(() => undefined);
  await rm(temp, { recursive: true, force: true }).catch(() => undefined);
}

async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch (cause) {
    throw new LayerError(LayerCodes.COMMIT_FAILED, `Cannot remove ${path}: ${messageOf(cause)}`, {
      path,
      cause,
      hint: 'Check permissions; remove it by hand',
    });
  }
}

async function step(options: CommitOptions, name: CommitStep): Promise<void> {
  await options.onStep?.(name);
}

/** Lock errors and our own keep their code; anything else (a failed write, EXDEV...) is COMMIT_FAILED. */
const KEPT_CODES: readonly string[] = [
  LayerCodes.HASH_COLLISION,
  LayerCodes.LOCK_TIMEOUT,
  LayerCodes.LOCK_COMPROMISED,
  LayerCodes.COMMIT_FAILED,
];

function wrap(err: unknown, what: string, path: string): LayerError {
  if (err instanceof LayerError && KEPT_CODES.includes(err.code)) return err;
  return new LayerError(LayerCodes.COMMIT_FAILED, `${what}: ${messageOf(err)}`, {
    path,
    cause: err,
    hint: 'Nothing was recorded and the upper was left in place; fix the cause and commit again',
  });
}
