import { mkdir, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Commit, Hash, InUse, LastUsed, LayerDir } from '@day11/layer';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import { heldCount, leaseAll, leaseMemo, releaseAllSync, releaseIdleLeases } from './leases.js';
import { TempName } from '@day11/exec';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('leases');
});
afterEach(async () => {
  releaseAllSync();
  await rm(osDir, { recursive: true, force: true });
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function layer(n: number): Promise<string> {
  const upper = TempName.inside(osDir, `up${n}`);
  await mkdir(upper);
  await writeFile(join(upper, 'f'), String(n));
  const meta = {
    exit_status: 0,
    parent_hashes: [],
    uid: 0,
    gid: 0,
    base_hash: 'b'.repeat(64),
    timing: [],
    failed_dep: null,
  };
  return (await Commit.commit({ osDir, hash: Hash.ofStrings(['l', String(n)]), upper, meta })).dir;
}

async function leaseFiles(dir: string): Promise<string[]> {
  return readdir(join(dir, InUse.LEASE_DIR)).catch(() => []);
}

describe('leaseMemo', () => {
  it('lives exactly as long as the lease, lingering included', async () => {
    const a = await layer(1);
    expect(leaseMemo(a)).toBeUndefined();
    const held = await leaseAll([a], { lingerMs: 60_000 });
    leaseMemo(a)!.set('etc', 'remembered');
    await held.release(); // lingers: still leased, still remembered
    expect(leaseMemo(a)?.get('etc')).toBe('remembered');
    const again = await leaseAll([a], { lingerMs: 0 });
    expect(leaseMemo(a)?.get('etc')).toBe('remembered');
    await again.release(); // gone: the layer may be collected and rebuilt differently
    expect(leaseMemo(a)).toBeUndefined();
    await (await leaseAll([a], { lingerMs: 0 })).release();
    expect(leaseMemo(a)).toBeUndefined();
  });
});

describe('leaseAll', () => {
  it('leases each layer once for concurrent runs, and releases it when the last is done', async () => {
    const [a, b] = [await layer(1), await layer(2)];
    const one = await leaseAll([a, b, a], { lingerMs: 0 });
    expect(one.dirs).toEqual([a, b]);
    const two = await leaseAll([b], { lingerMs: 0 });
    expect(await leaseFiles(b)).toHaveLength(1); // shared, not a second lease
    await one.release();
    expect(await InUse.isInUse(a)).toBe(false);
    expect(await InUse.isInUse(b)).toBe(true);
    await two.release();
    await two.release(); // idempotent
    expect(await InUse.isInUse(b)).toBe(false);
    expect(heldCount()).toBe(0);
  });

  it('keeps a released lease for lingerMs; a run in between takes it over', async () => {
    const a = await layer(1);
    await (await leaseAll([a], { lingerMs: 150 })).release();
    expect(await InUse.isInUse(a)).toBe(true);
    const [file] = await leaseFiles(a);
    const again = await leaseAll([a], { lingerMs: 150 });
    expect(await leaseFiles(a)).toEqual([file]);
    await again.release();
    await sleep(300);
    expect(await InUse.isInUse(a)).toBe(false);
    expect(heldCount()).toBe(0);
  });

  it('releases each lingering lease at its own time, a later hold postponing it', async () => {
    const [a, b, c] = [await layer(1), await layer(2), await layer(3)];
    await (await leaseAll([a], { lingerMs: 400 })).release();
    await (await leaseAll([b], { lingerMs: 100 })).release();
    await (await leaseAll([c], { lingerMs: 100 })).release();
    const again = await leaseAll([c], { lingerMs: 100 }); // held again: not due any more
    await sleep(250);
    expect([await InUse.isInUse(a), await InUse.isInUse(b), await InUse.isInUse(c)]).toEqual([
      true,
      false,
      true,
    ]);
    await again.release();
    await sleep(350);
    expect([await InUse.isInUse(a), await InUse.isInUse(c)]).toEqual([false, false]);
    expect(heldCount()).toBe(0);
  });

  it('releaseIdleLeases ends the lingering at once, but not a held lease', async () => {
    const [a, b] = [await layer(1), await layer(2)];
    await (await leaseAll([a], { lingerMs: 60_000 })).release();
    const held = await leaseAll([b], { lingerMs: 60_000 });
    await releaseIdleLeases();
    expect(await InUse.isInUse(a)).toBe(false);
    expect(await InUse.isInUse(b)).toBe(true);
    await held.release();
    await releaseIdleLeases();
    expect(heldCount()).toBe(0);
  });

  it('is all or nothing: a missing layer fails the call and releases the others at once', async () => {
    const a = await layer(1);
    const missing = LayerDir.path({ osDir, hash: 'e'.repeat(64) });
    await expect(leaseAll([a, missing], { lingerMs: 60_000 })).rejects.toMatchObject({
      code: 'LAYER_NOT_FOUND',
    });
    expect(await InUse.isInUse(a)).toBe(false);
    expect(heldCount()).toBe(0);
  });

  it('marks a layer used when a run joins its lease, at most once a second', async () => {
    const a = await layer(1);
    const first = await leaseAll([a], { lingerMs: 0 });
    // Whole seconds, so the mtime reads back exactly.
    const old = new Date(Math.floor(Date.now() / 1000) * 1000 - 86400_000);
    await utimes(LastUsed.file(a), old, old);
    const soon = await leaseAll([a], { lingerMs: 0 });
    expect(await LastUsed.get(a)).toBe(old.getTime()); // just marked by the first run
    await sleep(1100);
    const later = await leaseAll([a], { lingerMs: 0 });
    expect(await LastUsed.get(a)).toBeGreaterThan(Date.now() - 5000);
    for (const l of [first, soon, later]) await l.release();
  });

  it('releaseAllSync removes every lease file at once (for a dying process)', async () => {
    const [a, b] = [await layer(1), await layer(2)];
    await leaseAll([a, b], { lingerMs: 0 });
    await (await leaseAll([b], { lingerMs: 60_000 })).release();
    releaseAllSync();
    expect(await leaseFiles(a)).toEqual([]);
    expect(await leaseFiles(b)).toEqual([]);
    expect(heldCount()).toBe(0);
  });
});
