/**
 * recover() on a cache holding what dead and live processes left: a dead
 * process's run directory with a filesystem still mounted inside is
 * unmounted first, then removed; `Recover.sweep` alone leaves it alone.
 */
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Sys, TempName } from '@day11/exec';
import { Recover } from '@day11/layer';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import { recover } from './recover.js';

const DEAD_PID = 4_999_999;
let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('recover');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

describe('recover', () => {
  it("unmounts and removes a dead run's directory; keeps live and foreign entries", async () => {
    const dead = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-run`);
    const deadUpper = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-upper`);
    const live = join(osDir, `${TempName.PREFIX}${process.pid}-01020304-run`);
    const foreign = join(osDir, 'notes');
    const merged = join(dead, 'merged');
    for (const d of [merged, join(dead, 'upper'), deadUpper, live])
      await mkdir(d, { recursive: true });
    await writeFile(foreign, 'mine');
    Sys.mount({ source: 'tmpfs', target: merged, fstype: 'tmpfs' });
    try {
      await writeFile(join(merged, 'inside'), 'precious');
      // The layer package's sweep never deletes through a mount...
      const swept = await Recover.sweep(osDir);
      expect(swept.mounted).toEqual([dead]);
      expect(await readFile(join(merged, 'inside'), 'utf8')).toBe('precious');
      // ...recover unmounts first, then removes.
      const report = await recover({ osDir, runtimes: [] });
      expect(report.unmounted).toEqual([merged]);
      expect(report.removed).toEqual([dead]);
      expect(report.left).toEqual([]);
      expect(swept.temps).toEqual([deadUpper]);
    } finally {
      // Only needed if the test failed before recover: then it is still mounted.
      try {
        Sys.umount(merged, Sys.MNT_DETACH);
      } catch {
        // Not mounted any more: recover did its job.
      }
    }
    expect(await exists(dead)).toBe(false);
    expect(await exists(live)).toBe(true);
    expect(await readFile(foreign, 'utf8')).toBe('mine');
  });

  it('is a no-op on a missing or clean cache, and skips a runtime that is not installed', async () => {
    const report = await recover({
      osDir: join(osDir, 'missing'),
      runtimes: ['/nonexistent/runtime'],
    });
    expect(report).toMatchObject({ containers: [], unmounted: [], removed: [], left: [] });
  });
});
