import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { SmallFiles } from './small-files.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-small-files-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('SmallFiles', () => {
  it('reads files shorter than, as long as, and longer than its buffer, as readFileSync does', async () => {
    const files = new SmallFiles(16);
    const texts = [
      '',
      'é',
      'x'.repeat(15),
      'y'.repeat(16),
      '€'.repeat(40),
      '\uFEFF{"a":1}',
      'z'.repeat(5),
    ];
    for (const [i, text] of texts.entries()) {
      const path = join(dir, `f${i}`);
      await writeFile(path, text);
      // One reader for all: a grown buffer serves the short files after it.
      expect(files.text(path)).toBe(text);
    }
  });

  it('throws what the system says for a missing file and a directory', async () => {
    const files = new SmallFiles();
    expect(() => files.text(join(dir, 'nope'))).toThrow(
      expect.objectContaining({ code: 'ENOENT' }),
    );
    await mkdir(join(dir, 'sub'));
    expect(() => files.text(join(dir, 'sub'))).toThrow(expect.objectContaining({ code: 'EISDIR' }));
    await writeFile(join(dir, 'ok'), 'still reads');
    expect(files.text(join(dir, 'ok'))).toBe('still reads');
  });
});
