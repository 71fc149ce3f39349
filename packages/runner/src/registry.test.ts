import { access, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  SIGNALS,
  activeRuns,
  othersListening,
  register,
  teardownAllSync,
  unregister,
  type ActiveRun,
} from './registry.js';

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

afterEach(() => {
  for (const run of [...activeRuns()]) unregister(run);
});

describe('the registry of active runs', () => {
  it('installs its signal and exit listeners only while a run is active', async () => {
    const before = SIGNALS.map((s) => process.listenerCount(s));
    const exitBefore = process.listenerCount('exit');
    const [a, b] = [await fakeRun(), await fakeRun()];
    register(a);
    register(b);
    expect(SIGNALS.map((s) => process.listenerCount(s))).toEqual(before.map((n) => n + 1));
    expect(process.listenerCount('exit')).toBe(exitBefore + 1);
    unregister(a);
    expect(SIGNALS.map((s) => process.listenerCount(s))).toEqual(before.map((n) => n + 1));
    unregister(b);
    expect(SIGNALS.map((s) => process.listenerCount(s))).toEqual(before);
    expect(process.listenerCount('exit')).toBe(exitBefore);
    await rm(join(a.runDir, '..'), { recursive: true });
    await rm(join(b.runDir, '..'), { recursive: true });
  });

  it('tears every run down synchronously: directory and unhanded upper removed, run marked', async () => {
    const run = await fakeRun();
    register(run);
    teardownAllSync('SIGTERM');
    expect(run.interrupted).toBe('SIGTERM');
    expect(await exists(run.runDir)).toBe(false);
    expect(await exists(run.handover)).toBe(false);
    expect(activeRuns().size).toBe(0);
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
