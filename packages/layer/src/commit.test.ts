import { access, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit, type CommitStep } from './commit.js';
import { LayerCodes } from './errors.js';
import { META, hashOf, makeUpper, tempDir, tempsIn } from './fixtures/cache.js';
import { acquire } from './in-use.js';
import { get, touch } from './last-used.js';
import { path as layerPath } from './layer-dir.js';
import { load } from './layer-meta.js';
import { withLayer } from './lock.js';
import { layers } from './scan.js';
import { read } from './sidecar.js';

let osDir: string;
const cleanup: string[] = [];
beforeEach(async () => {
  osDir = await tempDir('commit');
});
afterEach(async () => {
  for (const d of [osDir, ...cleanup.splice(0)]) await rm(d, { recursive: true, force: true });
});

const hash = hashOf(0xabc);
const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** The cache has no temp entries, no held locks, and no uppers left. */
async function expectClean(): Promise<void> {
  expect(await tempsIn(osDir)).toEqual([]);
  if (await exists(join(osDir, '.locks'))) expect(await readdir(join(osDir, '.locks'))).toEqual([]);
}

describe('Commit.commit', () => {
  it('moves the upper in as fs/ and writes layer.json, layer.log, last_used and sidecars', async () => {
    const upper = await makeUpper(osDir, { 'usr/bin/hello': 'hi', 'etc/conf': 'c' });
    const upperIno = (await stat(upper)).ino;
    const result = await commit({
      osDir,
      hash,
      upper,
      meta: META,
      log: 'build output\n',
      sidecars: { 'build.json': { pkg: 'hello.1.0' }, 'doc.json': { odoc: true } },
    });
    const dir = layerPath({ osDir, hash });
    expect(result).toMatchObject({ dir, committed: true });
    expect((await stat(join(dir, 'fs'))).ino).toBe(upperIno); // renamed, not copied
    expect(await exists(upper)).toBe(false);
    expect(await readFile(join(dir, 'fs', 'usr/bin/hello'), 'utf8')).toBe('hi');
    expect(await readFile(join(dir, 'layer.log'), 'utf8')).toBe('build output\n');
    expect(await read(dir, 'build.json')).toEqual({ pkg: 'hello.1.0' });
    expect(await get(dir)).toBeGreaterThan(Date.now() - 60_000);
    const meta = await load(dir);
    expect(meta).toMatchObject({ ...META, timing: [['build', 1.5]] });
    expect(result.meta).toEqual(meta); // what was written, without reading it back
    // Real usage: at least the three directories and two one-block files.
    expect(meta.disk_usage).toBeGreaterThanOrEqual(4096 * 5);
    expect(Date.parse(meta.created_at)).toBeGreaterThan(Date.now() - 60_000);
    const [scanned] = await layers(osDir);
    expect(scanned).toMatchObject({
      dir,
      sidecars: ['build.json', 'doc.json'],
      metaError: undefined,
    });
    await expectClean();
  });

  it('is idempotent: a second commit returns committed:false, deletes its upper, keeps the first', async () => {
    const first = await makeUpper(osDir, { marker: 'first' });
    const second = await makeUpper(osDir, { marker: 'second' });
    expect((await commit({ osDir, hash, upper: first, meta: META })).committed).toBe(true);
    const dir = layerPath({ osDir, hash });
    const used = new Date(1_600_000_000_000);
    await touch(dir, used);
    expect(await commit({ osDir, hash, upper: second, meta: META })).toEqual({
      dir,
      committed: false,
    });
    expect(await exists(second)).toBe(false);
    expect(await readFile(join(dir, 'fs', 'marker'), 'utf8')).toBe('first');
    expect(await get(dir)).toBeGreaterThan(used.getTime()); // the existing layer was used
    await expectClean();
  });

  it('lets exactly one of many concurrent commits of one layer win', async () => {
    const uppers = await Promise.all(
      Array.from({ length: 6 }, (_, i) => makeUpper(osDir, { marker: `u${i}` })),
    );
    const results = await Promise.all(
      uppers.map((upper) => commit({ osDir, hash, upper, meta: META })),
    );
    expect(results.filter((r) => r.committed)).toHaveLength(1);
    const winner = results.findIndex((r) => r.committed);
    expect(await readFile(join(layerPath({ osDir, hash }), 'fs', 'marker'), 'utf8')).toBe(
      `u${winner}`,
    );
    for (const u of uppers) expect(await exists(u)).toBe(false);
    await expectClean();
  });

  it('copies a log file, accepts bytes, and keeps a positive disk_usage as given', async () => {
    const logFile = join(osDir, 'captured.log');
    await writeFile(logFile, 'from file');
    const a = await commit({
      osDir,
      hash,
      upper: await makeUpper(osDir, {}),
      meta: { ...META, disk_usage: 1234 },
      log: { file: logFile },
    });
    expect(await readFile(join(a.dir, 'layer.log'), 'utf8')).toBe('from file');
    expect(await readFile(logFile, 'utf8')).toBe('from file');
    expect((await load(a.dir)).disk_usage).toBe(1234);

    const b = await commit({
      osDir,
      hash: hashOf(2),
      upper: await makeUpper(osDir, {}),
      meta: META,
      log: new TextEncoder().encode('bytes'),
    });
    expect(await readFile(join(b.dir, 'layer.log'), 'utf8')).toBe('bytes');
    const c = await commit({
      osDir,
      hash: hashOf(3),
      upper: await makeUpper(osDir, {}),
      meta: META,
    });
    expect(await readFile(join(c.dir, 'layer.log'), 'utf8')).toBe('');
  });

  it('moves a log file in with move: true, and puts it back when the commit fails', async () => {
    const logFile = join(osDir, 'moved.log');
    await writeFile(logFile, 'moved in', { mode: 0o644 });
    const logIno = (await stat(logFile)).ino;
    const failing = commit({
      osDir,
      hash,
      upper: await makeUpper(osDir, {}),
      meta: META,
      log: { file: logFile, move: true },
      onStep: (s) => {
        if (s === 'assembled') throw new Error('interrupted');
      },
    });
    await expect(failing).rejects.toThrow(/interrupted/);
    expect((await stat(logFile)).ino).toBe(logIno);
    const { dir } = await commit({
      osDir,
      hash,
      upper: await makeUpper(osDir, {}),
      meta: META,
      log: { file: logFile, move: true },
    });
    const moved = await stat(join(dir, 'layer.log'));
    expect(moved.ino).toBe(logIno); // renamed, not copied
    expect(moved.mode & 0o777).toBe(0o600);
    expect(await exists(logFile)).toBe(false);
    expect(await readFile(join(dir, 'layer.log'), 'utf8')).toBe('moved in');
    await expectClean();
  });

  it('works inside the caller’s own lock on the same layer (re-entrant)', async () => {
    const upper = await makeUpper(osDir, { f: 'x' });
    const result = await withLayer({ osDir, hash }, () =>
      commit({ osDir, hash, upper, meta: META, lock: { timeoutMs: 200 } }),
    );
    expect(result.committed).toBe(true);
  });

  it('replaces a build-* directory that has no layer.json, unless it is leased', async () => {
    const dir = layerPath({ osDir, hash });
    await mkdir(join(dir, 'fs'), { recursive: true });
    await writeFile(join(dir, 'junk'), '');
    const upper = await makeUpper(osDir, { marker: 'new' });
    expect((await commit({ osDir, hash, upper, meta: META })).committed).toBe(true);
    expect(await readdir(dir)).not.toContain('junk');
    await expectClean();
  });

  it('refuses to replace an incomplete layer that a live lease protects', async () => {
    const dir = layerPath({ osDir, hash });
    const ok = await commit({ osDir, hash, upper: await makeUpper(osDir, {}), meta: META });
    const lease = await acquire({ osDir, dirs: [ok.dir] });
    await rm(join(dir, 'layer.json')); // damaged while in use
    const upper = await makeUpper(osDir, { marker: 'new' });
    await expect(commit({ osDir, hash, upper, meta: META })).rejects.toMatchObject({
      code: LayerCodes.COMMIT_FAILED,
    });
    expect(await readFile(join(upper, 'marker'), 'utf8')).toBe('new'); // put back
    await lease.release();
    await expectClean();
  });
});

describe('Commit.commit failures: nothing becomes visible', () => {
  it('rejects bad input with typed errors before touching the upper', async () => {
    const upper = await makeUpper(osDir, { f: 'x' });
    await expect(commit({ osDir, hash: 'nothex', upper, meta: META })).rejects.toMatchObject({
      code: LayerCodes.BAD_HASH,
    });
    await expect(
      commit({ osDir, hash, upper, meta: META, sidecars: { 'layer.json': {} } }),
    ).rejects.toMatchObject({ code: LayerCodes.SIDECAR_INVALID });
    await expect(
      commit({ osDir, hash, upper, meta: META, sidecars: { 'build.json': [1] } }),
    ).rejects.toMatchObject({ code: LayerCodes.SIDECAR_INVALID });
    await expect(commit({ osDir, hash, upper, meta: { ...META, uid: -1 } })).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
    await expect(
      commit({ osDir, hash, upper, meta: { ...META, disk_usage: -5 } }),
    ).rejects.toMatchObject({ code: LayerCodes.BAD_ARGUMENT });
    expect(await readFile(join(upper, 'f'), 'utf8')).toBe('x');
    expect(await layers(osDir)).toEqual([]);
  });

  it('types meta strictly and refuses a camelCase field at run time; a loaded record keeps its extra keys', async () => {
    const upper = await makeUpper(osDir, { f: 'x' });
    const typo = commit({
      osDir,
      hash,
      upper,
      // @ts-expect-error -- createdAt is not a layer.json field (created_at is)
      meta: { ...META, createdAt: '2020-01-01T00:00:00Z' },
    });
    const err = await typo.catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.BAD_ARGUMENT });
    expect((err as Error).message).toMatch(
      /createdAt: not a layer\.json field; the field is created_at/,
    );
    const diskUsage: object = { ...META, diskUsage: 5 };
    await expect(commit({ osDir, hash, upper, meta: diskUsage as typeof META })).rejects.toThrow(
      /diskUsage: .*disk_usage/,
    );
    expect(await layers(osDir)).toEqual([]);
    // A record read back, with a key another writer added, is stored with it.
    const stored = { ...META, created_at: '2020-01-01T00:00:00.000Z', origin_host: 'ci-7' };
    const { dir } = await commit({ osDir, hash, upper, meta: stored });
    expect(await load(dir)).toMatchObject({
      origin_host: 'ci-7',
      created_at: '2020-01-01T00:00:00.000Z',
      hash,
    });
  });

  it('fails with LAYER_COMMIT_FAILED for a missing upper, a file, or another filesystem', async () => {
    await expect(
      commit({ osDir, hash, upper: join(osDir, 'missing'), meta: META }),
    ).rejects.toMatchObject({ code: LayerCodes.COMMIT_FAILED });
    await writeFile(join(osDir, 'file'), '');
    await expect(
      commit({ osDir, hash, upper: join(osDir, 'file'), meta: META }),
    ).rejects.toMatchObject({
      code: LayerCodes.COMMIT_FAILED,
    });
    const shm = await mkdtemp('/dev/shm/day11-commit-');
    cleanup.push(shm);
    const err = await commit({ osDir, hash, upper: shm, meta: META }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.COMMIT_FAILED, path: shm });
    expect((err as Error).message).toMatch(/another filesystem/);
    expect(await exists(shm)).toBe(true);
    expect(await layers(osDir)).toEqual([]);
  });

  it('removes the temp dir and puts the upper back when a step fails', async () => {
    const upper = await makeUpper(osDir, { f: 'x' });
    const err = await commit({
      osDir,
      hash,
      upper,
      meta: META,
      log: { file: join(osDir, 'no-such.log') },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.COMMIT_FAILED });
    expect((err as Error).message).toContain(upper);
    expect(await readFile(join(upper, 'f'), 'utf8')).toBe('x');
    expect(await layers(osDir)).toEqual([]);
    await expectClean();
  });

  it.each<CommitStep>(['assembling', 'assembled', 'locked'])(
    'leaves nothing visible when interrupted at %s, and a retry succeeds',
    async (failAt) => {
      const upper = await makeUpper(osDir, { f: 'x' });
      const onStep = (s: CommitStep) => {
        if (s === failAt) throw new Error(`interrupted at ${s}`);
      };
      await expect(commit({ osDir, hash, upper, meta: META, onStep })).rejects.toThrow(
        /interrupted/,
      );
      expect(await layers(osDir)).toEqual([]);
      await expectClean();
      expect((await commit({ osDir, hash, upper, meta: META })).committed).toBe(true);
    },
  );

  it('counts as committed once the rename is done, even if a later step fails', async () => {
    const upper = await makeUpper(osDir, { f: 'x' });
    const onStep = (s: CommitStep) => {
      if (s === 'renamed') throw new Error('hook failed after the rename');
    };
    expect(await commit({ osDir, hash, upper, meta: META, onStep })).toMatchObject({
      committed: true,
    });
    expect((await layers(osDir))[0]?.metaError).toBeUndefined();
    await expectClean();
  });

  it('fails with LAYER_LOCK_TIMEOUT while another holds the layer lock, upper kept', async () => {
    const upper = await makeUpper(osDir, { f: 'x' });
    let release!: () => void;
    const holding = withLayer({ osDir, hash }, () => new Promise<void>((r) => (release = r)));
    await new Promise((r) => setTimeout(r, 50));
    const err = await commit({ osDir, hash, upper, meta: META, lock: { timeoutMs: 100 } }).catch(
      (e: unknown) => e,
    );
    release();
    await holding;
    expect(err).toMatchObject({ code: LayerCodes.LOCK_TIMEOUT });
    expect(await readFile(join(upper, 'f'), 'utf8')).toBe('x');
    expect(await layers(osDir)).toEqual([]);
    await expectClean();
  });
});
