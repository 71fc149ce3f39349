import {
  chmod,
  lchown,
  lstat,
  mkdir,
  readdir,
  rename,
  rm,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as CacheDir from './cache-dir.js';
import * as Commit from './commit.js';
import { LayerCodes } from './errors.js';
import { hashOf, makeUpper, META, tempDir } from './fixtures/cache.js';
import * as LayerDir from './layer-dir.js';

const isRoot = process.getuid?.() === 0;
const OTHER = 65534;
let work: string;

beforeAll(async () => {
  work = await tempDir('cache-dir');
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o7777;

describe('CacheDir.ensure', () => {
  it('makes a missing cache (and its parents) with mode 0700', async () => {
    const dir = join(work, 'a/b/cache');
    expect(await CacheDir.ensure(dir)).toEqual({ created: true });
    expect(await modeOf(dir)).toBe(0o700);
    expect(await CacheDir.ensure(dir)).toEqual({ created: false });
  });

  it('tightens a cache others can enter, and says what it was', async () => {
    const dir = join(work, 'open');
    await mkdir(dir);
    await chmod(dir, 0o755);
    expect(await CacheDir.ensure(dir)).toEqual({ created: false, tightenedFrom: 0o755 });
    expect(await modeOf(dir)).toBe(0o700);
    await chmod(dir, 0o1777);
    expect(await CacheDir.ensure(dir)).toEqual({ created: false, tightenedFrom: 0o1777 });
  });

  it('refuses what is not a directory', async () => {
    const file = join(work, 'file');
    await writeFile(file, '');
    await expect(CacheDir.ensure(file)).rejects.toMatchObject({
      code: LayerCodes.UNSAFE_CACHE,
      message: `Refusing the cache directory ${file}: it is not a directory`,
    });
    const dangling = join(work, 'to-a-file');
    await symlink(file, dangling);
    await expect(CacheDir.ensure(dangling)).rejects.toMatchObject({
      code: LayerCodes.UNSAFE_CACHE,
      message: expect.stringMatching(/a symlink to something that is not a directory/) as string,
    });
  });

  it('follows a symlink of its own user to a directory of its own', async () => {
    const target = join(work, 'real');
    await mkdir(target, { mode: 0o755 });
    const link = join(work, 'mine');
    await symlink(target, link);
    expect(await CacheDir.ensure(link)).toEqual({ created: false, tightenedFrom: 0o755 });
    expect(await modeOf(target)).toBe(0o700);
  });

  it.skipIf(!isRoot)(
    'refuses a symlink another user planted, and changes nothing it points to',
    async () => {
      const victim = join(work, 'victim');
      await mkdir(victim, { mode: 0o755 });
      await chmod(victim, 0o755);
      const planted = join(work, 'planted');
      await symlink(victim, planted);
      await lchown(planted, OTHER, OTHER);
      await expect(CacheDir.ensure(planted)).rejects.toMatchObject({
        code: LayerCodes.UNSAFE_CACHE,
        message: `Refusing the cache directory ${planted}: it is a symlink owned by uid ${OTHER}, another user: it may point anywhere`,
      });
      expect(await modeOf(victim)).toBe(0o755);
    },
  );

  it.skipIf(!isRoot)("refuses another user's directory, and writes nothing in it", async () => {
    const theirs = join(work, 'theirs');
    await mkdir(theirs, { mode: 0o777 });
    await lchown(theirs, OTHER, OTHER);
    await expect(CacheDir.ensure(theirs)).rejects.toMatchObject({
      code: LayerCodes.UNSAFE_CACHE,
      message: expect.stringMatching(
        /it belongs to uid 65534, not to this user \(uid 0\)/,
      ) as string,
    });
    // Nor through Commit, which makes the cache the same way.
    const upper = await makeUpper(work, { x: '1' });
    await expect(
      Commit.commit({ osDir: theirs, hash: hashOf(1), upper, meta: META }),
    ).rejects.toMatchObject({ code: LayerCodes.UNSAFE_CACHE });
    expect(await readdir(theirs)).toEqual([]);
  });
});

describe('a committed layer beside fs/', () => {
  it("is its owner's alone: directory 0700, layer.json, layer.log, sidecars and last_used 0600", async () => {
    const osDir = join(work, 'commit-cache');
    const upper = await makeUpper(work, { 'bin/tool': '#!/bin/sh\n' });
    // The upper may live anywhere in the cache's filesystem: make the cache first.
    await CacheDir.ensure(osDir);
    const inside = join(osDir, 'upper');
    await Commit.commit({
      osDir,
      hash: hashOf(2),
      upper: await moveInto(upper, inside),
      meta: META,
      log: 'the log\n',
      sidecars: { 'step.json': { env: { TOKEN: 'secret' } } },
    });
    const dir = LayerDir.path({ osDir, hash: hashOf(2) });
    expect(await modeOf(osDir)).toBe(0o700);
    expect(await modeOf(dir)).toBe(0o700);
    for (const file of ['layer.json', 'layer.log', 'step.json', 'last_used']) {
      expect([file, await modeOf(join(dir, file))]).toEqual([file, 0o600]);
    }
    // fs/ keeps the modes the build gave it.
    expect((await lstat(join(dir, 'fs/bin/tool'))).mode & 0o777).toBe(0o644);
  });
});

async function moveInto(from: string, to: string): Promise<string> {
  await rename(from, to);
  return to;
}
