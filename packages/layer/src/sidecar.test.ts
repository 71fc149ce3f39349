import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { list, read, write } from './sidecar.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-sidecar-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('Sidecar', () => {
  it('writes, reads and lists JSON objects', async () => {
    await write(dir, 'build.json', { pkg: 'hello.1.0', deps: ['a'] });
    await write(dir, 'doc.json', { html: true });
    await writeFile(join(dir, 'layer.json'), '{}');
    await writeFile(join(dir, 'layer.log'), '');
    expect(await read(dir, 'build.json')).toEqual({ pkg: 'hello.1.0', deps: ['a'] });
    expect(await list(dir)).toEqual(['build.json', 'doc.json']);
  });

  it('returns undefined for an absent sidecar', async () => {
    expect(await read(dir, 'none.json')).toBeUndefined();
  });

  it.each([[[1, 2]], [null], ['text'], [3]])(
    'refuses to write %j, which is not an object',
    async (value) => {
      await expect(write(dir, 'x.json', value)).rejects.toMatchObject({
        code: LayerCodes.SIDECAR_INVALID,
      });
      expect(await readdir(dir)).toEqual([]);
    },
  );

  it.each(['layer.json', '../x.json', 'x.txt', '.hidden.json', 'a/b.json', ''])(
    'refuses the sidecar name %j',
    async (name) => {
      await expect(write(dir, name, {})).rejects.toMatchObject({
        code: LayerCodes.SIDECAR_INVALID,
      });
    },
  );

  it.each([
    ['array', '[1]'],
    ['garbage', '{"a":'],
    ['scalar', '42'],
  ])('reports a corrupt sidecar (%s) with its path', async (_what, text) => {
    await writeFile(join(dir, 'bad.json'), text);
    await expect(read(dir, 'bad.json')).rejects.toMatchObject({
      code: LayerCodes.SIDECAR_CORRUPT,
      path: join(dir, 'bad.json'),
    });
  });
});
