import { appendFile, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { CacheDir } from '@day11/layer';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { addStats, FOLD_BYTES, readStats, STATS_FILE, STATS_LOG } from './stats.js';

let osDir: string;
beforeEach(async () => {
  osDir = join(await mkdtemp(join(tmpdir(), 'day11-stats-')), 'cache');
  await CacheDir.ensure(osDir);
});
afterEach(async () => {
  await rm(dirname(osDir), { recursive: true, force: true });
});

const one = { hits: 3, misses: 2, fetched: 1, built: 1 };

describe('cache statistics', () => {
  it('start at zero, and add up the builds', async () => {
    expect(await readStats(osDir)).toMatchObject({ hits: 0, misses: 0, fetched: 0, built: 0 });
    await addStats(osDir, one);
    await addStats(osDir, { hits: 10, misses: 0, fetched: 0, built: 0 });
    await addStats(osDir, { hits: 0, misses: 0, fetched: 0, built: 0 }); // counts nothing
    const stats = await readStats(osDir);
    expect(stats).toMatchObject({ hits: 13, misses: 2, fetched: 1, built: 1 });
    expect(stats.updated).toMatch(/^\d{4}-/);
    expect((await readFile(join(osDir, STATS_LOG), 'utf8')).split('\n')).toHaveLength(3);
  });

  it('lose nothing when many builds add at once', async () => {
    await Promise.all(Array.from({ length: 200 }, () => addStats(osDir, one)));
    expect(await readStats(osDir)).toMatchObject({ hits: 600, misses: 400, built: 200 });
  });

  it('fold a long log into cache-stats.json, and keep counting after', async () => {
    let added = 0;
    while ((await readdir(osDir)).includes(STATS_FILE) === false) {
      await addStats(osDir, one);
      added++;
      expect(added).toBeLessThan(FOLD_BYTES / 40);
    }
    const folded = JSON.parse(await readFile(join(osDir, STATS_FILE), 'utf8')) as {
      hits: number;
    };
    expect(folded.hits).toBe(3 * added);
    await addStats(osDir, one);
    expect(await readStats(osDir)).toMatchObject({ hits: 3 * (added + 1), built: added + 1 });
    // Nothing left beside the totals and the new log: the folded log is gone.
    const left = (await readdir(osDir)).filter((n) => n.startsWith('cache-stats'));
    expect(left.sort()).toEqual([STATS_FILE, STATS_LOG].sort());
    expect((await readdir(osDir)).filter((n) => n.startsWith('.day11-tmp'))).toEqual([]);
  });

  it('keep every line when the fold cannot write the totals', async () => {
    await mkdir(join(osDir, STATS_FILE)); // a directory: the atomic write's rename fails
    const big = `${JSON.stringify({ ...one, at: '2026-12-02T00:00:00.000Z' })}\n`.repeat(1000);
    await writeFile(join(osDir, STATS_LOG), big);
    await addStats(osDir, one);
    expect(await readStats(osDir)).toMatchObject({ hits: 3003, misses: 2002, built: 1001 });
    expect((await readdir(osDir)).filter((n) => n.startsWith('.day11-tmp'))).toEqual([]);
  });

  it('count the totals of an older cache (cache-stats.json alone) and skip damaged lines', async () => {
    await writeFile(
      join(osDir, STATS_FILE),
      JSON.stringify({ hits: 5, misses: 1, since: '2026-01-01T00:00:00.000Z' }),
    );
    await addStats(osDir, one);
    await appendFile(join(osDir, STATS_LOG), '{"hits":1000,"mis\nnot json\n{"hits":-1}\n');
    await addStats(osDir, one);
    expect(await readStats(osDir)).toMatchObject({
      hits: 11,
      misses: 5,
      fetched: 2,
      built: 2,
      since: '2026-01-01T00:00:00.000Z',
    });
  });

  it('start again from the log when cache-stats.json is damaged', async () => {
    await writeFile(join(osDir, STATS_FILE), '{"hits": "many"');
    await addStats(osDir, one);
    expect(await readStats(osDir)).toMatchObject({ hits: 3, misses: 2 });
  });
});
