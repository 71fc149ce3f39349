import { access, link, mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commit } from './commit.js';
import { LayerCodes } from './errors.js';
import { DEAD_PID, META, hashOf, makeUpper, tempDir, tempsIn } from './fixtures/cache.js';
import { diskUsage, plan, prune, type GcPlan } from './gc.js';
import { acquire, LEASE_DIR } from './in-use.js';
import { file as lastUsedFile, touch } from './last-used.js';
import { withLayer } from './lock.js';
import { ensure } from './layer-symlinks.js';
import { layers, symlinks } from './scan.js';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('gc');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const KiB = 1024;
const MiB = 1024 * KiB;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

/** Commits layer `n` with a file of `size` bytes, last used at `usedAt` (epoch ms). */
async function layer(n: number, usedAt: number, size = 256 * KiB): Promise<string> {
  const upper = await makeUpper(osDir, { [`data${n}`]: 'x'.repeat(size) });
  const { dir } = await commit({ osDir, hash: hashOf(n), upper, meta: META });
  await touch(dir, new Date(usedAt));
  return dir;
}

const names = (p: GcPlan) => p.deletions.map((d) => d.name);

function expectConsistent(p: GcPlan): void {
  const freed = p.deletions.reduce((sum, d) => sum + d.bytes, 0);
  expect(p.totalBytes - p.totalAfterBytes).toBe(freed);
}

describe('Gc.plan', () => {
  it('picks least recently used first and stops once keepBytes is reached', async () => {
    await layer(3, 3000);
    await layer(1, 1000);
    await layer(2, 2000);
    const all = await plan({ osDir, keepBytes: 0 });
    expect(names(all)).toEqual(['build-000000000001', 'build-000000000002', 'build-000000000003']);
    expect(all.totalAfterBytes).toBe(0);
    expectConsistent(all);
    expect(all.deletions[0]!.lastUsed).toBe(1000);
    expect(all.deletions[0]!.bytes).toBeGreaterThanOrEqual(256 * KiB);

    const one = await plan({ osDir, keepBytes: all.totalBytes - 1 });
    expect(names(one)).toEqual(['build-000000000001']);
    expect(one.totalAfterBytes).toBeLessThanOrEqual(all.totalBytes - 1);
    expectConsistent(one);
    expect((await plan({ osDir, keepBytes: all.totalBytes })).deletions).toEqual([]);
  });

  it('only considers layers last used before `before` (Date or epoch ms)', async () => {
    await layer(1, 1000);
    await layer(2, 2000);
    await layer(3, 3000);
    expect(names(await plan({ osDir, before: 2500 }))).toEqual([
      'build-000000000001',
      'build-000000000002',
    ]);
    expect(names(await plan({ osDir, before: new Date(2000) }))).toEqual(['build-000000000001']);
    // Both: candidates before 2500, but stop as soon as keepBytes is met.
    const total = (await plan({ osDir, before: 0 })).totalBytes;
    expect(names(await plan({ osDir, before: 2500, keepBytes: total - 1 }))).toEqual([
      'build-000000000001',
    ]);
  });

  it('falls back to layer.json created_at when last_used is missing', async () => {
    await layer(1, 1000);
    const upper = await makeUpper(osDir, { f: 'x' });
    const { dir } = await commit({
      osDir,
      hash: hashOf(2),
      upper,
      meta: { ...META, created_at: new Date(500).toISOString() },
    });
    await rm(lastUsedFile(dir));
    const p = await plan({ osDir, keepBytes: 0 });
    expect(p.deletions.map((d) => [d.name, d.lastUsed])).toEqual([
      ['build-000000000002', 500],
      ['build-000000000001', 1000],
    ]);
  });

  it('counts a file hardlinked into several layers once, attributed to the last one deleted', async () => {
    const a = await layer(1, 1000, 1 * MiB);
    const b = await layer(2, 2000, 0);
    await link(join(a, 'fs', 'data1'), join(b, 'fs', 'shared'));
    const total = (await plan({ osDir, before: 0 })).totalBytes;
    expect(total).toBeGreaterThanOrEqual(1 * MiB);
    expect(total).toBeLessThan(1 * MiB + 256 * KiB); // not twice

    const both = await plan({ osDir, keepBytes: 0 });
    expect(both.deletions[0]!.bytes).toBeLessThan(64 * KiB); // a: the shared file survives in b
    expect(both.deletions[1]!.bytes).toBeGreaterThanOrEqual(1 * MiB); // b frees it
    expectConsistent(both);

    const onlyA = await plan({ osDir, before: 1500 });
    expect(onlyA.totalAfterBytes).toBeGreaterThanOrEqual(1 * MiB);
  });

  it('never attributes an inode that is also linked from outside the cache', async () => {
    const a = await layer(1, 1000, 1 * MiB);
    const outside = join(osDir, 'outside');
    await link(join(a, 'fs', 'data1'), outside);
    const p = await plan({ osDir, keepBytes: 0 });
    expect(p.deletions[0]!.bytes).toBeLessThan(64 * KiB);
    expect(p.totalAfterBytes).toBeGreaterThanOrEqual(1 * MiB);
    expectConsistent(p);
  });

  it('never plans a layer with a live lease; a dead lease does not protect', async () => {
    const a = await layer(1, 1000);
    const b = await layer(2, 2000);
    const lease = await acquire({ osDir, dirs: [a] });
    await touch(a, new Date(1000)); // acquire marked it used; keep it the oldest
    await mkdir(join(b, LEASE_DIR));
    await writeFile(join(b, LEASE_DIR, `${DEAD_PID}-x.lease`), JSON.stringify({ pid: DEAD_PID }));
    const p = await plan({ osDir, keepBytes: 0 });
    expect(names(p)).toEqual(['build-000000000002']);
    expect(p.inUse).toEqual([a]);
    expect(p.totalAfterBytes).toBeGreaterThan(0);
    await lease.release();
  });

  it('rejects bad options with LAYER_BAD_ARGUMENT', async () => {
    for (const bad of [
      { keepBytes: -1 },
      { keepBytes: Number.NaN },
      { before: new Date('not a date') },
      { before: Number.POSITIVE_INFINITY },
      {},
    ]) {
      await expect(plan({ osDir, ...bad })).rejects.toMatchObject({
        code: LayerCodes.BAD_ARGUMENT,
      });
    }
  });

  it('plans nothing for an empty or missing cache', async () => {
    expect(await plan({ osDir: join(osDir, 'missing'), keepBytes: 0 })).toEqual({
      totalBytes: 0,
      totalAfterBytes: 0,
      deletions: [],
      inUse: [],
    });
  });
});

describe('Gc.prune', () => {
  it('removes the registry links of the layers it deletes, and id dirs left empty', async () => {
    await layer(1, 1000);
    const kept = await layer(2, 3000);
    await ensure({
      packagesDir: join(osDir, 'packages'),
      id: 'gone.1',
      layerName: 'build-000000000001',
    });
    await ensure({
      packagesDir: join(osDir, 'packages'),
      id: 'both',
      layerName: 'build-000000000001',
    });
    await ensure({
      packagesDir: join(osDir, 'packages'),
      id: 'both',
      layerName: 'build-000000000002',
    });
    const r = await prune({ osDir, before: 2000 });
    expect(names(r)).toEqual(['build-000000000001']);
    expect(r.unlinked.sort()).toEqual([
      join(osDir, 'packages/both/build-000000000001'),
      join(osDir, 'packages/gone.1/build-000000000001'),
    ]);
    expect(await readdir(join(osDir, 'packages'))).toEqual(['both']);
    expect((await symlinks(join(osDir, 'packages'))).map((l) => l.target)).toEqual([kept]);
  });

  it('dry run deletes nothing and reports the plan', async () => {
    await layer(1, 1000);
    await layer(2, 2000);
    const r = await prune({ osDir, keepBytes: 0, dryRun: true });
    expect(r.dryRun).toBe(true);
    expect(names(r)).toEqual(['build-000000000001', 'build-000000000002']);
    expect(await layers(osDir)).toHaveLength(2);
  });

  it('deletes what the plan says, leaving no temp dirs, locks or partial layers', async () => {
    await layer(1, 1000);
    await layer(2, 2000);
    const c = await layer(3, 3000);
    const r = await prune({ osDir, before: 2500 });
    expect(r.dryRun).toBe(false);
    expect(names(r)).toEqual(['build-000000000001', 'build-000000000002']);
    expect(r.skipped).toEqual([]);
    expect((await layers(osDir)).map((l) => l.dir)).toEqual([c]);
    expect(await tempsIn(osDir)).toEqual([]);
    expect(await readdir(join(osDir, '.locks'))).toEqual([]);
    expect(r.totalAfterBytes).toBe(await diskUsage(c));
  });

  it('skips a layer whose lock is held and deletes the next candidate instead', async () => {
    const a = await layer(1, 1000);
    const b = await layer(2, 2000);
    const c = await layer(3, 3000);
    const total = (await plan({ osDir, before: 0 })).totalBytes;
    let release!: () => void;
    const holding = withLayer(
      { osDir, hash: hashOf(1) },
      () => new Promise<void>((r) => (release = r)),
    );
    await new Promise((r) => setTimeout(r, 50));
    const r = await prune({ osDir, keepBytes: total - 1, lockTimeoutMs: 100 });
    release();
    await holding;
    expect(r.skipped).toEqual([{ dir: a, reason: 'busy' }]);
    expect(names(r)).toEqual(['build-000000000002']);
    expect(await exists(a)).toBe(true);
    expect(await exists(b)).toBe(false);
    expect(await exists(c)).toBe(true);
  });

  it('is mutually exclusive with InUse.acquire: a leased layer survives, a collected one is NOT_FOUND', async () => {
    for (let i = 0; i < 20; i++) {
      const dir = await layer(100 + i, Date.now() - 10_000);
      const [pruned, leased] = await Promise.allSettled([
        prune({ osDir, before: Date.now() + 60_000 }),
        // Spread the start so both orders happen.
        sleep(i % 5 === 0 ? 0 : Math.random() * 40).then(() => acquire({ osDir, dirs: [dir] })),
      ]);
      expect(pruned.status).toBe('fulfilled');
      if (leased.status === 'fulfilled') {
        expect(await exists(join(dir, 'layer.json'))).toBe(true);
        await leased.value.release();
      } else {
        expect(leased.reason).toMatchObject({ code: LayerCodes.NOT_FOUND });
        expect(await exists(dir)).toBe(false);
      }
      await rm(dir, { recursive: true, force: true });
    }
  });
});

describe('Gc knows the graph', () => {
  /** A random cache: layer 0 is the base, every other layer stands on it and on some earlier layers. */
  const dagArb = fc.integer({ min: 2, max: 9 }).chain((n) =>
    fc.record({
      parents: fc.tuple(
        ...Array.from({ length: n }, (_, i) =>
          fc.subarray(Array.from({ length: Math.max(0, i - 1) }, (_, j) => j + 1)),
        ),
      ),
      usedAt: fc.array(fc.integer({ min: 1, max: 50 }), { minLength: n, maxLength: n }),
      inUse: fc.subarray(Array.from({ length: n }, (_, i) => i)),
      keep: fc.integer({ min: 0, max: n }),
      before: fc.option(fc.integer({ min: 1, max: 51 }), { nil: undefined }),
    }),
  );

  it('never deletes a layer that a remaining layer was built on, nor its base (random DAGs)', async () => {
    await fc.assert(
      fc.asyncProperty(dagArb, async ({ parents, usedAt, inUse, keep, before }) => {
        const dir = await tempDir('gc-dag');
        try {
          const base = hashOf(1000);
          const hashes = parents.map((_, i) => (i === 0 ? base : hashOf(i)));
          const leases = [];
          for (const [i, ps] of parents.entries()) {
            const upper = await makeUpper(dir, { [`f${i}`]: 'x'.repeat(8 * KiB) });
            const meta = {
              ...META,
              parent_hashes: ps.map((p) => hashes[p]!).reverse(),
              base_hash: base,
            };
            const { dir: layerDir } = await commit({ osDir: dir, hash: hashes[i]!, upper, meta });
            await touch(layerDir, new Date(usedAt[i]! * 1000));
            if (inUse.includes(i)) leases.push(await acquire({ osDir: dir, dirs: [layerDir] }));
          }
          const before_ = before === undefined ? undefined : before * 1000;
          const total = (await plan({ osDir: dir, keepBytes: 0 })).totalBytes;
          const result = await prune({
            osDir: dir,
            keepBytes: Math.floor((total * keep) / parents.length),
            ...(before_ !== undefined && { before: before_ }),
          });
          const left = new Set((await layers(dir)).map((l) => l.hashPrefix));
          for (const l of await layers(dir)) {
            for (const p of [...l.meta!.parent_hashes, l.meta!.base_hash]) {
              expect(left.has(p.slice(0, 12)), `${l.name} stands on ${p.slice(0, 12)}`).toBe(true);
            }
          }
          // Not vacuous: with no limit but 0 bytes, no lease and no date, everything goes.
          if (keep === 0 && inUse.length === 0 && before === undefined) {
            expect(left.size).toBe(0);
            expect(result.deletions).toHaveLength(parents.length);
          }
          for (const lease of leases) await lease.release();
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
      }),
      { numRuns: 40, seed: 1234 },
    );
  });

  it('deletes a stack top first, whatever the order of last use', async () => {
    const base = hashOf(100);
    const metaOf = (parents: string[]) => ({ ...META, parent_hashes: parents, base_hash: base });
    const commitAt = async (hash: string, parents: string[], usedAt: number) => {
      const upper = await makeUpper(osDir, { f: hash });
      const { dir } = await commit({ osDir, hash, upper, meta: metaOf(parents) });
      await touch(dir, new Date(usedAt));
    };
    // The base and the bottom were used long ago; the top recently.
    await commitAt(base, [], 1000);
    await commitAt(hashOf(1), [], 2000);
    await commitAt(hashOf(2), [hashOf(1)], 9000);
    const p = await plan({ osDir, keepBytes: 0 });
    expect(names(p)).toEqual(['build-000000000002', 'build-000000000001', 'build-000000000064']);
    const some = await plan({ osDir, keepBytes: p.totalBytes - 1 });
    expect(names(some)).toEqual(['build-000000000002']);
  });
});
