/**
 * Helpers shared by the import and tar-extract tests (not part of the package:
 * tsconfig.build.json leaves `*.test-utils.ts` out of `dist`).
 */
import { createHash } from 'node:crypto';
import { lstat, mkdtemp, readdir, readFile, readlink, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buffer } from 'node:stream/consumers';
import tar, { type Header } from 'tar-stream';
import { Sys, Exec } from '@day11/exec';

/** True when the tests run as root (owners, devices, trusted xattrs need it). */
export const isRoot = Exec.isRoot();

/** A fresh `day11-` temp dir; remove it with {@link removeAll}. */
export async function tempDir(): Promise<string> {
  return mkdtemp(join(tmpdir(), 'day11-'));
}

/** Removes every directory in `dirs` and empties the list. */
export async function removeAll(dirs: string[]): Promise<void> {
  await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
}

/**
 * One entry for {@link packTar}: a tar-stream header (with optional `pax`) and
 * body, or `rawPax`: a PAX header block with exactly these record bytes.
 */
export type TestEntry =
  | { header: TestHeader; body?: string | Buffer; rawPax?: never }
  | { rawPax: Buffer; global?: boolean; header?: never; body?: never };

/** A tar-stream header argument; `pax` records are written as a PAX header. */
export type TestHeader = Partial<Omit<Header, 'pax'>> & {
  name: string;
  pax?: Record<string, string>;
};

const END_OF_ARCHIVE = 1024;

/**
 * A tar archive of `entries`, built with tar-stream so tests control every
 * header. Each entry is packed alone and the pieces concatenated, so raw PAX
 * headers (which tar-stream cannot write with binary values) can sit between.
 */
export async function packTar(entries: TestEntry[]): Promise<Buffer> {
  const pieces: Buffer[] = [];
  for (const entry of entries) {
    if (entry.rawPax) pieces.push(rawPaxHeader(entry.rawPax, entry.global === true));
    else pieces.push((await packOne(entry.header, entry.body)).subarray(0, -END_OF_ARCHIVE));
  }
  return Buffer.concat([...pieces, Buffer.alloc(END_OF_ARCHIVE)]);
}

async function packOne(header: TestHeader, body: string | Buffer | undefined): Promise<Buffer> {
  const pack = tar.pack();
  const out = buffer(pack);
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error | null) => (err ? reject(err) : resolve());
    if (body === undefined) pack.entry({ mtime: new Date(0), ...header }, done);
    else pack.entry({ mtime: new Date(0), ...header }, body, done);
  });
  pack.finalize();
  return out;
}

/** A ustar header of type `x` (`g` when global) followed by `body`, padded to whole blocks. */
function rawPaxHeader(body: Buffer, global: boolean): Buffer {
  const block = Buffer.alloc(512);
  const octal = (value: number, offset: number, width: number) =>
    block.write(`${value.toString(8).padStart(width - 1, '0')}\0`, offset, 'latin1');
  block.write('PaxHeader', 0, 'latin1');
  octal(0o644, 100, 8);
  octal(0, 108, 8);
  octal(0, 116, 8);
  octal(body.length, 124, 12);
  octal(0, 136, 12);
  block.write(global ? 'g' : 'x', 156, 'latin1');
  block.write('ustar\x0000', 257, 'latin1');
  block.fill(0x20, 148, 156); // checksum is computed with its own field as spaces
  const sum = block.reduce((a, b) => a + b, 0);
  block.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  const padding = (512 - (body.length % 512)) % 512;
  return Buffer.concat([block, body, Buffer.alloc(padding)]);
}

/** A raw PAX header body: `"%d %s=%s\n"` records with binary-safe values. */
export function paxBody(records: Record<string, string | Buffer>): Buffer {
  const parts = Object.entries(records).map(([key, value]) => {
    const rest = Buffer.concat([Buffer.from(` ${key}=`), Buffer.from(value), Buffer.from('\n')]);
    let len = rest.length + 1;
    while (String(len).length + rest.length !== len) len = String(len).length + rest.length;
    return Buffer.concat([Buffer.from(String(len)), rest]);
  });
  return Buffer.concat(parts);
}

/** What a test compares of one path. */
export interface PathInfo {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  /** mtime in whole seconds (GNU tar's default format keeps no fraction). */
  mtime: number;
  /** sha256 of a file, the target of a symlink, `major:minor` of a device. */
  detail: string;
  /** The first path with the same inode, for hardlinked files. */
  linkGroup: string | undefined;
  xattrs: Record<string, string>;
}

/** Every path under `root` (`.` for root itself) with the properties an import must keep. */
export async function snapshot(root: string): Promise<Map<string, PathInfo>> {
  const out = new Map<string, PathInfo>();
  const inodes = new Map<string, string>();
  const visit = async (rel: string): Promise<void> => {
    const path = rel === '.' ? root : join(root, rel);
    const st = await lstat(path);
    const key = `${st.dev}:${st.ino}`;
    const first = st.isFile() && st.nlink > 1 ? inodes.get(key) : undefined;
    if (st.isFile() && !first) inodes.set(key, rel);
    out.set(rel, {
      type: typeName(st),
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: Math.floor(st.mtimeMs / 1000),
      detail: await detail(path, st),
      linkGroup: first,
      xattrs: await xattrs(path),
    });
    if (!st.isDirectory()) return;
    for (const name of (await readdir(path)).sort())
      await visit(rel === '.' ? name : `${rel}/${name}`);
  };
  await visit('.');
  return out;
}

type Stat = Awaited<ReturnType<typeof lstat>>;

function typeName(st: Stat): string {
  if (st.isDirectory()) return 'dir';
  if (st.isFile()) return 'file';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  if (st.isFIFO()) return 'fifo';
  return 'other';
}

async function detail(path: string, st: Stat): Promise<string> {
  if (st.isFile())
    return createHash('sha256')
      .update(await readFile(path))
      .digest('hex');
  if (st.isSymbolicLink()) return readlink(path);
  if (st.isCharacterDevice() || st.isBlockDevice()) {
    const rdev = Number(st.rdev);
    return `${(rdev >> 8) & 0xfff}:${(rdev & 0xff) | ((rdev >> 12) & 0xfff00)}`;
  }
  return '';
}

async function xattrs(path: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await Sys.listXattrs(path)).sort()) {
    out[name] = (await Sys.getXattr(path, name))?.toString('hex') ?? '';
  }
  return out;
}
