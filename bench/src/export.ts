/**
 * Benchmark: `exportImage` against day10's method on the same layers — per
 * layer, one after the other, GNU `tar -c --numeric-owner` piped to
 * `gzip -n -6` — measured in the same run:
 *
 * - cold export of a multi-layer image (every layer compressed, caches emptied
 *   first), target ≤ 0.45 of day10's time;
 * - one large layer alone (compressed in parallel chunks), target ≤ 0.8;
 * - warm re-export (every blob cached: hardlinks, config, manifest, index)
 *   into a fresh layout, as a fraction of the cold export, target ≤ 2 %;
 * - peak RSS of a process exporting a layer holding one 2 GiB file, target < 150 MB.
 *
 * The layers are copies of real trees of this machine's /usr (binaries,
 * headers, Python sources), so compression sees realistic data. Rounds
 * alternate which method goes first; medians are compared. Everything reads
 * from the page cache (both methods alike): this measures CPU, not the disk.
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, rm, stat } from 'node:fs/promises';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import type { Base } from '@day11/layer';
import { exportImage, LayerBlob } from '@day11/oci-export';
import { makeLayer, type Layer } from './fixtures.js';
import { median, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = 3;
const WARM_ROUNDS = 7;
/** Trees copied into the multi-layer image's layers, base first. */
const IMAGE_TREES = [
  '/usr/include',
  '/usr/lib/python3.11',
  '/usr/libexec',
  '/usr/lib/python3',
  '/usr/share/perl',
];
/** The tree of the large single layer. */
const LARGE_TREE = '/usr/bin';
const BIG_FILE_BYTES = 2 * 1024 ** 3;

const copyTree = (tree: string) => async (fs: string) => {
  await Exec.run('cp', ['-a', `${tree}/.`, fs]);
};

async function treeBytes(dirs: readonly string[]): Promise<number> {
  const { stdout } = await Exec.run('du', ['-scb', ...dirs.map((d) => join(d, 'fs'))]);
  return Number(/(\d+)\s+total/.exec(stdout)?.[1] ?? 0);
}

async function dropCaches(layers: readonly Layer[]): Promise<void> {
  for (const { dir } of layers) {
    await rm(join(dir, LayerBlob.CACHE_FILE), { force: true });
    await rm(join(dir, LayerBlob.DIGESTS_FILE), { force: true });
  }
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  await Exec.run('sync');
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/** Ours: a cold export of `layers` (base first) into a fresh layout. */
async function ours(work: string, layers: readonly Layer[]): Promise<number> {
  await dropCaches(layers);
  const layout = await mkdtemp(join(work, 'oci-'));
  const [base, ...rest] = layers as [Layer, ...Layer[]];
  const ms = await time(() =>
    exportImage({ layout, tag: 'bench', base: asBase(base), layers: rest.map((l) => l.dir) }),
  );
  await rm(layout, { recursive: true });
  return ms;
}

/** day10: `tar -c --numeric-owner | gzip -n -6` per layer, sequentially. */
async function day10(work: string, layers: readonly Layer[]): Promise<number> {
  const out = await mkdtemp(join(work, 'day10-'));
  const script = 'set -o pipefail; tar -c --numeric-owner -f - -C "$1" . | gzip -n -6 > "$2"';
  const ms = await time(async () => {
    for (const [i, { dir }] of layers.entries()) {
      await Exec.run('bash', ['-c', script, '_', join(dir, 'fs'), join(out, `${i}.tar.gz`)]);
    }
  });
  await rm(out, { recursive: true });
  return ms;
}

function asBase(layer: Layer): Base {
  return { hash: layer.hash, dir: layer.dir, image: 'bench' };
}

/** Cold ours vs day10, alternating who goes first; medians. */
async function compare(work: string, layers: readonly Layer[]): Promise<[number, number]> {
  const a: number[] = [];
  const b: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    if (round % 2 === 0) {
      a.push(await ours(work, layers));
      b.push(await day10(work, layers));
    } else {
      b.push(await day10(work, layers));
      a.push(await ours(work, layers));
    }
  }
  return [median(a), median(b)];
}

async function warm(work: string, layers: readonly Layer[]): Promise<number> {
  const [base, ...rest] = layers as [Layer, ...Layer[]];
  const runs: number[] = [];
  for (let i = 0; i < WARM_ROUNDS; i++) {
    const layout = await mkdtemp(join(work, 'warm-'));
    const ms = await time(() =>
      exportImage({ layout, tag: 'bench', base: asBase(base), layers: rest.map((l) => l.dir) }),
    );
    runs.push(ms);
    await rm(layout, { recursive: true });
  }
  return median(runs);
}

/** Writes `bytes` of incompressible data (a 64 MiB random block repeated: far beyond deflate's 32 KiB window). */
async function writeBigFile(path: string, bytes: number): Promise<void> {
  const block = randomBytes(64 * 1024 ** 2);
  const handle = await open(path, 'w');
  try {
    for (let done = 0; done < bytes; done += block.length) {
      await handle.write(block, 0, Math.min(block.length, bytes - done));
    }
  } finally {
    await handle.close();
  }
}

/** Peak RSS (MB) of a child process exporting `layer` alone. */
async function peakRss(work: string, layer: Layer): Promise<number> {
  const layout = await mkdtemp(join(work, 'rss-'));
  const self = new URL(import.meta.url).pathname;
  const { stdout } = await Exec.run('node', [self, '--rss-child', layer.hash, layer.dir, layout]);
  await rm(layout, { recursive: true });
  return (Number(stdout.trim()) * 1024) / 1e6; // maxRSS is in KiB
}

/** In the child: export, then print the peak RSS in KiB. */
async function rssChild([hash, dir, layout]: string[]): Promise<void> {
  await exportImage({
    layout: layout!,
    tag: 'rss',
    base: { hash: hash!, dir: dir!, image: 'rss' },
    layers: [],
  });
  console.log(process.resourceUsage().maxRSS);
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-export-'));
  try {
    const osDir = join(work, 'cache');
    const trees = IMAGE_TREES.filter((t) => existsSync(t));
    const image: Layer[] = [];
    for (const tree of trees) image.push(await makeLayer(osDir, tree, copyTree(tree)));
    const imageMb = (await treeBytes(image.map((l) => l.dir))) / 1e6;
    const [coldOurs, coldDay10] = await compare(work, image);
    const warmMs = await warm(work, image);

    const large = await makeLayer(osDir, LARGE_TREE, copyTree(LARGE_TREE));
    const largeMb = (await treeBytes([large.dir])) / 1e6;
    const [largeOurs, largeDay10] = await compare(work, [large]);
    await rm(large.dir, { recursive: true });

    const big = await makeLayer(osDir, 'big-file', (fs) =>
      writeBigFile(join(fs, 'big'), BIG_FILE_BYTES),
    );
    const bigSize = (await stat(join(big.dir, 'fs/big'))).size;
    const rssMb = await peakRss(work, big);

    const cores = availableParallelism();
    return [
      {
        name: `cold export, ${image.length} layers, ${imageMb.toFixed(0)} MB (${cores} cores)`,
        value: coldOurs,
        baselineName: 'day10: tar piped to gzip -n -6, per layer',
        baseline: coldDay10,
        target: 0.45,
      },
      {
        name: `cold export, 1 large layer, ${largeMb.toFixed(0)} MB`,
        value: largeOurs,
        baselineName: 'day10: tar piped to gzip -n -6',
        baseline: largeDay10,
        target: 0.8,
      },
      {
        name: `warm re-export, ${image.length} layers (fresh layout)`,
        value: warmMs,
        baselineName: 'cold export',
        baseline: coldOurs,
        target: 0.02,
      },
      {
        name: `peak RSS, export of a layer with a ${(bigSize / 1024 ** 3).toFixed(0)} GiB file`,
        value: rssMb,
        unit: 'MB',
        baselineName: 'limit',
        baseline: 150,
        target: 1,
      },
    ];
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--rss-child') {
  await rssChild(process.argv.slice(3));
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
