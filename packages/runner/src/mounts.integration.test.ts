/** Removing directories with mounts below them, synchronously and not: never through the mount. */
import { access, mkdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sys } from '@day11/exec';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import { mountsUnderSync, removeTree, removeTreeSync } from './mounts.js';

let dir: string;
let keep: string;
beforeEach(async () => {
  dir = await tempDir('mounts');
  keep = await tempDir('mounts-keep');
  await writeFile(join(keep, 'precious'), 'x');
});
afterEach(async () => {
  for (const m of mountsUnderSync(dir)) Sys.umount(m, Sys.MNT_DETACH);
  await rm(dir, { recursive: true, force: true });
  await rm(keep, { recursive: true, force: true });
});

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** `dir/run/merged` with `keep` bind-mounted on it: deleting through it would delete `keep`'s files. */
async function bindBelow(): Promise<string> {
  const target = join(dir, 'run', 'merged');
  await mkdir(target, { recursive: true });
  Sys.mount({ source: keep, target, fstype: null, flags: 4096 /* MS_BIND */ });
  return target;
}

describe('mountsUnderSync', () => {
  it('lists mount points at or below a directory, deepest first', async () => {
    expect(mountsUnderSync(dir)).toEqual([]);
    const target = await bindBelow();
    expect(mountsUnderSync(dir)).toEqual([target]);
    expect(mountsUnderSync(target)).toEqual([target]);
    expect(mountsUnderSync(join(dir, 'other'))).toEqual([]);
  });

  it('finds mounts below names that mountinfo escapes, and below a symlinked path', async () => {
    for (const name of ['with space', 'tab\there', 'back\\slash']) {
      const parent = join(dir, name);
      const target = join(parent, 'merged');
      await mkdir(target, { recursive: true });
      Sys.mount({ source: keep, target, fstype: null, flags: 4096 /* MS_BIND */ });
      expect(mountsUnderSync(parent)).toEqual([target]);
    }
    await symlink(join(dir, 'with space'), join(dir, 'link'));
    expect(mountsUnderSync(join(dir, 'link'))).toEqual([join(dir, 'with space', 'merged')]);
  });
});

describe.each([
  ['removeTreeSync', async (d: string) => removeTreeSync(d)],
  ['removeTree', (d: string) => removeTree(d)],
])('%s', (_name, remove) => {
  it('unmounts what is below first, then removes, and never deletes through the mount', async () => {
    await bindBelow();
    await remove(join(dir, 'run'));
    expect(await exists(join(dir, 'run'))).toBe(false);
    expect(mountsUnderSync(dir)).toEqual([]);
    expect(await readFile(join(keep, 'precious'), 'utf8')).toBe('x');
  });
});
