/**
 * Benchmark: how much sharing the squash plan keeps when images must fit a
 * layer budget, against what existing tools do, on real exports (real layer
 * directories, real blobs, real merged runs):
 *
 * - two 140-layer images sharing their first 100 layers, both exported with
 *   `maxLayers: 60` into one layout: blobs and bytes they share, and bytes
 *   pushed for the second image once the first is there;
 * - a seeded family of 20 DAG-shaped images (packages depending on earlier
 *   packages; each image a package's closure in install order, 126–201
 *   layers) at 60 layers: bytes stored in the layout and bytes saved by sharing;
 * - re-export after one mid-stack package (and so its dependents) changes:
 *   bytes that must be pushed again.
 *
 * Against: the suffix squash of docker-squash & co (keep the lowest 59, merge
 * the rest), and a flatten that keeps the base (base + one layer; `crane
 * flatten` keeps not even the base). The plan is valued by the layout (each
 * image exported in turn sees the images before it) or by sibling stacks (each
 * image knows the others). Layer contents are incompressible, sizes
 * log-uniform from 1 KiB to 512 KiB, so bytes are bytes. Deterministic: one
 * round.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Hash, type Base } from '@day11/layer';
import { exportImage, type ExportResult, type SquashOptions } from '@day11/oci-export';
import { makeLayer, seeded as random } from './fixtures.js';
import { toMarkdown, type BenchRow } from './table.js';

const MAX_LAYERS = 60;
const FAMILY = 20;
const PACKAGES = 600;
const BASE_BYTES = 2 * 1024 ** 2;

/** Log-uniform from 1 KiB to 512 KiB. */
function sizeFrom(rand: () => number): number {
  return Math.round(Math.exp(Math.log(1024) + rand() * Math.log(512)));
}

/** Makes (once) layer `name`: one file of `bytes` incompressible bytes seeded by the name. */
class Layers {
  private readonly made = new Map<string, string>();
  constructor(private readonly osDir: string) {}

  async get(name: string, bytes: number): Promise<string> {
    const known = this.made.get(name);
    if (known) return known;
    const { dir } = await makeLayer(this.osDir, name, async (fs) => {
      const rand = random(Number.parseInt(Hash.baseHash({ image: name }).slice(0, 8), 16));
      const data = Buffer.alloc(bytes);
      for (let i = 0; i + 4 <= bytes; i += 4) data.writeUInt32LE((rand() * 2 ** 32) >>> 0, i);
      await writeFile(join(fs, `${name}.bin`), data);
    });
    this.made.set(name, dir);
    return dir;
  }

  async base(name: string): Promise<Base> {
    const dir = await this.get(name, BASE_BYTES);
    return { hash: Hash.baseHash({ image: name }), dir, image: name };
  }
}

/** An image to export: its tag and its layers above the base. */
interface Image {
  tag: string;
  layers: string[];
}

type Strategy = 'dp-layout' | 'dp-siblings' | 'suffix' | 'flatten' | 'none';

/** Blob digest → size, per image. */
type Blobs = Map<string, number>;

/** Exports `images` in turn into a fresh layout with `strategy`; the blobs of each. */
async function exportAll(
  work: string,
  base: Base,
  images: readonly Image[],
  strategy: Strategy,
): Promise<Blobs[]> {
  const layout = await mkdtemp(join(work, `oci-${strategy}-`));
  const out: Blobs[] = [];
  for (const image of images) {
    const squash: SquashOptions =
      strategy === 'none'
        ? {}
        : strategy === 'dp-siblings'
          ? {
              maxLayers: MAX_LAYERS,
              siblings: images.filter((o) => o !== image).map((o) => [base.dir, ...o.layers]),
            }
          : {
              maxLayers: MAX_LAYERS,
              squashStrategy: strategy === 'dp-layout' ? 'value' : strategy,
            };
    const result: ExportResult = await exportImage({
      layout,
      tag: image.tag,
      base,
      layers: image.layers,
      ...squash,
    });
    out.push(new Map(result.layers.map((l) => [l.digest, l.size])));
  }
  await rm(layout, { recursive: true, force: true });
  return out;
}

const sum = (values: Iterable<number>): number => [...values].reduce((a, b) => a + b, 0);
const mb = (bytes: number): number => bytes / 1e6;

/** Blobs and bytes of `b` that `a` has too. */
function shared(a: Blobs, b: Blobs): { blobs: number; bytes: number } {
  const both = [...b].filter(([digest]) => a.has(digest));
  return { blobs: both.length, bytes: sum(both.map(([, size]) => size)) };
}

/** Bytes stored once each (the layout, a registry) and bytes all images reference. */
function storage(images: readonly Blobs[]): { stored: number; referenced: number } {
  const distinct = new Map<string, number>();
  for (const blobs of images) for (const [d, s] of blobs) distinct.set(d, s);
  return { stored: sum(distinct.values()), referenced: sum(images.map((b) => sum(b.values()))) };
}

// ---------------------------------------------------------------- the cases

/** Two 140-layer images whose first 100 layers (the base included) are the same. */
async function pairImages(layers: Layers): Promise<{ base: Base; images: Image[] }> {
  const rand = random(140);
  const base = await layers.base('pair-base');
  const common: string[] = [];
  for (let i = 0; i < 99; i++) common.push(await layers.get(`pair-s${i}`, sizeFrom(rand)));
  const images: Image[] = [];
  for (const side of ['a', 'b']) {
    const own: string[] = [];
    for (let i = 0; i < 40; i++) own.push(await layers.get(`pair-${side}${i}`, sizeFrom(rand)));
    images.push({ tag: `pair-${side}`, layers: [...common, ...own] });
  }
  return { base, images };
}

/** The package DAG: package i depends on 1–3 of the 200 before it. */
function packageDag(rand: () => number): { deps: number[][]; sizes: number[] } {
  const deps: number[][] = [];
  const sizes: number[] = [];
  for (let i = 0; i < PACKAGES; i++) {
    const k = i === 0 ? 0 : 1 + Math.floor(rand() * 3);
    const own = new Set<number>();
    for (let j = 0; j < k; j++) own.add(Math.max(0, i - 1 - Math.floor(rand() * Math.min(i, 200))));
    deps.push([...own]);
    sizes.push(sizeFrom(rand));
  }
  return { deps, sizes };
}

/** Package `i` and everything it needs, in install order (dependencies have lower numbers). */
function closureOf(deps: readonly number[][], i: number): number[] {
  const seen = new Set([i]);
  const todo = [i];
  while (todo.length > 0)
    for (const d of deps[todo.pop()!]!) if (!seen.has(d) && seen.add(d)) todo.push(d);
  return [...seen].sort((a, b) => a - b);
}

interface Family {
  base: Base;
  images: Image[];
  deps: number[][];
  sizes: number[];
  closures: number[][];
}

/** 20 images: packages whose closure has 125–200 packages, picked at random. */
async function familyImages(layers: Layers): Promise<Family> {
  const rand = random(20);
  const { deps, sizes } = packageDag(rand);
  const candidates = deps
    .map((_, i) => i)
    .filter((i) => {
      const n = closureOf(deps, i).length;
      return n >= 125 && n <= 200;
    });
  const targets: number[] = [];
  while (targets.length < FAMILY && candidates.length > 0)
    targets.push(candidates.splice(Math.floor(rand() * candidates.length), 1)[0]!);
  const base = await layers.base('family-base');
  const closures = targets.map((t) => closureOf(deps, t));
  const images: Image[] = [];
  for (const [n, closure] of closures.entries()) {
    const dirs: string[] = [];
    for (const p of closure) dirs.push(await layers.get(`pkg${p}`, sizes[p]!));
    images.push({ tag: `family-${n}`, layers: dirs });
  }
  return { base, images, deps, sizes, closures };
}

/**
 * The first family image with one package changed: among the middle third of
 * its stack, the one with the fewest dependents in the image (the target
 * depends on all of them). It and its dependents are rebuilt: new layers,
 * new bytes.
 */
async function changedImage(
  layers: Layers,
  family: Family,
): Promise<{ v2: Image; changed: number; position: number }> {
  const closure = family.closures[0]!;
  const dependents = (p: number) =>
    closure.filter((q) => q !== p && closureOf(family.deps, q).includes(p));
  const n = closure.length;
  const middle = closure.slice(Math.floor(n / 3), Math.ceil((2 * n) / 3));
  const ranked = middle
    .map((p) => ({ p, count: dependents(p).length, off: Math.abs(closure.indexOf(p) - n / 2) }))
    .sort((x, y) => x.count - y.count || x.off - y.off);
  const pick = ranked[0]!.p;
  const rebuilt = new Set([pick, ...dependents(pick)]);
  const dirs: string[] = [];
  for (const p of closure) {
    const name = rebuilt.has(p) ? `pkg${p}-v2` : `pkg${p}`;
    dirs.push(await layers.get(name, family.sizes[p]!));
  }
  // Position in the image: the base is layer 1.
  const position = closure.indexOf(pick) + 2;
  return { v2: { tag: 'family-0-v2', layers: dirs }, changed: rebuilt.size, position };
}

/** Bytes of v2's blobs that v1 lacks: what a registry that has v1 must receive. */
async function repush(
  work: string,
  base: Base,
  v1: Image,
  v2: Image,
  strategy: Strategy,
): Promise<number> {
  const [a, b] = await exportAll(work, base, [v1, v2], strategy);
  return sum([...b!].filter(([d]) => !a!.has(d)).map(([, s]) => s));
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-squash-'));
  try {
    const layers = new Layers(join(work, 'cache'));
    const strategies: Strategy[] = ['dp-layout', 'dp-siblings', 'suffix', 'flatten', 'none'];

    const pair = await pairImages(layers);
    const pairBlobs = new Map<Strategy, Blobs[]>();
    for (const s of strategies) pairBlobs.set(s, await exportAll(work, pair.base, pair.images, s));
    const pairShared = (s: Strategy) => shared(pairBlobs.get(s)![0]!, pairBlobs.get(s)![1]!);
    const pushed = (s: Strategy) => sum(pairBlobs.get(s)![1]!.values()) - pairShared(s).bytes;

    const family = await familyImages(layers);
    const famStore = new Map<Strategy, { stored: number; referenced: number }>();
    for (const s of strategies)
      famStore.set(s, storage(await exportAll(work, family.base, family.images, s)));
    const saved = (s: Strategy) => famStore.get(s)!.referenced - famStore.get(s)!.stored;

    const { v2, changed, position } = await changedImage(layers, family);
    const v1 = family.images[0]!;
    const again = new Map<Strategy, number>();
    for (const s of ['dp-layout', 'suffix', 'flatten', 'none'] as Strategy[])
      again.set(s, await repush(work, family.base, v1, v2, s));

    const better = <T>(of: (s: Strategy) => T, pickBest: (a: T, b: T) => boolean) =>
      pickBest(of('suffix'), of('flatten')) ? 'suffix' : 'flatten';
    const lessPushed = better(pushed, (a, b) => a <= b);
    const lessStored = better(
      (s) => famStore.get(s)!.stored,
      (a, b) => a <= b,
    );
    const pairName = `2 × 140 layers (100 shared) → ${MAX_LAYERS}`;
    const depths = family.images.map((i) => i.layers.length + 1).sort((a, b) => a - b);
    const famLabel = `${FAMILY} DAG images (${depths[0]}–${depths.at(-1)} layers) → ${MAX_LAYERS}`;
    const v2Name = `re-export, package ${position} of ${v1.layers.length + 1} changed (${changed} layers rebuilt)`;
    const rows: BenchRow[] = [
      {
        name: `${pairName}: MB shared, DP by siblings (more is better)`,
        value: mb(pairShared('dp-siblings').bytes),
        unit: 'MB',
        baselineName: 'suffix squash',
        baseline: mb(pairShared('suffix').bytes),
      },
      {
        name: `${pairName}: MB shared, DP by layout (more is better)`,
        value: mb(pairShared('dp-layout').bytes),
        unit: 'MB',
        baselineName: 'suffix squash',
        baseline: mb(pairShared('suffix').bytes),
      },
      {
        name: `${pairName}: MB shared, flatten (more is better)`,
        value: mb(pairShared('flatten').bytes),
        unit: 'MB',
        baselineName: 'suffix squash',
        baseline: mb(pairShared('suffix').bytes),
      },
      {
        name: `${pairName}: blobs shared, DP by siblings (more is better)`,
        value: pairShared('dp-siblings').blobs,
        unit: 'blobs',
        baselineName: 'suffix squash',
        baseline: pairShared('suffix').blobs,
      },
      {
        name: `${pairName}: blobs shared, DP by layout (more is better)`,
        value: pairShared('dp-layout').blobs,
        unit: 'blobs',
        baselineName: 'suffix squash',
        baseline: pairShared('suffix').blobs,
      },
      {
        name: `${pairName}: MB pushed for the 2nd image, DP by siblings`,
        value: mb(pushed('dp-siblings')),
        unit: 'MB',
        baselineName: `better of suffix, flatten (${lessPushed})`,
        baseline: mb(pushed(lessPushed)),
        target: 1,
      },
      {
        name: `${pairName}: MB pushed for the 2nd image, DP by layout`,
        value: mb(pushed('dp-layout')),
        unit: 'MB',
        baselineName: `better of suffix, flatten (${lessPushed})`,
        baseline: mb(pushed(lessPushed)),
        target: 1,
      },
      {
        name: `${famLabel}: MB stored, DP by layout (exported in turn)`,
        value: mb(famStore.get('dp-layout')!.stored),
        unit: 'MB',
        baselineName: `better of suffix, flatten (${lessStored})`,
        baseline: mb(famStore.get(lessStored)!.stored),
        target: 1,
      },
      {
        name: `${famLabel}: MB stored, DP by siblings`,
        value: mb(famStore.get('dp-siblings')!.stored),
        unit: 'MB',
        baselineName: `better of suffix, flatten (${lessStored})`,
        baseline: mb(famStore.get(lessStored)!.stored),
        target: 1,
      },
      {
        name: `${famLabel}: MB saved by sharing, DP by layout (more is better)`,
        value: mb(saved('dp-layout')),
        unit: 'MB',
        baselineName: 'suffix squash',
        baseline: mb(saved('suffix')),
      },
      {
        name: `${famLabel}: MB stored, no squash (too deep for Docker)`,
        value: mb(famStore.get('none')!.stored),
        unit: 'MB',
        baselineName: 'DP by layout',
        baseline: mb(famStore.get('dp-layout')!.stored),
      },
      {
        name: `${v2Name}: MB to push again, DP by layout`,
        value: mb(again.get('dp-layout')!),
        unit: 'MB',
        baselineName: 'suffix squash',
        baseline: mb(again.get('suffix')!),
        target: 1,
      },
      {
        name: `${v2Name}: MB to push again, DP by layout`,
        value: mb(again.get('dp-layout')!),
        unit: 'MB',
        baselineName: 'flatten',
        baseline: mb(again.get('flatten')!),
        target: 1,
      },
      {
        name: `${v2Name}: MB to push again, no squash`,
        value: mb(again.get('none')!),
        unit: 'MB',
        baselineName: 'DP by layout',
        baseline: mb(again.get('dp-layout')!),
      },
    ];
    return rows;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
