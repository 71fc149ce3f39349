/**
 * `Scan.layers` over 10,000 layers (`layer-cache.ts`), against reading every
 * layer.json with `cat` (the floor: the same bytes read, nothing parsed), in
 * the same run, in a seeded shuffled order each round. Twice: with every
 * layer's sidecars asked for (each directory listed), and without (as
 * `layers ls` scans: `step.json` read, no listing).
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
        // Each layer's directory is listed when its sidecars are first asked for.
        const sidecars = found.reduce((n, l) => n + l.sidecars.length, 0);
        if (sidecars < LAYERS / 2) throw new Error(`scan found ${sidecars} sidecars`);
      },
      unlisted: async () => {
        let steps = 0;
        await Scan.each(osDir, (l) => void (steps += l.values.size), { read: ['step.json'] });
        if (steps < LAYERS / 2) throw new Error(`scan read ${steps} step.json`);
      },
      cat: () => Exec.run('sh', ['-c', 'cat build-*/layer.json > /dev/null'], { cwd: osDir }),
    };
    const names = ['scan', 'unlisted', 'cat'] as const;
    const times = { scan: [] as number[], unlisted: [] as number[], cat: [] as number[] };
    const random = seeded(13);
    for (const name of names) await variants[name]();
    for (let i = 0; i < ROUNDS; i++) {
      for (const name of shuffled(names, random)) times[name].push(await time(variants[name]));
    }
    const layers = `${LAYERS.toLocaleString('en')} layers`;
    return [
      {
        name: `Scan.layers, ${layers} (meta + sidecars listed + last_used)`,
        value: median(times.scan),
        baselineName: 'cat */layer.json',
        baseline: median(times.cat),
      },
      {
        name: `Scan.each, ${layers} (meta + step.json + last_used, as layers ls)`,
        value: median(times.unlisted),
        baselineName: 'cat */layer.json',
        baseline: median(times.cat),
      },
    ];
  } finally {
    await rm(osDir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
