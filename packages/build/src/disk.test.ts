/**
 * Out-of-space judgement against real filesystems: a roomy temp dir, and
 * small tmpfs mounts (root only) that are full, nearly full, or without an
 * inode limit.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, statfs, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Exec } from '@day11/exec';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { FreeSpaceWatch, outOfSpace, TIGHT_BELOW_BYTES } from './disk.js';

const MiB = 2 ** 20;
let work: string;
const mounted: string[] = [];

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-disk-'));
});
afterEach(async () => {
  for (const dir of mounted.splice(0)) execFileSync('umount', [dir]);
  await rm(work, { recursive: true, force: true });
});

async function tmpfs(name: string, options: string): Promise<string> {
  const dir = join(work, name);
  await mkdir(dir);
  execFileSync('mount', ['-t', 'tmpfs', '-o', options, 'day11-disk-test', dir]);
  mounted.push(dir);
  return dir;
}

async function log(lines: string[]): Promise<string> {
  const file = join(work, 'step.log');
  await writeFile(file, lines.join('\n') + '\n');
  return file;
}

/** A watch on `dir` that has taken its first sample. */
async function sampled(dir: string): Promise<FreeSpaceWatch> {
  const watch = new FreeSpaceWatch(dir);
  await vi.waitFor(() => expect(watch.lowest).toBeDefined());
  return watch;
}

describe('outOfSpace', () => {
  it('says nothing for a step that failed on a roomy filesystem', async () => {
    expect((await statfs(work)).bavail * (await statfs(work)).bsize).toBeGreaterThan(
      TIGHT_BELOW_BYTES,
    );
    const logFile = await log(['make: *** [all] Error 1']);
    const watch = await sampled(work);
    watch.stop();
    expect(await outOfSpace({ dir: work, logFile, watch })).toBeUndefined();
    expect(await outOfSpace({ dir: work, logFile: join(work, 'no-such-log') })).toBeUndefined();
  });

  it('quotes the line of the log that says ENOSPC', async () => {
    const logFile = await log([
      'building',
      'cp: error writing /opt/x: No space left on device',
      'done',
    ]);
    expect(await outOfSpace({ dir: work, logFile })).toMatch(
      /ran out of disk space .*cp: error writing \/opt\/x: No space left on device/,
    );
  });

  it.skipIf(!Exec.isRoot())(
    'remembers a full filesystem its watch saw, after the step has freed it again',
    async () => {
      const dir = await tmpfs('full', 'size=8m');
      const ballast = join(dir, 'ballast');
      execFileSync('sh', ['-c', `head -c ${8 * MiB} /dev/zero > ${ballast} || true`]);
      const watch = await sampled(dir);
      await rm(ballast);
      watch.stop();
      const logFile = await log(['head: standard output: I/O error']);
      expect(await outOfSpace({ dir, logFile })).toMatch(/nearly full.*a write failed/);
      expect(await outOfSpace({ dir, logFile, watch })).toMatch(
        /filesystem of .* is full \(\d+ bytes free\): no space left on device/,
      );
    },
  );

  it.skipIf(!Exec.isRoot())(
    'judges a failed write on a nearly full filesystem as maybe out of space, naming what was free',
    async () => {
      const dir = await tmpfs('tight', 'size=32m');
      const logFile = await log(['head: standard output: I/O error']);
      const watch = await sampled(dir);
      watch.stop();
      expect(await outOfSpace({ dir, logFile, watch })).toMatch(
        /was nearly full while it ran \(32\.0 MiB free, \d+ inodes free at the lowest\) and its output says a write failed \(head: standard output: I\/O error\)/,
      );
      // A step failing for its own reasons on that disk is its verdict.
      const ownFailure = await log(['cc1: error: unknown option', 'make: *** [all] Error 1']);
      expect(await outOfSpace({ dir, logFile: ownFailure, watch })).toBeUndefined();
    },
  );

  it.skipIf(!Exec.isRoot())(
    'judges a filesystem out of inodes full, and one that counts no inodes by its bytes',
    async () => {
      const few = await tmpfs('few-inodes', 'size=128m,nr_inodes=4');
      for (let i = 0; ; i++) {
        try {
          await writeFile(join(few, `f${i}`), '');
        } catch {
          break;
        }
      }
      const logFile = await log(['touch: cannot touch: I/O error']);
      expect(await outOfSpace({ dir: few, logFile })).toMatch(/is full \(no free inode\)/);

      // Btrfs reports 0 inodes of 0, as tmpfs does without a limit: not "none free".
      const unlimited = await tmpfs('unlimited', 'size=128m,nr_inodes=0');
      expect((await statfs(unlimited)).files).toBe(0);
      const watch = await sampled(unlimited);
      watch.stop();
      expect(await outOfSpace({ dir: unlimited, logFile, watch })).toBeUndefined();
    },
  );
});

describe('FreeSpaceWatch', () => {
  it('samples sooner the less room is left', () => {
    expect(FreeSpaceWatch.intervalFor(10 * 2 ** 30, 100)).toBe(100);
    expect(FreeSpaceWatch.intervalFor(64 * MiB, 100)).toBe(16);
    expect(FreeSpaceWatch.intervalFor(MiB, 100)).toBe(2);
    expect(FreeSpaceWatch.intervalFor(0, 100)).toBe(2);
  });

  it('stops sampling when stopped', async () => {
    const watch = await sampled(work);
    watch.stop();
    const seen = watch.lowest;
    await new Promise((r) => setTimeout(r, 250));
    expect(watch.lowest).toBe(seen);
  });
});
