/**
 * The first half of deleting a layer (`Gc`), and its undoing: the layer
 * disappears from view with one rename to a temporary name beside it, then
 * what moved is checked for a lease once more. Leases are written without
 * the layer's lock (`InUse.acquire`), so one written just before the rename
 * moved with the layer; then the layer is put back, and its holder finds it
 * where it was. A process killed with a layer aside leaves it to
 * `Recover.sweep`, which puts back an aside layer that a live lease holds.
 */
import { rename } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Atomic, TempName } from '@day11/exec';
import { errnoCode } from './errors.js';
import * as InUse from './in-use.js';
import { isLayerName } from './layer-dir.js';

/** What {@link setAside} did. */
export type SetAside = { aside: string } | { skipped: 'vanished' | 'in-use' };

/**
 * Renames layer `dir` aside (under its lock, which the caller holds) unless a
 * live lease is found in it afterwards, in which case it is put back.
 *
 * @throws the rename's error (other than ENOENT: `vanished`).
 */
export async function setAside(dir: string): Promise<SetAside> {
  const aside = TempName.beside(dir);
  try {
    await rename(dir, aside);
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return { skipped: 'vanished' };
    throw err;
  }
  if (await InUse.isInUse(aside)) {
    await rename(aside, dir);
    return { skipped: 'in-use' };
  }
  await Atomic.fsyncDir(dirname(dir));
  return { aside };
}

/**
 * The layer directory an aside entry of `osDir` was, when `name` is the
 * temporary name {@link setAside} gives (`.day11-tmp-<pid>-<hex>-build-<12 hex>`).
 */
export function layerOfAside(osDir: string, name: string): string | undefined {
  if (!TempName.is(name)) return undefined;
  const layer = /-(build-[0-9a-f]+)$/.exec(name)?.[1];
  return layer !== undefined && isLayerName(layer) ? join(osDir, layer) : undefined;
}
