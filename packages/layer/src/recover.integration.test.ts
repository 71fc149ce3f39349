/**
 * Recover.sweep next to a real mount: a dead process's temp directory with a
 * filesystem still mounted inside is left alone, not deleted through.
 */
import { access, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Exec, Sys, TempName } from '@day11/exec';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DEAD_PID, tempDir } from './fixtures/cache.js';
import { sweep } from './recover.js';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('recover-mnt');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

describe('Recover.sweep and mounts', () => {
  it.skipIf(!Exec.isRoot())(
    'never removes a dead temp dir with a mount below it; removes it once unmounted',
    async () => {
      // A name with a space: mountinfo escapes it as \040, and the match must undo that.
      const temp = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-r un`);
      const target = join(temp, 'merged');
      await mkdir(target, { recursive: true });
      await writeFile(join(temp, 'upper-file'), 'x');
      Sys.mount({ source: 'tmpfs', target, fstype: 'tmpfs' });
      try {
        await writeFile(join(target, 'inside'), 'precious');
        const report = await sweep(osDir);
        expect(report.mounted).toEqual([temp]);
        expect(report.temps).toEqual([]);
        expect(await readFile(join(target, 'inside'), 'utf8')).toBe('precious');
        expect(await exists(join(temp, 'upper-file'))).toBe(true);
      } finally {
        Sys.umount(target);
      }
      const after = await sweep(osDir);
      expect(after).toMatchObject({ temps: [temp], mounted: [] });
      expect(await exists(temp)).toBe(false);
    },
  );
});
