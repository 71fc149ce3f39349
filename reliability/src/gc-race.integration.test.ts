/**
 * GC while others work (issue 13): `day11 layers gc --keep-bytes 0` in a
 * loop while two `day11 build --oci` loops share the cache and a layout.
 * The collection may delete anything no one holds, at any moment, but it
 * must never make a build fail: a build leases the base, and (exporting)
 * every layer it finds or makes, until it ends; a layer collected before
 * the build leased it (a cache hit, a dependency) is made again.
 * Afterwards every plan builds and `day11 recover` leaves nothing. Runs the
 * built CLI: `pnpm build` first.
 */
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { day11 } from './fixtures/cli.js';
import { tempRoot } from './fixtures/layers.js';
import { layoutProblems, leftovers, procMounts } from './fixtures/leftovers.js';

/** Builds per loop (DAY11_GC_ROUNDS): each a mix of cache hits and steps rebuilt after a collection. */
const ROUNDS = Number(process.env['DAY11_GC_ROUNDS'] ?? 5);

let root: string;
let cache: string;
let layout: string;
const plans: string[] = [];

/** Plan `p`: a chain shared by both plans, and two steps of its own on it. */
function plan(p: number): object {
  return {
    base: 'busybox',
    steps: [
      { id: 'shared-a', run: 'mkdir -p /opt && head -c 1000000 /dev/urandom > /opt/a' },
      { id: 'shared-b', deps: ['shared-a'], run: 'head -c 1000000 /dev/urandom > /opt/b' },
      { id: `own-${p}`, deps: ['shared-b'], run: `head -c 1000000 /dev/urandom > /opt/own-${p}` },
      { id: `top-${p}`, deps: [`own-${p}`, 'shared-a'], run: 'cat /opt/own-* /opt/b > /opt/top' },
    ],
  };
}

interface Round {
  loop: number;
  round: number;
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  failed: string[];
  /** The last few events, to tell where a build that did not finish stood. */
  last: string[];
}

beforeAll(async () => {
  root = await tempRoot('gc-race');
  cache = join(root, 'cache');
  layout = join(root, 'oci');
  for (const p of [0, 1]) {
    plans.push(join(root, `plan-${p}.json`));
    await writeFile(plans[p]!, JSON.stringify(plan(p)));
  }
});

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

// Killed only after a wait for a lock (5 minutes by default) has failed with
// an error that names the lock.
const build = (p: number) =>
  day11(['build', plans[p]!, '--cache', cache, '--oci', layout, '--jobs', '2'], {
    json: true,
    timeoutMs: 360_000,
  });

describe('day11 layers gc --keep-bytes 0 in a loop while two builds and their exports share the cache', () => {
  let rounds: Round[] = [];
  let collections = 0;
  let deleted = 0;

  it(
    'makes no build fail',
    async () => {
      let building = true;
      // Two collectors, so that one is nearly always at work.
      const gcLoop = async (): Promise<void> => {
        while (building) {
          const r = await day11(['layers', 'gc', '--cache', cache, '--keep-bytes', '0', '--json']);
          if (r.code === 0 && r.stdout.trim() !== '') {
            collections++;
            deleted += (JSON.parse(r.stdout) as { deletions: unknown[] }).deletions.length;
          }
          await delay(10);
        }
      };
      const gcLoops = Promise.all([gcLoop(), gcLoop()]);
      const loop = async (p: number): Promise<Round[]> => {
        const out: Round[] = [];
        for (let round = 0; round < ROUNDS; round++) {
          const r = await build(p);
          const failed = r.events
            .filter((e) => e.type === 'step' && e.status === 'failed')
            .map((e) => `${(e as { id: string }).id}: ${(e as { reason?: string }).reason ?? ''}`);
          const exportFailed = r.events
            .filter((e) => e.type === 'export' && e.status === 'failed')
            .map(
              (e) =>
                `export ${(e as { tag: string }).tag}: ${(e as { reason?: string }).reason ?? ''}`,
            );
          out.push({
            loop: p,
            round,
            code: r.code,
            signal: r.signal,
            stderr: r.stderr,
            failed: [...failed, ...exportFailed],
            last: r.events.slice(-4).map((e) => JSON.stringify(e)),
          });
        }
        return out;
      };
      try {
        rounds = (await Promise.all([loop(0), loop(1)])).flat();
      } finally {
        building = false;
        await gcLoops;
      }
      console.log(
        `gc race: ${rounds.length} builds, ${rounds.filter((r) => r.code !== 0).length} failed; ${collections} collections deleted ${deleted} layers`,
      );
      expect(deleted, 'the collection must have raced the builds').toBeGreaterThan(0);
      const failures = rounds
        .filter((r) => r.code !== 0)
        .map(
          (r) =>
            `loop ${r.loop} round ${r.round} exited ${r.code ?? r.signal}: ${[...r.failed, r.stderr.trim(), ...r.last].join('; ')}`,
        );
      expect(
        failures,
        `${rounds.length - failures.length} of ${rounds.length} builds succeeded`,
      ).toEqual([]);
    },
    ROUNDS * 2 * 60_000 + 360_000,
  );

  it('afterwards every plan builds, every image verifies, and recover leaves nothing', async () => {
    for (const p of [0, 1]) {
      const r = await build(p);
      expect(r.code, r.stderr).toBe(0);
    }
    const recovered = await day11(['recover', '--cache', cache]);
    expect(recovered.code, recovered.stderr).toBe(0);
    expect(await leftovers({ root, osDir: cache, layouts: [layout] })).toEqual([]);
    expect(await layoutProblems(layout)).toEqual([]);
    expect(await procMounts(root)).toEqual([]);
  }, 120_000);
});
