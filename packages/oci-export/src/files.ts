/**
 * Writing files the day11 way, as this package's errors: `Atomic.writeFile`
 * of `@day11/exec` (a `.day11-tmp-` name beside the target, fsync, rename,
 * fsync of the directory) failing with `OCI_WRITE_FAILED`.
 */
import type { FileHandle } from 'node:fs/promises';
import { Atomic } from '@day11/exec';
import { OciExportCodes, fsError } from './errors.js';

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
 * Writes a small file atomically, as this package's error.
 *
 * @example
 * ```ts
 * await writeAtomic('/oci/index.json', JSON.stringify(index));
 * ```
 * @throws {OciExportError} `OCI_WRITE_FAILED`, naming the file.
 */
export async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  try {
    await Atomic.writeFile(path, data);
  } catch (err) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot write',
      path,
      err instanceof Error && err.cause !== undefined ? err.cause : err,
      'Check that the directory is writable and has free space',
    );
  }
}
