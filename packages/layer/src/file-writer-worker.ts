/**
 * A worker thread of {@link FileWriter}: makes the regular files of a batch
 * (exclusively, never through a symlink), writes their bytes, and sets
 * owner, mode and times through each new file's descriptor; makes its
 * symlinks, with their owners and times; all in batch order.
 * Posts `{ id }` when a batch is done, or `{ id, failedAt, code, message }`
 * for the first file that failed (the batch's later files are not made).
 */
import {
  closeSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  lutimesSync,
  openSync,
  symlinkSync,
  writeSync,
} from 'node:fs';
import { parentPort } from 'node:worker_threads';
import type { FileBatch, FileBatchResult } from './file-writer.js';

const port = parentPort!;

port.on('message', (batch: FileBatch) => {
  const data = new Uint8Array(batch.data);
  let at = 0;
  for (let i = 0; i < batch.paths.length; i++) {
    const m = i * 6;
    const size = batch.meta[m + 5]!;
    try {
      const link = batch.links[i];
      if (link === null || link === undefined) {
        writeOne(batch.paths[i]!, batch.meta, m, data.subarray(at, at + size));
      } else {
        linkOne(batch.paths[i]!, link, batch.meta, m);
      }
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      const result = { id: batch.id, data: batch.data, failedAt: i, code: e.code };
      port.postMessage({ ...result, message: e.message } satisfies FileBatchResult, [batch.data]);
      return;
    }
    at += size;
  }
  // The buffer goes back for the next batch: fresh memory costs a page fault per 4 KiB.
  port.postMessage({ id: batch.id, data: batch.data } satisfies FileBatchResult, [batch.data]);
});

function linkOne(path: string, target: string, meta: Float64Array, m: number): void {
  symlinkSync(target, path);
  lchownSync(path, meta[m]!, meta[m + 1]!);
  lutimesSync(path, meta[m + 3]!, meta[m + 4]!);
}

function writeOne(path: string, meta: Float64Array, m: number, bytes: Uint8Array): void {
  // 'wx' is O_CREAT|O_EXCL: never writes through a symlink planted at `path`.
  const fd = openSync(path, 'wx', 0o600);
  try {
    for (let at = 0; at < bytes.length;) at += writeSync(fd, bytes, at);
    // After the data (a write clears setuid), and chown before chmod (chown clears it too).
    fchownSync(fd, meta[m]!, meta[m + 1]!);
    fchmodSync(fd, meta[m + 2]! & 0o7777);
    futimesSync(fd, meta[m + 3]!, meta[m + 4]!);
  } finally {
    closeSync(fd);
  }
}
