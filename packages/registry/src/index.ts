/**
 * `@day11/registry`: day11 layers in an OCI distribution registry.
 *
 * @example
 * ```ts
 * import { RegistryCache } from '@day11/registry';
 * const cache = new RegistryCache({ ref: '127.0.0.1:5000/ns/day11-cache' });
 * await cache.publish({ hash, osDir: '/var/cache/day11' }, {});
 * const found = await cache.lookup([hash], {});
 * await cache.fetch(hash, { osDir: '/var/cache/other' });
 * await cache.close();
 * ```
 */
export { RegistryCache, type RegistryCacheOptions } from './cache.js';
export {
  RegistryClient,
  MAX_MANIFEST_BYTES,
  type BlobSource,
  type ClientOptions,
  type FetchedManifest,
  type ManifestHead,
  type PushOutcome,
} from './client.js';
export {
  publishLayer,
  type PublishOptions,
  type PublishResult,
  type PublishSession,
  type RegistryWarning,
} from './publish.js';
export {
  pullLayer,
  type PullOptions,
  type PullResult,
  type PullSession,
  type PullStatus,
} from './pull.js';
export { lookupLayers, type LookupOptions } from './lookup.js';
export { Claims, claimTag, CLAIM_TYPE, type ClaimOptions } from './claim.js';
export {
  Annotations,
  CacheMediaTypes,
  SCHEMA_VERSION,
  buildTag,
  logTag,
  parseManifest,
  type CacheImage,
} from './cache-image.js';
export {
  importBaseImage,
  pinnedName,
  type ImportBaseImageOptions,
  type ImportedBase,
  type Platform,
} from './base-image.js';
export {
  exportToRegistry,
  type ExportToRegistryOptions,
  type ExportToRegistryResult,
} from './push-image.js';
export { findCredentials, type Credentials } from './credentials.js';
export {
  parseRepository,
  parseImage,
  parseImageSource,
  type ImageRef,
  type ImageSource,
  type RepositoryRef,
} from './reference.js';
export * as RegistryRecord from './record.js';
export { RegistryCodes, RegistryError, isRegistryError, type RegistryCode } from './errors.js';
export type { TransportStats } from './transport.js';
