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
import { tarOf } from './layer-tar.js';
import { BufferPool } from '@day11/exec/buffer-pool';
import { freeNow } from './free.js';
import { serializeError } from './thread-error.js';
import type { TarJob, ToParent, ToWorker } from './tar-thread.js';
import { walk, type WalkWarning } from './walk.js';

const port = parentPort!;
let controller = new AbortController();
/** The running job's buffers; none between jobs. */
let pool: JobPool | undefined;
let credits = 0;
let wake: (() => void) | undefined;

/**
 * A job's chunk buffers. When the job ends, those still here are freed at
 * once (`free.ts`): an idle worker holds none, and those of a finished job
 * are not left for a collection that an idle worker never runs.
 */
class JobPool extends BufferPool {
  private readonly own = new Set<ArrayBuffer>();

  override take(): Buffer {
    return this.track(super.take());
  }

  override give(buf: Buffer): void {
    super.give(this.track(buf));
  }

  /** Frees every buffer of the job that is still here (the parent holds the others). */
  release(): void {
    freeNow(this.own);
    this.own.clear();
  }

  private track(buf: Buffer): Buffer {
    // Whole buffers of the chunk size only: never the slab behind small Buffers.
    if (buf.byteOffset === 0 && buf.buffer.byteLength === this.size) {
      // Those handed to the parent since are detached here: forget them.
      if (this.own.size >= 64) for (const b of this.own) if (b.byteLength === 0) this.own.delete(b);
      this.own.add(buf.buffer as ArrayBuffer);
    }
    return buf;
  }
}

port.on('message', (message: ToWorker) => {
  if (message.type === 'job') {
    controller = new AbortController();
    const jobPool = new JobPool(message.job.chunkSize, message.job.credits + 1);
    pool = jobPool;
    credits = message.job.credits;
    run(message.job)
      .finally(() => {
        pool = undefined;
        jobPool.release();
      })
      .then(
        (done) => send(done),
        (err: unknown) => send({ type: 'error', ...serializeError(err) }),
      );
  } else if (message.type === 'buffer') {
    // Given back after its job ended: nothing will use it again.
    if (pool) pool.give(Buffer.from(message.data));
    else freeNow([message.data]);
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
  for await (const { data, last } of tarOf(walk(job.root, { onWarning }), { pool, signal })) {
    tarHash.update(data);
    if (job.crc) crc = zlib.crc32(data, crc);
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
