/**
 * Writing files the day11 way: a temporary name `.day11-tmp-<pid>-<hex>-<name>`
 * beside the target (so `Recover.sweep` and `Layout.gc` can tell a killed
 * process's leftovers), fsync, rename, fsync of the directory.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { Atomic, LayerCodes, LayerError } from '@day11/layer';
import { OciExportCodes, fsError } from './errors.js';

/** Prefix of temporary files (the day11 convention, shared with `@day11/layer`). */
export const TEMP_PREFIX = Atomic.TEMP_PREFIX;

/**
 * Writes all of `bytes` (a write may be short).
 *
 * @example
 * ```ts
 * await writeAll(handle, Buffer.from('hello'));
 * ```
 */
export async function writeAll(handle: FileHandle, bytes: Buffer): Promise<void> {
  for (let off = 0; off < bytes.length;) {
    const { bytesWritten } = await handle.write(bytes, off, bytes.length - off);
    off += bytesWritten;
  }
}

/**
 * `.day11-tmp-<pid>-<hex>-<name>` beside `target`: `Atomic.tempPathFor` of `@day11/layer`.
 *
 * @example
 * ```ts
 * tempName('/oci/index.json'); // '/oci/.day11-tmp-4242-1a2b3c4d-index.json'
 * ```
 */
export const tempName = Atomic.tempPathFor;

/**
 * Writes a small file atomically (`Atomic.writeFileAtomic` of `@day11/layer`:
 * temp name, fsync, rename, fsync of the directory), as this package's error.
 *
 * @example
 * ```ts
 * await writeAtomic('/oci/index.json', JSON.stringify(index));
 * ```
 * @throws {OciExportError} `OCI_WRITE_FAILED`, naming the file.
 */
export async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  try {
    await Atomic.writeFileAtomic(path, data);
  } catch (err) {
    const cause =
      err instanceof LayerError && err.code === LayerCodes.WRITE_FAILED ? err.cause : err;
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot write',
      path,
      cause,
      'Check that the directory is writable and has free space',
    );
  }
}

/**
 * fsyncs a directory so a rename in it is durable; best effort (some filesystems refuse).
 *
 * @example
 * ```ts
 * await rename(temp, target);
 * await fsyncDir(dirname(target));
 * ```
 */
export const fsyncDir = Atomic.fsyncDir;

/**
 * fsyncs a file written by another call (a copied blob).
 *
 * @example
 * ```ts
 * await copyFile(from, temp);
 * await fsyncFile(temp);
 * ```
 */
export async function fsyncFile(path: string): Promise<void> {
  const handle = await open(path, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
