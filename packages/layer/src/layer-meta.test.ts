import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { z } from 'zod';
import {
  file,
  load,
  save,
  find,
  findSync,
  validate,
  FIELDS,
  type LayerMeta,
} from './layer-meta.js';

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
    for (const likelyMissing of [false, true])
      expect(() => findSync(dir, { likelyMissing })).toThrow(
        expect.objectContaining({ code: LayerCodes.META_CORRUPT, path: file(dir) }),
      );
  });

  it('finds synchronously whether or not it expects the file to be missing', async () => {
    for (const likelyMissing of [false, true]) {
      expect(findSync(dir, { likelyMissing })).toBeUndefined();
      expect(findSync(join(dir, 'no-such-layer'), { likelyMissing })).toBeUndefined();
    }
    await save(dir, meta);
    for (const likelyMissing of [false, true])
      expect(findSync(dir, { likelyMissing })).toEqual(meta);
    // A layer "directory" that is a file: the same typed error either way, naming the path.
    const notDir = join(dir, 'layer.json');
    for (const likelyMissing of [false, true])
      expect(() => findSync(notDir, { likelyMissing })).toThrow(
        expect.objectContaining({ code: LayerCodes.META_CORRUPT, path: file(notDir) }),
      );
  });

  it('says what is wrong with every field, on one line', async () => {
    await writeFile(file(dir), JSON.stringify({ ...meta, exit_status: 'zero', uid: -1 }));
    const err = await load(dir).catch((e: unknown) => e);
    const message = (err as Error).message;
    expect(message).not.toContain('\n');
    expect(message).toMatch(
      /exit_status: expected a whole number, got "zero"; uid: expected a whole number ≥ 0, got -1$/,
    );
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

describe('LayerMeta.validate', () => {
  const hash = 'a'.repeat(64);
  const valid: unknown[] = [
    meta,
    { ...meta, hash },
    { ...meta, failed_dep: 'cc', exit_status: -1, extra: { nested: [1] } },
    { ...meta, timing: [] },
    // Known fields out of the schema's order: zod reorders them, and so must the result.
    Object.assign({ created_at: meta.created_at }, meta, { hash }),
    { extra: 1, ...meta },
  ];
  const invalid: unknown[] = [
    null,
    [],
    'layer',
    { ...meta, uid: -1 },
    { ...meta, gid: 1.5 },
    { ...meta, exit_status: '0' },
    { ...meta, exit_status: 1.5 },
    { ...meta, disk_usage: 2 ** 60 },
    { ...meta, parent_hashes: ['aa', 1] },
    { ...meta, timing: [['run', 1, 2]] },
    { ...meta, timing: [['run']] },
    { ...meta, timing: [[1, 1]] },
    { ...meta, created_at: undefined },
    { ...meta, failed_dep: undefined },
    { ...meta, hash: 'A'.repeat(64) },
    { ...meta, hash: 'a'.repeat(63) },
    Object.fromEntries(Object.entries(meta).filter(([k]) => k !== 'base_hash')),
  ];

  // The zod schema layer.json was checked with before: the hand-written
  // checks must accept and refuse exactly what it did.
  const reference = z.looseObject({
    exit_status: z.number().int(),
    parent_hashes: z.array(z.string()),
    uid: z.number().int().nonnegative(),
    gid: z.number().int().nonnegative(),
    base_hash: z.string(),
    disk_usage: z.number().int().nonnegative(),
    timing: z.array(z.tuple([z.string(), z.number()])),
    created_at: z.string(),
    failed_dep: z.string().nullable(),
    hash: z
      .string()
      .regex(/^[0-9a-f]{64}$/)
      .optional(),
  });

  it('accepts what the zod schema accepted, and orders the fields as it did', () => {
    expect(FIELDS).toEqual(Object.keys(reference.shape));
    for (const value of valid) {
      const ours = validate(JSON.parse(JSON.stringify(value)));
      const zods = reference.safeParse(JSON.parse(JSON.stringify(value)));
      expect(ours.success).toBe(true);
      expect(JSON.stringify(ours.data)).toBe(JSON.stringify(zods.data));
    }
  });

  it('refuses what it refused, at the same places, saying what was expected and found', () => {
    for (const value of invalid) {
      const ours = validate(value);
      expect(ours.success, JSON.stringify(value)).toBe(false);
      expect(ours.error?.issues.map((i) => i.path)).toEqual(
        reference.safeParse(value).error?.issues.map((i) => i.path),
      );
    }
    const r = validate({ ...meta, uid: -1, timing: [['run', 'fast']], hash: 'A'.repeat(64) });
    expect(r.error?.message).toBe(
      'uid: expected a whole number ≥ 0, got -1; timing.0.1: expected a number of seconds, got "fast"; ' +
        'hash: expected a full sha256 hex hash (64 of 0-9a-f), got "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA..."',
    );
    expect(validate([]).error?.message).toBe('the record: expected an object, got []');
    expect(validate({ ...meta, base_hash: undefined }).error?.issues).toEqual([
      { path: ['base_hash'], message: 'required' },
    ]);
  });

  it('returns a canonical record as is (no copy), and copies nothing it should not', () => {
    const record = JSON.parse(JSON.stringify({ ...meta, hash })) as unknown;
    expect(validate(record).data).toBe(record);
    const reordered = Object.assign({ created_at: meta.created_at }, meta);
    expect(validate(reordered).data).not.toBe(reordered);
  });
});
