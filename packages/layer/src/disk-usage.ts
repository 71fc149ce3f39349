/**
 * Real disk usage: `st_blocks × 512` of every file, directory, symlink and
 * device node, each inode counted once however many hardlinks it has. This is
 * what `du` reports, not the apparent size, and not a directory's inode size.
 */
import { lstat, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode } from './errors.js';

/** One entry met by {@link walk}. */
export interface InodeVisit {
  /** `dev:ino`, unique across filesystems. */
  key: string;
  /** Allocated bytes (`st_blocks × 512`). */
  bytes: number;
  /** Hardlink count; always 1 for directories, which cannot be hardlinked. */
  nlink: number;
}

/** How many `lstat`/`readdir` calls are in flight at once: enough to keep libuv's pool busy. */
const CONCURRENCY = 32;

/**
 * Calls `visit` for `root` and every entry below it, without following
 * symlinks. Entries that vanish during the walk are skipped; other errors reject.
 */
export async function walk(root: string, visit: (entry: InodeVisit) => void): Promise<void> {
  const limit = limiter(CONCURRENCY);
  const visitPath = async (path: string): Promise<void> => {
    const st = await limit(() => lstat(path, { bigint: true })).catch(skipVanished);
    if (!st) return;
    const isDir = st.isDirectory();
    const nlink = isDir ? 1 : Number(st.nlink);
    visit({ key: `${st.dev}:${st.ino}`, bytes: Number(st.blocks) * 512, nlink });
    if (!isDir) return;
    const names = await limit(() => readdir(path)).catch(skipVanished);
    await Promise.all((names ?? []).map((name) => visitPath(join(path, name))));
  };
  await visitPath(root);
}

function skipVanished(err: unknown): undefined {
  if (errnoCode(err) === 'ENOENT') return undefined;
  throw err;
}

/** Runs at most `max` of the given tasks at once. */
function limiter(max: number): <T>(task: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async (task) => {
    // A finishing task hands its slot straight to a waiter, so `active` never exceeds `max`.
    if (active >= max) await new Promise<void>((resolve) => waiting.push(resolve));
    else active++;
    try {
      return await task();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else active--;
    }
  };
}

/**
 * Real disk usage of the tree at `root` in bytes, each inode counted once.
 *
 * @example
 * ```ts
 * const bytes = await DiskUsage.measure('/var/cache/day11/build-0123456789ab/fs');
 * ```
 */
export async function measure(root: string): Promise<number> {
  const seen = new Set<string>();
  let total = 0;
  await walk(root, ({ key, bytes }) => {
    if (seen.has(key)) return;
    seen.add(key);
    total += bytes;
  });
  return total;
}
