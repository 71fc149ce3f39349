/**
 * Worker-thread entry of {@link TarThread} (`tar-thread.ts`): reads the
 * layer's files into its tar, in chunks, and computes the tar's SHA-256 and
 * CRC-32, off the thread that called the export. The walk itself (readdir,
 * lstat, xattrs, headers) runs one stage earlier on a worker of its own
 * (`walk-worker.ts`), so the two halves of the per-file work overlap.
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
import { parentPort, Worker } from 'node:worker_threads';
import zlib from 'node:zlib';
import { tarOf, type EncodedEntry } from './layer-tar.js';
import { BufferPool } from './buffer-pool.js';
import { rebuildError, serializeError } from './thread-error.js';
import type { TarJob, ToParent, ToWorker } from './tar-thread.js';
import type { FromWalker, ToWalker } from './walk-worker.js';
import type { WalkWarning } from './walk.js';

/** Batches of entries the walk may run ahead. */
const WALK_CREDITS = 4;

const port = parentPort!;
let controller = new AbortController();
let pool: BufferPool | undefined;
let credits = 0;
let wake: (() => void) | undefined;
/** The walk stage, kept for the next job once a walk ends cleanly. */
let walker: Worker | undefined;

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

/** The entries the walk worker sends, in order. */
async function* walked(
  root: string,
  onWarning: (warning: WalkWarning) => void,
): AsyncGenerator<EncodedEntry> {
  const stage = (walker ??= new Worker(new URL('./walk-worker.js', import.meta.url)));
  const queue: FromWalker[] = [];
  let failure: Error | undefined;
  let ready: (() => void) | undefined;
  let ended = false;
  const onMessage = (m: FromWalker) => (queue.push(m), ready?.());
  const onError = (err: Error) => ((failure ??= err), ready?.());
  const onExit = () => onError(new Error('The walk worker exited before the end of the walk'));
  stage.on('message', onMessage).on('error', onError).on('exit', onExit);
  stage.postMessage({ type: 'walk', root, credits: WALK_CREDITS } satisfies ToWalker);
  try {
    for (;;) {
      const m = queue.shift();
      if (m === undefined) {
        if (failure !== undefined) throw failure;
        await new Promise<void>((resolve) => (ready = resolve));
        continue;
      }
      if (m.type === 'end') return void (ended = true);
      if (m.type === 'error') throw rebuildError(m);
      if (m.type === 'warning') {
        onWarning(m.warning);
        continue;
      }
      stage.postMessage({ type: 'credit' } satisfies ToWalker);
      const headers = Buffer.from(m.headers.buffer, m.headers.byteOffset, m.headers.length);
      let offset = 0;
      for (let i = 0; i < m.lengths.length; i++) {
        const header = headers.subarray(offset, (offset += m.lengths[i]!));
        yield { header, source: m.sources[i] ?? undefined, size: m.sizes[i]! };
      }
    }
  } finally {
    stage.off('message', onMessage).off('error', onError).off('exit', onExit);
    if (!ended) {
      // Stopped half-way (an error, or the archive was abandoned): start afresh next time.
      walker = undefined;
      void stage.terminate();
    }
  }
}

async function run(job: TarJob): Promise<ToParent> {
  const tarHash = createHash('sha256');
  let crc = 0;
  let tarSize = 0;
  const { signal } = controller;
  const entries = walked(job.root, (warning) => send({ type: 'warning', warning }));
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
