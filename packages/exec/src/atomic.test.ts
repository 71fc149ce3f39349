import { mkdtemp, readdir, readFile, rm, stat, writeFile as write } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { fsyncDir, fsyncFile, writeFile } from './atomic.js';
import { ExecCodes } from './errors.js';

describe('Atomic', () => {
  let dir: string;
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'day11-atomic-'));
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('replaces a file, leaving no temporary name behind', async () => {
    const path = join(dir, 'index.json');
    await write(path, 'old');
    await writeFile(path, 'new');
    expect(await readFile(path, 'utf8')).toBe('new');
    await writeFile(path, Buffer.from([1, 2, 3]), { mode: 0o600 });
    expect([...(await readFile(path))]).toEqual([1, 2, 3]);
    expect(await readdir(dir)).toEqual(['index.json']);
    // The mode applies to the new file, which replaced the old one.
    expect((await stat(path)).mode & 0o777).toBe(0o600);
  });

  it('fails with EXEC_WRITE_FAILED naming the file, and changes nothing', async () => {
    const path = join(dir, 'missing', 'x.json');
    await expect(writeFile(path, 'x')).rejects.toMatchObject({
      code: ExecCodes.WRITE_FAILED,
      path,
      message: expect.stringContaining(`Cannot write ${path}`) as unknown,
      hint: expect.stringContaining('writable') as unknown,
    });
    expect(await readdir(dir)).toEqual([]);
  });

  it('syncs files and directories', async () => {
    await write(join(dir, 'f'), 'x');
    await fsyncFile(join(dir, 'f'));
    await fsyncDir(dir);
    await fsyncDir(join(dir, 'missing')); // best effort: never throws
  });
});
