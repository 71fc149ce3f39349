import { access, mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit } from './commit.js';
import { LayerCodes } from './errors.js';
import { DEAD_PID, META, hashOf, makeUpper, tempDir } from './fixtures/cache.js';
import { removeLayer } from './gc.js';
import { acquire, holders, LEASE_DIR } from './in-use.js';
import { withLayer } from './lock.js';
import { hashPrefix } from './layer-dir.js';
import { sweep } from './recover.js';
import { layerOfAside, setAside } from './set-aside.js';
import { TempName } from '@day11/exec';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('aside');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

async function layer(n: number): Promise<string> {
  const upper = await makeUpper(osDir, { [`f${n}`]: 'x' });
  return (await commit({ osDir, hash: hashOf(n), upper, meta: META })).dir;
}

/** Entries of osDir that are temporary names (set-aside layers, leftovers). */
async function temps(): Promise<string[]> {
  return (await readdir(osDir)).filter((n) => TempName.is(n));
}

describe('setAside (the removal path of Gc)', () => {
  it('puts a layer back when a lease turns up in it after the rename', async () => {
    const dir = await layer(1);
    // A lease written without the lock: Gc's check before the rename did not
    // see it (it came after), but it is inside the layer the rename moves.
    const lease = await acquire({ osDir, dirs: [dir] });
    const outcome = await withLayer({ osDir, hash: hashPrefix(basename(dir))! }, () =>
      setAside(dir),
    );
    expect(outcome).toEqual({ skipped: 'in-use' });
    expect(await exists(join(dir, 'layer.json'))).toBe(true);
    expect((await holders(dir)).map((h) => h.alive)).toEqual([true]);
    expect(await temps()).toEqual([]);
    await lease.release();
  });

  it('sets a layer aside when only dead leases are in it, and says vanished for a missing one', async () => {
    const dir = await layer(1);
    await mkdir(join(dir, LEASE_DIR));
    const dead = { pid: DEAD_PID, start: '1', acquired_at: new Date().toISOString() };
    await writeFile(join(dir, LEASE_DIR, `${DEAD_PID}-abcdef.lease`), JSON.stringify(dead));
    expect((await holders(dir)).map((h) => h.alive)).toEqual([false]);
    const outcome = await setAside(dir);
    expect(outcome).toMatchObject({ aside: expect.stringContaining(TempName.PREFIX) as unknown });
    expect(await exists(dir)).toBe(false);
    expect(await setAside(dir)).toEqual({ skipped: 'vanished' });
  });

  it('Gc.removeLayer refuses a layer leased during its removal and leaves it in place', async () => {
    const dir = await layer(1);
    const lease = await acquire({ osDir, dirs: [dir] });
    await expect(removeLayer({ osDir, hash: hashOf(1) })).rejects.toMatchObject({
      code: LayerCodes.GC_FAILED,
    });
    await lease.release();
    expect(await removeLayer({ osDir, hash: hashOf(1) })).toBe(true);
    expect(await exists(dir)).toBe(false);
  });

  it('acquire waits for a Gc that has the layer aside, and finds it back in place', async () => {
    const dir = await layer(1);
    const first = await acquire({ osDir, dirs: [dir] });
    const hash = hashPrefix(basename(dir))!;
    const aside = TempName.beside(dir);
    let renamed!: () => void;
    let putBack!: () => void;
    const inView = new Promise<void>((r) => (renamed = r));
    const checked = new Promise<void>((r) => (putBack = r));
    const gc = withLayer({ osDir, hash }, async () => {
      await rename(dir, aside);
      renamed();
      await checked;
      await rename(aside, dir); // its re-check saw `first`: put back
    });
    await inView;
    // Outside the Gc's lock context: a lease taken now finds no layer and
    // must wait for the lock rather than fail.
    const second = acquire({ osDir, dirs: [dir] });
    await new Promise((r) => setTimeout(r, 100));
    putBack();
    await gc;
    const lease = await second;
    expect(lease.dirs).toEqual([dir]);
    expect((await holders(dir)).filter((h) => h.alive)).toHaveLength(2);
    await lease.release();
    await first.release();
  });

  it('acquire is NOT_FOUND when the Gc holding the layer aside deletes it', async () => {
    const dir = await layer(1);
    const hash = hashPrefix(basename(dir))!;
    let renamed!: () => void;
    let deleteIt!: () => void;
    const inView = new Promise<void>((r) => (renamed = r));
    const checked = new Promise<void>((r) => (deleteIt = r));
    const gc = withLayer({ osDir, hash }, async () => {
      const aside = TempName.beside(dir);
      await rename(dir, aside);
      renamed();
      await checked;
      await rm(aside, { recursive: true });
    });
    await inView;
    const leasing = acquire({ osDir, dirs: [dir] }).catch((e: unknown) => e);
    await new Promise((r) => setTimeout(r, 100));
    deleteIt();
    await gc;
    expect(await leasing).toMatchObject({ code: LayerCodes.NOT_FOUND });
    expect(await exists(dir)).toBe(false);
  });

  it('knows a set-aside layer by its temporary name', () => {
    const name = `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-build-0123456789ab`;
    expect(layerOfAside('/c', name)).toBe('/c/build-0123456789ab');
    expect(layerOfAside('/c', `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-run`)).toBeUndefined();
    expect(layerOfAside('/c', 'build-0123456789ab')).toBeUndefined();
  });
});

describe('Recover.sweep and set-aside layers', () => {
  it('restores, not deletes, a layer a killed Gc set aside while a live lease held it', async () => {
    const dir = await layer(1);
    const lease = await acquire({ osDir, dirs: [dir] });
    const aside = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-${basename(dir)}`);
    await rename(dir, aside); // the Gc died right after its rename
    const report = await sweep(osDir);
    expect(report.restored).toEqual([dir]);
    expect(report.temps).toEqual([]);
    expect(await exists(join(dir, 'layer.json'))).toBe(true);
    expect((await holders(dir)).map((h) => h.alive)).toEqual([true]);
    expect(await temps()).toEqual([]);
    await lease.release();
  });

  it('leaves it aside while its name is taken again, and deletes an unleased one', async () => {
    const dir = await layer(1);
    const lease = await acquire({ osDir, dirs: [dir] });
    const leased = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-${basename(dir)}`);
    await rename(dir, leased);
    await layer(1); // committed again meanwhile
    const other = await layer(2);
    const unleased = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0e-${basename(other)}`);
    await rename(other, unleased);
    const report = await sweep(osDir);
    expect(report).toMatchObject({ restored: [] });
    expect(report.leased).toEqual([leased]);
    expect(report.temps).toEqual([unleased]);
    expect(await exists(leased)).toBe(true);
    expect(await exists(unleased)).toBe(false);
    await lease.release(); // its file moved with the layer: still there
    await rm(join(leased, LEASE_DIR), { recursive: true }); // as when its holder goes
    expect((await sweep(osDir)).temps).toEqual([leased]);
  });
});
