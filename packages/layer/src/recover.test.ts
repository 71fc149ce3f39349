import { access, mkdir, readdir, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit } from './commit.js';
import { DEAD_PID, META, hashOf, makeUpper, tempDir } from './fixtures/cache.js';
import { acquire, LEASE_DIR } from './in-use.js';
import { layerLockPath, withLayer, withPath } from './lock.js';
import { sweep, sweepDirs } from './recover.js';
import { Proc, TempName } from '@day11/exec';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('recover');
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
  const upper = await makeUpper(osDir, { f: 'x' });
  return (await commit({ osDir, hash: hashOf(n), upper, meta: META })).dir;
}

describe('Recover.sweep', () => {
  it('removes temp entries of dead processes, keeps live ones and everything else', async () => {
    const dir = await layer(1);
    const deadDir = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-build-000000000002`);
    const deadFile = join(dir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-layer.json`);
    const deadPkg = join(
      osDir,
      'packages',
      'hello.1.0',
      `${TempName.PREFIX}${DEAD_PID}-01-build-x`,
    );
    const live = join(osDir, `${TempName.PREFIX}${process.pid}-0a0b0c0d-build-000000000003`);
    const userFile = join(dir, 'fs', `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-mine`); // build output
    const unparsable = join(osDir, `${TempName.PREFIX}nopid`);
    await mkdir(join(deadDir, 'fs'), { recursive: true });
    await mkdir(join(osDir, 'packages', 'hello.1.0'), { recursive: true });
    for (const f of [deadFile, deadPkg, userFile, unparsable]) await writeFile(f, '');
    await mkdir(live);

    const report = await sweep(osDir);
    expect(report.temps.sort()).toEqual([deadDir, deadFile, deadPkg].sort());
    for (const p of [deadDir, deadFile, deadPkg]) expect(await exists(p)).toBe(false);
    for (const p of [live, userFile, unparsable, join(dir, 'layer.json')]) {
      expect(await exists(p)).toBe(true);
    }
  });

  it('with layers: false, sweeps the top level, locks and packages/ but no layer or id directory', async () => {
    const dir = await layer(1);
    const deadTop = join(osDir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-build-000000000002`);
    const deadInLayer = join(dir, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-layer.json`);
    const deadLease = join(dir, LEASE_DIR, `${DEAD_PID}-ff.lease`);
    const deadLock = layerLockPath({ osDir, hash: hashOf(5) });
    // A killed link update's temporary: in packages/ now, in the id's directory before.
    const deadLink = join(osDir, 'packages', `${TempName.PREFIX}${DEAD_PID}-01-build-x`);
    const deadOldLink = join(osDir, 'packages', 'a.1', `${TempName.PREFIX}${DEAD_PID}-02-build-x`);
    await mkdir(deadTop);
    await mkdir(join(dir, LEASE_DIR), { recursive: true });
    await mkdir(join(osDir, 'packages', 'a.1'), { recursive: true });
    await mkdir(deadLock, { recursive: true });
    await writeFile(join(deadLock, 'owner'), JSON.stringify({ pid: DEAD_PID, start: '7' }));
    for (const f of [deadInLayer, deadLease, deadOldLink]) await writeFile(f, '');
    await symlink('../build-000000000001', deadLink);

    const report = await sweep(osDir, { layers: false });
    expect(report.temps.sort()).toEqual([deadTop, deadLink].sort());
    expect(report.locks).toEqual([deadLock]);
    expect(report.leases).toEqual([]);
    for (const p of [deadInLayer, deadLease, deadOldLink]) expect(await exists(p)).toBe(true);
    // The full sweep takes the rest.
    const full = await sweep(osDir);
    expect(full.temps.sort()).toEqual([deadInLayer, deadOldLink].sort());
    expect(full.leases).toEqual([deadLease]);
  });

  it('removes stale locks (owner dead, or not refreshed) and keeps held ones', async () => {
    const deadOwner = layerLockPath({ osDir, hash: hashOf(1) });
    const expired = layerLockPath({ osDir, hash: hashOf(2) });
    const fresh = layerLockPath({ osDir, hash: hashOf(3) });
    for (const p of [deadOwner, expired, fresh]) await mkdir(p, { recursive: true });
    await writeFile(join(deadOwner, 'owner'), JSON.stringify({ pid: DEAD_PID, start: '7' }));
    await writeFile(join(expired, 'owner'), JSON.stringify(await Proc.self()));
    const old = new Date(Date.now() - 60_000);
    await utimes(expired, old, old);

    const report = await withLayer({ osDir, hash: hashOf(4) }, () => sweep(osDir));
    expect(report.locks.sort()).toEqual([deadOwner, expired].sort());
    expect(await readdir(join(osDir, '.locks'))).toEqual(['build-000000000003.lock']);
    // The held lock (hash 4) was kept while held, and released after.
    expect(await exists(fresh)).toBe(true);
  });

  it('removes dead leases, keeps live ones, and reports incomplete layers', async () => {
    const a = await layer(1);
    const lease = await acquire({ osDir, dirs: [a] });
    const dead = join(a, LEASE_DIR, `${DEAD_PID}-ff.lease`);
    await writeFile(dead, JSON.stringify({ pid: DEAD_PID, start: '1' }));
    const broken = join(osDir, 'build-00000000000b');
    await mkdir(join(broken, 'fs'), { recursive: true });

    const report = await sweep(osDir);
    expect(report.leases).toEqual([dead]);
    expect(report.incompleteLayers).toEqual([broken]);
    expect(await readdir(join(a, LEASE_DIR))).toHaveLength(1);
    expect(await exists(broken)).toBe(true); // reported, not removed
    await lease.release();
  });

  it('gives an empty report for a missing or clean cache', async () => {
    const empty = {
      temps: [],
      locks: [],
      leases: [],
      restored: [],
      leased: [],
      mounted: [],
      incompleteLayers: [],
    };
    expect(await sweep(join(osDir, 'missing'))).toEqual(empty);
    await layer(1);
    expect(await sweep(osDir)).toEqual(empty);
  });
});

describe('Recover.sweepDirs', () => {
  it("removes dead temps in the given directories and a dead holder's lock, keeps the rest", async () => {
    const store = join(osDir, 'store');
    const blobs = join(store, 'blobs');
    await mkdir(blobs, { recursive: true });
    const deadBlob = join(blobs, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-blob`);
    const deadIndex = join(store, `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-index.json`);
    const liveIndex = join(store, `${TempName.PREFIX}${process.pid}-0a0b0c0d-index.json`);
    const blob = join(blobs, 'abcd');
    const nested = join(store, 'sub', `${TempName.PREFIX}${DEAD_PID}-0a0b0c0d-x`);
    await mkdir(join(store, 'sub'));
    for (const f of [deadBlob, deadIndex, liveIndex, blob, nested]) await writeFile(f, '');
    const lock = join(store, 'index.json.lock');
    await mkdir(lock);
    await writeFile(join(lock, 'owner'), JSON.stringify({ pid: DEAD_PID, start: '7' }));

    const report = await sweepDirs({ dirs: [store, blobs, join(osDir, 'missing')], locks: [lock] });
    expect(report.temps.sort()).toEqual([deadBlob, deadIndex].sort());
    expect(report.locks).toEqual([lock]);
    expect(report.mounted).toEqual([]);
    for (const p of [deadBlob, deadIndex, lock]) expect(await exists(p)).toBe(false);
    // Live temps, real files, and what is below the given directories stay.
    for (const p of [liveIndex, blob, nested]) expect(await exists(p)).toBe(true);
  });

  it('keeps a lock whose holder lives', async () => {
    const file = join(osDir, 'index.json');
    const report = await withPath(file, () =>
      sweepDirs({ dirs: [osDir], locks: [`${file}.lock`] }),
    );
    expect(report.locks).toEqual([]);
  });
});
