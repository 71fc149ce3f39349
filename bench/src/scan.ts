/**
 * `Scan.layers` over 10,000 layers (`layer-cache.ts`), against reading every
 * layer.json with `cat` (the floor: the same bytes read, nothing parsed), in
 * the same run, in a seeded shuffled order each round.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import { Scan } from '@day11/layer';
import { makeLayerCache } from './layer-cache.js';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const LAYERS = 10_000;
const ROUNDS = 7;

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const osDir = await mkdtemp(join(tmpdir(), 'day11-bench-scan-'));
  try {
    makeLayerCache(osDir, { layers: LAYERS });
    const variants = {
      scan: async () => {
        const found = await Scan.layers(osDir);
        if (found.length !== LAYERS) throw new Error(`scan found ${found.length} layers`);
      },
      cat: () => Exec.run('sh', ['-c', 'cat build-*/layer.json > /dev/null'], { cwd: osDir }),
    };
    const times = { scan: [] as number[], cat: [] as number[] };
    const random = seeded(13);
    for (const name of ['scan', 'cat'] as const) await variants[name]();
    for (let i = 0; i < ROUNDS; i++) {
      for (const name of shuffled(['scan', 'cat'] as const, random))
        times[name].push(await time(variants[name]));
    }
    const ours = times.scan;
    const floor = times.cat;
    return [
      {
        name: `Scan.layers, ${LAYERS.toLocaleString('en')} layers (meta + sidecars + last_used)`,
        value: median(ours),
        baselineName: 'cat */layer.json',
        baseline: median(floor),
      },
    ];
  } finally {
    await rm(osDir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
