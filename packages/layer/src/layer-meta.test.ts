import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { file, load, save, find, type LayerMeta } from './layer-meta.js';

const meta: LayerMeta = {
  exit_status: 0,
  parent_hashes: ['aa'],
  uid: 1000,
  gid: 1000,
  base_hash: 'bb',
  disk_usage: 4096,
  timing: [['runc_run', 1.5]],
  created_at: '2026-01-02T03:04:05.000Z',
  failed_dep: null,
};

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-meta-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('LayerMeta', () => {
  it('round-trips with snake_case keys', async () => {
    await save(dir, meta);
    expect(await load(dir)).toEqual(meta);
    expect(JSON.parse(await readFile(file(dir), 'utf8'))).toHaveProperty('parent_hashes', ['aa']);
  });

  it('fills created_at when absent and honours the createdAt option', async () => {
    const { created_at: _omit, ...rest } = meta;
    await save(dir, rest);
    expect(Date.parse((await load(dir)).created_at)).toBeGreaterThan(Date.now() - 60_000);
    await save(dir, meta, { createdAt: '2020-01-01T00:00:00.000Z' });
    expect((await load(dir)).created_at).toBe('2020-01-01T00:00:00.000Z');
  });

  it('keeps unknown keys through a load and save', async () => {
    await writeFile(
      file(dir),
      JSON.stringify({ ...meta, written_by: 'day11-ocaml', extra: { a: 1 } }),
    );
    const loaded = await load(dir);
    await save(dir, { ...loaded, exit_status: 2 });
    const raw = JSON.parse(await readFile(file(dir), 'utf8')) as Record<string, unknown>;
    expect(raw).toMatchObject({ written_by: 'day11-ocaml', extra: { a: 1 }, exit_status: 2 });
  });

  it('rejects a missing file with LAYER_META_MISSING naming it', async () => {
    await expect(load(dir)).rejects.toMatchObject({
      code: LayerCodes.META_MISSING,
      path: file(dir),
    });
    expect(await find(dir)).toBeUndefined();
  });

  it.each([
    ['not JSON', '{"exit_status": 0,'],
    ['wrong type', JSON.stringify({ ...meta, exit_status: 'zero' })],
    ['missing field', JSON.stringify({ ...meta, timing: undefined })],
    ['array', '[]'],
    ['empty', ''],
  ])('rejects a corrupt file (%s) with LAYER_META_CORRUPT naming it', async (_what, text) => {
    await writeFile(file(dir), text);
    const err = await load(dir).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.META_CORRUPT, path: file(dir) });
    expect((err as Error).message).toContain(file(dir));
    await expect(find(dir)).rejects.toMatchObject({ code: LayerCodes.META_CORRUPT });
  });

  it('says what is wrong with every field, on one line', async () => {
    await writeFile(file(dir), JSON.stringify({ ...meta, exit_status: 'zero', uid: -1 }));
    const err = await load(dir).catch((e: unknown) => e);
    const message = (err as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toMatch(/exit_status: .*expected number.*; uid: .*>=0/);
  });

  it('refuses to write an invalid record and keeps the old file', async () => {
    await save(dir, meta);
    await expect(save(dir, { ...meta, uid: -1 })).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
    expect(await load(dir)).toEqual(meta);
  });

  it('leaves no temporary file behind', async () => {
    await save(dir, meta);
    await save(dir, meta);
    expect(await readdir(dir)).toEqual(['layer.json']);
  });

  it('fails with a typed error when the directory does not exist', async () => {
    await expect(save(join(dir, 'nope'), meta)).rejects.toMatchObject({
      code: LayerCodes.WRITE_FAILED,
    });
  });
});
