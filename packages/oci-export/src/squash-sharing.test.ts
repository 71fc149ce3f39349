/**
 * The plan's purpose, checked on the plans alone (bench/src/squash.ts measures
 * the same on real exports): images squashed to a budget by the value plan
 * share more bytes than with the suffix squash or a flatten (at least as many
 * is the promise; with layers of different sizes it is strictly more). A
 * kept layer's blob is the layer's; a merged run's blob is the ordered run's
 * (as `SquashLayer` keys it) and weighs what its layers weigh.
 */
import { describe, expect, it } from 'vitest';
import { seeded as random } from './fixtures/random.js';
import * as SquashPlan from './squash-plan.js';
import * as SquashValue from './squash-value.js';

const MAX_LAYERS = 60;

/** Stacks of layer names (base first) and each name's blob size. */
interface Family {
  stacks: string[][];
  size: Map<string, number>;
}

function sizer(rand: () => number, size: Map<string, number>) {
  return (name: string) => {
    if (!size.has(name)) size.set(name, Math.round(1024 * 512 ** rand()));
    return name;
  };
}

/** Two 140-layer stacks sharing their first 100 layers. */
function pair(seed: number): Family {
  const size = new Map<string, number>();
  const named = sizer(random(seed), size);
  const common = Array.from({ length: 100 }, (_, i) => named(`s${i}`));
  const stacks = ['a', 'b'].map((side) => [
    ...common,
    ...Array.from({ length: 40 }, (_, i) => named(`${side}${i}`)),
  ]);
  return { stacks, size };
}

/** 20 closures of a package DAG (each package needs 1–3 of the 200 before it), 125–200 deep. */
function dagFamily(seed: number): Family {
  const rand = random(seed);
  const size = new Map<string, number>();
  const named = sizer(rand, size);
  const deps: number[][] = [];
  for (let i = 0; i < 600; i++) {
    const k = i === 0 ? 0 : 1 + Math.floor(rand() * 3);
    deps.push(
      Array.from({ length: k }, () => Math.max(0, i - 1 - Math.floor(rand() * Math.min(i, 200)))),
    );
  }
  const closure = (i: number) => {
    const seen = new Set([i]);
    for (const todo = [i]; todo.length > 0;)
      for (const d of deps[todo.pop()!]!) if (!seen.has(d) && seen.add(d)) todo.push(d);
    return [...seen].sort((a, b) => a - b);
  };
  const stacks = deps
    .map((_, i) => closure(i))
    .filter((c) => c.length >= 125 && c.length <= 200)
    .slice(0, 20)
    .map((c) => [named('base'), ...c.map((p) => named(`p${p}`))]);
  return { stacks, size };
}

type Blob = { id: string; size: number };

function blobsOf(stack: string[], plan: SquashPlan.SquashPlan, size: Map<string, number>): Blob[] {
  return plan.segments.map(({ start, end }) => {
    const members = stack.slice(start, end);
    return { id: members.join(','), size: members.reduce((s, m) => s + size.get(m)!, 0) };
  });
}

/** Bytes referenced by all images minus bytes stored once: what sharing saves. */
function savedBytes(images: Blob[][]): number {
  const distinct = new Map(images.flat().map((b) => [b.id, b.size]));
  const stored = [...distinct.values()].reduce((a, b) => a + b, 0);
  return images.flat().reduce((a, b) => a + b.size, 0) - stored;
}

function baseline(family: Family, strategy: 'suffix' | 'flatten'): number {
  return savedBytes(
    family.stacks.map((stack) => {
      const values = stack.map((n) => family.size.get(n)!);
      const plan = SquashPlan.byStrategy(strategy, { values, maxLayers: MAX_LAYERS });
      return blobsOf(stack, plan, family.size);
    }),
  );
}

/** Each image valued by the others' stacks, through SquashValue. */
async function bySiblings(family: Family): Promise<number> {
  const images: Blob[][] = [];
  for (const stack of family.stacks) {
    const values = await SquashValue.values({
      layers: stack.map((n) => ({ dir: `/c/${n}`, digest: n, size: family.size.get(n)! })),
      layout: '/nonexistent',
      tag: 'x',
      siblings: family.stacks.filter((s) => s !== stack).map((s) => s.map((n) => `/c/${n}`)),
    });
    images.push(blobsOf(stack, SquashPlan.plan({ values, maxLayers: MAX_LAYERS }), family.size));
  }
  return savedBytes(images);
}

/** Images exported in turn, each valued by the layers the earlier ones kept (as the layout tells). */
function byLayout(family: Family): number {
  const kept = new Map<string, number>();
  const images: Blob[][] = [];
  for (const stack of family.stacks) {
    const values = stack.map((n) => (1 + (kept.get(n) ?? 0)) * family.size.get(n)!);
    const plan = SquashPlan.plan({ values, maxLayers: MAX_LAYERS });
    for (const { start, end } of plan.segments)
      if (end - start === 1) kept.set(stack[start]!, (kept.get(stack[start]!) ?? 0) + 1);
    images.push(blobsOf(stack, plan, family.size));
  }
  return savedBytes(images);
}

describe('sharing kept by the value plan', () => {
  it.each([1, 2, 3, 4, 5])(
    'beats suffix and flatten on two 140-layer images sharing 100 (seed %i)',
    async (seed) => {
      const family = pair(seed);
      const best = Math.max(baseline(family, 'suffix'), baseline(family, 'flatten'));
      expect(await bySiblings(family)).toBeGreaterThan(best);
      expect(byLayout(family)).toBeGreaterThan(best);
    },
  );

  it.each([1, 2, 3, 4, 5])(
    'beats suffix and flatten on 20 DAG-shaped images (seed %i)',
    async (seed) => {
      const family = dagFamily(seed);
      expect(family.stacks).toHaveLength(20);
      const best = Math.max(baseline(family, 'suffix'), baseline(family, 'flatten'));
      expect(await bySiblings(family)).toBeGreaterThan(best);
      expect(byLayout(family)).toBeGreaterThan(best);
    },
  );
});
