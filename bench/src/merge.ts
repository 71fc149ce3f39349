/**
 * Benchmark: `Stack.merge` against `cp -al` on the same ~20,000-file tree,
 * and a 4-layer merge against day11's `cp -a -n --link` of each layer.
 *
 * Rounds alternate which tool goes first, every run starts after `sync` so no
 * one pays for another's writeback, and the medians are compared. `cp` is
 * timed through `Exec.run`, so its figure includes starting the process, as
 * it would in day11. No `UV_THREADPOOL_SIZE` tuning: `Stack.merge` does not
 * use the thread pool for its links.
 */
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import { Stack } from '@day11/layer';
import { median, toMarkdown, type BenchRow } from './table.js';

/** Rounds per measurement; the median is reported. */
const ROUNDS = 9;

interface TreeShape {
  /** Top-level directories. */
  packages: number;
  /** Subdirectories per package. */
  subdirs: number;
  /** Files per subdirectory. */
  files: number;
}

/** 40 × 10 × 50 = 20,000 files in 440 directories, plus a symlink per package. */
const ONE_LAYER: TreeShape = { packages: 40, subdirs: 10, files: 50 };
/** Four layers of 5,000 files that overlap in half their directories. */
const FOUR_LAYERS: TreeShape = { packages: 10, subdirs: 10, files: 50 };

/** Writes a layer directory (`{dir}/fs/...`) of small files; `salt` varies names between layers. */
async function makeLayer(dir: string, shape: TreeShape, salt: number): Promise<void> {
  for (let p = 0; p < shape.packages; p++) {
    // Half the package directories are shared with other layers, so merges really merge.
    const pkg = join(dir, 'fs', p % 2 === 0 ? `lib/pkg${p}` : `lib/pkg${p}-${salt}`);
    for (let s = 0; s < shape.subdirs; s++) {
      const sub = join(pkg, `sub${s}`);
      await mkdir(sub, { recursive: true });
      await Promise.all(
        Array.from({ length: shape.files }, (_, f) =>
          writeFile(join(sub, `file${f}-${salt}.ml`), `let x = ${p * s * f}\n`),
        ),
      );
    }
    await symlink('sub0', join(pkg, 'latest'));
  }
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  await Exec.run('sync');
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

interface Contender {
  name: string;
  run: (target: string) => Promise<unknown>;
}

/** Times each contender ROUNDS times, alternating who goes first; returns medians by name. */
async function race(work: string, contenders: readonly Contender[]): Promise<Map<string, number>> {
  const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  // Round -1 is a warm-up (page cache, native bindings, JIT) and is not recorded.
  for (let round = -1; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
    for (const contender of order) {
      const target = join(work, `out-${round}-${contender.name.replace(/\W+/g, '_')}`);
      const ms = await time(() => contender.run(target));
      if (round >= 0) times.get(contender.name)!.push(ms);
      await rm(target, { recursive: true, force: true });
    }
  }
  return new Map([...times].map(([name, values]) => [name, median(values)]));
}

async function oneLayer(work: string): Promise<BenchRow> {
  const layer = join(work, 'single');
  await makeLayer(layer, ONE_LAYER, 0);
  const medians = await race(work, [
    { name: 'merge', run: (target) => Stack.merge({ layerDirs: [layer], target }) },
    { name: 'cp', run: (target) => Exec.run('cp', ['-al', join(layer, 'fs'), target]) },
  ]);
  const files = ONE_LAYER.packages * ONE_LAYER.subdirs * ONE_LAYER.files;
  return {
    name: `Stack.merge, 1 layer, ${files.toLocaleString('en')} files`,
    value: medians.get('merge')!,
    baselineName: 'cp -al',
    baseline: medians.get('cp')!,
    target: 1.2,
  };
}

async function fourLayers(work: string): Promise<BenchRow> {
  const layers: string[] = [];
  for (let i = 0; i < 4; i++) {
    layers.push(join(work, `layer${i}`));
    await makeLayer(layers[i]!, FOUR_LAYERS, i);
  }
  // day11 copies topmost first with -n, so a higher layer's file is never replaced.
  const cpLinkEach = async (target: string): Promise<void> => {
    await mkdir(target);
    for (const layer of layers) {
      await Exec.run('cp', ['-a', '-n', '--link', `${join(layer, 'fs')}/.`, target]);
    }
  };
  const medians = await race(work, [
    { name: 'merge', run: (target) => Stack.merge({ layerDirs: layers, target }) },
    { name: 'cp', run: cpLinkEach },
  ]);
  return {
    name: 'Stack.merge, 4 layers × 5,000 files',
    value: medians.get('merge')!,
    baselineName: "day11's cp -a -n --link per layer",
    baseline: medians.get('cp')!,
  };
}

/** Runs the merge benchmarks in a temporary directory, which is always removed. */
export async function run(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-merge-'));
  try {
    return [await oneLayer(work), await fourLayers(work)];
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(toMarkdown(await run()));
}
