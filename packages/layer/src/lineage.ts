/**
 * What a layer was built on. A layer's `layer.json` records its base
 * (`base_hash`) and the layers below it (`parent_hashes`, topmost first: the
 * builder records its whole stack, the lowers in mount order). A layer is
 * only meaningful on that stack: an image or a run of it alone lacks what
 * its build saw. So a layer expands to its stack, and a stack someone lists
 * by hand is checked against what each layer recorded.
 */
import { dirname } from 'node:path';
import { LayerCodes, LayerError } from './errors.js';
import * as Import from './import.js';
import { name as layerName, path as layerPath } from './layer-dir.js';
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
 * Checks a stack listed by hand (`base`, then `layers` bottom to top)
 * against what each layer recorded: no layer twice, every layer on this
 * base, and every layer's recorded parents below it in their recorded order
 * (other layers may lie between them, as in a diamond). Reads each
 * `layer.json` once.
 *
 * @example
 * ```ts
 * await Lineage.check({ base, layers: [libDir, appDir] }); // throws if app was built on more than lib
 * ```
 * @throws {LayerError} `LAYER_BAD_STACK` naming the layer and what is wrong;
 *   `LAYER_META_MISSING`/`LAYER_META_CORRUPT` for a layer without a readable `layer.json`.
 */
export async function check({
  base,
  layers,
}: {
  base: Base;
  layers: readonly string[];
}): Promise<void> {
  const position = new Map<string, number>();
  for (const [i, dir] of layers.entries()) {
    const name = dir.split('/').pop()!;
    if (position.has(name) || name === layerName(base.hash)) {
      throw badStack(`${name} is listed twice`, 'List each layer once, bottom to top');
    }
    position.set(name, i);
  }
  for (const [i, dir] of layers.entries()) {
    const meta = await LayerMeta.load(dir);
    const name = dir.split('/').pop()!;
    // Only a recorded base that is a base of this cache can be contradicted.
    if (meta.base_hash !== base.hash && (await isBase(dirname(dir), meta.base_hash))) {
      throw badStack(
        `${name} was built on the base ${layerName(meta.base_hash)}, not on ${layerName(base.hash)} (${base.image})`,
        'Export or run a layer on the base it was built on',
      );
    }
    let last = -1;
    // parent_hashes is topmost first: walk it bottom up, each must lie higher than the one before.
    for (const parent of [...meta.parent_hashes].reverse()) {
      const at = position.get(layerName(parent));
      if (at === undefined || at >= i) {
        throw badStack(
          `${name} was built on ${layerName(parent)}, which is ${at === undefined ? 'not in the list' : 'not below it'}`,
          'Name just the top layer and its whole stack is used (`day11 export TOP`), or list every layer it was built on, bottom to top',
        );
      }
      if (at < last) {
        throw badStack(
          `${name} was built with ${layerName(parent)} above a layer that is listed above it`,
          'Keep the order the layers were built in: name just the top layer to get it',
        );
      }
      last = at;
    }
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
