/**
 * Worker-thread entry of {@link TarThread} (`tar-thread.ts`): walks a layer
 * (readdir, lstat, xattrs, symlinks), encodes the headers, reads the files
 * into its tar in chunks and computes the tar's SHA-256 and CRC-32, off the
 * thread that called the export. (A separate walk stage on a second worker
 * was tried: on two cores it cost more CPU than it saved in wall time.)
 *
 * Chunks travel to the parent as transferred `ArrayBuffer`s and come back
 * the same way once compressed, so nothing is copied and the worker holds at
 * most `credits` chunks in flight.
 *
 * Messages, worker → parent: `chunk`, `warning`, `done`, `error` (see
 * `tar-thread.ts`); parent → worker: `job` (one at a time: a worker that
 * finished one is reused for the next layer), `buffer` (a chunk given back),
 * `abort`.
 */
import { createHash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import zlib from 'node:zlib';
import { encodeEntries, tarOf } from './layer-tar.js';
import { BufferPool } from '@day11/exec/buffer-pool';
import { serializeError } from './thread-error.js';
import type { TarJob, ToParent, ToWorker } from './tar-thread.js';
import { walk, type WalkWarning } from './walk.js';

const port = parentPort!;
let controller = new AbortController();
let pool: BufferPool | undefined;
let credits = 0;
let wake: (() => void) | undefined;

port.on('message', (message: ToWorker) => {
  if (message.type === 'job') {
    controller = new AbortController();
    pool = new BufferPool(message.job.chunkSize, message.job.credits + 1);
    credits = message.job.credits;
    run(message.job).then(
      (done) => send(done),
      (err: unknown) => send({ type: 'error', ...serializeError(err) }),
    );
  } else if (message.type === 'buffer') {
    pool?.give(Buffer.from(message.data));
    credits++;
  } else {
    controller.abort();
  }
  wake?.();
});

const send = (message: ToParent, transfer: ArrayBuffer[] = []) =>
  port.postMessage(message, transfer);

async function run(job: TarJob): Promise<ToParent> {
  const tarHash = createHash('sha256');
  let crc = 0;
  let tarSize = 0;
  const { signal } = controller;
  const onWarning = (warning: WalkWarning) => send({ type: 'warning', warning });
  const entries = encodeEntries(walk(job.root, { onWarning }));
  for await (const { data, last } of tarOf(entries, { pool, signal })) {
    tarHash.update(data);
    crc = zlib.crc32(data, crc);
    tarSize += data.length;
    while (credits === 0 && !signal.aborted) {
      await new Promise<void>((resolve) => (wake = resolve));
    }
    signal.throwIfAborted();
    credits--;
    const buffer = data.buffer as ArrayBuffer;
    send({ type: 'chunk', data: buffer, offset: data.byteOffset, length: data.length, last }, [
      buffer,
    ]);
  }
  return { type: 'done', diffId: `sha256:${tarHash.digest('hex')}`, tarSize, crc };
}
