// Real overlayfs: random stacks of layers are mounted once as separate
// lowerdirs and once with their deepest part merged by Stack.merge; the two
// views must be identical, path by path, over a base layer below both.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  chmod,
  chown,
  lstat,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  readlink,
  rm,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Sys } from '@day11/exec';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { merge } from './stack.js';

/** mulberry32: a tiny seeded PRNG, so a failing seed can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

type Rand = () => number;
const pick = <T>(rand: Rand, xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
const between = (rand: Rand, lo: number, hi: number): number =>
  lo + Math.floor(rand() * (hi - lo + 1));

// Few names, so layers keep colliding on the same paths.
const NAMES = ['a', 'b', 'c', 'd'];
const OWNERS: ReadonlyArray<readonly [number, number]> = [
  [0, 0],
  [1000, 1000],
  [123, 456],
];

function randomPath(rand: Rand): string {
  return Array.from({ length: between(rand, 1, 3) }, () => pick(rand, NAMES)).join('/');
}

async function writeRandomFile(rand: Rand, path: string): Promise<void> {
  await writeFile(path, `${path}:${rand()}`.repeat(between(rand, 0, 3)), { flag: 'wx' });
  const [uid, gid] = pick(rand, OWNERS);
  await chown(path, uid, gid);
  await chmod(path, pick(rand, [0o644, 0o600, 0o755, 0o4755, 0o444]));
}

async function makeRandomDir(rand: Rand, path: string, opaque: boolean): Promise<void> {
  await mkdir(path);
  if (opaque) await Sys.setXattr(path, 'trusted.overlay.opaque', 'y');
  if (rand() < 0.5) await Sys.setXattr(path, 'user.day11.tag', `${rand()}`);
  for (let i = between(rand, 0, 3); i > 0; i--) {
    // In a directory just made, so no symlink is in the way; a repeated name is skipped.
    await writeRandomFile(rand, join(path, pick(rand, NAMES))).catch(ignoreTaken);
  }
  const [uid, gid] = pick(rand, OWNERS);
  await chown(path, uid, gid);
  await chmod(path, pick(rand, [0o755, 0o700, 0o750, 0o1777, 0o2755]));
}

function ignoreTaken(err: unknown): void {
  if ((err as { code?: unknown }).code !== 'EEXIST') throw err;
}

/** Thrown when a path cannot be made in this layer; the op is skipped. */
class Skip extends Error {}

/**
 * Creates the parents of `rel` inside `fs` without ever following a symlink
 * (a layer's symlinks may point at `/etc`), and returns the path if it is free.
 */
async function freePath(fs: string, rel: string): Promise<string> {
  const parts = rel.split('/');
  let path = fs;
  for (const part of parts.slice(0, -1)) {
    path = join(path, part);
    const st = await lstat(path).catch(() => undefined);
    if (!st) await mkdir(path);
    else if (!st.isDirectory()) throw new Skip(path);
  }
  path = join(path, parts[parts.length - 1]!);
  if (await lstat(path).catch(() => undefined)) throw new Skip(path);
  return path;
}

/** One random change in a layer: add/modify, delete (whiteout), opaque dir, symlink, dir, fifo. */
async function randomOp(rand: Rand, fs: string): Promise<void> {
  const path = await freePath(fs, randomPath(rand));
  const op = rand();
  if (op < 0.35) await writeRandomFile(rand, path);
  else if (op < 0.55) Sys.mknod(path, Sys.S_IFCHR, 0, 0);
  else if (op < 0.67) await makeRandomDir(rand, path, true);
  else if (op < 0.8) await makeRandomDir(rand, path, false);
  else if (op < 0.95) await symlink(pick(rand, ['a', '../b', '/etc', 'c/d', 'missing']), path);
  else Sys.mknod(path, Sys.S_IFIFO | 0o640, 0, 0);
}

async function makeLayer(rand: Rand, dir: string, ops: number): Promise<string> {
  const fs = join(dir, 'fs');
  await mkdir(fs, { recursive: true });
  for (let i = 0; i < ops; i++) {
    await randomOp(rand, fs).catch((err: unknown) => {
      if (!(err instanceof Skip)) throw err;
    });
  }
  return dir;
}

const ABSENT = 'listed, absent';

/** Every path of a mounted view, described by what a reader of it can observe. */
async function describeView(root: string, rel = '', out = new Map<string, string>()) {
  const names = (await readdir(join(root, rel))).sort();
  for (const name of names) {
    const path = rel ? `${rel}/${name}` : name;
    const full = join(root, path);
    // Overlayfs lists a whiteout of the lowest layer (or of a directory only
    // one layer has) but cannot look it up: record that, in both views alike.
    const st = await lstat(full).catch((err: unknown) => {
      if ((err as { code?: unknown }).code === 'ENOENT') return undefined;
      throw err;
    });
    if (!st) {
      out.set(path, ABSENT);
      continue;
    }
    const head = `${(st.mode >>> 12).toString(8)} ${(st.mode & 0o7777).toString(8)} ${st.uid}:${st.gid}`;
    if (st.isDirectory()) {
      const xattrs = (await Sys.listXattrs(full)).filter((x) => x.startsWith('user.')).sort();
      const tags = await Promise.all(
        xattrs.map(async (x) => `${x}=${String(await Sys.getXattr(full, x))}`),
      );
      out.set(path, `${head} dir ${tags.join(',')}`);
      await describeView(root, path, out);
    } else if (st.isSymbolicLink()) out.set(path, `${head} link→${await readlink(full)}`);
    else if (st.isFile()) {
      const digest = createHash('sha256')
        .update(await readFile(full))
        .digest('hex');
      out.set(path, `${head} size=${st.size} sha256=${digest}`);
    } else out.set(path, `${head} rdev=${st.rdev}`);
  }
  return out;
}

let work: string;
let mounted: string[] = [];

function mountOverlay(target: string, lowers: readonly string[]): void {
  Sys.mount({
    source: 'day11-test',
    target,
    fstype: 'overlay',
    data: `lowerdir=${lowers.join(':')}`,
  });
  mounted.push(target);
}

function unmountAll(): void {
  for (const target of mounted.reverse()) {
    try {
      Sys.umount(target);
    } catch {
      Sys.umount(target, Sys.MNT_DETACH);
    }
  }
  mounted = [];
}

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-stack-int-'));
});
afterEach(async () => {
  try {
    unmountAll();
  } finally {
    await rm(work, { recursive: true, force: true });
  }
});
afterAll(() => {
  expect(readFileSync('/proc/mounts', 'utf8')).not.toContain('day11-stack-int-');
});

const SEEDS = Array.from({ length: 16 }, (_, i) => 1000 + i * 7919);

describe('Stack.merge under overlayfs', () => {
  it.each(SEEDS)('shows the same view as separate lowerdirs (seed %i)', async (seed) => {
    const rand = prng(seed);
    const base = await makeLayer(rand, join(work, 'base'), 25);
    const count = between(rand, 3, 8);
    const layers: string[] = [];
    // Built bottom-up, as builds stack; listed topmost first, as lowerdirs are.
    for (let i = count - 1; i >= 0; i--) {
      layers.unshift(await makeLayer(rand, join(work, `layer${i}`), between(rand, 4, 14)));
    }
    // Keep the top `keep` layers separate and merge the rest, as planLowerdir would.
    const keep = seed % 4 === 0 ? 0 : between(rand, 0, count - 1);
    const merged = join(work, 'merged');
    await merge({ layerDirs: layers.slice(keep), target: merged });

    const fsOf = (dir: string): string => join(dir, 'fs');
    const separateView = join(work, 'mnt-separate');
    const mergedView = join(work, 'mnt-merged');
    await mkdir(separateView);
    await mkdir(mergedView);
    mountOverlay(separateView, [...layers.map(fsOf), fsOf(base)]);
    mountOverlay(mergedView, [...layers.slice(0, keep).map(fsOf), merged, fsOf(base)]);

    const [expected, actual] = [await describeView(separateView), await describeView(mergedView)];
    expect(expected.size).toBeGreaterThan(0);
    // Listed-but-absent names are a readdir artefact of the separate stack
    // too; the merge must not add any, and may remove some.
    const artefacts = (view: Map<string, string>): string[] =>
      [...view].filter(([, what]) => what === ABSENT).map(([path]) => path);
    expect(artefacts(expected)).toEqual(expect.arrayContaining(artefacts(actual)));
    const real = (view: Map<string, string>) => new Map([...view].filter(([, w]) => w !== ABSENT));
    expect(real(actual)).toEqual(real(expected));
  });
});
