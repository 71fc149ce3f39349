import fc from 'fast-check';
import { existsSync } from 'node:fs';
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
  utimes,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Sys } from '@day11/exec';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { merge, planLowerdir, type PlanLowerdirOptions } from './stack.js';

/** overlayfs's mark of a copied-up directory, which merge sets above whiteouts. */
const ORIGIN_XATTR = 'trusted.overlay.origin';
/** More entries than merge handles in one synchronous stretch (it yields every 2048). */
const MORE_THAN_ONE_STRETCH = 2548;

// ---------------------------------------------------------------- planLowerdir

/** Layers named by index, whose cost is looked up in `costs`. */
function costed(costs: readonly number[]): Pick<PlanLowerdirOptions, 'layers' | 'entryCost'> {
  const layers = costs.map((_, i) => `/layers/build-${i}`);
  return { layers, entryCost: (dir) => costs[layers.indexOf(dir)]! };
}

const total = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);

const planInput = fc.record({
  costs: fc.array(fc.nat({ max: 300 }), { maxLength: 30 }),
  available: fc.nat({ max: 3000 }),
  mergedOverhead: fc.nat({ max: 400 }),
});

describe('Stack.planLowerdir', () => {
  it('keeps every layer separate when they all fit', () => {
    const plan = planLowerdir({ available: 30, mergedOverhead: 100, ...costed([10, 10, 10]) });
    expect(plan).toEqual({ separate: costed([10, 10, 10]).layers, merged: [] });
  });

  it('keeps the topmost layers separate and merges the deepest', () => {
    const { layers, entryCost } = costed([10, 10, 10, 10, 10]);
    const plan = planLowerdir({ available: 40, mergedOverhead: 15, layers, entryCost });
    expect(plan).toEqual({ separate: layers.slice(0, 2), merged: layers.slice(2) });
  });

  it('merges everything when only the merged directory fits', () => {
    const { layers, entryCost } = costed([50, 1, 1]);
    expect(planLowerdir({ available: 40, mergedOverhead: 40, layers, entryCost })).toEqual({
      separate: [],
      merged: layers,
    });
  });

  it('plans an empty stack', () => {
    expect(
      planLowerdir({ available: 0, mergedOverhead: 0, layers: [], entryCost: () => 1 }),
    ).toEqual({ separate: [], merged: [] });
  });

  it('returns a split of the layers, in order, with the separate ones on top', () => {
    fc.assert(
      fc.property(planInput, ({ costs, available, mergedOverhead }) => {
        const { layers, entryCost } = costed(costs);
        const { separate, merged } = planLowerdir({ available, mergedOverhead, layers, entryCost });
        expect([...separate, ...merged]).toEqual(layers);
      }),
    );
  });

  it('stays within the budget whenever any plan can', () => {
    fc.assert(
      fc.property(planInput, ({ costs, available, mergedOverhead }) => {
        const solvable = total(costs) <= available || mergedOverhead <= available;
        const { layers, entryCost } = costed(costs);
        const { separate, merged } = planLowerdir({ available, mergedOverhead, layers, entryCost });
        const cost = total(separate.map(entryCost)) + (merged.length > 0 ? mergedOverhead : 0);
        if (solvable) expect(cost).toBeLessThanOrEqual(available);
        else expect(separate).toEqual([]);
      }),
    );
  });

  it('merges nothing if everything fits, and could not keep one more layer separate', () => {
    fc.assert(
      fc.property(planInput, ({ costs, available, mergedOverhead }) => {
        const { layers, entryCost } = costed(costs);
        const { separate, merged } = planLowerdir({ available, mergedOverhead, layers, entryCost });
        expect(merged.length === 0).toBe(total(costs) <= available);
        if (merged.length === 0) return;
        const oneMore = costs.slice(0, separate.length + 1);
        const stillMerging = oneMore.length < costs.length;
        expect(total(oneMore) + (stillMerging ? mergedOverhead : 0)).toBeGreaterThan(available);
      }),
    );
  });

  it('asks for each layer cost once', () => {
    const seen: string[] = [];
    const layers = ['/a', '/b', '/c'];
    planLowerdir({ available: 5, mergedOverhead: 2, layers, entryCost: (d) => seen.push(d) && 2 });
    expect(seen).toEqual(layers);
  });

  it.each([
    ['a negative budget', { available: -1 }],
    ['a fractional budget', { available: 1.5 }],
    ['NaN overhead', { mergedOverhead: Number.NaN }],
    ['a negative overhead', { mergedOverhead: -3 }],
    ['a fractional entry cost', { entryCost: () => 0.5 }],
    ['a negative entry cost', { entryCost: () => -1 }],
    ['an infinite entry cost', { entryCost: () => Number.POSITIVE_INFINITY }],
  ])('refuses %s', (_, override: Partial<PlanLowerdirOptions>) => {
    const opts = { available: 100, mergedOverhead: 10, ...costed([1, 2]), ...override };
    expect(() => planLowerdir(opts)).toThrow(
      expect.objectContaining({ code: LayerCodes.BAD_ARGUMENT }),
    );
  });
});

// ---------------------------------------------------------------- merge

/** How a test layer entry is made. Directories are created for parents as needed. */
type Entry =
  | string
  | { symlink: string }
  | { whiteout: true }
  | { dir: { opaque?: 'trusted' | 'user'; mode?: number; uid?: number; gid?: number } };

let work: string;
beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-stack-'));
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Creates layer directory `name` (with `fs/`) holding `entries`, in order. */
async function layer(name: string, entries: Record<string, Entry>): Promise<string> {
  const dir = join(work, name);
  const fs = join(dir, 'fs');
  await mkdir(fs, { recursive: true });
  for (const [rel, entry] of Object.entries(entries)) {
    const path = join(fs, rel);
    await mkdir(dirname(path), { recursive: true });
    if (typeof entry === 'string') await writeFile(path, entry);
    else if ('symlink' in entry) await symlink(entry.symlink, path);
    else if ('whiteout' in entry) Sys.mknod(path, Sys.S_IFCHR, 0, 0);
    else await makeDir(path, entry.dir);
  }
  return dir;
}

async function makeDir(
  path: string,
  opts: { opaque?: 'trusted' | 'user'; mode?: number; uid?: number; gid?: number },
): Promise<void> {
  await mkdir(path, { recursive: true });
  if (opts.opaque) await Sys.setXattr(path, `${opts.opaque}.overlay.opaque`, 'y');
  if (opts.uid !== undefined) await chown(path, opts.uid, opts.gid ?? opts.uid);
  if (opts.mode !== undefined) await chmod(path, opts.mode);
}

/**
 * The tree under `root` as `path → description`: file content, `link→target`,
 * `whiteout`, `dir` (`dir opaque` with the trusted opaque xattr).
 */
async function view(root: string, rel = ''): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  for (const name of (await readdir(join(root, rel))).sort()) {
    const path = rel ? `${rel}/${name}` : name;
    const full = join(root, path);
    const st = await lstat(full);
    if (st.isDirectory()) {
      const opaque = (await Sys.getXattr(full, 'trusted.overlay.opaque'))?.toString() === 'y';
      out[path] = opaque ? 'dir opaque' : 'dir';
      Object.assign(out, await view(root, path));
    } else if (st.isSymbolicLink()) out[path] = `link→${await readlink(full)}`;
    else if (st.isCharacterDevice() && st.rdev === 0) out[path] = 'whiteout';
    else out[path] = await readFile(full, 'utf8');
  }
  return out;
}

const ino = async (path: string): Promise<number> => (await lstat(path)).ino;

describe('Stack.merge', () => {
  it('lets a higher layer win and hardlinks what it keeps', async () => {
    const top = await layer('top', { 'a.txt': 'top', 'dir/t': 't' });
    const bottom = await layer('bottom', { 'a.txt': 'bottom', 'b.txt': 'b', 'dir/b': 'b' });
    const target = join(work, 'merged');
    const result = await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({
      'a.txt': 'top',
      'b.txt': 'b',
      dir: 'dir',
      'dir/b': 'b',
      'dir/t': 't',
    });
    expect(result).toEqual({ linked: 4, directories: 1 });
    expect(await ino(join(target, 'a.txt'))).toBe(await ino(join(top, 'fs/a.txt')));
    expect(await ino(join(target, 'dir/b'))).toBe(await ino(join(bottom, 'fs/dir/b')));
  });

  it('keeps whiteouts, which hide the same path in lower layers', async () => {
    const top = await layer('top', { gone: { whiteout: true }, gonedir: { whiteout: true } });
    const bottom = await layer('bottom', { gone: 'x', 'gonedir/f': 'y', kept: 'k' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({ gone: 'whiteout', gonedir: 'whiteout', kept: 'k' });
    expect(await ino(join(target, 'gone'))).toBe(await ino(join(top, 'fs/gone')));
  });

  it('stops an opaque directory from receiving lower entries and keeps its xattr', async () => {
    const top = await layer('top', { etc: { dir: { opaque: 'trusted' } }, 'etc/a': 'a' });
    const bottom = await layer('bottom', { 'etc/b': 'b', 'etc/sub/c': 'c', other: 'o' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({ etc: 'dir opaque', 'etc/a': 'a', other: 'o' });
  });

  it('honours user.overlay.opaque and copies it', async () => {
    const top = await layer('top', { etc: { dir: { opaque: 'user' } }, 'etc/a': 'a' });
    const bottom = await layer('bottom', { 'etc/b': 'b' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({ etc: 'dir', 'etc/a': 'a' });
    expect((await Sys.getXattr(join(target, 'etc'), 'user.overlay.opaque'))?.toString()).toBe('y');
  });

  it('makes a directory opaque when an opaque one lower in the merge cut it short', async () => {
    const top = await layer('top', { 'etc/x': 'x' });
    const middle = await layer('middle', { etc: { dir: { opaque: 'trusted' } }, 'etc/y': 'y' });
    const bottom = await layer('bottom', { 'etc/z': 'z' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, middle, bottom], target });
    // Opaque, so the base below the merged directory stays hidden as it was.
    expect(await view(target)).toEqual({ etc: 'dir opaque', 'etc/x': 'x', 'etc/y': 'y' });
  });

  it('makes a directory opaque when the lowest layer of the merge has it opaque', async () => {
    const top = await layer('top', { 'etc/x': 'x' });
    const bottom = await layer('bottom', { etc: { dir: { opaque: 'trusted' } }, 'etc/y': 'y' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({ etc: 'dir opaque', 'etc/x': 'x', 'etc/y': 'y' });
  });

  it('marks a directory holding whiteouts so that overlayfs filters them', async () => {
    const top = await layer('top', { 'etc/gone': { whiteout: true }, 'etc/x': 'x' });
    const bottom = await layer('bottom', { 'etc/gone': 'g', 'etc/y': 'y', 'etc/sub/z': 'z' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    const origin = async (rel: string) => Sys.getXattr(join(target, rel), ORIGIN_XATTR);
    expect(await origin('etc')).toEqual(Buffer.alloc(0));
    expect(await origin('etc/sub')).toBeUndefined();
  });

  it('does not make a directory opaque when nothing lower was hidden', async () => {
    const top = await layer('top', { 'etc/x': 'x' });
    const bottom = await layer('bottom', { 'etc/y': 'y' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({ etc: 'dir', 'etc/x': 'x', 'etc/y': 'y' });
  });

  it('puts a higher directory over a lower file without merging under it', async () => {
    const top = await layer('top', { 'd/f': 'f' });
    const middle = await layer('middle', { d: 'a file' });
    const bottom = await layer('bottom', { 'd/g': 'g' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, middle, bottom], target });
    // The lower file hid everything beneath it, the base included: opaque.
    expect(await view(target)).toEqual({ d: 'dir opaque', 'd/f': 'f' });
  });

  it('puts a higher file over a lower directory', async () => {
    const top = await layer('top', { e: 'a file' });
    const bottom = await layer('bottom', { 'e/inner': 'i' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({ e: 'a file' });
    expect(await ino(join(target, 'e'))).toBe(await ino(join(top, 'fs/e')));
  });

  it('hardlinks symlinks without following them', async () => {
    const top = await layer('top', {
      lib: { symlink: 'real' },
      abs: { symlink: '/etc' },
      'real/r': 'r',
    });
    const bottom = await layer('bottom', { 'lib/x': 'x', 'abs/passwd': 'not this' });
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });
    expect(await view(target)).toEqual({
      abs: 'link→/etc',
      lib: 'link→real',
      real: 'dir',
      'real/r': 'r',
    });
    expect(await ino(join(target, 'lib'))).toBe(await ino(join(top, 'fs/lib')));
  });

  it('gives directories the mode, owner, times and xattrs of the highest layer having them', async () => {
    const top = await layer('top', {
      shared: { dir: { mode: 0o2750, uid: 1234, gid: 5678 } },
      'shared/t': 't',
    });
    const bottom = await layer('bottom', {
      shared: { dir: { mode: 0o700, uid: 1, gid: 1 } },
      'shared/b': 'b',
      only: { dir: { mode: 0o1777, uid: 42, gid: 43 } },
      'only/o': 'o',
    });
    await Sys.setXattr(join(top, 'fs/shared'), 'user.day11.who', 'top');
    await Sys.setXattr(join(bottom, 'fs/shared'), 'user.day11.who', 'bottom');
    await Sys.setXattr(join(bottom, 'fs/shared'), 'user.day11.lower', 'x');
    await Sys.setXattr(join(bottom, 'fs/only'), 'user.day11.who', 'only');
    const when = new Date('2001-02-03T04:05:06.789Z');
    await utimes(join(top, 'fs/shared'), when, when);
    await utimes(join(bottom, 'fs/only'), when, when);
    await chmod(join(top, 'fs'), 0o751);
    const target = join(work, 'merged');
    await merge({ layerDirs: [top, bottom], target });

    const shared = await lstat(join(target, 'shared'));
    expect(shared.mode & 0o7777).toBe(0o2750);
    expect([shared.uid, shared.gid]).toEqual([1234, 5678]);
    expect(shared.mtimeMs).toBe(when.getTime());
    expect(await Sys.listXattrs(join(target, 'shared'))).toEqual(['user.day11.who']);
    expect((await Sys.getXattr(join(target, 'shared'), 'user.day11.who'))?.toString()).toBe('top');

    const only = await lstat(join(target, 'only'));
    expect(only.mode & 0o7777).toBe(0o1777);
    expect([only.uid, only.gid, only.mtimeMs]).toEqual([42, 43, when.getTime()]);
    expect((await Sys.getXattr(join(target, 'only'), 'user.day11.who'))?.toString()).toBe('only');
    // The target itself is the merged root: it takes the top layer's fs/ mode.
    expect((await lstat(target)).mode & 0o7777).toBe(0o751);
  });

  it('merges many layers as overlayfs would stack them', async () => {
    const layers = [
      await layer('l0', { 'a/1': 'l0', 'b/x': { whiteout: true } }),
      await layer('l1', { 'a/2': 'l1', b: { dir: { opaque: 'trusted' } }, 'b/y': 'l1' }),
      await layer('l2', { 'a/1': 'l2', 'a/3': 'l2', 'b/x': 'l2', 'b/z': 'l2', c: 'l2' }),
      await layer('l3', { 'a/4': 'l3', c: { whiteout: true }, d: { symlink: 'a' } }),
    ];
    const target = join(work, 'merged');
    await merge({ layerDirs: layers, target });
    expect(await view(target)).toEqual({
      a: 'dir',
      'a/1': 'l0',
      'a/2': 'l1',
      'a/3': 'l2',
      'a/4': 'l3',
      b: 'dir opaque',
      'b/x': 'whiteout',
      'b/y': 'l1',
      c: 'l2',
      d: 'link→a',
    });
  });

  it('creates missing parents of the target, and accepts an empty existing target', async () => {
    const top = await layer('top', { f: 'f' });
    const nested = join(work, 'a/b/merged');
    await merge({ layerDirs: [top], target: nested });
    expect(await view(nested)).toEqual({ f: 'f' });
    const empty = join(work, 'empty');
    await mkdir(empty);
    await merge({ layerDirs: [top], target: empty });
    expect(await view(empty)).toEqual({ f: 'f' });
  });

  it('merges no layers into an empty directory', async () => {
    const target = join(work, 'merged');
    expect(await merge({ layerDirs: [], target })).toEqual({ linked: 0, directories: 0 });
    expect(await readdir(target)).toEqual([]);
  });

  it('refuses a target that is not empty, and leaves it alone', async () => {
    const top = await layer('top', { f: 'f' });
    const target = join(work, 'merged');
    await mkdir(target);
    await writeFile(join(target, 'precious'), 'keep');
    await expect(merge({ layerDirs: [top], target })).rejects.toMatchObject({
      code: LayerCodes.MERGE_FAILED,
      path: target,
    });
    expect(await view(target)).toEqual({ precious: 'keep' });
  });

  it('refuses a layer without fs/ before creating anything', async () => {
    const bogus = join(work, 'not-a-layer');
    await mkdir(bogus);
    const target = join(work, 'merged');
    await expect(merge({ layerDirs: [bogus], target })).rejects.toMatchObject({
      code: LayerCodes.MERGE_FAILED,
      path: join(bogus, 'fs'),
    });
    expect(existsSync(target)).toBe(false);
  });

  it('refuses a target inside a layer', async () => {
    const top = await layer('top', { f: 'f' });
    const target = join(top, 'fs/sub/merged');
    await expect(merge({ layerDirs: [top], target })).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
    expect(existsSync(join(top, 'fs/sub'))).toBe(false);
  });

  it('removes the directories it created when a merge fails midway', async () => {
    // 16 nested 200-byte names fit under the layer's short path but not under
    // a target path 1,000 bytes longer: the deepest mkdir fails ENAMETOOLONG.
    const deep = Array.from({ length: 16 }, (_, i) => `${i}`.padStart(200, 'd')).join('/');
    const top = await layer('top', { early: 'e', [`${deep}/leaf`]: 'l' });
    const created = join(work, 'new');
    const target = join(created, ...Array.from({ length: 5 }, () => 'p'.repeat(200)));
    const error = await merge({ layerDirs: [top], target }).catch((err: unknown) => err);
    expect(error).toMatchObject({ code: LayerCodes.MERGE_FAILED });
    expect(String((error as Error).message)).toContain('ENAMETOOLONG');
    expect((error as { path: string }).path.startsWith(target)).toBe(true);
    expect(existsSync(created)).toBe(false);
  });

  it('stops when aborted, removing what it built', async () => {
    // More entries than one stretch of synchronous work, so the walk checks the signal.
    const top = await layer('top', { d: { dir: {} } });
    await Promise.all(
      Array.from({ length: MORE_THAN_ONE_STRETCH }, (_, i) =>
        writeFile(join(top, `fs/d/f${i}`), ''),
      ),
    );
    const target = join(work, 'merged');
    const controller = new AbortController();
    const merging = merge({ layerDirs: [top], target, signal: controller.signal });
    setImmediate(() => controller.abort(new Error('stop')));
    await expect(merging).rejects.toMatchObject({ code: LayerCodes.MERGE_FAILED, path: target });
    expect(existsSync(target)).toBe(false);

    const empty = join(work, 'empty');
    await mkdir(empty);
    await expect(
      merge({ layerDirs: [top], target: empty, signal: AbortSignal.abort() }),
    ).rejects.toMatchObject({ code: LayerCodes.MERGE_FAILED });
    expect(await readdir(empty)).toEqual([]);
  });
});
