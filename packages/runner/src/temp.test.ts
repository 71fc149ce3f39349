import { basename, dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ownerGone, ownerPid, runPaths, TEMP_PREFIX } from './temp.js';

describe('runPaths', () => {
  it('names a run dir and a handover upper in tmpDir, with our pid and one random tag', () => {
    const { runDir, handover } = runPaths('/cache');
    expect(dirname(runDir)).toBe('/cache');
    expect(dirname(handover)).toBe('/cache');
    expect(basename(runDir)).toMatch(new RegExp(`^\\.day11-tmp-${process.pid}-[0-9a-f]{8}-run$`));
    expect(basename(handover)).toBe(basename(runDir).replace(/-run$/, '-upper'));
    expect(runPaths('/cache').runDir).not.toBe(runDir);
  });

  it("uses @day11/layer's temp prefix, so Recover.sweep knows the names", () => {
    expect(TEMP_PREFIX).toBe('.day11-tmp-');
  });
});

describe('ownerPid', () => {
  it.each([
    ['.day11-tmp-4242-9f3a0c1d-run', 4242],
    ['.day11-tmp-7-x-build-0123456789ab', 7],
    ['.day11-tmp-nopid', undefined],
    ['.day11-tmp-0-ab-run', undefined],
    ['build-0123456789ab', undefined],
    ['day11-tmp-42-ab', undefined],
  ])('%s → %s', (name, pid) => {
    expect(ownerPid(name)).toBe(pid);
  });
});

describe('ownerGone', () => {
  it('is false for this process and true for a pid that cannot exist', () => {
    expect(ownerGone(process.pid, Date.now())).toBe(false);
    expect(ownerGone(4_999_999, Date.now())).toBe(true);
  });

  it('treats a live pid that started long after the entry changed as reused', () => {
    // pid 1 started at boot; an entry "changed" a day before boot cannot be its.
    const longBeforeBoot = Date.now() - 10 * 365 * 86400_000;
    expect(ownerGone(1, longBeforeBoot)).toBe(true);
    expect(ownerGone(1, Date.now())).toBe(false);
  });
});
