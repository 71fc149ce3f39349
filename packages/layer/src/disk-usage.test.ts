import { link, mkdir, open, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { measure, measureChildren, walk } from './disk-usage.js';
import { tempDir } from './fixtures/cache.js';

let dir: string;
beforeEach(async () => {
  dir = await tempDir('du');
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const MiB = 1024 * 1024;

describe('DiskUsage', () => {
  it('counts allocated blocks, each hardlinked inode once', async () => {
    await writeFile(join(dir, 'a'), Buffer.alloc(MiB, 1));
    const empty = await measure(dir);
    expect(empty).toBeGreaterThanOrEqual(MiB);
    await link(join(dir, 'a'), join(dir, 'a-link'));
    await mkdir(join(dir, 'sub'));
    await link(join(dir, 'a'), join(dir, 'sub', 'a-link'));
    const withLinks = await measure(dir);
    // Only the new directory adds blocks; the two links add none.
    expect(withLinks - empty).toBeLessThan(64 * 1024);
  });

  it('counts real usage, not apparent size, for sparse files', async () => {
    const handle = await open(join(dir, 'sparse'), 'w');
    await handle.truncate(100 * MiB);
    await handle.close();
    expect(await measure(dir)).toBeLessThan(MiB);
  });

  it('does not follow symlinks, and reports link counts', async () => {
    await writeFile(join(dir, 'f'), 'x');
    await link(join(dir, 'f'), join(dir, 'g'));
    await symlink('/usr', join(dir, 'usr'));
    const seen: { key: string; nlink: number }[] = [];
    await walk(dir, ({ key, nlink }) => seen.push({ key, nlink }));
    expect(seen).toHaveLength(4); // dir, f, g (same key as f), usr
    expect(new Set(seen.map((s) => s.key)).size).toBe(3);
    expect(seen.filter((s) => s.nlink === 2)).toHaveLength(2);
  });

  it('measures each entry of a root and the whole tree in one walk, shared inodes once in the total', async () => {
    for (const name of ['x', 'y']) await mkdir(join(dir, name));
    await writeFile(join(dir, 'x', 'big'), Buffer.alloc(MiB, 1));
    await link(join(dir, 'x', 'big'), join(dir, 'x', 'big-again'));
    await link(join(dir, 'x', 'big'), join(dir, 'y', 'big'));
    await writeFile(join(dir, 'y', 'own'), Buffer.alloc(MiB, 2));
    const { total, children } = await measureChildren(dir);
    expect([...children.keys()].sort()).toEqual(['x', 'y']);
    expect(children.get('x')).toBe(await measure(join(dir, 'x')));
    expect(children.get('y')).toBe(await measure(join(dir, 'y')));
    expect(total).toBe(await measure(dir));
    expect(total).toBeLessThan(children.get('x')! + children.get('y')!);
    expect(await measureChildren(join(dir, 'missing'))).toEqual({ total: 0, children: new Map() });
  });

  it('measures 0 for a root that vanished (a layer collected meanwhile)', async () => {
    expect(await measure(join(dir, 'missing'))).toBe(0);
  });
});
