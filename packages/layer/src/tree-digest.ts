/**
 * A sha256 over everything `cp -a` keeps of a directory tree: names, types,
 * modes, numeric owners, mtimes, symlink targets, device numbers, xattrs,
 * hardlink structure and file contents. Atimes and ctimes are left out: reading
 * a tree must not change its digest.
 */
import {
  createReadStream,
  lstatSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  type BigIntStats,
} from 'node:fs';
import { createHash, type Hash } from 'node:crypto';
import { join } from 'node:path';
import { Sys } from '@day11/exec';

/** Files up to this size are read in one call; larger ones are streamed. */
const SMALL_FILE = 1024 * 1024;
/** Entries between two yields to the event loop. */
const SLICE = 256;

/**
 * The hex sha256 digest of the tree at `root` (symlinks are not followed).
 * Two trees have the same digest when `cp -a` of one gives the other.
 *
 * Metadata is read with synchronous calls (a thread-pool hop per lstat made a
 * rootfs walk several times slower); the walk yields every {@link SLICE} entries.
 *
 * @example
 * ```ts
 * const image = `directory:${await treeDigest('/srv/rootfs')}`;
 * ```
 */
export async function treeDigest(root: string, options: TreeDigestOptions = {}): Promise<string> {
  const walk: Walk = {
    root,
    hash: createHash('sha256'),
    inodes: new Map(),
    visited: 0,
    xattr: options.xattr ?? (() => true),
  };
  walk.hash.update('day11.tree.v1\n');
  await visit(walk, '.');
  return walk.hash.digest('hex');
}

/** Options of {@link treeDigest}. */
export interface TreeDigestOptions {
  /**
   * Which xattrs count (default: all). E.g. `(n) => !OverlayMarks.isBookkeepingXattr(n)`
   * to compare a built layer with the same layer pulled from a registry.
   */
  xattr?: ((name: string) => boolean) | undefined;
}

interface Walk {
  xattr: (name: string) => boolean;
  root: string;
  hash: Hash;
  /** `dev:ino` → first path seen, so a hardlink is recorded as a link, not as a second copy. */
  inodes: Map<string, string>;
  visited: number;
}

async function visit(walk: Walk, rel: string): Promise<void> {
  if (++walk.visited % SLICE === 0) await new Promise((resolve) => setImmediate(resolve));
  const path = join(walk.root, rel);
  const st = lstatSync(path, { bigint: true });
  const record: unknown[] = [rel, typeOf(st), Number(st.mode & 0o7777n), st.uid, st.gid];
  record.push(st.mtimeNs, await detail(walk, { rel, path, st }), xattrsOf(path, walk.xattr));
  walk.hash.update(`${JSON.stringify(record, bigintsAsText)}\n`);
  if (!st.isDirectory()) return;
  // Sorted so the digest does not depend on readdir order.
  for (const name of readdirSync(path).sort()) {
    await visit(walk, rel === '.' ? name : `${rel}/${name}`);
  }
}

function bigintsAsText(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? value.toString() : value;
}

function typeOf(st: BigIntStats): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'socket';
}

/** Content hash of a file (or the first path of its inode), symlink target, or device number. */
async function detail(
  walk: Walk,
  { rel, path, st }: { rel: string; path: string; st: BigIntStats },
): Promise<string> {
  if (st.isSymbolicLink()) return readlinkSync(path);
  if (st.isCharacterDevice() || st.isBlockDevice()) return st.rdev.toString();
  if (!st.isFile()) return '';
  const key = `${st.dev}:${st.ino}`;
  const first = walk.inodes.get(key);
  if (first !== undefined) return `link:${first}`;
  walk.inodes.set(key, rel);
  const sha = st.size <= SMALL_FILE ? smallFileSha256(path) : await fileSha256(path);
  return `sha256:${sha}`;
}

function smallFileSha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/**
 * Hex sha256 of a file's bytes, streamed.
 *
 * @example
 * ```ts
 * const image = `tarball:${await fileSha256('rootfs.tgz')}`;
 * ```
 */
export async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function xattrsOf(path: string, counts: (name: string) => boolean): string[] {
  const out: string[] = [];
  for (const name of Sys.listXattrsSync(path).filter(counts).sort()) {
    const value = Sys.getXattrSync(path, name);
    if (value !== undefined) out.push(`${name}=${value.toString('hex')}`);
  }
  return out;
}
