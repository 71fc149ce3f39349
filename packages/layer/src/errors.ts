/**
 * Errors of `@day11/layer`. Every one is a `Day11Error` with a stable code
 * from {@link LayerCodes}, the path involved, and a hint.
 */
import { basename, dirname } from 'node:path';
import { Atomic, Day11Error, type CodeOf, messageOf } from '@day11/exec';
// Shared helpers, re-exported so this package's modules import them from one place.
export { messageOf, errnoCode } from '@day11/exec';

/** A stable code from {@link LayerCodes}. */
export type LayerCode = CodeOf<typeof LayerCodes>;

/** Any error thrown by `@day11/layer`. */
export class LayerError extends Day11Error<LayerCode> {}

/**
 * The fix for a damaged layer directory, as a user of the `day11` command
 * makes it: remove the layer, and the next build makes it again.
 *
 * @example
 * ```ts
 * new LayerError(LayerCodes.META_CORRUPT, message, { path, hint: removeLayerHint(dir) });
 * ```
 */
export function removeLayerHint(dir: string): string {
  return `Remove the layer so it is built again: \`day11 layers rm --cache ${dirname(dir)} ${basename(dir)}\` (Gc.removeLayer)`;
}

/**
 * Writes a file atomically (`Atomic.writeFile` of `@day11/exec`), failing as
 * this package does: `LAYER_WRITE_FAILED` naming the file.
 *
 * @example
 * ```ts
 * await writeFileAtomic(join(dir, 'layer.json'), text);
 * ```
 */
export async function writeFileAtomic(path: string, data: string): Promise<void> {
  try {
    // A layer's files are its owner's alone (the cache is private: see CacheDir).
    await Atomic.writeFile(path, data, { mode: 0o600 });
  } catch (cause) {
    throw new LayerError(LayerCodes.WRITE_FAILED, messageOf(cause), { path, cause });
  }
}

/** Stable codes of the errors thrown by `@day11/layer`. */
export const LayerCodes = {
  /** A hash is not 12–64 lowercase hex characters. */
  BAD_HASH: 'LAYER_BAD_HASH',
  /** `layer.json` does not exist. */
  META_MISSING: 'LAYER_META_MISSING',
  /** `layer.json` is not valid JSON or does not match the schema. */
  META_CORRUPT: 'LAYER_META_CORRUPT',
  /** A sidecar name or value is not acceptable. */
  SIDECAR_INVALID: 'LAYER_SIDECAR_INVALID',
  /** A sidecar file does not exist. */
  SIDECAR_MISSING: 'LAYER_SIDECAR_MISSING',
  /** A sidecar file is not a JSON object. */
  SIDECAR_CORRUPT: 'LAYER_SIDECAR_CORRUPT',
  /** A registry id contains `/`, `..`, NUL or is empty. */
  BAD_ID: 'LAYER_BAD_ID',
  /** A filesystem write failed. */
  WRITE_FAILED: 'LAYER_WRITE_FAILED',
  /** Merging layers into one directory failed. */
  MERGE_FAILED: 'LAYER_MERGE_FAILED',
  /** An import source (tarball, directory, Docker image) is unusable. */
  IMPORT_FAILED: 'LAYER_IMPORT_FAILED',
  /** A tar entry would escape the target: `..`, an absolute path, or a write through a symlink. */
  IMPORT_UNSAFE_PATH: 'LAYER_IMPORT_UNSAFE_PATH',
  /**
   * A base is already imported under this image name from other content (the
   * tarball or directory changed since): importing it again would silently
   * give the old files.
   */
  BASE_CHANGED: 'LAYER_BASE_CHANGED',
  /** No Docker engine is reachable. */
  NO_DOCKER: 'LAYER_NO_DOCKER',
  /** A lock could not be taken in time. */
  LOCK_TIMEOUT: 'LAYER_LOCK_TIMEOUT',
  /** A held lock was lost (its file removed or not refreshed in time). */
  LOCK_COMPROMISED: 'LAYER_LOCK_COMPROMISED',
  /** Commit could not turn an upper into a layer. */
  COMMIT_FAILED: 'LAYER_COMMIT_FAILED',
  /** A garbage-collection option is invalid, or a deletion failed. */
  GC_FAILED: 'LAYER_GC_FAILED',
  /** An argument is out of range or malformed. */
  BAD_ARGUMENT: 'LAYER_BAD_ARGUMENT',
  /** A layer the operation needs does not exist (never committed, or garbage-collected). */
  NOT_FOUND: 'LAYER_NOT_FOUND',
  /**
   * A layer directory (named by the first 12 hex digits of a hash) holds a
   * layer whose full hash, recorded in its `layer.json`, is another one.
   */
  HASH_COLLISION: 'LAYER_HASH_COLLISION',
  /** A list of layers contradicts what they recorded: a missing parent, a wrong order, a duplicate. */
  BAD_STACK: 'LAYER_BAD_STACK',
  /** The cache directory is another user's, or a symlink another user planted, or not a directory. */
  UNSAFE_CACHE: 'LAYER_UNSAFE_CACHE',
} as const;
