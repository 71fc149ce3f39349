/**
 * The blob store of an OCI image layout, content-addressed as umoci's CAS:
 * adding a blob is idempotent (a blob already there with its size is left
 * alone) and atomic (written or linked under a temporary name, then renamed
 * to `blobs/<alg>/<hex>`), so a reader never sees a partial blob and two
 * writers of one blob never conflict. Blobs are only ever removed by
 * `Layout.gc`, under the layout lock: call these again under that lock to
 * be sure a blob is still there before an index refers to it.
 */
import { chmod, copyFile, link, lstat, rename, rm } from 'node:fs/promises';
import { Atomic, TempName } from '@day11/exec';
import { OciExportCodes, OciExportError, errnoCode, fsError } from './errors.js';
import { writeAtomic } from './files.js';
import { blobPath } from './layout-index.js';
import { sha256 } from './oci.js';

/** A blob by its digest and size. */
export interface BlobRef {
  /** `sha256:<hex>`. */
  digest: string;
  /** Size in bytes. */
  size: number;
}

/** A file whose content is blob `digest`, for {@link linkBlob}. */
export interface BlobFile extends BlobRef {
  /** The file holding the blob's bytes. */
  file: string;
  /**
   * The inode `file` had when its digest was computed. A link to another
   * inode means the file was replaced since, and is refused.
   */
  ino?: number | undefined;
}

/**
 * True when blob `digest` is in `layout` with the expected size.
 *
 * @example
 * ```ts
 * if (!(await Layout.hasBlob('/tmp/oci', { digest, size }))) console.log('missing');
 * ```
 */
export async function hasBlob(layout: string, blob: BlobRef): Promise<boolean> {
  const st = await lstat(blobPath(layout, blob.digest)).catch(() => undefined);
  return st?.isFile() === true && st.size === blob.size;
}

/**
 * Adds `bytes` as a blob (a config, a manifest) unless it is there; returns its descriptor.
 *
 * @example
 * ```ts
 * const { digest, size } = await Layout.putBlob('/tmp/oci', Buffer.from(JSON.stringify(config)));
 * ```
 * @throws {OciExportError} `OCI_WRITE_FAILED`.
 */
export async function putBlob(layout: string, bytes: Buffer): Promise<BlobRef> {
  const blob = { digest: sha256(bytes), size: bytes.length };
  if (!(await hasBlob(layout, blob))) await writeAtomic(blobPath(layout, blob.digest), bytes);
  return blob;
}

/**
 * Adds the file `blob.file` as blob `blob.digest` unless it is there: a
 * hardlink (a copy across filesystems, fsynced), renamed into place. The
 * caller vouches for the digest; nothing is hashed. Returns true when it
 * added the blob.
 *
 * @example
 * ```ts
 * await Layout.linkBlob('/tmp/oci', { file: '/cache/build-ab/layer.tar.gz', digest, size, ino });
 * ```
 * @throws {OciExportError} `OCI_WRITE_FAILED`; `OCI_LAYER_CHANGED` when `file` is no longer inode `ino`.
 */
export async function linkBlob(layout: string, blob: BlobFile): Promise<boolean> {
  if (await hasBlob(layout, blob)) return false;
  const final = blobPath(layout, blob.digest);
  const temp = TempName.beside(final);
  try {
    await linkOrCopy(blob, temp);
    // A layout's blobs are readable by all, as putBlob writes them: a layout
    // is there to be published. A cache keeps its blob files 0600 in private
    // directories; the inode it shares with the layout becomes 0644, still
    // out of reach through the cache.
    await chmod(temp, BLOB_MODE).catch((err: unknown) => {
      throw fsError(OciExportCodes.WRITE_FAILED, 'Cannot make readable', temp, err, WRITABLE);
    });
    await rename(temp, final).catch((err: unknown) => {
      throw fsError(OciExportCodes.WRITE_FAILED, 'Cannot move the blob to', final, err, WRITABLE);
    });
  } finally {
    await rm(temp, { force: true });
  }
  return true;
}

const WRITABLE = 'Check that the layout is writable';

/** Mode of a layout's blob files (`Atomic.writeFile`'s default, as `putBlob` writes them). */
const BLOB_MODE = 0o644;

async function linkOrCopy(blob: BlobFile, temp: string): Promise<void> {
  try {
    await link(blob.file, temp);
  } catch (err) {
    if (errnoCode(err) !== 'EXDEV' && errnoCode(err) !== 'EPERM') {
      throw fsError(OciExportCodes.WRITE_FAILED, 'Cannot link the blob to', temp, err, WRITABLE);
    }
    await copy(blob.file, temp);
    return;
  }
  if (blob.ino !== undefined && (await lstat(temp)).ino !== blob.ino) {
    throw new OciExportError(
      OciExportCodes.LAYER_CHANGED,
      `${blob.file} was replaced while being added as blob ${blob.digest}`,
      {
        path: blob.file,
        hint: 'Export again; use one gzipLevel (and one DAY11_GZIP_ENGINE) for exports that run at once',
      },
    );
  }
}

async function copy(from: string, to: string): Promise<void> {
  try {
    await copyFile(from, to);
    await Atomic.fsyncFile(to);
  } catch (err) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot copy the blob to',
      to,
      err,
      'Check free space in the layout',
    );
  }
}
