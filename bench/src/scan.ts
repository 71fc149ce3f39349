/**
 * `Scan.layers` over 10,000 layers, against reading every layer.json with
 * `cat` (the floor: the same bytes read, nothing parsed), in the same run.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import { Hash, LastUsed, LayerDir, LayerMeta, Scan, Sidecar } from '@day11/layer';
import { median, toMarkdown, type BenchRow } from './table.js';

const LAYERS = 10_000;
const ROUNDS = 5;

async function makeCache(osDir: string): Promise<void> {
  const base = Hash.baseHash({ image: 'bench' });
  for (let start = 0; start < LAYERS; start += 500) {
    await Promise.all(
      Array.from({ length: Math.min(500, LAYERS - start) }, async (_, k) => {
        const hash = Hash.layerHash({ baseHash: base, depHashes: [], pkg: `pkg.${start + k}` });
        const dir = LayerDir.path({ osDir, hash });
        await mkdir(join(dir, 'fs'), { recursive: true });
        await writeFile(join(dir, 'layer.log'), '');
        await LayerMeta.save(dir, {
          exit_status: 0,
          parent_hashes: [base],
          uid: 0,
          gid: 0,
          base_hash: base,
          disk_usage: 4096,
          timing: [['runc_run', 1.25]],
          failed_dep: null,
        });
        await Sidecar.write(dir, 'build.json', { pkg: `pkg.${start + k}` });
        await LastUsed.touch(dir);
      }),
    );
  }
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const osDir = await mkdtemp(join(tmpdir(), 'day11-bench-scan-'));
  try {
    await makeCache(osDir);
    const ours: number[] = [];
    const floor: number[] = [];
    for (let i = 0; i < ROUNDS; i++) {
      ours.push(
        await time(async () => {
          const found = await Scan.layers(osDir);
          if (found.length !== LAYERS) throw new Error(`scan found ${found.length} layers`);
        }),
      );
      floor.push(
        await time(() =>
          Exec.run('sh', ['-c', 'cat build-*/layer.json > /dev/null'], { cwd: osDir }),
        ),
      );
    }
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
