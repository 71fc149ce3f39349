/**
 * A full disk (issue 13): `day11 build` with its cache on a small ext4
 * filesystem of its own (a loop mount), and `day11 export` into a layout on
 * one. A step that writes more than fits, a step that fills the disk and
 * exits 0 (so day11's own commit is what hits ENOSPC), and an export into a
 * full layout must each fail clearly, give back the space the attempt took,
 * leave no temporary file, lock or mount, record nothing, and succeed once
 * space is freed. Needs root (mount). Runs the built CLI: `pnpm build` first.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, readFile, rm, statfs, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { StepEvent } from '@day11/build';
import { Exec } from '@day11/exec';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { day11 } from './fixtures/cli.js';
import { tempRoot } from './fixtures/layers.js';
import { layoutLeftovers, layoutProblems, leftovers, procMounts } from './fixtures/leftovers.js';

const MiB = 2 ** 20;
/** Small enough to fill in a moment, big enough for the busybox base and a few layers. */
const FS_BYTES = 96 * MiB;

let root: string;
const mounted: string[] = [];

/** A fresh ext4 filesystem of FS_BYTES mounted at `{root}/{name}`. */
async function smallFilesystem(name: string): Promise<string> {
  const image = join(root, `${name}.img`);
  const dir = join(root, name);
  await mkdir(dir);
  execFileSync('truncate', ['-s', String(FS_BYTES), image]);
  execFileSync('mkfs.ext4', ['-q', '-m', '0', image]);
  execFileSync('mount', ['-o', 'loop', image, dir]);
  mounted.push(dir);
  return dir;
}

/** Free bytes of the filesystem holding `path` (as root sees them). */
async function freeBytes(path: string): Promise<number> {
  const s = await statfs(path);
  return s.bfree * s.bsize;
}

/** Fills the filesystem of `dir` up to `leave` free bytes with a ballast file; returns its path. */
async function fill(dir: string, leave: number): Promise<string> {
  const ballast = join(dir, 'ballast');
  const bytes = (await freeBytes(dir)) - leave;
  execFileSync('fallocate', ['-l', String(Math.max(bytes, 0)), ballast]);
  return ballast;
}

function stepEvents(events: readonly { type: string }[], id: string): StepEvent[] {
  return events.filter((e): e is StepEvent => e.type === 'step' && (e as StepEvent).id === id);
}

function final(events: readonly { type: string }[], id: string): StepEvent | undefined {
  return stepEvents(events, id).at(-1);
}

beforeAll(async () => {
  root = await tempRoot('full-disk');
});

afterAll(async () => {
  for (const dir of mounted) execFileSync('umount', ['-l', dir]);
  if (root) await rm(root, { recursive: true, force: true });
});

describe.skipIf(!Exec.isRoot())('a full disk', () => {
  it('a step that writes more than fits fails by name, gives its space back, is not recorded, and builds once space is freed', async () => {
    const cache = join(await smallFilesystem('hog'), 'cache');
    const plan = join(root, 'hog.json');
    const steps = [
      { id: 'prep', run: 'mkdir -p /opt && echo prep > /opt/prep' },
      // As make and compilers do, it removes its partial output when a write fails:
      // by the time day11 commits, the disk has room again.
      {
        id: 'hog',
        deps: ['prep'],
        run: 'head -c 40000000 /dev/zero > /opt/hog || { rm -f /opt/hog; exit 2; }',
      },
      { id: 'after', deps: ['hog'], run: 'ls -l /opt/hog > /opt/after' },
    ];
    await writeFile(plan, JSON.stringify({ base: 'busybox', steps: steps.slice(0, 1) }));
    const first = await day11(['build', plan, '--cache', cache], { json: true });
    expect(first.code, first.stderr).toBe(0);
    await writeFile(plan, JSON.stringify({ base: 'busybox', steps }));
    const ballast = await fill(cache, 16 * MiB);
    const before = await freeBytes(cache);

    const r = await day11(['build', plan, '--cache', cache], { json: true });
    expect(r.code).toBe(1);
    const hog = final(r.events, 'hog');
    expect(hog).toMatchObject({ status: 'failed', recorded: false });
    expect(hog?.reason).toMatch(/space/i);
    expect(final(r.events, 'after')).toMatchObject({ status: 'skipped', recorded: false });
    // Its space is back (what remains is cache bookkeeping: last_used, stats).
    expect(before - (await freeBytes(cache))).toBeLessThan(MiB);
    expect(await leftovers({ root: cache, osDir: cache })).toEqual([]);

    await rm(ballast);
    const again = await day11(['build', plan, '--cache', cache], { json: true });
    expect(again.code, again.stderr).toBe(0);
    expect(final(again.events, 'hog')).toMatchObject({ status: 'done' });
    expect(final(again.events, 'after')).toMatchObject({ status: 'done' });
  });

  it('a step that fills the disk and exits 0 fails with a clear error when its commit cannot be written, and leaves nothing', async () => {
    const cache = join(await smallFilesystem('fill'), 'cache');
    const plan = join(root, 'fill.json');
    const prep = { id: 'prep', run: 'mkdir -p /opt && echo prep > /opt/prep' };
    await writeFile(plan, JSON.stringify({ base: 'busybox', steps: [prep] }));
    expect((await day11(['build', plan, '--cache', cache])).code).toBe(0);
    const steps = [
      prep,
      { id: 'fill', deps: ['prep'], run: 'head -c 200000000 /dev/zero > /opt/fill; exit 0' },
      { id: 'after', deps: ['fill'], run: 'echo never > /opt/after' },
    ];
    await writeFile(plan, JSON.stringify({ base: 'busybox', steps }));
    const before = await freeBytes(cache);

    const r = await day11(['build', plan, '--cache', cache], { json: true });
    expect(r.code).toBe(1);
    const fillStep = final(r.events, 'fill');
    expect(fillStep).toMatchObject({ status: 'failed', recorded: false });
    expect(fillStep?.reason).toMatch(/no space left/i);
    expect(final(r.events, 'after')).toMatchObject({ status: 'skipped', recorded: false });
    expect(before - (await freeBytes(cache))).toBeLessThan(MiB);
    expect(await leftovers({ root: cache, osDir: cache })).toEqual([]);
  });

  it('an export into a full layout fails clearly, leaves index.json as it was and nothing else, and succeeds once space is freed', async () => {
    const cache = join(root, 'export-cache');
    const layout = join(await smallFilesystem('layout'), 'oci');
    const plan = join(root, 'export.json');
    const steps = [
      { id: 'small', run: 'mkdir -p /opt && echo small > /opt/small' },
      { id: 'big', deps: ['small'], run: 'head -c 8000000 /dev/urandom > /opt/big' },
    ];
    await writeFile(plan, JSON.stringify({ base: 'busybox', steps }));
    expect((await day11(['build', plan, '--cache', cache])).code).toBe(0);
    const exportOf = (tag: string, layer: string) =>
      day11(['export', '--cache', cache, '--oci', layout, '--tag', tag, layer]);
    expect((await exportOf('small', 'small')).code).toBe(0);
    const index = await readFile(join(layout, 'index.json'));
    const ballast = await fill(layout, 2 * MiB);

    const r = await exportOf('big', 'big');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^day11: .*no space left on device/im);
    expect(r.stderr).toMatch(/^hint: /m);
    expect(await readFile(join(layout, 'index.json'))).toEqual(index);
    expect(await layoutLeftovers(layout)).toEqual([]);
    expect(await layoutProblems(layout)).toEqual([]);

    await rm(ballast);
    const again = await exportOf('big', 'big');
    expect(again.code, again.stderr).toBe(0);
    expect(await layoutProblems(layout)).toEqual([]);
    expect(await leftovers({ root: cache, osDir: cache, layouts: [layout] })).toEqual([]);
  });

  it('leaves no mount of its own behind but the test filesystems', async () => {
    const ours = await procMounts(root);
    expect(ours.filter((line) => !mounted.some((m) => line.includes(` ${m} `)))).toEqual([]);
  });
});
