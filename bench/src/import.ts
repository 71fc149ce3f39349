/**
 * Benchmark: `Import.fromTarball` of a ~300 MB rootfs-like tarball (about
 * 33k entries from this machine's /usr: man pages, headers, helper binaries)
 * against `tar -xf` of the same tarball into an empty directory, plain and
 * gzip-compressed, target ≤ 1.2; `podman import` of it as a reference.
 * Every import goes into a fresh cache (nothing reused), every extraction
 * into a fresh directory; variants once per round in a seeded shuffled
 * order, medians. The tarball is read from the page cache.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec } from '@day11/exec';
import { Import } from '@day11/layer';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = Number(process.env['DAY11_BENCH_ROUNDS'] ?? 5);
const TREES = ['usr/share/man', 'usr/include', 'usr/libexec'];
const PODMAN_IMAGE = 'localhost/day11-bench-import:latest';

async function time(fn: () => Promise<unknown>): Promise<number> {
  await Exec.run('sync');
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/** Ours: the tarball imported as a base into a fresh cache. */
async function ours(work: string, tarball: string): Promise<number> {
  const osDir = await mkdtemp(join(work, 'cache-'));
  const ms = await time(() => Import.fromTarball({ osDir, tarball, image: 'bench' }));
  await rm(osDir, { recursive: true });
  return ms;
}

/** `tar -xf` (GNU tar, `-z` for gzip: the same gunzip day11 pays) into a fresh directory. */
async function tarX(work: string, tarball: string): Promise<number> {
  const dest = await mkdtemp(join(work, 'tar-'));
  const z = tarball.endsWith('.gz') ? ['-z'] : [];
  const ms = await time(() => Exec.run('tar', ['-x', ...z, '-f', tarball, '-C', dest]));
  await rm(dest, { recursive: true });
  return ms;
}

async function podmanImport(tarball: string): Promise<number> {
  const ms = await time(() => Exec.run('podman', ['import', '-q', tarball, PODMAN_IMAGE]));
  await Exec.run('podman', ['rmi', '-f', PODMAN_IMAGE]);
  return ms;
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-import-'));
  try {
    const tarball = join(work, 'rootfs.tar');
    await Exec.run('tar', ['-c', '--numeric-owner', '-f', tarball, '-C', '/', ...TREES]);
    await Exec.run('bash', ['-c', 'gzip -6 -c "$1" > "$1.gz"', '_', tarball]);
    const entries = Number(
      (await Exec.run('bash', ['-c', 'tar -tf "$1" | wc -l', '_', tarball])).stdout.trim(),
    );
    const mb = Number((await Exec.run('stat', ['-c', '%s', tarball])).stdout.trim()) / 1e6;
    const podman = await Exec.run('podman', ['--version']).then(
      () => true,
      () => false,
    );
    const variants: Record<string, () => Promise<number>> = {
      ours: () => ours(work, tarball),
      tar: () => tarX(work, tarball),
      oursGz: () => ours(work, `${tarball}.gz`),
      tarGz: () => tarX(work, `${tarball}.gz`),
      ...(podman && { podman: () => podmanImport(tarball) }),
    };
    const random = seeded(23);
    const runs = new Map<string, number[]>();
    for (let round = 0; round < ROUNDS; round++) {
      for (const name of shuffled(Object.keys(variants), random)) {
        runs.set(name, [...(runs.get(name) ?? []), await variants[name]!()]);
      }
    }
    const m = (name: string) => median(runs.get(name)!);
    const what = `${mb.toFixed(0)} MB, ${entries} entries`;
    const rows: BenchRow[] = [
      {
        name: `base import of a rootfs tarball, ${what}`,
        value: m('ours'),
        baselineName: 'tar -xf',
        baseline: m('tar'),
        target: 1.2,
      },
      {
        name: `base import of the same tarball gzipped`,
        value: m('oursGz'),
        baselineName: 'tar -xzf',
        baseline: m('tarGz'),
        target: 1.2,
      },
    ];
    if (podman) {
      rows.push({
        name: `base import of a rootfs tarball, ${what}`,
        value: m('ours'),
        baselineName: 'podman import (reference)',
        baseline: m('podman'),
      });
    }
    return rows;
  } finally {
    await Exec.run('podman', ['rmi', '-f', PODMAN_IMAGE]).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
