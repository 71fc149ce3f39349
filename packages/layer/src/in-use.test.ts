import { execFileSync } from 'node:child_process';
import { lstatSync } from 'node:fs';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import { setTimeout as delay } from 'node:timers/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit } from './commit.js';
import { LayerCodes } from './errors.js';
import { DEAD_PID, META, hashOf, makeUpper, tempDir } from './fixtures/cache.js';
import { acquire, acquireEach, holders, isInUse, LEASE_DIR, sweep } from './in-use.js';
import { get } from './last-used.js';
import { path as layerPath } from './layer-dir.js';
import { withLayer } from './lock.js';
import { Proc } from '@day11/exec';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('inuse');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

async function layer(n: number): Promise<string> {
  const upper = await makeUpper(osDir, { [`f${n}`]: 'x' });
  return (await commit({ osDir, hash: hashOf(n), upper, meta: META })).dir;
}

async function leaseFile(dir: string): Promise<string> {
  const [name] = await readdir(join(dir, LEASE_DIR));
  return join(dir, LEASE_DIR, name!);
}

async function fakeLease(dir: string, name: string, record: unknown): Promise<void> {
  await mkdir(join(dir, LEASE_DIR), { recursive: true });
  await writeFile(join(dir, LEASE_DIR, name), JSON.stringify(record));
}

describe('InUse.acquire / release', () => {
  it('leases layers for this process, marks them used, and releases idempotently', async () => {
    const a = await layer(1);
    const b = await layer(2);
    const before = Date.now();
    const lease = await acquire({ osDir, dirs: [b, a, a] });
    expect(lease.dirs).toEqual([a, b]);
    expect(await isInUse(a)).toBe(true);
    const [h] = await holders(a);
    expect(h).toMatchObject({ pid: process.pid, start: (await Proc.self()).start, alive: true });
    expect(Date.parse(h!.acquiredAt!)).toBeGreaterThanOrEqual(before - 1000);
    expect(await get(a)).toBeGreaterThanOrEqual(before - 1000);

    await lease.release();
    await lease.release();
    expect(await isInUse(a)).toBe(false);
    expect(await isInUse(b)).toBe(false);
    expect(await readdir(join(a, LEASE_DIR))).toEqual([]);
  });

  it('releases synchronously too (signal handlers, exit hooks), once whichever way', async () => {
    const a = await layer(1);
    const b = await layer(2);
    const lease = await acquire({ osDir, dirs: [a, b] });
    lease.releaseSync();
    expect(await isInUse(a)).toBe(false);
    expect(await isInUse(b)).toBe(false);
    lease.releaseSync();
    await lease.release();
    // A later lease on the same layer is not touched by the released one.
    const other = await acquire({ osDir, dirs: [a] });
    lease.releaseSync();
    expect(await isInUse(a)).toBe(true);
    await other.release();
  });

  it('keeps a layer in use while any of several leases is held', async () => {
    const a = await layer(1);
    const one = await acquire({ osDir, dirs: [a] });
    const two = await acquire({ osDir, dirs: [a] });
    await one.release();
    expect(await isInUse(a)).toBe(true);
    await two.release();
    expect(await isInUse(a)).toBe(false);
  });

  it('waits while the layer lock is held (a Gc may be about to set it aside), then leases it', async () => {
    const a = await layer(1);
    // A Gc that looked for leases before ours: it holds the layer's lock and
    // sets the layer aside for a moment while our lease is being written.
    let finishGc!: () => void;
    const gcDone = new Promise<void>((resolve) => (finishGc = resolve));
    let locked!: () => void;
    const gcLocked = new Promise<void>((resolve) => (locked = resolve));
    const gc = withLayer({ osDir, hash: hashOf(1) }, async () => {
      locked();
      await gcDone;
      await rename(a, `${a}.aside`);
      await rename(`${a}.aside`, a); // it found our lease: put back
    });
    await gcLocked;
    let leased = false;
    const taking = acquire({ osDir, dirs: [a] }).then((lease) => {
      leased = true;
      return lease;
    });
    await delay(200);
    expect(leased).toBe(false);
    finishGc();
    await gc;
    const lease = await taking;
    expect(lstatSync(join(a, 'layer.json')).isFile()).toBe(true);
    expect(await isInUse(a)).toBe(true);
    await lease.release();
  });

  it('fails with LAYER_NOT_FOUND for a missing layer and keeps no partial lease', async () => {
    const a = await layer(1);
    const missing = layerPath({ osDir, hash: hashOf(9) });
    const err = await acquire({ osDir, dirs: [a, missing] }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: LayerCodes.NOT_FOUND, path: missing });
    expect(await isInUse(a)).toBe(false);
  });

  it('makes the leases taken at once links to one record, released one by one', async () => {
    const dirs = [await layer(1), await layer(2), await layer(3)];
    const leases = await acquireEach({ osDir, dirs });
    const files = await Promise.all(dirs.map(leaseFile));
    const inodes = files.map((f) => lstatSync(f));
    // One inode, linked into each layer: no inode made per lease.
    expect(new Set(inodes.map((st) => st.ino)).size).toBe(1);
    expect(inodes[0]!.nlink).toBe(3);
    for (const dir of dirs) {
      expect(await holders(dir)).toMatchObject([{ pid: process.pid, alive: true }]);
    }
    await leases.get(dirs[0]!)!.release();
    expect(await isInUse(dirs[0]!)).toBe(false);
    expect(await isInUse(dirs[1]!)).toBe(true);
    expect(lstatSync(files[1]!).nlink).toBe(2);
    for (const lease of leases.values()) lease.releaseSync();
    expect(await isInUse(dirs[2]!)).toBe(false);
  });

  it.skipIf(process.getuid?.() !== 0)(
    'writes a lease of its own where a link cannot go (another filesystem)',
    async () => {
      const a = await layer(1);
      const b = await layer(2);
      // b's lease directory on a tmpfs of its own: a link from the cache's filesystem is EXDEV.
      await mkdir(join(b, LEASE_DIR));
      execFileSync('mount', ['-t', 'tmpfs', 'day11-test-leases', join(b, LEASE_DIR)]);
      try {
        const lease = await acquire({ osDir, dirs: [a, b] });
        expect(await isInUse(a)).toBe(true);
        expect(await holders(b)).toMatchObject([{ pid: process.pid, alive: true }]);
        expect(lstatSync(await leaseFile(b)).nlink).toBe(1);
        await lease.release();
        expect(await isInUse(b)).toBe(false);
      } finally {
        execFileSync('umount', [join(b, LEASE_DIR)]);
      }
    },
  );

  it('refuses directories that are not layers of osDir', async () => {
    await expect(acquire({ osDir, dirs: [join(osDir, 'fs')] })).rejects.toMatchObject({
      code: LayerCodes.BAD_ARGUMENT,
    });
    await expect(
      acquire({ osDir, dirs: [join(osDir, 'sub', 'build-000000000001')] }),
    ).rejects.toMatchObject({ code: LayerCodes.BAD_ARGUMENT });
  });
});

describe('InUse.holders / isInUse / sweep', () => {
  it('ignores leases of dead processes and of reused pids, and sweep removes them', async () => {
    const a = await layer(1);
    const me = await Proc.self();
    await fakeLease(a, `${DEAD_PID}-aa.lease`, { pid: DEAD_PID, start: '1' });
    // Our pid, but another start time: the process that took it is gone.
    await fakeLease(a, `${me.pid}-bb.lease`, { pid: me.pid, start: `${me.start}0` });
    // Still being written by a live process: the pid in the name counts.
    await writeFile(join(a, LEASE_DIR, `${me.pid}-cc.lease`), '');

    const found = await holders(a);
    expect(found.map((h) => [h.pid, h.alive]).sort()).toEqual(
      [
        [DEAD_PID, false],
        [me.pid, false],
        [me.pid, true],
      ].sort(),
    );
    expect(await isInUse(a)).toBe(true);
    const removed = await sweep(a);
    expect(removed).toHaveLength(2);
    expect(await readdir(join(a, LEASE_DIR))).toEqual([`${me.pid}-cc.lease`]);
  });

  it('gives [] and false for a layer without leases or a missing layer', async () => {
    const a = await layer(1);
    expect(await holders(a)).toEqual([]);
    expect(await isInUse(join(osDir, 'build-ffffffffffff'))).toBe(false);
    expect(await sweep(join(osDir, 'build-ffffffffffff'))).toEqual([]);
  });
});
