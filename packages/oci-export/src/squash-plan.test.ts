import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { OciExportCodes } from './errors.js';
import * as SquashPlan from './squash-plan.js';
import type { Segment } from './squash-plan.js';

/** The plan's invariants: covers the stack in order, contiguous, ≤ maxLayers, base alone. */
function checkShape(segments: readonly Segment[], n: number, maxLayers: number): void {
  expect(segments.length).toBeLessThanOrEqual(Math.max(maxLayers, 0));
  let next = 0;
  for (const s of segments) {
    expect(s.start).toBe(next);
    expect(s.end).toBeGreaterThan(s.start);
    next = s.end;
  }
  expect(next).toBe(n);
  if (n > 0) expect(segments[0]).toEqual({ start: 0, end: 1 });
}

/** The best kept value by trying every set of kept layers (base always kept). */
function bruteForce(values: readonly number[], maxLayers: number): number {
  const n = values.length;
  let best = -Infinity;
  for (let mask = 0; mask < 1 << (n - 1); mask++) {
    const kept = (i: number) => i === 0 || ((mask >> (i - 1)) & 1) === 1;
    let segments = 0;
    let value = 0;
    let valid = true;
    for (let i = 0; i < n;) {
      if (kept(i)) {
        value += values[i]!;
        segments++;
        i++;
        continue;
      }
      let j = i;
      while (j < n && !kept(j)) j++;
      // A run of one layer is that layer kept, not a merge: count it as such.
      if (j - i === 1) valid = false;
      segments++;
      i = j;
    }
    if (valid && segments <= maxLayers) best = Math.max(best, value);
  }
  return best;
}

const stack = (max: number) =>
  fc.array(fc.integer({ min: 0, max: 1_000_000 }), { minLength: 1, maxLength: max });

describe('SquashPlan.plan', () => {
  it('never exceeds maxLayers, keeps runs contiguous and the base alone', () => {
    fc.assert(
      fc.property(stack(300), fc.integer({ min: 2, max: 320 }), (values, maxLayers) => {
        const { segments, keptValue } = SquashPlan.plan({ values, maxLayers });
        checkShape(segments, values.length, maxLayers);
        const kept = segments.filter((s) => s.end - s.start === 1);
        expect(keptValue).toBe(kept.reduce((sum, s) => sum + values[s.start]!, 0));
      }),
      { numRuns: 300 },
    );
  });

  it('finds the optimum that brute force finds on small stacks', () => {
    fc.assert(
      fc.property(stack(13), fc.integer({ min: 2, max: 14 }), (values, maxLayers) => {
        const { keptValue } = SquashPlan.plan({ values, maxLayers });
        expect(keptValue).toBe(bruteForce(values, maxLayers));
      }),
      { numRuns: 1500 },
    );
  });

  it('is at least as good as the suffix and flatten baselines by its own measure', () => {
    fc.assert(
      fc.property(stack(200), fc.integer({ min: 2, max: 150 }), (values, maxLayers) => {
        const best = SquashPlan.plan({ values, maxLayers }).keptValue;
        expect(best).toBeGreaterThanOrEqual(SquashPlan.suffix({ values, maxLayers }).keptValue);
        expect(best).toBeGreaterThanOrEqual(SquashPlan.flatten({ values, maxLayers }).keptValue);
      }),
    );
  });

  it('keeps every layer of a stack that fits', () => {
    const { segments } = SquashPlan.plan({ values: [1, 2, 3], maxLayers: 3 });
    expect(segments).toEqual([
      { start: 0, end: 1 },
      { start: 1, end: 2 },
      { start: 2, end: 3 },
    ]);
  });

  it('keeps the valuable layers and merges the runs between them', () => {
    // 7 layers into 5: base, two valuable layers and two runs of cheap ones.
    const values = [100, 1, 1, 50, 1, 1, 60];
    const { segments, keptValue } = SquashPlan.plan({ values, maxLayers: 5 });
    expect(segments).toEqual([
      { start: 0, end: 1 },
      { start: 1, end: 3 },
      { start: 3, end: 4 },
      { start: 4, end: 6 },
      { start: 6, end: 7 },
    ]);
    expect(keptValue).toBe(210);
    // The suffix baseline keeps the cheap lower layers instead.
    expect(SquashPlan.suffix({ values, maxLayers: 5 }).keptValue).toBe(152);
  });

  it('breaks ties towards the lower layers, deterministically', () => {
    const values = Array.from({ length: 10 }, () => 7);
    const { segments } = SquashPlan.plan({ values, maxLayers: 6 });
    expect(segments).toEqual([
      { start: 0, end: 1 },
      { start: 1, end: 2 },
      { start: 2, end: 3 },
      { start: 3, end: 4 },
      { start: 4, end: 5 },
      { start: 5, end: 10 },
    ]);
    expect(SquashPlan.plan({ values, maxLayers: 6 })).toEqual(
      SquashPlan.plan({ values: [...values], maxLayers: 6 }),
    );
  });

  it('handles stacks of hundreds of layers quickly', () => {
    const values = Array.from({ length: 2000 }, (_, i) => (i * 7919) % 1013);
    const started = performance.now();
    const { segments } = SquashPlan.plan({ values, maxLayers: 500 });
    checkShape(segments, 2000, 500);
    expect(performance.now() - started).toBeLessThan(5000);
  });

  it('refuses a maxLayers below 2 and bad values', () => {
    for (const maxLayers of [1, 0, -3, 2.5, Number.NaN]) {
      expect(() => SquashPlan.plan({ values: [1, 2, 3], maxLayers })).toThrow(
        expect.objectContaining({ code: OciExportCodes.BAD_ARGUMENT }),
      );
    }
    expect(() => SquashPlan.plan({ values: [1, -1, 3], maxLayers: 2 })).toThrow(/layer 1/);
    expect(() => SquashPlan.plan({ values: [1, Infinity], maxLayers: 2 })).toThrow(/Invalid value/);
  });
});

describe('SquashPlan baselines', () => {
  it('suffix keeps the lowest maxLayers - 1 layers and merges the rest', () => {
    const values = Array.from({ length: 140 }, () => 1);
    const { segments } = SquashPlan.suffix({ values, maxLayers: 60 });
    checkShape(segments, 140, 60);
    expect(segments).toHaveLength(60);
    expect(segments.at(-1)).toEqual({ start: 59, end: 140 });
  });

  it('flatten keeps the base and merges the rest', () => {
    const values = Array.from({ length: 140 }, () => 1);
    expect(SquashPlan.flatten({ values, maxLayers: 60 }).segments).toEqual([
      { start: 0, end: 1 },
      { start: 1, end: 140 },
    ]);
    expect(SquashPlan.flatten({ values: [1, 1], maxLayers: 60 }).segments).toHaveLength(2);
  });

  it('byStrategy picks the strategy and refuses unknown ones', () => {
    const options = { values: [5, 1, 1, 1, 9], maxLayers: 3 };
    expect(SquashPlan.byStrategy('suffix', options)).toEqual(SquashPlan.suffix(options));
    expect(SquashPlan.byStrategy('value', options)).toEqual(SquashPlan.plan(options));
    expect(() => SquashPlan.byStrategy('bogus' as SquashPlan.SquashStrategy, options)).toThrow(
      /Unknown squash strategy/,
    );
  });
});
