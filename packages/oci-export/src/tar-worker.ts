/**
 * Worker-thread entry of {@link TarThread} (`tar-thread.ts`): walks a layer,
 * produces its tar in chunks and computes the tar's SHA-256 and CRC-32, off
 * the thread that called the export. Chunks travel to the parent as
 * transferred `ArrayBuffer`s and come back the same way once compressed, so
 * nothing is copied and the worker holds at most `credits` chunks in flight.
 *
 * Messages, worker → parent: `chunk`, `warning`, `done`, `error` (see
 * `tar-thread.ts`); parent → worker: `buffer` (a chunk given back), `abort`.
 */
import { createHash } from 'node:crypto';
import { parentPort, workerData } from 'node:worker_threads';
import zlib from 'node:zlib';
import { Day11Error, messageOf } from '@day11/exec';
import { tarChunks } from './layer-tar.js';
import { BufferPool } from './pool.js';
import type { TarJob, ToParent, ToWorker } from './tar-thread.js';

const port = parentPort!;
const job = workerData as TarJob;
const controller = new AbortController();
const pool = new BufferPool(job.chunkSize, job.credits + 1);
let credits = job.credits;
let wake: (() => void) | undefined;

port.on('message', (message: ToWorker) => {
  if (message.type === 'buffer') {
    pool.give(Buffer.from(message.data));
    credits++;
  } else {
    controller.abort();
  }
  wake?.();
});

const send = (message: ToParent, transfer: ArrayBuffer[] = []) =>
  port.postMessage(message, transfer);

async function run(): Promise<void> {
  const tarHash = createHash('sha256');
  let crc = 0;
  let tarSize = 0;
  const chunks = tarChunks(job.root, {
    pool,
    signal: controller.signal,
    onWarning: (warning) => send({ type: 'warning', warning }),
  });
  for await (const { data, last } of chunks) {
    tarHash.update(data);
    crc = zlib.crc32(data, crc);
    tarSize += data.length;
    while (credits === 0 && !controller.signal.aborted) {
      await new Promise<void>((resolve) => (wake = resolve));
    }
    controller.signal.throwIfAborted();
    credits--;
    const buffer = data.buffer as ArrayBuffer;
    send({ type: 'chunk', data: buffer, offset: data.byteOffset, length: data.length, last }, [
      buffer,
    ]);
  }
  send({ type: 'done', diffId: `sha256:${tarHash.digest('hex')}`, tarSize, crc });
}

run().then(
  () => port.close(),
  (err: unknown) => {
    const known = err instanceof Day11Error ? err : undefined;
    send({
      type: 'error',
      name: err instanceof Error ? err.name : 'Error',
      message: messageOf(err),
      code: known?.code,
      path: known?.path,
      hint: known?.hint,
    });
    port.close();
  },
);
