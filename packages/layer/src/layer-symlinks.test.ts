import { mkdir, mkdtemp, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { ensure } from './layer-symlinks.js';
import { symlinks } from './scan.js';
import { TempName } from '@day11/exec';

let osDir: string;
let packagesDir: string;
beforeEach(async () => {
  osDir = await mkdtemp(join(tmpdir(), 'day11-links-'));
  packagesDir = join(osDir, 'packages');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

describe('LayerSymlinks.ensure', () => {
  it('links packages/{id}/build-x to the layer, relatively', async () => {
    await mkdir(join(osDir, 'build-0123456789ab'));
    await ensure({ packagesDir, id: 'hello.1.0', layerName: 'build-0123456789ab' });
    const link = join(packagesDir, 'hello.1.0', 'build-0123456789ab');
    expect(await readlink(link)).toBe('../../build-0123456789ab');
    expect((await stat(link)).isDirectory()).toBe(true);
  });

  it('is idempotent and leaves no temporary names', async () => {
    for (let i = 0; i < 3; i++)
      await ensure({ packagesDir, id: 'a', layerName: 'build-0123456789ab' });
    await ensure({ packagesDir, id: 'a', layerName: 'build-ffffffffffff' });
    expect((await readdir(join(packagesDir, 'a'))).sort()).toEqual([
      'build-0123456789ab',
      'build-ffffffffffff',
    ]);
    expect(await readdir(packagesDir)).toEqual(['a']);
  });

  it('replaces a wrong link or file atomically, and settles concurrent calls on one link', async () => {
    const link = join(packagesDir, 'a', 'build-0123456789ab');
    await mkdir(join(packagesDir, 'a'), { recursive: true });
    await symlink('../../build-ffffffffffff', link);
    await ensure({ packagesDir, id: 'a', layerName: 'build-0123456789ab' });
    expect(await readlink(link)).toBe('../../build-0123456789ab');
    await rm(link);
    await writeFile(link, 'not a link');
    await ensure({ packagesDir, id: 'a', layerName: 'build-0123456789ab' });
    expect(await readlink(link)).toBe('../../build-0123456789ab');

    await rm(packagesDir, { recursive: true });
    await Promise.all(
      Array.from({ length: 8 }, () =>
        ensure({ packagesDir, id: 'b', layerName: 'build-0123456789ab' }),
      ),
    );
    expect(await readlink(join(packagesDir, 'b', 'build-0123456789ab'))).toBe(
      '../../build-0123456789ab',
    );
    expect(await readdir(packagesDir)).toEqual(['b']);
    expect(await readdir(join(packagesDir, 'b'))).toEqual(['build-0123456789ab']);
  });

  it('with likelyNew makes a new link, keeps a right one and replaces a wrong one', async () => {
    const layerName = 'build-0123456789ab';
    const link = join(packagesDir, 'a', layerName);
    await ensure({ packagesDir, id: 'a', layerName, likelyNew: true });
    expect(await readlink(link)).toBe('../../build-0123456789ab');
    await ensure({ packagesDir, id: 'a', layerName, likelyNew: true });
    await rm(link);
    await symlink('../../build-ffffffffffff', link);
    await ensure({ packagesDir, id: 'a', layerName, likelyNew: true });
    expect(await readlink(link)).toBe('../../build-0123456789ab');
    await rm(link);
    await writeFile(link, 'not a link');
    await ensure({ packagesDir, id: 'a', layerName, likelyNew: true });
    expect(await readlink(link)).toBe('../../build-0123456789ab');
    expect(await readdir(packagesDir)).toEqual(['a']);
    expect(await readdir(join(packagesDir, 'a'))).toEqual([layerName]);
  });

  it.each(['', '.', '..', 'a/b', '../x', 'a\0b', `${TempName.PREFIX}1-ab-x`])(
    'refuses the id %j',
    async (id) => {
      await expect(
        ensure({ packagesDir, id, layerName: 'build-0123456789ab' }),
      ).rejects.toMatchObject({
        code: LayerCodes.BAD_ID,
      });
    },
  );

  it('refuses a layer name that is not build-{12 hex}', async () => {
    await expect(ensure({ packagesDir, id: 'a', layerName: '../etc' })).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
  });
});

describe('Scan.symlinks', () => {
  it('lists links with their targets and whether they dangle', async () => {
    await mkdir(join(osDir, 'build-0123456789ab'));
    await ensure({ packagesDir, id: 'b.2', layerName: 'build-0123456789ab' });
    await ensure({ packagesDir, id: 'a.1', layerName: 'build-ffffffffffff' });
    const found = await symlinks(packagesDir);
    expect(found.map((l) => [l.id, l.name, l.exists])).toEqual([
      ['a.1', 'build-ffffffffffff', false],
      ['b.2', 'build-0123456789ab', true],
    ]);
    expect(found[1]!.target).toBe(join(osDir, 'build-0123456789ab'));
  });

  it('gives [] for a missing registry', async () => {
    expect(await symlinks(join(osDir, 'nope'))).toEqual([]);
  });
});
