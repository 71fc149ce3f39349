/**
 * Crash safety across real processes: racing committers, and committers
 * killed with SIGKILL mid-commit. The workers run the built package
 * (`dist-spec/fixtures/commit-worker.js`), so `pnpm build` first.
 */
import { access, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Exec, isDay11Error, type CommandError } from '@day11/exec';
import { afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { CommitStep } from './commit.js';
import { hashOf, tempDir, tempsIn } from './fixtures/cache.js';
import type { WorkerArgs } from './fixtures/commit-worker.js';
import { path as layerPath } from './layer-dir.js';
import { load } from './layer-meta.js';
import { ORPHAN_GRACE_MS } from './lock.js';
import { sweep } from './recover.js';
import { layers } from './scan.js';
import { read } from './sidecar.js';

const WORKER = fileURLToPath(new URL('../dist-spec/fixtures/commit-worker.js', import.meta.url));

interface Line {
  n: number;
  hash: string;
  committed: boolean;
}

let osDir: string;
beforeAll(async () => {
  await access(WORKER).catch(() => {
    throw new Error(`${WORKER} is missing: run \`pnpm build\` before the integration tests`);
  });
});
beforeEach(async () => {
  osDir = await tempDir('crash');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

/** Runs a worker; resolves with its result lines and whether it was SIGKILLed. */
async function runWorker(
  args: Omit<WorkerArgs, 'osDir'>,
  onReady?: () => void,
): Promise<{ lines: Line[]; killed: boolean }> {
  const lines: Line[] = [];
  const onOutput = (line: string, stream: string) => {
    if (stream !== 'stdout') return;
    if (line === 'ready') onReady?.();
    else lines.push(JSON.parse(line) as Line);
  };
  try {
    await Exec.run(process.execPath, [WORKER, JSON.stringify({ ...args, osDir })], {
      onOutput,
      timeoutMs: 120_000,
    });
    return { lines, killed: false };
  } catch (err) {
    if (isDay11Error(err) && (err as CommandError).signal === 'SIGKILL')
      return { lines, killed: true };
    throw err;
  }
}

/** Every visible layer is complete: layer.json valid, fs/ with a marker, sidecar and log from the same worker. */
async function expectOnlyCompleteLayers(): Promise<void> {
  for (const layer of await layers(osDir)) {
    expect(layer.metaError, `${layer.dir} is partial`).toBeUndefined();
    const marker = await readFile(join(layer.dir, 'fs', 'marker'), 'utf8');
    expect(await read(layer.dir, 'build.json')).toMatchObject({ worker: marker });
    expect(await readFile(join(layer.dir, 'layer.log'), 'utf8')).toBe(`log of ${marker}\n`);
  }
}

async function locksLeft(): Promise<string[]> {
  return readdir(join(osDir, '.locks')).catch(() => []);
}

describe('two processes committing the same 50 layers', () => {
  it('commit each layer exactly once, completely, leaving nothing behind', async () => {
    const goFile = join(osDir, 'go');
    let ready = 0;
    const start = () => {
      if (++ready === 2) void writeFile(goFile, '');
    };
    const [a, b] = await Promise.all(
      // Opposite ways: however late one of them starts, they meet somewhere.
      ['A', 'B'].map((id) =>
        runWorker({ id, first: 0, count: 50, goFile, reverse: id === 'B' }, start),
      ),
    );
    expect(a!.lines).toHaveLength(50);
    expect(b!.lines).toHaveLength(50);
    let wonByA = 0;
    for (let n = 0; n < 50; n++) {
      const byA = a!.lines.find((l) => l.n === n)!;
      const byB = b!.lines.find((l) => l.n === n)!;
      expect([byA.committed, byB.committed].filter(Boolean), `layer ${n}`).toHaveLength(1);
      const winner = byA.committed ? 'A' : 'B';
      if (byA.committed) wonByA++;
      const dir = layerPath({ osDir, hash: hashOf(n) });
      await load(dir);
      expect(await readFile(join(dir, 'fs', 'marker'), 'utf8')).toBe(winner);
      expect(await readdir(join(dir, 'fs', 'files'))).toEqual([`${winner}-${n}`]);
      expect(await read(dir, 'build.json')).toEqual({ worker: winner, n });
    }
    expect(await layers(osDir)).toHaveLength(50);
    await expectOnlyCompleteLayers();
    expect(await tempsIn(osDir)).toEqual([]);
    expect(await locksLeft()).toEqual([]);
    // Both really raced (a sequential run would give one worker every layer).
    expect(wonByA, 'each worker should win some layers').toBeGreaterThan(0);
    expect(wonByA).toBeLessThan(50);
  });
});

describe('a committer killed with SIGKILL', () => {
  // [step, layer visible after the kill, temp dir left, lock left]
  const steps: [CommitStep, boolean, boolean, boolean][] = [
    ['assembling', false, true, false],
    ['assembled', false, true, false],
    ['locked', false, true, true],
    ['renamed', true, false, true],
  ];
  it.each(steps)(
    'at %s leaves no partial layer; Recover.sweep clears its leftovers; a re-run succeeds',
    async (killAt, visible, leavesTemp, leavesLock) => {
      const killed = await runWorker({ id: 'K', first: 0, count: 1, killAt });
      expect(killed.killed).toBe(true);
      expect(killed.lines).toEqual([]);

      expect(await layers(osDir)).toHaveLength(visible ? 1 : 0);
      await expectOnlyCompleteLayers();
      const temps = await tempsIn(osDir);
      // The worker's upper is itself a temp dir until commit moves it in.
      expect(temps.length > 0).toBe(leavesTemp);
      expect(await locksLeft()).toHaveLength(leavesLock ? 1 : 0);

      const report = await sweep(osDir);
      expect(report.temps).toHaveLength(temps.length);
      expect(report.locks).toHaveLength(leavesLock ? 1 : 0);
      expect(await tempsIn(osDir)).toEqual([]);
      expect(await locksLeft()).toEqual([]);

      const rerun = await runWorker({ id: 'R', first: 0, count: 1 });
      expect(rerun.lines).toEqual([{ n: 0, hash: hashOf(0), committed: !visible }]);
      await expectOnlyCompleteLayers();
      expect(await layers(osDir)).toHaveLength(1);
      expect(await tempsIn(osDir)).toEqual([]);
    },
  );

  it('at random moments never leaves a partial layer, and the cache recovers', async () => {
    let kills = 0;
    let swept = 0;
    for (let trial = 0; trial < 10; trial++) {
      const run = await runWorker({
        id: `T${trial}`,
        first: 0,
        count: 30,
        killAfterMs: 5 + Math.floor(Math.random() * 150),
      });
      if (run.killed) kills++;
      await expectOnlyCompleteLayers();
      let report = await sweep(osDir);
      if ((await locksLeft()).length > 0) {
        // Killed between creating a lock and recording its owner: it is an
        // orphan only after ORPHAN_GRACE_MS.
        await new Promise((r) => setTimeout(r, ORPHAN_GRACE_MS + 100));
        report = await sweep(osDir);
      }
      swept += report.temps.length + report.locks.length;
      expect(await tempsIn(osDir)).toEqual([]);
      expect(await locksLeft()).toEqual([]);
    }
    expect(kills).toBeGreaterThan(0);
    expect(swept, 'some kills should have left leftovers to sweep').toBeGreaterThan(0);
    const final = await runWorker({ id: 'F', first: 0, count: 30 });
    expect(final.killed).toBe(false);
    expect(await layers(osDir)).toHaveLength(30);
    await expectOnlyCompleteLayers();
    expect(await tempsIn(osDir)).toEqual([]);
  });
});
