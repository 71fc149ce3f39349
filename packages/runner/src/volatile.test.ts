import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { clearVolatileMark, kernelAtLeast } from './volatile.js';

describe('volatile run mounts', () => {
  it('knows which kernels take volatile', () => {
    expect(kernelAtLeast('6.1.0-18-amd64', 5, 10)).toBe(true);
    expect(kernelAtLeast('5.10.0', 5, 10)).toBe(true);
    expect(kernelAtLeast('5.4.0-150-generic', 5, 10)).toBe(false);
    expect(kernelAtLeast('4.19.0', 5, 10)).toBe(false);
  });

  it('removes the mark the kernel leaves in the work directory, and nothing else', async () => {
    const work = await mkdtemp(join(tmpdir(), 'day11-volatile-'));
    try {
      await mkdir(join(work, 'work', 'incompat', 'volatile'), { recursive: true });
      await writeFile(join(work, 'work', 'incompat', 'volatile', 'dirty'), '');
      expect(clearVolatileMark(work)).toBe(true);
      expect(await readdir(join(work, 'work'))).toEqual([]);
      expect(clearVolatileMark(work)).toBe(true); // nothing there: fine
      // Not empty: not ours to remove, and the directory must not be reused.
      await mkdir(join(work, 'work', 'incompat', 'volatile', 'x'), { recursive: true });
      expect(clearVolatileMark(work)).toBe(false);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});
