/**
 * Content-addressed hashing. Every hash is lowercase sha256 hex (64 chars).
 */
import { hash } from 'node:crypto';

/**
 * sha256 of a list of strings under an unambiguous encoding: each part is
 * prefixed with its UTF-8 byte length, so `['a', 'bc']` and `['ab', 'c']` differ.
 */
export function ofStrings(parts: readonly string[]): string {
  // One string and one-shot hashing: a plan hashes every step, and a Hash
  // object with an update per part costs twice as much.
  let text = `day11.v1:${parts.length}\n`;
  for (const part of parts) text += `${Buffer.byteLength(part, 'utf8')}:${part}`;
  return hash('sha256', text, 'hex');
}

/** The hash of a base layer, from the name of the image it came from. */
export function baseHash({ image }: { image: string }): string {
  return ofStrings(['base', image]);
}

/**
 * The hash of a layer built on `baseHash` over dependencies `depHashes`,
 * for the build described by `pkg` (any string: a package name, a step's JSON).
 * The order of `depHashes` does not matter; duplicates count once.
 */
export function layerHash({
  baseHash,
  depHashes,
  pkg,
}: {
  baseHash: string;
  depHashes: readonly string[];
  pkg: string;
}): string {
  const deps = [...new Set(depHashes)].sort();
  return ofStrings(['layer', baseHash, pkg, String(deps.length), ...deps]);
}

/**
 * A key for the state after applying an operation to a parent state
 * (the key of each stage of a multi-stage build): chains of steps give
 * chains of keys.
 */
export function deriveKey(parentKey: string, opKey: string): string {
  return ofStrings(['derive', parentKey, opKey]);
}
