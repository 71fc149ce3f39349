/**
 * Real overlayfs mounts (root, Linux >= 6.8). Every test works under one
 * `day11-ovl-it-*` directory; afterEach sweeps whatever is still mounted
 * there, so a failing test leaves nothing in /proc/mounts either.
 */
import {
  lstat,
  mkdir,
  mkdtemp,
  open,
  readFile,
  readdir,
  rename,
  rm,
  stat,
  symlink,
  chmod,
  unlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Exec, Sys } from '@day11/exec';
import { ContainerCodes, type ContainerError } from './errors.js';
import * as Overlay from './overlay.js';

const STRATEGIES: Overlay.Strategy[] = ['fsconfig', 'classic', 'relative'];
/** Mounting needs root: elsewhere every test here is skipped, not failed. */
const isRoot = Exec.isRoot();
let root: string;
let count = 0;

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'day11-ovl-it-'));
});

afterEach(async () => {
  await Overlay.unmountAll(root, { lazy: true });
  expect(await Overlay.listMounts(root)).toEqual([]);
});

afterAll(async () => {
  if (!isRoot) return; // nothing ran
  const mounts = await readFile('/proc/mounts', 'utf8');
  await rm(root, { recursive: true, force: true });
  expect(mounts.split('\n').filter((line) => line.includes('day11-ovl-it-'))).toEqual([]);
});

/** A fresh directory under the test root. */
async function fresh(name: string): Promise<string> {
  const dir = join(root, `${++count}-${name}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

/** `n` lower dirs `{dir}/{prefix}{i}` (i = 0 topmost), each with its own file `f{i}`. */
async function makeLowers(dir: string, n: number, prefix = 'l'): Promise<string[]> {
  const lowers = Array.from({ length: n }, (_, i) =>
    join(dir, `${prefix}${String(i).padStart(3, '0')}`),
  );
  await Promise.all(
    lowers.map(async (lower, i) => {
      await mkdir(lower, { recursive: true });
      await writeFile(join(lower, `f${i}`), String(i));
    }),
  );
  return lowers;
}

/** upper, work and target directories for a writable mount. */
async function rwDirs(dir: string): Promise<{ upper: string; work: string; target: string }> {
  const [upper, work, target] = ['upper', 'work', 'merged'].map((n) => join(dir, n)) as [
    string,
    string,
    string,
  ];
  await Promise.all([upper, work, target].map((d) => mkdir(d, { recursive: true })));
  return { upper, work, target };
}

async function superOptions(target: string): Promise<string[]> {
  const [entry] = await Overlay.listMounts(target);
  expect(entry?.mountPoint).toBe(target);
  return entry!.superOptions;
}

describe.skipIf(!isRoot)('deep stacks', () => {
  it('mounts 500 lowers with fsconfig: every layer visible, the topmost copy wins', async () => {
    const dir = await fresh('500');
    const lowers = await makeLowers(dir, 500);
    for (const i of [499, 250, 10]) await writeFile(join(lowers[i]!, 'shared'), `from ${i}`);
    const { upper, work, target } = await rwDirs(dir);
    const mounted = await Overlay.mount({ lowers, upper, work, target });
    expect(mounted.strategy).toBe('fsconfig');
    const names = await readdir(target);
    expect(names).toHaveLength(501);
    for (let i = 0; i < 500; i++) expect(names).toContain(`f${i}`);
    expect(await readFile(join(target, 'shared'), 'utf8')).toBe('from 10');
    const options = await superOptions(target);
    expect(options.filter((o) => o.startsWith('lowerdir+='))).toHaveLength(500);
    expect(options[1]).toBe(`lowerdir+=${lowers[0]}`);
    await mounted.unmount();
    expect(await readdir(target)).toEqual([]);
  });

  it('refuses 501 lowers with a typed error saying 500 fit, mounting nothing', async () => {
    const dir = await fresh('501');
    const lowers = await makeLowers(dir, 501);
    const { upper, work, target } = await rwDirs(dir);
    for (const strategy of [undefined, 'fsconfig'] as const) {
      const err = await Overlay.mount({ lowers, upper, work, target, strategy }).catch(
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(Overlay.TooManyLowersError);
      expect(err).toMatchObject({
        code: ContainerCodes.TOO_MANY_LOWERS,
        maxLowers: 500,
        requested: 501,
      });
    }
    expect(await Overlay.listMounts(target)).toEqual([]);
  });

  it('mounts 200 lowers with relative paths where absolute ones cannot fit a page', async () => {
    const dir = await fresh(
      `relative-${'a-directory-name-long-enough-to-overflow-the-page-'.repeat(2)}`,
    );
    const lowers = await makeLowers(dir, 200);
    for (const i of [150, 20]) await writeFile(join(lowers[i]!, 'shared'), `from ${i}`);
    const { upper, work, target } = await rwDirs(dir);
    const plan = await Overlay.plan({ lowers, upper, work, target });
    const classic = plan.fits.find((f) => f.strategy === 'classic')!;
    expect(classic.maxLowers).toBeLessThan(200);
    const refused = await Overlay.mount({ lowers, upper, work, target, strategy: 'classic' }).catch(
      (e: unknown) => e,
    );
    expect(refused).toMatchObject({
      code: ContainerCodes.TOO_MANY_LOWERS,
      maxLowers: classic.maxLowers,
    });

    const mounted = await Overlay.mount({ lowers, upper, work, target, strategy: 'relative' });
    expect(mounted.strategy).toBe('relative');
    const names = await readdir(target);
    for (let i = 0; i < 200; i++) expect(names).toContain(`f${i}`);
    expect(await readFile(join(target, 'shared'), 'utf8')).toBe('from 20');
    // The kernel keeps the relative spelling: l000:l001:...
    expect((await superOptions(target)).find((o) => o.startsWith('lowerdir='))).toMatch(
      /^lowerdir=l000:l001:/,
    );
    await writeFile(join(target, 'new'), 'x');
    expect(await readFile(join(upper, 'new'), 'utf8')).toBe('x');
    await mounted.unmount();
  });

  it('passes a lower longer than 255 bytes to fsconfig as a file descriptor', async () => {
    const dir = await fresh('long');
    const long = join(dir, 'd'.repeat(200), 'e'.repeat(100));
    await mkdir(long, { recursive: true });
    await writeFile(join(long, 'deep'), '');
    const [short] = await makeLowers(dir, 1);
    const { upper, work, target } = await rwDirs(dir);
    const mounted = await Overlay.mount({
      lowers: [long, short!],
      upper,
      work,
      target,
      strategy: 'fsconfig',
    });
    expect((await readdir(target)).sort()).toEqual(['deep', 'f0']);
    expect(await superOptions(target)).toContain(`lowerdir+=${long}`);
    await mounted.unmount();
  });
});

describe.skipIf(!isRoot).each(STRATEGIES)('%s mounts', (strategy) => {
  it('writes to the upper, whiteouts deletions, and keeps redirect_dir and metacopy off', async () => {
    const dir = await fresh(`rw-${strategy}`);
    const lowers = await makeLowers(dir, 3);
    await mkdir(join(lowers[2]!, 'subdir'));
    await writeFile(join(lowers[2]!, 'big'), 'x'.repeat(100_000));
    const { upper, work, target } = await rwDirs(dir);
    const mounted = await Overlay.mount({ lowers, upper, work, target, strategy });
    expect(mounted.strategy).toBe(strategy);

    await writeFile(join(target, 'written'), 'hello');
    expect(await readFile(join(upper, 'written'), 'utf8')).toBe('hello');
    await unlink(join(target, 'f1'));
    const whiteout = await lstat(join(upper, 'f1'));
    expect(whiteout.isCharacterDevice()).toBe(true);
    expect(whiteout.rdev).toBe(0);
    expect(await readFile(join(lowers[1]!, 'f1'), 'utf8')).toBe('1');

    const options = await superOptions(target);
    expect(options).not.toContain('redirect_dir=on');
    expect(options).not.toContain('metacopy=on');
    expect(options).not.toContain('index=on');
    // redirect_dir=off: renaming a lower directory is refused (EXDEV; mv falls back to copying).
    await expect(rename(join(target, 'subdir'), join(target, 'moved'))).rejects.toMatchObject({
      code: 'EXDEV',
    });
    // metacopy=off: a chmod copies the whole file up, not only its metadata.
    await chmod(join(target, 'big'), 0o600);
    expect((await stat(join(upper, 'big'))).size).toBe(100_000);
    expect(await Sys.getXattr(join(upper, 'big'), 'trusted.overlay.metacopy')).toBeUndefined();
    await mounted.unmount();
    expect(await Overlay.listMounts(target)).toEqual([]);
  });

  it('mounts paths containing , : \\ and spaces', async () => {
    const dir = await fresh(`weird-${strategy}`);
    const odd = join(dir, 'a,b:c\\d e');
    const lowers = [...(await makeLowers(odd, 1, 'x,:')), ...(await makeLowers(dir, 2))];
    const { upper, work, target } = await rwDirs(odd);
    const mounted = await Overlay.mount({ lowers, upper, work, target, strategy });
    expect((await readdir(target)).sort()).toEqual(['f0', 'f1']); // f0 of the odd lower hides the plain f0
    await writeFile(join(target, 'w'), '');
    await stat(join(upper, 'w'));
    await mounted.unmount();
  });

  it('mounts a single lower read-only, hiding its whiteouts, and leaves no helper directory', async () => {
    const dir = await fresh(`single-${strategy}`);
    const [lower] = await makeLowers(dir, 1);
    Sys.mknod(join(lower!, 'deleted'), Sys.S_IFCHR, 0, 0);
    const target = join(dir, 'merged');
    await mkdir(target);
    const before = (await readdir(tmpdir())).filter((n) => n.startsWith('day11-ovl-data-'));
    const mounted = await Overlay.mount({ lowers: [lower!], target, strategy });
    expect(await readdir(target)).toEqual(['f0']);
    await expect(writeFile(join(target, 'x'), '')).rejects.toMatchObject({ code: 'EROFS' });
    expect((await readdir(tmpdir())).filter((n) => n.startsWith('day11-ovl-data-'))).toEqual(
      before,
    );
    await mounted.unmount();
  });

  it('leaves nothing mounted when the kernel refuses', async () => {
    const dir = await fresh(`fail-${strategy}`);
    const lowers = await makeLowers(dir, 2);
    const { upper, work, target } = await rwDirs(dir);
    const missing = [lowers[0]!, join(dir, 'missing')];
    const err = await Overlay.mount({ lowers: missing, upper, work, target, strategy }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: ContainerCodes.MOUNT_FAILED, path: target });
    expect(await Overlay.listMounts(target)).toEqual([]);
  });
});

describe.skipIf(!isRoot)('paths and errors', () => {
  it("refuses '\"' for mount(8) clearly, and mounts it with mount(2)", async () => {
    const dir = await fresh('quote');
    const lowers = [
      ...(await makeLowers(join(dir, 'say "hi"'), 1)),
      ...(await makeLowers(dir, 1, 'm')),
    ];
    const { upper, work, target } = await rwDirs(dir);
    const err = await Overlay.mount({ lowers, upper, work, target, strategy: 'relative' }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: ContainerCodes.BAD_PATH, path: lowers[0] });
    expect((err as Error).message).toContain('say "hi"');
    const mounted = await Overlay.mount({ lowers, upper, work, target, strategy: 'classic' });
    expect((await readdir(target)).sort()).toEqual(['f0']);
    await mounted.unmount();
  });

  it("carries the kernel's reason for a fsconfig refusal (a lower given twice by two names)", async () => {
    const dir = await fresh('alias');
    const [lower] = await makeLowers(dir, 1);
    await symlink(lower!, join(dir, 'alias'));
    const { upper, work, target } = await rwDirs(dir);
    const err = await Overlay.mount({
      lowers: [lower!, join(dir, 'alias')],
      upper,
      work,
      target,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ContainerCodes.MOUNT_FAILED });
    expect((err as Error).message).toMatch(/ELOOP/);
    expect(await Overlay.listMounts(target)).toEqual([]);
  });

  it('de-duplicates lowers, keeping the first', async () => {
    const dir = await fresh('dupes');
    const lowers = await makeLowers(dir, 2);
    const { upper, work, target } = await rwDirs(dir);
    const mounted = await Overlay.mount({
      lowers: [lowers[0]!, lowers[1]!, `${lowers[0]!}/`],
      upper,
      work,
      target,
    });
    expect(mounted.lowers).toEqual(lowers);
    await mounted.unmount();
  });

  it('does not start when the signal is already aborted', async () => {
    const dir = await fresh('abort');
    const lowers = await makeLowers(dir, 2);
    const { upper, work, target } = await rwDirs(dir);
    const signal = AbortSignal.abort();
    await expect(Overlay.mount({ lowers, upper, work, target, signal })).rejects.toThrow();
    expect(await Overlay.listMounts(target)).toEqual([]);
  });
});

describe.skipIf(!isRoot)('unmounting', () => {
  it('retries while busy, then fails naming the target; lazy detaches it', async () => {
    const dir = await fresh('busy');
    const lowers = await makeLowers(dir, 2);
    const { upper, work, target } = await rwDirs(dir);
    const mounted = await Overlay.mount({ lowers, upper, work, target });
    const file = await open(join(target, 'f0'), 'r');
    try {
      const err = await mounted.unmount({ retries: 1 }).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: ContainerCodes.UNMOUNT_FAILED, path: target });
      expect((err as Error).message).toMatch(/still busy after 2 attempts/);
      expect((err as ContainerError).hint).toMatch(/fuser -vm/);
      expect(await Overlay.listMounts(target)).toHaveLength(1);
      await mounted.unmount({ retries: 0, lazy: true });
      expect(await Overlay.listMounts(target)).toEqual([]);
    } finally {
      await file.close();
    }
  });

  it('unmountSync takes a mount down, detaches a busy one, and ignores what is not mounted', async () => {
    const dir = await fresh('sync');
    const lowers = await makeLowers(dir, 2);
    const { upper, work, target } = await rwDirs(dir);
    await Overlay.mount({ lowers, upper, work, target });
    Overlay.unmountSync(target);
    expect(await Overlay.listMounts(target)).toEqual([]);
    Overlay.unmountSync(target);
    Overlay.unmountSync(join(dir, 'missing'));
    await Overlay.mount({ lowers, upper, work, target });
    const file = await open(join(target, 'f0'), 'r');
    try {
      Overlay.unmountSync(target);
      expect(await Overlay.listMounts(target)).toEqual([]);
    } finally {
      await file.close();
    }
  });

  it('is a no-op for something not mounted, and for a second unmount', async () => {
    const dir = await fresh('idle');
    await Overlay.unmount(dir);
    const lowers = await makeLowers(dir, 2);
    const { target } = await rwDirs(dir);
    const mounted = await Overlay.mount({ lowers, target });
    await mounted.unmount();
    await mounted.unmount();
    await Overlay.unmount(target);
  });

  it('lists nested mounts deepest first and sweeps them all', async () => {
    const dir = await fresh('sweep');
    const lowers = await makeLowers(dir, 2);
    const { upper, work, target } = await rwDirs(dir);
    await Overlay.mount({ lowers, upper, work, target });
    await mkdir(join(target, 'proc'));
    Sys.mount({
      source: 'day11-test',
      target: join(target, 'proc'),
      fstype: 'tmpfs',
      data: 'size=64k',
    });
    const second = join(dir, 'second');
    await mkdir(second);
    await Overlay.mount({ lowers, target: second });
    const listed = await Overlay.listMounts(dir);
    // Deepest first; at equal depth the newer mount first.
    expect(listed.map((e) => [e.mountPoint, e.fstype])).toEqual([
      [join(target, 'proc'), 'tmpfs'],
      [second, 'overlay'],
      [target, 'overlay'],
    ]);
    expect(await Overlay.unmountAll(dir)).toEqual(listed.map((e) => e.mountPoint));
    expect(await Overlay.listMounts(dir)).toEqual([]);
  });
});
