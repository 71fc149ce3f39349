/**
 * The deterministic layer tar on its own, for callers that want the archive
 * rather than an image (a squash, a `docker import`, a test): the walk and
 * its overlay conversions, the chunked stream, the header encoder.
 *
 * @example
 * ```ts
 * import { Tar } from '@day11/oci-export';
 * for await (const { data } of Tar.chunks('/var/cache/day11/build-0123456789ab/fs')) out.write(data);
 * ```
 */
export {
  tarChunks as chunks,
  DEFAULT_CHUNK_SIZE,
  type TarChunk,
  type TarOptions,
} from './layer-tar.js';
export {
  walk,
  OPAQUE_MARKER,
  WHITEOUT_PREFIX,
  type WalkEntry,
  type WalkOptions,
  type WalkWarning,
} from './walk.js';
export { encodeHeader, BLOCK, type TarHeader, type TarKind } from './tar-header.js';
export {
  gzipChunks as gzip,
  fastestEngine,
  DEFAULT_LEVEL,
  type GzipEngine,
  type GzipOptions,
  type GzipResult,
} from './gzip.js';
export { Semaphore } from './pool.js';
