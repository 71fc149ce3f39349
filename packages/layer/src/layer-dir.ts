/**
 * The `build-{hash[:12]}` directory naming convention. The `build-` prefix is
 * historical and is used for every kind of layer.
 */
import { join } from 'node:path';
import { LayerCodes, LayerError } from './errors.js';

/** Prefix of every layer directory name. */
export const PREFIX = 'build-';
/** Hex characters of the hash kept in a directory name. */
export const NAME_HASH_LENGTH = 12;

const HASH_RE = /^[0-9a-f]{12,64}$/;
const NAME_RE = /^build-[0-9a-f]{12}$/;

/** Throws a typed error unless `hash` is 12–64 lowercase hex characters. */
export function assertHash(hash: string): void {
  if (!HASH_RE.test(hash)) {
    throw new LayerError(LayerCodes.BAD_HASH, `Malformed layer hash ${JSON.stringify(hash)}`, {
      hint: 'A layer hash is 12 to 64 lowercase hex characters, as made by Hash.layerHash',
    });
  }
}

/** `build-` + the first 12 hex characters of `hash`. */
export function name(hash: string): string {
  assertHash(hash);
  return PREFIX + hash.slice(0, NAME_HASH_LENGTH);
}

/** The directory of the layer `hash` under `osDir`. */
export function path({ osDir, hash }: { osDir: string; hash: string }): string {
  return join(osDir, name(hash));
}

/** True when `dirName` is a layer directory name (`build-` + 12 hex). */
export function isLayerName(dirName: string): boolean {
  return NAME_RE.test(dirName);
}

/** The 12-character hash prefix of a layer directory name, or `undefined`. */
export function hashPrefix(dirName: string): string | undefined {
  return isLayerName(dirName) ? dirName.slice(PREFIX.length) : undefined;
}

/** Files inside a layer directory. */
/**
 * Mode of a layer directory: its owner's alone (with a private cache, a
 * second wall around what the build made and recorded).
 */
export const DIR_MODE = 0o700;

/** Mode of the files of a layer beside `fs/` (`layer.json`, `layer.log`, sidecars). */
export const FILE_MODE = 0o600;

export const FILES = {
  meta: 'layer.json',
  log: 'layer.log',
  lastUsed: 'last_used',
  fs: 'fs',
} as const;
