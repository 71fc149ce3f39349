import { access, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  SIGNALS,
  othersListening,
  teardownAllSync,
  teardownRunSync,
  update,
  type ActiveRun,
  type Guarded,
} from './guard.js';

const exists = (p: string) =>
  access(p).then(
    () => true,
    () => false,
  );

async function fakeRun(): Promise<ActiveRun> {
  const dir = await mkdtemp(join(tmpdir(), 'day11-runner-registry-'));
  const runDir = join(dir, 'run');
  await mkdir(join(runDir, 'merged'), { recursive: true });
  await writeFile(join(runDir, 'config.json'), '{}');
  await mkdir(join(dir, 'handover'));
  return {
    runDir,
    merged: join(runDir, 'merged'),
    handover: join(dir, 'handover'),
    runtime: 'runc',
    containerId: undefined,
    interrupted: undefined,
  };
}

/** A runner as the guard sees it, with runs and holdings set by the test. */
class FakeRunner implements Guarded {
  runs = new Set<ActiveRun>();
  holding = false;
  tornDown: (NodeJS.Signals | undefined)[] = [];
  hasActiveRuns(): boolean {
    return this.runs.size > 0;
  }
  holdsAnything(): boolean {
    return this.holding || this.runs.size > 0;
  }
  teardownSync(sig: NodeJS.Signals | undefined): void {
    this.tornDown.push(sig);
    for (const run of this.runs) {
      run.interrupted = sig ?? 'SIGTERM';
      teardownRunSync(run);
    }
    this.runs.clear();
    this.holding = false;
  }
}

const runners: FakeRunner[] = [];
afterEach(() => {
  for (const r of runners.splice(0)) update(r, false);
});

describe('the guard of live runners', () => {
  it('listens to signals while a run is active, and to exit while anything is held', async () => {
    const before = SIGNALS.map((s) => process.listenerCount(s));
    const exitBefore = process.listenerCount('exit');
    const [a, b] = [new FakeRunner(), new FakeRunner()];
    runners.push(a, b);
    const run = await fakeRun();
    a.runs.add(run);
    update(a);
    b.holding = true;
    update(b);
    expect(SIGNALS.map((s) => process.listenerCount(s))).toEqual(before.map((n) => n + 1));
    expect(process.listenerCount('exit')).toBe(exitBefore + 1);
    a.runs.clear();
    update(a);
    // b still holds a lease or a spare: the exit hook stays, signals are the user's again.
    expect(SIGNALS.map((s) => process.listenerCount(s))).toEqual(before);
    expect(process.listenerCount('exit')).toBe(exitBefore + 1);
    update(b, false);
    expect(process.listenerCount('exit')).toBe(exitBefore);
    await rm(join(run.runDir, '..'), { recursive: true });
  });

  it('tears every runner down synchronously: directory and unhanded upper removed, run marked', async () => {
    const before = SIGNALS.map((s) => process.listenerCount(s));
    const runner = new FakeRunner();
    runners.push(runner);
    const run = await fakeRun();
    runner.runs.add(run);
    update(runner);
    teardownAllSync('SIGTERM');
    expect(runner.tornDown).toEqual(['SIGTERM']);
    expect(run.interrupted).toBe('SIGTERM');
    expect(await exists(run.runDir)).toBe(false);
    expect(await exists(run.handover)).toBe(false);
    // Torn down: the guard's listeners are gone with the runs.
    expect(SIGNALS.map((s) => process.listenerCount(s))).toEqual(before);
    await rm(join(run.runDir, '..'), { recursive: true });
  });
});

describe('othersListening', () => {
  it("does not count signal-exit's listeners (they defer to everyone else)", () => {
    const listener = (): void => undefined;
    // signal-exit v3 counts its instances here (v4 in a read-only global).
    const p = process as { __signal_exit_emitter__?: { count: number } };
    const saved = p.__signal_exit_emitter__;
    const base = othersListening('SIGUSR2');
    process.on('SIGUSR2', listener);
    try {
      expect(othersListening('SIGUSR2')).toBe(base + 1);
      // As if signal-exit v3 had installed that listener.
      p.__signal_exit_emitter__ = { count: (saved?.count ?? 0) + 1 };
      expect(othersListening('SIGUSR2')).toBe(base);
    } finally {
      if (saved) p.__signal_exit_emitter__ = saved;
      else delete p.__signal_exit_emitter__;
      process.removeListener('SIGUSR2', listener);
    }
  });
});
