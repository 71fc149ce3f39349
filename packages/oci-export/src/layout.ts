/**
 * An OCI image layout directory: `oci-layout`, `index.json` and
 * `blobs/<alg>/<hex>`, by concern: the index and its tags
 * (`layout-index.ts`), the blob store (`layout-blobs.ts`), garbage
 * collection (`layout-gc.ts`), verification (`layout-verify.ts`), and the
 * recovery of what killed writers left (`layout-recover.ts`).
 * Every file is written to a temporary name and renamed; `index.json`
 * changes only under the layout lock, which garbage collection takes too.
 *
 * @example
 * ```ts
 * import { Layout } from '@day11/oci-export';
 * await Layout.init('/tmp/oci');
 * const config = await Layout.putBlob('/tmp/oci', Buffer.from('{}'));
 * console.log(await Layout.tags('/tmp/oci'), await Layout.verify('/tmp/oci'));
 * ```
 */
export {
  INDEX_FILE,
  OCI_LAYOUT_FILE,
  blobPath,
  init,
  readIndex,
  readJsonBlob,
  removeTag,
  tags,
  withLock,
  withTag,
  writeIndex,
  type LayoutLockOptions,
  type TagInfo,
} from './layout-index.js';
export { hasBlob, linkBlob, putBlob, type BlobFile, type BlobRef } from './layout-blobs.js';
export { gc, type GcResult } from './layout-gc.js';
export {
  REGISTRY_DIR,
  recover,
  remember,
  remembered,
  type RecoverResult,
} from './layout-recover.js';
export { verify, type Problem } from './layout-verify.js';
