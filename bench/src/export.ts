/**
 * Benchmark: `exportImage` against the tools a user would pick instead,
 * measured in the same run, variants alternated in seeded shuffled rounds:
 *
 * - cold export of a five-layer image (~300 MB of this machine's /usr; every
 *   blob cache emptied first) against `tar -c --numeric-owner | pigz -6 -p N`
 *   per layer with the same N threads, target ≤ 1.0; against
 *   `skopeo copy containers-storage:IMAGE oci:DIR` of the same image (imported
 *   into podman's storage in the setup; Go's parallel gzip), target ≤ 1.0;
 *   the same at gzip level 4 against skopeo; and day10's method
 *   (`tar | gzip -n -6` per layer) for the record;
 * - a layer of ~24k small files (/usr/share/man) against `tar | pigz -6 -p N`,
 *   target ≤ 1.0;
 * - warm re-export (every blob cached: hardlinks, config, manifest, index)
 *   into a fresh layout, as a fraction of the cold export, target ≤ 2 %;
 * - peak RSS of a process exporting a layer holding one 2 GiB file, target < 150 MB.
 *
 * Everything reads from the page cache (all methods alike): this measures
 * CPU, not the disk. Each command is timed as a whole (`sync` first).
 */
import { spawnSync } from 'node:child_process';
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
import { median, peakRssKiB, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = Number(process.env['DAY11_BENCH_ROUNDS'] ?? 5);
const WARM_ROUNDS = 7;
const SEED = 17;
/** Trees copied into the multi-layer image's layers, base first. */
const IMAGE_TREES = [
  '/usr/include',
  '/usr/lib/python3.11',
  '/usr/libexec',
  '/usr/lib/python3',
  '/usr/share/perl',
];
/** A layer of ~24k small files. */
const SMALL_FILES_TREE = '/usr/share/man';
/** The image podman's storage holds for the skopeo baseline. */
const PODMAN_IMAGE = 'localhost/day11-bench-export:latest';
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
/** Bytes written by each variant's last run, keyed by variant: what the time bought. */
const outputBytes = new Map<string, number>();

async function dirBytes(dir: string): Promise<number> {
  const { stdout } = await Exec.run('du', ['-sb', dir]);
  return Number(stdout.split('\t')[0]);
}

async function ours(work: string, layers: readonly Layer[], gzipLevel = 6): Promise<number> {
  await dropCaches(layers);
  const layout = await mkdtemp(join(work, 'oci-'));
  const [base, ...rest] = layers as [Layer, ...Layer[]];
  const ms = await time(() =>
    exportImage({
      layout,
      tag: 'bench',
      base: asBase(base),
      layers: rest.map((l) => l.dir),
      gzipLevel,
    }),
  );
  if (layers.length > 1) outputBytes.set(`ours${gzipLevel}`, await dirBytes(join(layout, 'blobs')));
  await rm(layout, { recursive: true });
  return ms;
}

/** `tar -c --numeric-owner | COMPRESSOR` per layer, one after the other, timed as one script. */
async function tarPipe(
  work: string,
  layers: readonly Layer[],
  compressor: string,
): Promise<number> {
  const out = await mkdtemp(join(work, 'tar-'));
  const script =
    'set -o pipefail; out=$1; shift; i=0; for fs in "$@"; do ' +
    `tar -c --numeric-owner -f - -C "$fs" . | ${compressor} > "$out/$i.tar.gz" || exit 1; i=$((i+1)); done`;
  const ms = await time(() =>
    Exec.run('bash', ['-c', script, '_', out, ...layers.map(({ dir }) => join(dir, 'fs'))]),
  );
  await rm(out, { recursive: true });
  return ms;
}

/** `skopeo copy containers-storage:IMAGE oci:DIR` (recompresses every layer). */
async function skopeo(work: string, level: number): Promise<number> {
  const out = await mkdtemp(join(work, 'skopeo-'));
  const args = [
    'copy',
    '-q',
    `--dest-compress-level=${level}`,
    `containers-storage:${PODMAN_IMAGE}`,
    `oci:${out}:bench`,
  ];
  const ms = await time(() => Exec.run('skopeo', args));
  outputBytes.set(`skopeo${level}`, await dirBytes(join(out, 'blobs')));
  await rm(out, { recursive: true });
  return ms;
}

/** Puts the image (exported by us once) into podman's storage, for the skopeo baseline. */
async function importIntoPodman(work: string, layers: readonly Layer[]): Promise<boolean> {
  if (
    !(await Exec.run('skopeo', ['--version']).then(
      () => true,
      () => false,
    ))
  )
    return false;
  const layout = await mkdtemp(join(work, 'podman-src-'));
  const [base, ...rest] = layers as [Layer, ...Layer[]];
  await exportImage({ layout, tag: 'bench', base: asBase(base), layers: rest.map((l) => l.dir) });
  await Exec.run('skopeo', [
    'copy',
    '-q',
    `oci:${layout}:bench`,
    `containers-storage:${PODMAN_IMAGE}`,
  ]);
  await rm(layout, { recursive: true });
  return true;
}

function asBase(layer: Layer): Base {
  return { hash: layer.hash, dir: layer.dir, image: 'bench' };
}

/** Runs every variant once per round, in a seeded shuffled order; their medians. */
async function rounds<K extends string>(
  variants: Record<K, () => Promise<number>>,
  count: number,
): Promise<Record<K, number>> {
  const random = seeded(SEED);
  const runs = new Map<K, number[]>();
  const names = Object.keys(variants) as K[];
  for (let round = 0; round < count; round++) {
    for (const name of shuffled(names, random)) {
      const ms = await variants[name]();
      runs.set(name, [...(runs.get(name) ?? []), ms]);
    }
  }
  return Object.fromEntries(names.map((n) => [n, median(runs.get(n)!)])) as Record<K, number>;
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
  return (Number(stdout.trim()) * 1024) / 1e6; // VmHWM is in KiB
}

/** In the child: export, then print the peak RSS in KiB. */
async function rssChild([hash, dir, layout]: string[]): Promise<void> {
  await exportImage({
    layout: layout!,
    tag: 'rss',
    base: { hash: hash!, dir: dir!, image: 'rss' },
    layers: [],
  });
  console.log(peakRssKiB());
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  // Checked first: a missing baseline must stop the suite, not time a failing pipe.
  if (spawnSync('pigz', ['--version'], { stdio: 'ignore' }).status !== 0) {
    throw new Error('pigz is not installed: apt-get install pigz (or bash .ci/setup)');
  }
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-export-'));
  const cores = availableParallelism();
  const pigz = `pigz -6 -p ${cores}`;
  let podman = false;
  try {
    const osDir = join(work, 'cache');
    const trees = IMAGE_TREES.filter((t) => existsSync(t));
    const image: Layer[] = [];
    for (const tree of trees) image.push(await makeLayer(osDir, tree, copyTree(tree)));
    const imageMb = (await treeBytes(image.map((l) => l.dir))) / 1e6;
    podman = await importIntoPodman(work, image);
    const variants: Record<string, () => Promise<number>> = {
      ours: () => ours(work, image),
      ours4: () => ours(work, image, 4),
      pigz: () => tarPipe(work, image, pigz),
      day10: () => tarPipe(work, image, 'gzip -n -6'),
      ...(podman && {
        skopeo: () => skopeo(work, 6),
        skopeo4: () => skopeo(work, 4),
      }),
    };
    const cold = await rounds(variants, ROUNDS);
    const warmMs = await warm(work, image);

    const small = await makeLayer(osDir, SMALL_FILES_TREE, copyTree(SMALL_FILES_TREE));
    const smallFiles = Number(
      (
        await Exec.run('bash', ['-c', `find "$1" | wc -l`, '_', join(small.dir, 'fs')])
      ).stdout.trim(),
    );
    const smallMb = (await treeBytes([small.dir])) / 1e6;
    const smallCold = await rounds(
      { ours: () => ours(work, [small]), pigz: () => tarPipe(work, [small], pigz) },
      ROUNDS,
    );
    await rm(small.dir, { recursive: true });

    const big = await makeLayer(osDir, 'big-file', (fs) =>
      writeBigFile(join(fs, 'big'), BIG_FILE_BYTES),
    );
    const bigSize = (await stat(join(big.dir, 'fs/big'))).size;
    const rssMb = await peakRss(work, big);

    const what = `${image.length} layers, ${imageMb.toFixed(0)} MB (${cores} cores)`;
    const rows: BenchRow[] = [
      {
        name: `cold export, ${what}`,
        value: cold['ours']!,
        baselineName: `tar piped to ${pigz}, per layer`,
        baseline: cold['pigz']!,
        target: 1,
      },
    ];
    if (podman) {
      rows.push(
        {
          name: `cold export, ${what}`,
          value: cold['ours']!,
          baselineName: 'skopeo copy containers-storage: oci: (level 6)',
          baseline: cold['skopeo']!,
          target: 1,
        },
        {
          name: `cold export at gzip level 4, ${what}`,
          value: cold['ours4']!,
          baselineName: 'skopeo copy --dest-compress-level=4',
          baseline: cold['skopeo4']!,
          target: 1,
        },
        ...[6, 4].map((level) => ({
          name: `bytes of the image's blobs, gzip level ${level}`,
          value: (outputBytes.get(`ours${level}`) ?? 0) / 1e6,
          baselineName: `skopeo copy, level ${level}`,
          baseline: (outputBytes.get(`skopeo${level}`) ?? 0) / 1e6,
          unit: 'MB',
        })),
      );
    }
    rows.push(
      {
        name: `cold export, ${what}`,
        value: cold['ours']!,
        baselineName: "day10's tar piped to gzip -n -6, per layer",
        baseline: cold['day10']!,
      },
      {
        name: `cold export, 1 layer of ${smallFiles} small files, ${smallMb.toFixed(0)} MB`,
        value: smallCold.ours,
        baselineName: `tar piped to ${pigz}`,
        baseline: smallCold.pigz,
        target: 1,
      },
      {
        name: `warm re-export, ${image.length} layers (fresh layout)`,
        value: warmMs,
        baselineName: 'cold export',
        baseline: cold['ours']!,
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
    );
    return rows;
  } finally {
    if (podman) await Exec.run('podman', ['rmi', '-f', PODMAN_IMAGE]).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--rss-child') {
  await rssChild(process.argv.slice(3));
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
