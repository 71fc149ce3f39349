/**
 * Processes inside `runInLayers` that are signalled: SIGTERM/SIGINT tear the
 * run down synchronously (nothing left, no recover needed); SIGKILL leaves a
 * mount, a container and a temp dir, which `recover()` removes. The workers
 * run the built package (`dist-spec/fixtures/run-worker.js`): `pnpm build` first.
 */
import { access, rm } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { Runc } from '@day11/container';
import { CommandError, Exec } from '@day11/exec';
import { InUse, type Base } from '@day11/layer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLEAN, busyboxBase, fileLayer, leftovers, tempDir } from './fixtures/cache.js';
import type { WorkerArgs } from './fixtures/run-worker.js';
import { recover } from './recover.js';

const WORKER = fileURLToPath(new URL('../dist-spec/fixtures/run-worker.js', import.meta.url));

let osDir: string;
let base: Base;
let deps: string[];

beforeAll(async () => {
  await access(WORKER).catch(() => {
    throw new Error(`${WORKER} is missing: run \`pnpm build\` before the integration tests`);
  });
  await Runc.prepareCrunCgroups();
  osDir = await tempDir('sig');
  base = await busyboxBase(osDir);
  deps = [
    await fileLayer({ osDir, base, files: { 'two.txt': '2\n' } }),
    await fileLayer({ osDir, base, files: { 'one.txt': '1\n' } }),
  ];
});

afterAll(async () => {
  if (osDir) await rm(osDir, { recursive: true, force: true });
});

interface Worker {
  /** Every line the worker printed. */
  lines: string[];
  /** How it ended: exit code, or the signal that killed it. */
  ended: Promise<{ exitCode: number | undefined; signal: string | undefined }>;
}

/**
 * Starts a worker and, once it prints `waitFor`, sends it `signal`.
 */
function startWorker(
  args: Omit<WorkerArgs, 'base' | 'buildDirs'>,
  waitFor: string,
  signal: NodeJS.Signals,
): Worker {
  const lines: string[] = [];
  let pid: number | undefined;
  const full: WorkerArgs = { ...args, base, buildDirs: deps };
  const ended = Exec.run(process.execPath, [WORKER, JSON.stringify(full)], {
    timeoutMs: 60_000,
    onOutput: (line, stream) => {
      if (stream !== 'stdout') return;
      lines.push(line);
      if (line.startsWith('pid ')) pid = Number(line.slice(4));
      if (line === waitFor && pid !== undefined) process.kill(pid, signal);
    },
  }).then(
    (r) => ({ exitCode: r.exitCode, signal: undefined }),
    (err: unknown) => {
      if (err instanceof CommandError && !err.timedOut) {
        return { exitCode: err.exitCode, signal: err.signal };
      }
      throw err;
    },
  );
  return { lines, ended };
}

async function leases(): Promise<number> {
  let n = 0;
  for (const dir of [base.dir, ...deps]) n += (await InUse.holders(dir)).length;
  return n;
}

describe.each([
  ['SIGTERM', 'runc'],
  ['SIGINT', 'crun'],
] as const)('%s to a process inside runInLayers (%s)', (signal, runtime) => {
  it('stops the container, unmounts, removes the temp dir, and dies of the signal', async () => {
    const w = startWorker(
      { script: 'echo started; sleep 60', runtime },
      'container started',
      signal,
    );
    expect(await w.ended).toEqual({ exitCode: undefined, signal });
    expect(w.lines.some((l) => l.startsWith('result') || l.startsWith('error'))).toBe(false);
    expect(await leftovers(osDir)).toEqual(CLEAN);
    expect(await leases()).toBe(0);
  });

  it('also before the container starts (here: during prepUpper)', async () => {
    const w = startWorker({ script: 'true', runtime, prepDelayMs: 30_000 }, 'prep', signal);
    expect(await w.ended).toEqual({ exitCode: undefined, signal });
    expect(await leftovers(osDir)).toEqual(CLEAN);
    expect(await leases()).toBe(0);
  });
});

describe('a process with its own SIGTERM listener', () => {
  it('is not killed by the runner: the run is torn down and rejects with RUNNER_INTERRUPTED', async () => {
    const w = startWorker(
      { script: 'echo started; sleep 60', runtime: 'runc', ownHandler: 'SIGTERM' },
      'container started',
      'SIGTERM',
    );
    expect(await w.ended).toEqual({ exitCode: 0, signal: undefined });
    expect(w.lines).toContain('own SIGTERM');
    expect(w.lines.at(-1)).toBe('error RUNNER_INTERRUPTED');
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });
});

describe.each(['runc', 'crun'] as const)(
  'SIGKILL of a process inside runInLayers (%s)',
  (runtime) => {
    it('leaves a mount, a container and a temp dir; recover() removes them all', async () => {
      const w = startWorker(
        { script: 'echo started; sleep 60', runtime },
        'container started',
        'SIGKILL',
      );
      expect(await w.ended).toEqual({ exitCode: undefined, signal: 'SIGKILL' });
      const left = await leftovers(osDir);
      expect(left.mounts).toHaveLength(1);
      expect(left[runtime]).toHaveLength(1);
      expect(left.temps).toHaveLength(1);

      const report = await recover({ osDir });
      expect(report.containers).toEqual([`${runtime}:${left[runtime][0]}`]);
      expect(report.unmounted).toHaveLength(1);
      expect(report.removed).toHaveLength(1);
      expect(report.left).toEqual([]);
      expect(report.cache.leases.length).toBeGreaterThan(0); // the dead process's leases
      expect(await leftovers(osDir)).toEqual(CLEAN);
      expect(await leases()).toBe(0);
    });
  },
);
