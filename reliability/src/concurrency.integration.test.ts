/**
 * 8 `day11 build` processes on overlapping plans in one cache, exporting into
 * one layout, all started at once: each layer is built exactly once (container
 * runs counted by a wrapping runtime), every tag verifies and unpacks, and the
 * cache scans clean with nothing left over. Runs the built CLI: `pnpm build` first.
 */
import { access, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Scan } from '@day11/layer';
import { Layout } from '@day11/oci-export';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLI,
  countedRuns,
  countingRuntime,
  day11Json,
  finalSteps,
  overlappingPlan,
  summaryOf,
  type BuildProcess,
} from './concurrency.js';
import { tempRoot } from './fixtures/layers.js';
import { layoutProblems, leftovers, procMounts, unpackProblem } from './fixtures/leftovers.js';

const PROCESSES = 8;

let root: string;
let cache: string;
let layout: string;
let counter: string;
let results: BuildProcess[];

beforeAll(async () => {
  await access(CLI).catch(() => {
    throw new Error(`${CLI} is missing: run \`pnpm build\` before the integration tests`);
  });
  root = await tempRoot('concurrency');
  cache = join(root, 'cache');
  layout = join(root, 'oci');
  counter = join(root, 'runs.log');
  const runtime = await countingRuntime(root, counter);
  const plans: string[] = [];
  for (let p = 0; p < PROCESSES; p++) {
    plans.push(join(root, `plan-${p}.json`));
    await writeFile(plans[p]!, JSON.stringify(overlappingPlan(p)));
  }
  const args = (plan: string) => [
    'build',
    plan,
    '--cache',
    cache,
    '--jobs',
    '2',
    '--runtime',
    runtime,
    '--oci',
    layout,
  ];
  results = await Promise.all(plans.map((plan) => day11Json(args(plan))));
}, 300_000);

afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

/** Layer name → the processes that ran it ("done") rather than found it cached. */
function builders(): Map<string, number[]> {
  const byLayer = new Map<string, number[]>();
  for (const [p, r] of results.entries()) {
    for (const s of finalSteps(r.events)) {
      const list = byLayer.get(s.layer) ?? [];
      if (s.status === 'done') list.push(p);
      byLayer.set(s.layer, list);
    }
  }
  return byLayer;
}

describe(`${PROCESSES} day11 build processes, overlapping plans, one cache, one layout`, () => {
  it('every process exits 0 with every step done or cached', () => {
    for (const [p, r] of results.entries()) {
      expect(r.code, `process ${p}: ${r.stderr}`).toBe(0);
      const summary = summaryOf(r.events);
      expect(summary, `process ${p} has no summary`).toBeDefined();
      expect(summary!.failed + summary!.skipped, `process ${p}`).toBe(0);
      expect(summary!.built + summary!.cached).toBe(overlappingPlan(p).steps.length);
    }
  });

  it('builds each layer exactly once: one container run per distinct layer', async () => {
    const byLayer = builders();
    const twice = [...byLayer].filter(([, ps]) => ps.length !== 1);
    expect(twice, 'layers not built by exactly one process (layer → processes)').toEqual([]);
    // 3 shared + 4 pair steps + 2 of each process's own.
    expect(byLayer.size).toBe(3 + PROCESSES / 2 + 2 * PROCESSES);
    expect((await countedRuns(counter)).length).toBe(byLayer.size);
  });

  it('leaves a cache that scans clean: the base and each layer once, complete', async () => {
    const scanned = await Scan.layers(cache);
    expect(scanned.filter((l) => l.metaError).map((l) => l.name)).toEqual([]);
    expect(scanned.map((l) => l.name).sort()).toEqual(
      expect.arrayContaining([...builders().keys()].sort()),
    );
    expect(scanned).toHaveLength(builders().size + 1);
    expect(await leftovers({ root, osDir: cache, layouts: [layout] })).toEqual([]);
    expect(await procMounts(root)).toEqual([]);
  });

  it('exports every step into the one layout; every tag verifies and unpacks', async () => {
    const steps = new Set(results.flatMap((_, p) => overlappingPlan(p).steps.map((s) => s.id)));
    const tags = await Layout.tags(layout);
    expect(tags.map((t) => t.tag).sort()).toEqual([...steps].sort());
    expect(await layoutProblems(layout)).toEqual([]);
    for (const { tag } of tags) expect(await unpackProblem(layout, tag)).toBeUndefined();
  }, 120_000);
});
