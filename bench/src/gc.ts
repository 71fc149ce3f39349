/**
 * `Gc.plan` over 10,000 layers (`layer-cache.ts`: chains on a shared core,
 * small `fs/` trees, one file hardlinked into every layer), against two
 * baselines over the very same cache, in the same run, rounds in a seeded
 * shuffled order:
 *
 * - `du -s`: the floor for measuring real disk usage (every inode lstat'ed
 *   once, hardlinks counted once), which is what a plan must know;
 * - `Scan.layers`: the metadata half of a plan (layer.json, sidecars,
 *   last_used), without the disk-usage walk.
 *
 * The plan asks to shrink the cache to half its size, so it also orders the
 * layers by last use, keeps what kept layers stand on, and attributes shared
 * inodes.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import { Gc, Scan } from '@day11/layer';
import { makeLayerCache } from './layer-cache.js';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const LAYERS = 10_000;
const ROUNDS = 7;

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

interface Contender {
  name: string;
  run: () => Promise<unknown>;
}

/** Medians of ROUNDS rounds in a seeded shuffled order, after one warm-up each. */
async function race(contenders: readonly Contender[]): Promise<Map<string, number>> {
  for (const c of contenders) await c.run();
  const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  const random = seeded(11);
  for (let round = 0; round < ROUNDS; round++) {
    for (const c of shuffled(contenders, random)) times.get(c.name)!.push(await time(c.run));
  }
  return new Map([...times].map(([name, values]) => [name, median(values)]));
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const osDir = await mkdtemp(join(tmpdir(), 'day11-bench-gc-'));
  try {
    makeLayerCache(osDir, { layers: LAYERS });
    const { totalBytes } = await Gc.plan({ osDir, keepBytes: Number.MAX_SAFE_INTEGER });
    const keepBytes = Math.floor(totalBytes / 2);
    let deletions = 0;
    const medians = await race([
      {
        name: 'plan',
        run: async () => {
          deletions = (await Gc.plan({ osDir, keepBytes })).deletions.length;
        },
      },
      { name: 'du', run: () => Exec.run('du', ['-s', osDir]) },
      {
        name: 'scan',
        run: async () => {
          const found = await Scan.layers(osDir);
          if (found.length !== LAYERS) throw new Error(`scan found ${found.length} layers`);
        },
      },
    ]);
    const what = `Gc.plan({ keepBytes: half }), ${LAYERS.toLocaleString('en')} layers in chains (${deletions.toLocaleString('en')} to delete)`;
    return [
      {
        name: what,
        value: medians.get('plan')!,
        baselineName: 'du -s',
        baseline: medians.get('du')!,
        target: 1.5,
      },
      {
        name: what,
        value: medians.get('plan')!,
        baselineName: 'Scan.layers (metadata only)',
        baseline: medians.get('scan')!,
      },
    ];
  } finally {
    await rm(osDir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
