import { basename, dirname } from 'node:path';
import { TempName } from '@day11/exec';
import { describe, expect, it } from 'vitest';
import { runPaths } from './temp.js';

describe('runPaths', () => {
  it('names a run dir and a handover upper in tmpDir, with our pid and one random tag', () => {
    const { runDir, handover } = runPaths('/cache');
    expect(dirname(runDir)).toBe('/cache');
    expect(dirname(handover)).toBe('/cache');
    expect(basename(runDir)).toMatch(new RegExp(`^\\.day11-tmp-${process.pid}-[0-9a-f]{8}-run$`));
    expect(basename(handover)).toBe(basename(runDir).replace(/-run$/, '-upper'));
    expect(runPaths('/cache').runDir).not.toBe(runDir);
  });

  it('makes names recovery knows as ours', () => {
    const { runDir, handover } = runPaths('/cache');
    expect(TempName.ownerPid(basename(runDir))).toBe(process.pid);
    expect(TempName.ownerPid(basename(handover))).toBe(process.pid);
  });
});
