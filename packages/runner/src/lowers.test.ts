import { join } from 'node:path';
import type { Overlay } from '@day11/container';
import { describe, expect, it } from 'vitest';
import { planLowers } from './lowers.js';

const off = { available: false, maxLowers: 0, reason: 'not here' };

/** A machine whose only strategy is the given one. */
function caps(over: Partial<Overlay.Capabilities>): Overlay.Capabilities {
  return {
    root: true,
    strategies: [],
    fsconfig: off,
    classic: off,
    relative: off,
    ...over,
  };
}

const run = '/c/.day11-tmp-1-aa-run';
const common = {
  upper: `${run}/upper`,
  work: `${run}/work`,
  target: `${run}/merged`,
  mergeTarget: `${run}/lower`,
};
const layers = (n: number, dir = '/c') =>
  Array.from({ length: n }, (_, i) => join(dir, `build-${String(i).padStart(12, '0')}`));

describe('planLowers', () => {
  const fsconfig = caps({
    strategies: ['fsconfig'],
    fsconfig: { available: true, maxLowers: 5, longPaths: true },
  });

  it('keeps every layer separate when the stack fits, de-duplicated, as their fs/ dirs', async () => {
    const dirs = layers(5);
    const plan = await planLowers({
      ...common,
      layerDirs: [...dirs, dirs[0]!],
      capabilities: fsconfig,
    });
    expect(plan).toEqual({ lowers: dirs.map((d) => `${d}/fs`), merge: [], mergeTarget: undefined });
  });

  it('past the limit, keeps the topmost separate and merges the deepest below them', async () => {
    const dirs = layers(8);
    const plan = await planLowers({ ...common, layerDirs: dirs, capabilities: fsconfig });
    expect(plan.lowers).toEqual([...dirs.slice(0, 4).map((d) => `${d}/fs`), common.mergeTarget]);
    expect(plan.merge).toEqual(dirs.slice(4));
    expect(plan.mergeTarget).toBe(common.mergeTarget);
  });

  it("counts the merged directory's own bytes on a page-limited strategy", async () => {
    const classic = caps({
      strategies: ['classic'],
      classic: { available: true, maxLowers: 500, pageBytes: 4096 },
    });
    const dirs = layers(200, `/c/${'x'.repeat(40)}`);
    const long = { ...common, mergeTarget: `/${'m'.repeat(300)}/lower` };
    const plan = await planLowers({ ...long, layerDirs: dirs, capabilities: classic });
    const kept = plan.lowers.length - 1;
    expect(plan.merge).toEqual(dirs.slice(kept));
    expect(plan.lowers.at(-1)).toBe(long.mergeTarget);
    // Everything in the page: options of the kept layers plus the long merged path.
    const bytes = plan.lowers.join(':').length + 'lowerdir='.length;
    expect(bytes).toBeLessThan(4096);
    // ...and no room for one more layer.
    expect(bytes + dirs[kept]!.length + 4).toBeGreaterThan(4096 - 200);
  });

  it('leaves the stack alone when no strategy is available: the mount reports why', async () => {
    const dirs = layers(3);
    const plan = await planLowers({ ...common, layerDirs: dirs, capabilities: caps({}) });
    expect(plan.merge).toEqual([]);
    expect(plan.lowers).toHaveLength(3);
  });
});
