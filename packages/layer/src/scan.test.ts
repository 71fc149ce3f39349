import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { touch } from './last-used.js';
import { save } from './layer-meta.js';
import { each, layers } from './scan.js';
import { write } from './sidecar.js';

let osDir: string;
beforeEach(async () => {
  osDir = await mkdtemp(join(tmpdir(), 'day11-scan-'));
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const meta = {
  exit_status: 0,
  parent_hashes: [],
  uid: 0,
  gid: 0,
  base_hash: 'b',
  disk_usage: 0,
  timing: [],
  failed_dep: null,
};

describe('Scan.layers', () => {
  it('lists every layer with meta, sidecars and last use, and says why a layer is unreadable', async () => {
    const good = join(osDir, 'build-aaaaaaaaaaaa');
    const corrupt = join(osDir, 'build-bbbbbbbbbbbb');
    const missing = join(osDir, 'build-cccccccccccc');
    for (const d of [good, corrupt, missing]) await mkdir(d);
    await save(good, meta);
    await write(good, 'build.json', { pkg: 'x' });
    await touch(good, new Date(1_700_000_000_000));
    await writeFile(join(corrupt, 'layer.json'), '{');
    // Not layers: temp dirs, the registry, stray files.
    await mkdir(join(osDir, '.day11-tmp-1-ab-build-dddddddddddd'));
    await mkdir(join(osDir, 'packages'));
    await writeFile(join(osDir, 'build-eeeeeeeeeeee'), '');

    const found = await layers(osDir);
    expect(found.map((l) => l.name)).toEqual([
      'build-aaaaaaaaaaaa',
      'build-bbbbbbbbbbbb',
      'build-cccccccccccc',
    ]);
    expect(found[0]).toMatchObject({
      dir: good,
      hashPrefix: 'aaaaaaaaaaaa',
      sidecars: ['build.json'],
      lastUsed: 1_700_000_000_000,
      metaError: undefined,
    });
    expect(found[0]!.meta?.base_hash).toBe('b');
    expect(found[1]!.metaError?.code).toBe(LayerCodes.META_CORRUPT);
    expect(found[2]!.metaError?.code).toBe(LayerCodes.META_MISSING);
  });

  it('reads the sidecars asked for in the same pass, and says which layers have a lease directory', async () => {
    const a = join(osDir, 'build-aaaaaaaaaaaa');
    const b = join(osDir, 'build-bbbbbbbbbbbb');
    for (const d of [a, b]) {
      await mkdir(d);
      await save(d, meta);
    }
    await write(a, 'step.json', { id: 'hello', plan: 'plan.json' });
    await write(a, 'doc.json', { not: 'asked for' });
    await writeFile(join(b, 'step.json'), '[1, 2]'); // not an object: not a value
    await mkdir(join(b, '.in-use'));

    const [la, lb] = await layers(osDir, { read: ['step.json', 'base.json'] });
    expect([...la!.values]).toEqual([['step.json', { id: 'hello', plan: 'plan.json' }]]);
    expect(la!.leased).toBe(false);
    expect(lb!.sidecars).toEqual(['step.json']);
    expect(lb!.values.size).toBe(0);
    expect(lb!.leased).toBe(true);
    expect((await layers(osDir))[0]!.values.size).toBe(0);
    // The listing is made when asked for, and copies and JSON carry it.
    expect({ ...lb! }).toMatchObject({ sidecars: ['step.json'], leased: true });
    expect(JSON.parse(JSON.stringify(la))).toMatchObject({ sidecars: ['doc.json', 'step.json'] });
    await expect(layers(osDir, { read: ['layer.json'] })).rejects.toMatchObject({
      code: LayerCodes.SIDECAR_INVALID,
    });
  });

  it('gives [] for a missing cache and a typed error for a file', async () => {
    expect(await layers(join(osDir, 'nope'))).toEqual([]);
    await writeFile(join(osDir, 'file'), '');
    await expect(layers(join(osDir, 'file'))).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
  });
});

describe('Scan.each', () => {
  it('visits what Scan.layers lists, in the same order, across slices, and refuses a bad sidecar name', async () => {
    // 300 layers: more than one slice of 128.
    for (let i = 0; i < 300; i++) {
      const dir = join(osDir, `build-${i.toString(16).padStart(12, '0')}`);
      await mkdir(dir);
      if (i % 7 !== 0) await save(dir, { ...meta, exit_status: i % 3 });
      if (i % 2 === 0) await write(dir, 'step.json', { id: `s${i}` });
    }
    const visited: string[] = [];
    const steps: unknown[] = [];
    await each(
      osDir,
      (l) => {
        visited.push(l.name);
        steps.push(l.values.get('step.json')?.['id']);
      },
      { read: ['step.json'] },
    );
    const listed = await layers(osDir, { read: ['step.json'] });
    expect(visited).toEqual(listed.map((l) => l.name));
    expect(visited).toHaveLength(300);
    expect(steps).toEqual(listed.map((l) => l.values.get('step.json')?.['id']));
    expect(steps.filter((id) => id !== undefined)).toHaveLength(150);
    await expect(each(osDir, () => undefined, { read: ['../x'] })).rejects.toThrow();
    await each(join(osDir, 'nope'), () => {
      throw new Error('a missing cache has no layer');
    });
  });
});
