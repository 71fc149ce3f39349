/**
 * `Gc.plan` over 10,000 layers, each with a small `fs/` tree (a package
 * directory of four files, one of them hardlinked from a shared file as
 * `Stack.merge` and imports leave them), against two baselines over the very
 * same cache, in the same run, rounds alternating:
 *
 * - `du -s`: the floor for measuring real disk usage (every inode lstat'ed
 *   once, hardlinks counted once), which is what a plan must know;
 * - `Scan.layers`: the metadata half of a plan (layer.json, sidecars,
 *   last_used), without the disk-usage walk.
 *
 * The plan asks to shrink the cache to half its size, so it also orders the
 * layers by last use and attributes shared inodes.
 */
import { link, mkdir, mkdtemp, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import { Gc, Hash, LastUsed, LayerDir, LayerMeta, Scan, Sidecar } from '@day11/layer';
import { median, toMarkdown, type BenchRow } from './table.js';

const LAYERS = 10_000;
const ROUNDS = 5;
/** Layers written at once while building the cache. */
const BATCH = 250;

/** One layer: metadata, a sidecar, last_used (spread over a year), and a four-file fs/ tree. */
async function makeLayer(osDir: string, shared: string, i: number): Promise<void> {
  const base = Hash.baseHash({ image: 'bench' });
  const hash = Hash.layerHash({ baseHash: base, depHashes: [], pkg: `pkg.${i}` });
  const dir = LayerDir.path({ osDir, hash });
  const pkg = join(dir, 'fs', 'opt', `pkg${i}`);
  await mkdir(pkg, { recursive: true });
  await writeFile(join(pkg, 'META'), `version = "${i}"\n`);
  await writeFile(join(pkg, 'lib.ml'), `let x = ${i}\n`.repeat(1 + (i % 200)));
  await writeFile(join(pkg, 'lib.cmx'), Buffer.alloc(4096 * (1 + (i % 4)), i % 256));
  await link(shared, join(pkg, 'LICENSE'));
  await writeFile(join(dir, 'layer.log'), '');
  await LayerMeta.save(dir, {
    exit_status: 0,
    parent_hashes: [base],
    uid: 0,
    gid: 0,
    base_hash: base,
    disk_usage: 0,
    timing: [['runc_run', 1.25]],
    failed_dep: null,
  });
  await Sidecar.write(dir, 'build.json', { pkg: `pkg.${i}` });
  await LastUsed.touch(dir);
  const when = (Date.now() - ((i * 7919) % 365) * 86_400_000) / 1000;
  await utimes(LastUsed.file(dir), when, when);
}

async function makeCache(osDir: string): Promise<void> {
  await mkdir(osDir, { recursive: true });
  const shared = join(osDir, '.shared-LICENSE');
  await writeFile(shared, 'Permission is hereby granted...\n'.repeat(40));
  for (let start = 0; start < LAYERS; start += BATCH) {
    const count = Math.min(BATCH, LAYERS - start);
    await Promise.all(Array.from({ length: count }, (_, k) => makeLayer(osDir, shared, start + k)));
  }
  // Only the layers hold it now, as after a merge whose source was collected.
  await rm(shared);
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

interface Contender {
  name: string;
  run: () => Promise<unknown>;
}

/** Medians of ROUNDS rounds, the order reversed every other round, after one warm-up each. */
async function race(contenders: readonly Contender[]): Promise<Map<string, number>> {
  for (const c of contenders) await c.run();
  const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
    for (const c of order) times.get(c.name)!.push(await time(c.run));
  }
  return new Map([...times].map(([name, values]) => [name, median(values)]));
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const osDir = await mkdtemp(join(tmpdir(), 'day11-bench-gc-'));
  try {
    await makeCache(osDir);
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
    const what = `Gc.plan({ keepBytes: half }), ${LAYERS.toLocaleString('en')} layers × 4 files (${deletions.toLocaleString('en')} to delete)`;
    return [
      {
        name: what,
        value: medians.get('plan')!,
        baselineName: 'du -s',
        baseline: medians.get('du')!,
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
