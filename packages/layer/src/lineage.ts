/**
 * What a layer was built on. A layer's `layer.json` records its base
 * (`base_hash`) and the layers below it (`parent_hashes`, topmost first: the
 * builder records its whole stack, the lowers in mount order). A layer is
 * only meaningful on that stack: an image or a run of it alone lacks what
 * its build saw. So a layer expands to its stack, and a stack someone lists
 * by hand is checked against what each layer recorded.
 */
import { basename, dirname } from 'node:path';
import { LayerCodes, LayerError } from './errors.js';
import * as Import from './import.js';
import { PREFIX, name as layerName, path as layerPath } from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';
import * as Sidecar from './sidecar.js';
import type { Base } from './types.js';

/** A layer's full stack. */
export interface LayerStack {
  /** The base it was built on. */
  base: Base;
  /** The layer directories above the base, bottom to top, the layer itself last. */
  layers: string[];
}

/**
 * The stack layer `hash` of `osDir` was built on, with the layer on top —
 * what an image or a run of "this layer" must contain. A base layer gives
 * itself as base and no layers.
 *
 * @example
 * ```ts
 * const { base, layers } = await Lineage.stackOf({ osDir, hash: top });
 * await exportImage({ layout, tag: 'app', base, layers });
 * ```
 * @throws {LayerError} `LAYER_NOT_FOUND` for a missing layer, parent or
 *   base; `LAYER_META_CORRUPT` for an unreadable `layer.json`.
 */
export async function stackOf({
  osDir,
  hash,
}: {
  osDir: string;
  hash: string;
}): Promise<LayerStack> {
  const dir = layerPath({ osDir, hash });
  const meta = await loadOrMissing(dir, 'layer');
  const own = await Sidecar.read(dir, Import.SIDECAR);
  if (own !== undefined)
    return { base: { hash: meta.hash ?? hash, dir, image: String(own['image']) }, layers: [] };
  const base = await baseOf(osDir, meta.base_hash, dir);
  const below = [...meta.parent_hashes].reverse().map((h) => layerPath({ osDir, hash: h }));
  for (const [i, parent] of below.entries()) {
    await loadOrMissing(
      parent,
      `layer ${layerName(meta.parent_hashes.at(-1 - i)!)}, which ${layerName(hash)} was built on,`,
    );
  }
  return { base, layers: [...below, dir] };
}

/**
 * The base layer `hash` of `osDir`, as recorded by `Import` (its `base.json`).
 *
 * @throws {LayerError} `LAYER_NOT_FOUND` when it is gone or is not a base.
 */
export async function baseOf(osDir: string, hash: string, forDir?: string): Promise<Base> {
  const dir = layerPath({ osDir, hash });
  // A missing sidecar is "no base here"; a corrupt one is its own error, naming the file.
  const sidecar = await Sidecar.read(dir, Import.SIDECAR);
  if (sidecar === undefined || typeof sidecar['image'] !== 'string') {
    throw new LayerError(
      LayerCodes.NOT_FOUND,
      `The base layer ${layerName(hash)}${forDir ? ` of ${forDir}` : ''} is missing from ${osDir}`,
      {
        path: dir,
        hint: 'Re-import the base (`day11 import`) or rebuild the plan (`day11 build`), which imports it',
      },
    );
  }
  return { hash, dir, image: sidecar['image'] };
}

/**
 * Reads a layer's `layer.json`; by default `LayerMeta.load`. A caller that
 * already knows a layer's record (one it holds a lease on: a committed layer
 * never changes) passes its own, so a check costs no reads.
 */
export type MetaOf = (dir: string) => LayerMeta.LayerMeta | Promise<LayerMeta.LayerMeta>;

/** Options of {@link check}. */
export interface CheckOptions {
  /** The base the layers stand on. */
  base: Base;
  /** The layer directories above the base, bottom to top. */
  layers: readonly string[];
  /** How a layer's record is read (default `LayerMeta.load`). */
  metaOf?: MetaOf | undefined;
}

/**
 * Checks a stack listed by hand (`base`, then `layers` bottom to top)
 * against what each layer recorded: no layer twice, every layer on this
 * base, and every layer's recorded parents below it in their recorded order
 * (other layers may lie between them, as in a diamond). Reads each
 * `layer.json` once. A caller that checks stack after stack keeps a
 * {@link StackChecker} instead.
 *
 * @example
 * ```ts
 * await Lineage.check({ base, layers: [libDir, appDir] }); // throws if app was built on more than lib
 * ```
 * @throws {LayerError} `LAYER_BAD_STACK` naming the layer and what is wrong;
 *   `LAYER_META_MISSING`/`LAYER_META_CORRUPT` for a layer without a readable `layer.json`.
 */
export async function check(options: CheckOptions): Promise<void> {
  await new StackChecker().check(options);
}

/**
 * {@link check}, remembering across calls what it learnt of each record
 * (layers by number, each record's parents as numbers), so that checking a
 * stack costs a few array reads per recorded parent: a runner checks stack
 * after stack over the same layers. Keep one per such owner; it holds only
 * layer names and the records `metaOf` hands it (weakly).
 *
 * @example
 * ```ts
 * const checker = new Lineage.StackChecker();
 * for (const step of steps) await checker.check({ base, layers: step.layers, metaOf });
 * ```
 */
export class StackChecker {
  /** Layer directory name → number, and back. */
  private readonly ids = new Map<string, number>();
  private readonly names: string[] = [];
  /** Each record's parents, bottom to top, as numbers. */
  private readonly parentIds = new WeakMap<LayerMeta.LayerMeta, Int32Array>();
  /** A layer's number → its index in the stack being checked, or -1. */
  private positions = new Int32Array(64).fill(-1);

  /**
   * Checks one stack, as {@link check} does.
   *
   * @throws {LayerError} as {@link check}.
   */
  async check({ base, layers, metaOf = LayerMeta.load }: CheckOptions): Promise<void> {
    const metas: LayerMeta.LayerMeta[] = [];
    for (const dir of layers) {
      const read = metaOf(dir);
      metas.push(read instanceof Promise ? await read : read);
    }
    for (const [i, meta] of metas.entries()) {
      const dir = layers[i]!;
      // Only a recorded base that is a base of this cache can be contradicted.
      if (meta.base_hash !== base.hash && (await isBase(dirname(dir), meta.base_hash))) {
        throw badStack(
          `${basename(dir)} was built on the base ${layerName(meta.base_hash)}, not on ${layerName(base.hash)} (${base.image})`,
          'Export or run a layer on the base it was built on',
        );
      }
    }
    this.checkOrder(layerName(base.hash), layers, metas);
  }

  /**
   * Every layer once, and its recorded parents below it in their order.
   * Synchronous: concurrent checks share the positions array.
   */
  private checkOrder(
    baseName: string,
    layers: readonly string[],
    metas: readonly LayerMeta.LayerMeta[],
  ): void {
    const listed = layers.map((dir) => this.idOf(basename(dir)));
    const parents = metas.map((meta) => this.parentsOf(meta));
    if (this.positions.length < this.names.length) {
      this.positions = new Int32Array(this.names.length * 2).fill(-1);
    }
    const at = this.positions;
    try {
      for (const [i, id] of listed.entries()) {
        if (at[id] !== -1 || this.names[id] === baseName) {
          throw badStack(
            `${this.names[id]} is listed twice`,
            'List each layer once, bottom to top',
          );
        }
        at[id] = i;
      }
      for (const [i, ids] of parents.entries()) {
        let last = -1;
        // Bottom up: each parent must lie higher than the one before, and below the layer.
        for (let j = 0; j < ids.length; j++) {
          const parent = ids[j]!;
          const pos = at[parent]!;
          if (pos === -1 || pos >= i) {
            throw badStack(
              `${this.names[listed[i]!]} was built on ${this.names[parent]}, which is ${pos === -1 ? 'not in the list' : 'not below it'}`,
              'Name just the top layer and its whole stack is used (`day11 export TOP`), or list every layer it was built on, bottom to top',
            );
          }
          if (pos < last) {
            throw badStack(
              `${this.names[listed[i]!]} was built with ${this.names[parent]} above a layer that is listed above it`,
              'Keep the order the layers were built in: name just the top layer to get it',
            );
          }
          last = pos;
        }
      }
    } finally {
      for (const id of listed) at[id] = -1;
    }
  }

  private idOf(name: string): number {
    let id = this.ids.get(name);
    if (id === undefined) {
      id = this.names.push(name) - 1;
      this.ids.set(name, id);
    }
    return id;
  }

  private parentsOf(meta: LayerMeta.LayerMeta): Int32Array {
    let ids = this.parentIds.get(meta);
    if (ids === undefined) {
      ids = Int32Array.from(parentNames(meta), (name) => this.idOf(name));
      this.parentIds.set(meta, ids);
    }
    return ids;
  }
}

/**
 * The directory names of the layers a record was built on, bottom to top.
 * Remembered per record object: a caller that keeps records (a lessee) checks
 * stack after stack against the same ones.
 */
function parentNames(meta: LayerMeta.LayerMeta): readonly string[] {
  let names = parentNamesOf.get(meta);
  if (names === undefined) {
    names = meta.parent_hashes.map((h) => layerName(h)).reverse();
    parentNamesOf.set(meta, names);
  }
  return names;
}

const parentNamesOf = new WeakMap<LayerMeta.LayerMeta, readonly string[]>();

/** Options of {@link stackFor}. */
export interface StackForOptions {
  /** The layer cache. */
  osDir: string;
  /** The layers a build stands on (its direct dependencies, in any order): hashes, 12 to 64 hex. */
  deps: readonly string[];
  /** How a layer's record is read (default `LayerMeta.load`). */
  metaOf?: MetaOf | undefined;
}

/**
 * The stack a build on `deps` runs over: each of them with every layer it
 * was built on (their recorded `parent_hashes`, followed until nothing is
 * new), on their common base, bottom to top. The order keeps every recorded
 * stack's own order (each layer above its parents, parents as recorded) and
 * otherwise puts lower layers first — by height (one above the highest layer
 * it was built on), then by hash — which is the order `@day11/build` gives
 * every stack, so a layer built on this stack and recorded with it agrees
 * with the builder's.
 *
 * @example
 * ```ts
 * const { base, layers } = await Lineage.stackFor({ osDir, deps: [zlib, openssl] });
 * const buildDirs = [...layers].reverse(); // topmost first, for runInLayers
 * ```
 * @throws {LayerError} `LAYER_NOT_FOUND` for a missing layer (or one it was
 *   built on) or base; `LAYER_BAD_STACK` when `deps` is empty, when they were
 *   built on different bases, or when their records order two layers both
 *   ways; `LAYER_META_CORRUPT`.
 */
export async function stackFor({
  osDir,
  deps,
  metaOf = LayerMeta.load,
}: StackForOptions): Promise<LayerStack> {
  if (deps.length === 0) {
    throw badStack(
      'no layers given',
      'Give the layers the build stands on, or none and the base alone',
    );
  }
  const { found, bases } = await gather(osDir, deps, metaOf);
  const baseHashes = new Set([...bases, ...[...found.values()].map((l) => l.meta.base_hash)]);
  if (baseHashes.size > 1) {
    throw badStack(
      `${deps.map((h) => layerName(h)).join(', ')} were built on different bases (${[...baseHashes].map((h) => layerName(h)).join(', ')})`,
      'A stack has one base: build each dependency on the same base',
    );
  }
  const base = await baseOf(osDir, [...baseHashes][0]!);
  return { base, layers: order(found).map((l) => l.dir) };
}

interface Found {
  name: string;
  dir: string;
  meta: LayerMeta.LayerMeta;
  /** Names of the layers it recorded, bottom to top. */
  parents: readonly string[];
}

/** Every layer of `deps` and below, by directory name, with its record; and the bases among `deps`. */
async function gather(
  osDir: string,
  deps: readonly string[],
  metaOf: MetaOf,
): Promise<{ found: Map<string, Found>; bases: Set<string> }> {
  const found = new Map<string, Found>();
  const bases = new Set<string>();
  const todo = deps.map((hash) => ({ hash, why: 'layer' }));
  for (let next = todo.pop(); next !== undefined; next = todo.pop()) {
    const name = layerName(next.hash);
    if (found.has(name)) continue;
    const dir = layerPath({ osDir, hash: next.hash });
    const meta = await metaOrMissing(dir, next.why, metaOf);
    // A base records itself as its base: it lies below the stack, not in it.
    if (layerName(meta.base_hash) === name) {
      bases.add(meta.base_hash);
      continue;
    }
    found.set(name, { name, dir, meta, parents: parentNames(meta) });
    for (const parent of meta.parent_hashes)
      todo.push({ hash: parent, why: `layer ${layerName(parent)}, which ${name} was built on,` });
  }
  return { found, bases };
}

/**
 * A topological order of the recorded constraints (each layer above its
 * parents, each record's parents in their order), lowest (height, hash) first.
 */
function order(found: Map<string, Found>): Found[] {
  const height = new Map<string, number>();
  const heightOf = (layer: Found): number => {
    const known = height.get(layer.name);
    if (known !== undefined) return known;
    height.set(layer.name, 0); // a cycle ends here; the ordering below reports it
    const h = 1 + Math.max(0, ...layer.parents.map((p) => heightOf(found.get(p)!)));
    height.set(layer.name, h);
    return h;
  };
  const above = new Map<string, Set<string>>([...found.keys()].map((n) => [n, new Set()]));
  const below = new Map<string, number>([...found.keys()].map((n) => [n, 0]));
  const edge = (lower: string, upper: string): void => {
    if (above.get(lower)!.has(upper)) return;
    above.get(lower)!.add(upper);
    below.set(upper, below.get(upper)! + 1);
  };
  for (const layer of found.values()) {
    layer.parents.forEach((p, i) => edge(p, layer.parents[i + 1] ?? layer.name));
  }
  const key = (l: Found): [number, string] => [
    heightOf(l),
    l.meta.hash ?? l.name.slice(PREFIX.length),
  ];
  const lower = (a: Found, b: Found): boolean => {
    const [[ha, xa], [hb, xb]] = [key(a), key(b)];
    return ha < hb || (ha === hb && xa < xb);
  };
  const ready = [...found.values()].filter((l) => below.get(l.name) === 0);
  const result: Found[] = [];
  while (ready.length > 0) {
    const i = ready.reduce((best, l, j) => (lower(l, ready[best]!) ? j : best), 0);
    const [next] = ready.splice(i, 1) as [Found];
    result.push(next);
    for (const upper of above.get(next.name)!) {
      below.set(upper, below.get(upper)! - 1);
      if (below.get(upper) === 0) ready.push(found.get(upper)!);
    }
  }
  if (result.length < found.size) {
    const stuck = [...found.keys()].filter((n) => !result.some((l) => l.name === n));
    throw badStack(
      `the records of ${stuck.join(', ')} order some of them both ways`,
      'Rebuild these layers: a layer records the stack it was built on, and these records contradict each other',
    );
  }
  return result;
}

async function metaOrMissing(
  dir: string,
  what: string,
  metaOf: MetaOf,
): Promise<LayerMeta.LayerMeta> {
  try {
    return await metaOf(dir);
  } catch (err) {
    if (err instanceof LayerError && err.code === LayerCodes.META_MISSING)
      return loadOrMissing(dir, what);
    throw err;
  }
}

async function isBase(osDir: string, hash: string): Promise<boolean> {
  if (!/^[0-9a-f]{12,64}$/.test(hash)) return false;
  const sidecar = await Sidecar.read(layerPath({ osDir, hash }), Import.SIDECAR).catch(
    () => undefined,
  );
  return sidecar !== undefined;
}

async function loadOrMissing(dir: string, what: string): Promise<LayerMeta.LayerMeta> {
  const meta = await LayerMeta.find(dir);
  if (meta !== undefined) return meta;
  throw new LayerError(LayerCodes.NOT_FOUND, `The ${what} ${dir} is not in the cache`, {
    path: dir,
    hint: 'It was never built here or was collected: build it again (`day11 build`)',
  });
}

function badStack(why: string, hint: string): LayerError {
  return new LayerError(LayerCodes.BAD_STACK, `Not a stack its layers were built on: ${why}`, {
    hint,
  });
}
