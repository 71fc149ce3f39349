/**
 * The tar of a layer made on a worker thread: the walk's per-file system
 * calls (lstat, listxattr, open, read, close), the tar headers, and the
 * SHA-256 and CRC-32 of the tar all run there, so the calling thread only
 * hands chunks to the compressor (zlib's thread pool) and writes the output.
 * A layer of many small files is then bound by the walk alone, as `tar` is,
 * not by the walk plus the hashing plus the event loop of its caller.
 *
 * The bytes are exactly those of `tarChunks` on the calling thread: the
 * thread only changes where the work runs.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { workerFile } from '@day11/exec';
import { freeNow } from './free.js';
import type { TarChunk } from './layer-tar.js';
import { rebuildError, type ThreadError } from './thread-error.js';
import type { WalkWarning } from './walk.js';

/** What the worker is asked to archive (a `job` message). */
export interface TarJob {
  root: string;
  chunkSize: number;
  /** Chunks the worker may have handed over and not yet got back. */
  credits: number;
  /** Whether to compute the CRC-32 (a gzip member per chunk has its own). */
  crc: boolean;
}

/** Messages from the worker. */
export type ToParent =
  | { type: 'chunk'; data: ArrayBuffer; offset: number; length: number; last: boolean }
  | { type: 'warning'; warning: WalkWarning }
  | { type: 'done'; diffId: string; tarSize: number; crc: number }
  | ({ type: 'error' } & ThreadError);

/** Messages to the worker. */
export type ToWorker =
  { type: 'job'; job: TarJob } | { type: 'buffer'; data: ArrayBuffer } | { type: 'abort' };

/** The tar's digest and checksum, as the worker computed them. */
export interface TarSummary {
  /** `sha256:<hex>` of the tar (the OCI diff_id). */
  diffId: string;
  /** Bytes of the tar. */
  tarSize: number;
  /** CRC-32 of the tar (for the gzip trailer); 0 when not asked for. */
  crc: number;
}

/** Options of {@link TarThread.start}. */
export interface TarThreadOptions {
  /** Bytes per chunk. */
  chunkSize: number;
  /** Chunks handed over and not yet given back ({@link TarThread.recycle}) at most. */
  credits: number;
  /** Compute the tar's CRC-32 for the summary (default true). */
  crc?: boolean | undefined;
  /** Aborting stops the worker; the iteration throws the signal's reason. */
  signal?: AbortSignal | undefined;
  /** Called for each file skipped (sockets). */
  onWarning?: ((warning: WalkWarning) => void) | undefined;
}

/**
 * One layer's tar, produced by a worker thread. Iterate it once for the
 * chunks, give each chunk back with {@link recycle} once compressed, then
 * read {@link summary}. Leaving the iteration early (an error downstream)
 * stops the worker.
 *
 * @example
 * ```ts
 * const tar = TarThread.start('/var/cache/day11/build-0123456789ab/fs', { chunkSize: 1 << 20, credits: 4 });
 * for await (const { data } of tar) { compress(data); tar.recycle(data); }
 * console.log((await tar.summary).diffId);
 * ```
 */
export class TarThread implements AsyncIterable<TarChunk> {
  /** Resolves once the last chunk was handed over. */
  readonly summary: Promise<TarSummary>;
  private readonly queue: TarChunk[] = [];
  /** Why the archive failed (an abort's reason as given when it is an `Error`). */
  private failure: Error | undefined;
  private finished = false;
  private wake: (() => void) | undefined;
  private settle!: { resolve: (s: TarSummary) => void; reject: (e: unknown) => void };

  private constructor(
    private readonly worker: Worker,
    private readonly options: TarThreadOptions,
  ) {
    this.summary = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.summary.catch(() => undefined);
    worker.on('message', this.onMessage).on('error', this.onError).on('exit', this.onExit);
  }

  private readonly onMessage = (m: ToParent) => this.receive(m);
  private readonly onError = (err: unknown) => this.fail(err);
  private readonly onExit = () =>
    this.fail(new Error('The tar worker exited before it finished the archive'));

  /**
   * Starts a worker archiving the tree at `root` (a layer's `fs/`).
   *
   * @example
   * ```ts
   * const tar = TarThread.start(fsDir, { chunkSize: 1 << 20, credits: 4, signal });
   * ```
   */
  static start(root: string, options: TarThreadOptions): TarThread {
    const job: TarJob = {
      root,
      chunkSize: options.chunkSize,
      credits: options.credits,
      crc: options.crc ?? true,
    };
    const thread = new TarThread(idleWorkers.take(), options);
    thread.worker.postMessage({ type: 'job', job } satisfies ToWorker);
    const signal = options.signal;
    if (signal) {
      const onAbort = () => thread.stop(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
      const forget = () => signal.removeEventListener('abort', onAbort);
      thread.summary.then(forget, forget);
      if (signal.aborted) onAbort();
    }
    return thread;
  }

  /**
   * Gives a chunk (from this thread's iteration) back to the worker for
   * reuse; once the worker has finished, frees its memory at once instead
   * (`free.ts`). Either way the chunk is detached: read nothing from it after.
   */
  recycle(chunk: Buffer): void {
    const data = chunk.buffer as ArrayBuffer;
    if (this.finished) return freeNow([data]);
    this.worker.postMessage({ type: 'buffer', data } satisfies ToWorker, [data]);
  }

  /** Stops the worker unless it has finished; safe to call more than once. */
  close(): void {
    if (!this.finished) this.stop(new Error('The archive was abandoned'));
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<TarChunk> {
    let sawLast = false;
    try {
      for (;;) {
        const next = this.queue.shift();
        if (next) {
          sawLast = next.last;
          yield next;
          if (sawLast) return;
          continue;
        }
        if (this.failure !== undefined) throw this.failure;
        await new Promise<void>((resolve) => (this.wake = resolve));
      }
    } finally {
      if (!sawLast) this.stop(new Error('The archive was abandoned'));
    }
  }

  private receive(m: ToParent): void {
    switch (m.type) {
      case 'chunk':
        this.queue.push({ data: Buffer.from(m.data, m.offset, m.length), last: m.last });
        break;
      case 'warning':
        this.options.onWarning?.(m.warning);
        break;
      case 'done':
        this.finished = true;
        this.worker.off('message', this.onMessage).off('error', this.onError);
        this.worker.off('exit', this.onExit);
        idleWorkers.give(this.worker);
        this.settle.resolve({ diffId: m.diffId, tarSize: m.tarSize, crc: m.crc });
        break;
      case 'error':
        this.fail(this.options.signal?.aborted ? this.options.signal.reason : rebuildError(m));
        this.finished = true;
        void this.worker.terminate();
        break;
    }
    this.wake?.();
  }

  private fail(err: unknown): void {
    if (this.failure !== undefined || this.finished) return;
    this.failure = err instanceof Error ? err : new Error(String(err));
    this.settle.reject(this.failure);
    this.wake?.();
  }

  /**
   * Stops the worker: its walk ends at the next entry or chunk, then it is
   * ended (a worker stuck in one slow read is ended after a second).
   */
  private stop(reason: unknown): void {
    this.fail(reason);
    this.finished = true;
    const worker = this.worker;
    worker.off('message', this.onMessage).off('error', this.onError).off('exit', this.onExit);
    const end = () => {
      clearTimeout(timer);
      void worker.terminate();
    };
    const timer = setTimeout(end, 1000);
    worker.on('message', (m: ToParent) => (m.type === 'done' || m.type === 'error') && end());
    worker.on('error', end);
    worker.postMessage({ type: 'abort' } satisfies ToWorker);
  }
}

/**
 * Workers that finished an archive, kept (without holding the process open)
 * for the next one: starting a worker and its walk stage costs more than
 * archiving a small layer. Like zlib's thread pool, this is per process.
 */
const idleWorkers = {
  idle: [] as Worker[],
  take(): Worker {
    let worker = this.idle.pop();
    if (!worker) {
      const made = new Worker(workerFile('tar-worker.js', import.meta.url));
      // An idle worker that dies (out of memory, ...) leaves the pool.
      made.on(
        'exit',
        () => this.idle.includes(made) && this.idle.splice(this.idle.indexOf(made), 1),
      );
      worker = made;
    }
    worker.ref();
    return worker;
  },
  give(worker: Worker): void {
    if (this.idle.length >= availableParallelism()) return void worker.terminate();
    worker.unref();
    this.idle.push(worker);
  },
};

/** The compiled worker; sources run by a test runner use the build's copy. */
