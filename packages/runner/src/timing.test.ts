import { describe, expect, it } from 'vitest';
import { PHASES, PhaseClock } from './timing.js';

describe('PhaseClock', () => {
  it('reports every phase in order, adding up repeated phases, 0 for skipped ones', async () => {
    const clock = new PhaseClock();
    await clock.time('mkdirs', () => new Promise((r) => setTimeout(r, 20)));
    clock.add('merge', 0.5);
    clock.add('merge', 0.25);
    const timing = clock.timing();
    expect(timing.map(([p]) => p)).toEqual([...PHASES]);
    const t = Object.fromEntries(timing);
    expect(t['mkdirs']).toBeGreaterThanOrEqual(0.015);
    expect(t['merge']).toBe(0.75);
    expect(t['touch']).toBe(0);
    expect(t['total']).toBeGreaterThanOrEqual(t['mkdirs']!);
  });

  it('counts the time of a phase that throws', async () => {
    const clock = new PhaseClock();
    await expect(
      clock.time('prep_upper', async () => {
        await new Promise((r) => setTimeout(r, 10));
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(Object.fromEntries(clock.timing())['prep_upper']).toBeGreaterThan(0.005);
  });

  it("has the issue's phases", () => {
    expect(PHASES).toEqual([
      'mkdirs',
      'touch',
      'plan',
      'merge',
      'prep_upper',
      'overlay_mount',
      'slot_wait',
      'runc_run',
      'overlay_umount',
      'cleanup',
      'total',
    ]);
  });
});
