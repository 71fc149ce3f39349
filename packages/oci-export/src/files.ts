/**
 * Writing files the day11 way: a temporary name `.day11-tmp-<pid>-<hex>-<name>`
 * beside the target (so `Recover.sweep` and `Layout.gc` can tell a killed
 * process's leftovers), fsync, rename, fsync of the directory.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { OciExportCodes, fsError } from './errors.js';

/** Prefix of temporary files (the day11 convention). */
export const TEMP_PREFIX = '.day11-tmp-';

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
 * `.day11-tmp-<pid>-<hex>-<name>` beside `target`.
 *
 * @example
 * ```ts
 * tempName('/oci/index.json'); // '/oci/.day11-tmp-4242-1a2b3c4d-index.json'
 * ```
 */
export function tempName(target: string): string {
  const tag = `${process.pid}-${randomBytes(4).toString('hex')}`;
  return join(dirname(target), `${TEMP_PREFIX}${tag}-${basename(target)}`);
}

/**
 * Writes a small file atomically: temp name, fsync, rename, fsync of the directory.
 *
 * @example
 * ```ts
 * await writeAtomic('/oci/index.json', JSON.stringify(index));
 * ```
 * @throws {OciExportError} `OCI_WRITE_FAILED`, naming the file.
 */
export async function writeAtomic(path: string, data: string | Buffer): Promise<void> {
  const temp = tempName(path);
  try {
    const handle = await open(temp, 'wx', 0o644);
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(temp, path);
    await fsyncDir(dirname(path));
  } catch (cause) {
    await rm(temp, { force: true });
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
export async function fsyncDir(dir: string): Promise<void> {
  const handle = await open(dir, 'r').catch(() => undefined);
  await handle?.sync().catch(() => undefined);
  await handle?.close();
}

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
