import { mkdir, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Commit, Hash, InUse, LastUsed, LayerDir } from '@day11/layer';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import { LeaseTable } from './leases.js';
import { TempName } from '@day11/exec';

let osDir: string;
const tables: LeaseTable[] = [];
/** A table as a runner makes one; `lingerMs` as the runner's option. */
function table(lingerMs: number): LeaseTable {
  const t = new LeaseTable({ lingerMs, onChange: () => undefined });
  tables.push(t);
  return t;
}
beforeEach(async () => {
  osDir = await tempDir('leases');
});
afterEach(async () => {
  for (const t of tables.splice(0)) t.releaseAllSync();
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
    const t = table(Infinity);
    expect(t.memo(a)).toBeUndefined();
    const held = await t.leaseAll([a]);
    t.memo(a)!.set('etc', 'remembered');
    await held.release(); // lingers: still leased, still remembered
    expect(t.memo(a)?.get('etc')).toBe('remembered');
    const again = await t.leaseAll([a]);
    expect(t.memo(a)?.get('etc')).toBe('remembered');
    await again.release();
    await t.releaseIdle(); // gone: the layer may be collected and rebuilt differently
    expect(t.memo(a)).toBeUndefined();
    const now = table(0);
    await (await now.leaseAll([a])).release();
    expect(now.memo(a)).toBeUndefined();
  });
});

describe('leaseAll', () => {
  it('leases each layer once for concurrent runs, and releases it when the last is done', async () => {
    const [a, b] = [await layer(1), await layer(2)];
    const t = table(0);
    const one = await t.leaseAll([a, b, a]);
    expect(one.dirs).toEqual([a, b]);
    const two = await t.leaseAll([b]);
    expect(await leaseFiles(b)).toHaveLength(1); // shared, not a second lease
    await one.release();
    expect(await InUse.isInUse(a)).toBe(false);
    expect(await InUse.isInUse(b)).toBe(true);
    await two.release();
    await two.release(); // idempotent
    expect(await InUse.isInUse(b)).toBe(false);
    expect(t.size).toBe(0);
  });

  it('keeps a released lease for lingerMs; a run in between takes it over', async () => {
    const a = await layer(1);
    const t = table(150);
    await (await t.leaseAll([a])).release();
    expect(await InUse.isInUse(a)).toBe(true);
    const [file] = await leaseFiles(a);
    const again = await t.leaseAll([a]);
    expect(await leaseFiles(a)).toEqual([file]);
    await again.release();
    await sleep(300);
    expect(await InUse.isInUse(a)).toBe(false);
    expect(t.size).toBe(0);
  });

  it('releases each lingering lease at its own time, a later hold postponing it', async () => {
    const [a, b, c] = [await layer(1), await layer(2), await layer(3)];
    const t = table(200);
    await (await t.leaseAll([a])).release();
    await sleep(150);
    await (await t.leaseAll([b])).release();
    await (await t.leaseAll([c])).release();
    const again = await t.leaseAll([c]); // held again: not due any more
    await sleep(120);
    expect([await InUse.isInUse(a), await InUse.isInUse(b), await InUse.isInUse(c)]).toEqual([
      false,
      true,
      true,
    ]);
    await sleep(200);
    expect([await InUse.isInUse(b), await InUse.isInUse(c)]).toEqual([false, true]);
    await again.release();
    await sleep(300);
    expect(await InUse.isInUse(c)).toBe(false);
    expect(t.size).toBe(0);
  });

  it("keeps a released lease until releaseIdle when lingering is the runner's lifetime", async () => {
    const a = await layer(1);
    const t = table(Infinity);
    await (await t.leaseAll([a])).release();
    await sleep(100);
    expect(await InUse.isInUse(a)).toBe(true);
    await t.releaseIdle();
    expect(await InUse.isInUse(a)).toBe(false);
  });

  it('releaseIdle ends the lingering at once, but not a held lease', async () => {
    const [a, b] = [await layer(1), await layer(2)];
    const t = table(60_000);
    await (await t.leaseAll([a])).release();
    const held = await t.leaseAll([b]);
    await t.releaseIdle();
    expect(await InUse.isInUse(a)).toBe(false);
    expect(await InUse.isInUse(b)).toBe(true);
    await held.release();
    await t.releaseIdle();
    expect(t.size).toBe(0);
  });

  it('is all or nothing: a missing layer fails the call and releases the others at once', async () => {
    const a = await layer(1);
    const missing = LayerDir.path({ osDir, hash: 'e'.repeat(64) });
    const t = table(60_000);
    await expect(t.leaseAll([a, missing])).rejects.toMatchObject({
      code: 'LAYER_NOT_FOUND',
    });
    expect(await InUse.isInUse(a)).toBe(false);
    expect(t.size).toBe(0);
  });

  it('marks a layer used once per lease, when it ends, not on each run that joins it', async () => {
    const a = await layer(1);
    const t = table(Infinity);
    // Whole seconds, so the mtime reads back exactly.
    const old = new Date(Math.floor(Date.now() / 1000) * 1000 - 86400_000);
    await utimes(LastUsed.file(a), old, old);
    const first = await t.leaseAll([a]);
    await first.release();
    await (await t.leaseAll([a])).release();
    expect(await LastUsed.get(a)).toBe(old.getTime()); // runs join the lease: nothing written
    await t.releaseIdle();
    expect(await InUse.isInUse(a)).toBe(false);
    expect(await LastUsed.get(a)).toBeGreaterThan(Date.now() - 5000);
  });

  it('releaseAllSync marks the layers used as it lets them go', async () => {
    const a = await layer(1);
    const t = table(Infinity);
    const old = new Date(Math.floor(Date.now() / 1000) * 1000 - 86400_000);
    await t.leaseAll([a]);
    await utimes(LastUsed.file(a), old, old);
    t.releaseAllSync();
    expect(await LastUsed.get(a)).toBeGreaterThan(Date.now() - 5000);
  });

  it('releaseAllSync removes every lease file at once (for a dying process)', async () => {
    const [a, b] = [await layer(1), await layer(2)];
    const t = table(Infinity);
    await t.leaseAll([a, b]);
    await (await t.leaseAll([b])).release();
    t.releaseAllSync();
    expect(await leaseFiles(a)).toEqual([]);
    expect(await leaseFiles(b)).toEqual([]);
    expect(t.size).toBe(0);
  });
});
