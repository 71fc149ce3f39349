/**
 * The cache directory itself: private to its owner, as Docker's data root.
 * Layers hold what builds made (setuid binaries, world-writable directories,
 * files only their owner may read) and the cache keeps step definitions with
 * their environment (tokens) and logs: another user of the machine must not
 * reach any of it, and must not be able to hand this user a cache of theirs.
 *
 * {@link ensure} makes the directory with mode 0700, tightens an existing one
 * that others can enter, and refuses one that belongs to another user or is
 * a symlink someone else planted (the usual attack on a predictable name in
 * `/tmp` or `/var/tmp`). It looks at the directory through a descriptor
 * opened without following symlinks, so what it checks is what it changes.
 */
import { constants } from 'node:fs';
import { lstat, mkdir, open, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';

/** The mode of a cache directory: its owner's alone. */
export const CACHE_MODE = 0o700;

/** What {@link ensure} did. */
export interface EnsureResult {
  /** The directory did not exist and was made (mode 0700). */
  created: boolean;
  /** The mode it had when others could enter it (it is 0700 now). */
  tightenedFrom?: number;
}

/**
 * Makes `osDir` (and its missing parents) if needed and leaves it a
 * directory of this user's, mode 0700.
 *
 * @example
 * ```ts
 * const { tightenedFrom } = await CacheDir.ensure('/var/cache/day11');
 * if (tightenedFrom !== undefined) console.warn(`was ${tightenedFrom.toString(8)}, now 700`);
 * ```
 * @throws {LayerError} `LAYER_UNSAFE_CACHE` when it is not a directory, is
 *   another user's, or is a symlink another user owns; `LAYER_WRITE_FAILED`
 *   when it cannot be made.
 */
export async function ensure(osDir: string): Promise<EnsureResult> {
  const created = await makeDir(osDir);
  const handle = await openDir(osDir);
  try {
    const st = await handle.stat();
    const me = process.geteuid?.() ?? st.uid;
    if (st.uid !== me) {
      throw unsafe(
        osDir,
        `it belongs to uid ${st.uid}, not to this user (uid ${me}): its owner could change the layers this user runs`,
        'Use a cache directory of your own, e.g. /var/cache/day11, or remove this one',
      );
    }
    const mode = st.mode & 0o7777;
    if ((mode & 0o077) === 0) return { created };
    await handle.chmod(CACHE_MODE);
    return { created, tightenedFrom: mode };
  } finally {
    await handle.close();
  }
}

async function makeDir(osDir: string): Promise<boolean> {
  try {
    await mkdir(dirname(osDir), { recursive: true });
    await mkdir(osDir, { mode: CACHE_MODE });
    return true;
  } catch (cause) {
    if (errnoCode(cause) === 'EEXIST') return false;
    throw new LayerError(
      LayerCodes.WRITE_FAILED,
      `Cannot create the cache directory ${osDir}: ${messageOf(cause)}`,
      { path: osDir, cause, hint: 'Check the path and its permissions' },
    );
  }
}

/** A descriptor of `osDir`; through a symlink only when this user or root owns the link. */
async function openDir(osDir: string): Promise<FileHandle> {
  const flags = constants.O_RDONLY | constants.O_DIRECTORY;
  try {
    return await open(osDir, flags | constants.O_NOFOLLOW);
  } catch (cause) {
    // A symlink is ELOOP, or ENOTDIR as O_DIRECTORY is checked first.
    const code = errnoCode(cause);
    if (code !== 'ENOTDIR' && code !== 'ELOOP') throw unreadable(osDir, cause);
  }
  const link = await lstat(osDir);
  if (!link.isSymbolicLink()) {
    throw unsafe(
      osDir,
      'it is not a directory',
      'Pass a directory, or a path that does not exist yet',
    );
  }
  // Like the kernel's protected_symlinks: trust a symlink only if its owner
  // is this user or root (anyone can plant one in /tmp or /var/tmp).
  const me = process.geteuid?.() ?? link.uid;
  if (link.uid !== me && link.uid !== 0) {
    throw unsafe(
      osDir,
      `it is a symlink owned by uid ${link.uid}, another user: it may point anywhere`,
      'Remove the symlink, or pass the directory it should point to',
    );
  }
  try {
    return await open(osDir, flags);
  } catch (cause) {
    if (errnoCode(cause) === 'ENOTDIR') {
      throw unsafe(
        osDir,
        'it is a symlink to something that is not a directory',
        'Pass a directory',
      );
    }
    throw unreadable(osDir, cause);
  }
}

function unsafe(path: string, why: string, hint: string): LayerError {
  return new LayerError(LayerCodes.UNSAFE_CACHE, `Refusing the cache directory ${path}: ${why}`, {
    path,
    hint,
  });
}

function unreadable(path: string, cause: unknown): LayerError {
  return new LayerError(
    LayerCodes.WRITE_FAILED,
    `Cannot open the cache directory ${path}: ${messageOf(cause)}`,
    { path, cause, hint: 'Check the path and its permissions' },
  );
}
