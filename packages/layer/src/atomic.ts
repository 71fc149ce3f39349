/**
 * Atomic file replacement: write a temporary file in the same directory,
 * fsync it, rename it over the target, fsync the directory. A reader sees the
 * old content or the new, never a torn file, even across a crash.
 */
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomHex } from '@day11/exec';
import { LayerCodes, LayerError, messageOf } from './errors.js';

/** Prefix of every temporary file or directory day11 creates beside its target. */
export const TEMP_PREFIX = '.day11-tmp-';

/** A unique temporary name in `dir` for a file that will replace `target`. */
export function tempPathFor(target: string): string {
  const tag = `${process.pid}-${randomHex(4)}`;
  return join(dirname(target), `${TEMP_PREFIX}${tag}-${basename(target)}`);
}

/** Writes `data` to `path` atomically (temp file, fsync, rename, fsync dir). */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const temp = tempPathFor(path);
  try {
    const handle = await open(temp, 'wx', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
    await fsyncDir(dirname(path));
  } catch (cause) {
    await rm(temp, { force: true });
    throw new LayerError(LayerCodes.WRITE_FAILED, `Cannot write ${path}: ${messageOf(cause)}`, {
      path,
      cause,
      hint: 'Check that the directory exists, is writable and has free space',
    });
  }
}

/** fsyncs a directory so a rename inside it is durable. Best effort on filesystems that refuse. */
export async function fsyncDir(dir: string): Promise<void> {
  let handle;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch {
    // Some filesystems (e.g. tmpfs variants) refuse fsync on directories; rename is still atomic.
  } finally {
    await handle?.close();
  }
}
