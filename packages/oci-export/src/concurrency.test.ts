/**
 * Many processes exporting overlapping images into one layout at once (the
 * day10 `--fork` case). The children run the built package (`pnpm build`
 * first), as separate Node processes, so the locks are really cross-process.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { asBase, cleanup, makeLayer, tempDir, type TestLayer } from './fixtures/layers.js';
import * as Layout from './layout.js';

afterAll(cleanup);

const run = promisify(execFile);
const DIST = resolve(dirname(fileURLToPath(import.meta.url)), '../dist/index.js');
const PROCESSES = 8;

const CHILD = `
import { exportImage } from ${JSON.stringify(DIST)};
const options = JSON.parse(process.argv[2]);
const result = await exportImage({ ...options, concurrency: 1 });
console.log(JSON.stringify(result));
`;

interface ChildResult {
  manifestDigest: string;
  layers: Array<{ dir: string; digest: string; cached: boolean; squashed?: string[] }>;
}

/** Locks, leases and temp files below `root` (there must be none once the exports are done). */
async function leftovers(root: string): Promise<string> {
  const { stdout } = await run('find', [
    root,
    '(',
    '-name',
    '*.lock',
    '-o',
    '-name',
    '*.lease',
    '-o',
    '-name',
    '.day11-tmp-*',
    ')',
  ]);
  return stdout;
}

describe('concurrent exports into one layout', () => {
  it(`${PROCESSES} processes: every tag verifies, each layer compressed once, no lock left`, async () => {
    if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run \`pnpm build\` first`);
    const root = await tempDir('fork');
    const osDir = join(root, 'cache');
    const layout = join(root, 'oci');
    const layers: TestLayer[] = [];
    for (let i = 0; i < 6; i++) {
      layers.push(
        await makeLayer(osDir, `layer-${i}`, (fs) => {
          mkdirSync(join(fs, `pkg${i}`));
          // Half random, half text: a few hundred ms of compression each, so the exports overlap.
          writeFileSync(
            join(fs, `pkg${i}/data`),
            Buffer.concat([randomBytes(2e6), Buffer.alloc(4e6, `layer ${i} `)]),
          );
        }),
      );
    }
    const [base, ...rest] = layers as [TestLayer, ...TestLayer[]];
    const script = join(root, 'child.mjs');
    await writeFile(script, CHILD);
    const jobs = Array.from({ length: PROCESSES }, (_, p) => ({
      layout,
      tag: `img.${p}`,
      base: asBase(base),
      // Overlapping stacks: every image shares the base and two or three dependencies.
      layers: rest.filter((_, i) => (i + p) % 3 !== 0).map((l) => l.dir),
    }));
    let running = true;
    const children = Promise.all(
      jobs.map(async (job) => {
        const { stdout } = await run('node', [script, JSON.stringify(job)]);
        return JSON.parse(stdout) as ChildResult;
      }),
    ).finally(() => (running = false));
    // Garbage collection of the layout meanwhile must not take any export's blobs.
    let collections = 0;
    while (running) {
      await Layout.init(layout);
      await Layout.gc(layout);
      collections++;
    }
    const results = await children;
    expect(collections).toBeGreaterThan(0);

    expect((await Layout.tags(layout)).map((t) => t.tag)).toEqual(jobs.map((j) => j.tag).sort());
    expect(await Layout.verify(layout)).toEqual([]);
    for (const [p, r] of results.entries()) {
      const tagged = (await Layout.tags(layout)).find((t) => t.tag === `img.${p}`);
      expect(tagged?.digest).toBe(r.manifestDigest);
    }
    // Each layer was compressed by exactly one process; the rest found it cached.
    const builds = new Map<string, number>();
    for (const r of results)
      for (const l of r.layers) builds.set(l.dir, (builds.get(l.dir) ?? 0) + (l.cached ? 0 : 1));
    expect([...builds.values()].every((n) => n === 1)).toBe(true);
    // Shared layers are stored once: one blob per layer, plus a config and a manifest per distinct image.
    const blobs = await readdir(join(layout, 'blobs/sha256'));
    const manifests = new Set(results.map((r) => r.manifestDigest));
    expect(blobs.length).toBeLessThanOrEqual(layers.length + 2 * manifests.size);
    expect(blobs.every((b) => /^[0-9a-f]{64}$/.test(b))).toBe(true);
    // No lock, lease or temp file anywhere.
    expect(await leftovers(root)).toBe('');
  }, 120_000);

  it(`${PROCESSES} processes squashing the same runs: each run merged and compressed once`, async () => {
    if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run \`pnpm build\` first`);
    const root = await tempDir('fork-squash');
    const osDir = join(root, 'cache');
    const layout = join(root, 'oci');
    const layers: TestLayer[] = [];
    for (let i = 0; i < 10; i++) {
      layers.push(
        await makeLayer(osDir, `squash-${i}`, (fs) => {
          writeFileSync(join(fs, `f${i}`), Buffer.concat([randomBytes(2e5), Buffer.alloc(8e5, i)]));
        }),
      );
    }
    const [base, ...rest] = layers as [TestLayer, ...TestLayer[]];
    const script = join(root, 'child.mjs');
    await writeFile(script, CHILD);
    const results = await Promise.all(
      Array.from({ length: PROCESSES }, async (_, p) => {
        const job = {
          layout,
          tag: `img.${p}`,
          base: asBase(base),
          layers: rest.map((l) => l.dir),
          maxLayers: 4,
          squashStrategy: 'suffix',
        };
        const { stdout } = await run('node', [script, JSON.stringify(job)]);
        return JSON.parse(stdout) as ChildResult;
      }),
    );
    // One image, whoever made which part: the same manifest from every process.
    expect(new Set(results.map((r) => r.manifestDigest)).size).toBe(1);
    const runs = results.map((r) => r.layers.find((l) => l.squashed)!);
    expect(runs[0]!.squashed).toHaveLength(7);
    expect(runs.filter((l) => !l.cached)).toHaveLength(1);
    expect(await Layout.verify(layout)).toEqual([]);
    const merged = (await readdir(osDir)).filter((n) => n.startsWith('build-'));
    expect(merged).toHaveLength(layers.length + 1);
    expect(await leftovers(root)).toBe('');
  }, 120_000);
});
