/**
 * `@day11/layer`: content-addressed build layers on disk.
 *
 * @example
 * ```ts
 * import { Hash, LayerDir, LayerMeta } from '@day11/layer';
 * const hash = Hash.layerHash({ baseHash, depHashes: [a, b], pkg: 'hello.1.0' });
 * const dir = LayerDir.path({ osDir: '/var/cache/day11', hash });
 * const meta = await LayerMeta.load(dir);
 * ```
 */
export * as CacheDir from './cache-dir.js';
export * as Hash from './hash.js';
export * as LayerDir from './layer-dir.js';
export * as LayerMeta from './layer-meta.js';
export * as Sidecar from './sidecar.js';
export * as LastUsed from './last-used.js';
export * as Stack from './stack.js';
export * as LayerSymlinks from './layer-symlinks.js';
export * as Scan from './scan.js';
export * as Import from './import.js';
export * as Lock from './lock.js';
export * as Commit from './commit.js';
export * as InUse from './in-use.js';
export * as Gc from './gc.js';
export * as DiskUsage from './disk-usage.js';
export * as Recover from './recover.js';
export * as Lineage from './lineage.js';
export * as TarExtract from './tar-extract.js';
export { treeDigest, type TreeDigestOptions } from './tree-digest.js';
export type { Base } from './types.js';
export type { LayerMeta as LayerMetaRecord, Timing } from './layer-meta.js';
export type { SidecarValue } from './sidecar.js';
export { LayerCodes, LayerError, type LayerCode } from './errors.js';
