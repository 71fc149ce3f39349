/**
 * Small regular files and symlinks of an extraction, made by a worker thread
 * while the main thread reads the archive and makes directories and the rest.
 * Creating an inode is most of what extracting a rootfs costs, and the kernel
 * does that work on the thread that asks: on one thread an extraction cannot
 * go faster than `tar -x`; on two it can. (A second worker was no faster on
 * two cores: the kernel's inode allocation contended.)
 *
 * The caller keeps the order that matters: it makes a file's parent
 * directories before handing the file over, hands over only paths nothing
 * else in the archive has made, and waits ({@link FileWriter.settle}) before
 * it touches a path that is still {@link FileWriter.isPending}.
 */
import { Worker } from 'node:worker_threads';
import { workerFile } from '@day11/exec';

/** One batch of files, posted to a worker (its buffers transferred). */
export interface FileBatch {
  id: number;
  paths: string[];
  /** Per symlink its target, per file `null`. */
  links: (string | null)[];
  /** Per entry: uid, gid, mode, atime, mtime (seconds), size of its data. */
  meta: Float64Array;
  /** The files' bytes, one after the other. */
  data: ArrayBuffer;
}

/** A worker's answer to a batch: `failedAt` is the index of the file that failed. */
export interface FileBatchResult {
  id: number;
  /** The batch's buffer, handed back for reuse. */
  data: ArrayBuffer;
  failedAt?: number;
  code?: string | undefined;
  message?: string;
}

/** A file (or symlink) to make: its path and the metadata to set. */
export interface FileJob {
  /** Path relative to the extraction root, as the caller tracks it. */
  rel: string;
  /** Absolute path. */
  path: string;
  /** The archive entry's name, for errors. */
  name: string;
  uid: number;
  gid: number;
  mode: number;
  atime: number;
  mtime: number;
  /** Set for a symlink: its target. */
  linkname?: string | undefined;
}

/** Files larger than this are better written by the caller as they stream. */
export const MAX_FILE_BYTES = 256 * 1024;
/** At least {@link MAX_FILE_BYTES}. */
const BATCH_BYTES = 1024 * 1024;
const BATCH_FILES = 128;
/** Batches posted and not yet done: enough to keep the worker busy, bounded memory. */
const IN_FLIGHT = 3;

interface Sent {
  rels: string[];
  names: string[];
}

class Batch {
  readonly rels: string[] = [];
  readonly names: string[] = [];
  readonly paths: string[] = [];
  readonly links: (string | null)[] = [];
  readonly meta: number[] = [];
  readonly data: Uint8Array;
  used = 0;

  constructor(buffer: ArrayBuffer | undefined) {
    this.data = new Uint8Array(buffer ?? new ArrayBuffer(BATCH_BYTES));
  }

  fits(size: number): boolean {
    return this.used + size <= this.data.length && this.paths.length < BATCH_FILES;
  }
}

export class FileWriter {
  private readonly worker: Worker;
  private batch: Batch | undefined;
  private nextId = 0;
  private readonly sent = new Map<number, Sent>();
  private readonly pending = new Set<string>();
  /** Batch buffers the workers handed back. */
  private readonly free: ArrayBuffer[] = [];
  private failure: Error | undefined;
  private wake: (() => void) | undefined;

  /** @param failed makes the error for the entry `name` whose file could not be written */
  constructor(private readonly failed: (name: string, cause: Error) => Error) {
    this.worker = new Worker(workerFile('file-writer-worker.js', import.meta.url));
    this.worker.on('message', (result: FileBatchResult) => this.done(result));
    this.worker.on('error', (err) => this.fail(err));
    this.worker.on('exit', (code) => {
      if (this.sent.size > 0) this.fail(new Error(`the file-writing thread exited (code ${code})`));
    });
  }

  /** Whether `rel` was handed over and is not known to be written yet. */
  isPending(rel: string): boolean {
    return this.pending.has(rel);
  }

  /** Whether any file handed over is not known to be written yet. */
  get busy(): boolean {
    return this.pending.size > 0;
  }

  /**
   * Room for a file of `size` bytes (at most {@link MAX_FILE_BYTES}; 0 for a
   * symlink): the caller copies the file's bytes into it, then calls
   * {@link add}. Waits while the workers are behind.
   */
  async reserve(size: number): Promise<Uint8Array> {
    this.throwIfFailed();
    if (this.batch && !this.batch.fits(size)) this.post();
    while (this.sent.size >= IN_FLIGHT) await this.changed();
    this.batch ??= new Batch(this.free.pop());
    return this.batch.data.subarray(this.batch.used, this.batch.used + size);
  }

  /** Hands over the entry whose `size` bytes were copied into the last {@link reserve}d room. */
  add(job: FileJob, size: number): void {
    const batch = this.batch!;
    batch.rels.push(job.rel);
    batch.names.push(job.name);
    batch.paths.push(job.path);
    batch.links.push(job.linkname ?? null);
    batch.meta.push(job.uid, job.gid, job.mode, job.atime, job.mtime, size);
    batch.used += size;
    this.pending.add(job.rel);
    if (!batch.fits(0)) this.post();
  }

  /** Waits until every file handed over is written; throws the first failure. */
  async settle(): Promise<void> {
    if (this.batch) this.post();
    while (this.sent.size > 0 && !this.failure) await this.changed();
    this.throwIfFailed();
  }

  /** Stops the worker (a batch being written stops part way: the caller removes the tree). */
  async close(): Promise<void> {
    this.failure ??= new Error('the file writer was closed');
    await this.worker.terminate();
    this.notify();
  }

  private post(): void {
    const batch = this.batch!;
    this.batch = undefined;
    if (batch.paths.length === 0) return;
    const id = this.nextId++;
    const meta = new Float64Array(batch.meta);
    // The whole buffer moves (no copy); the worker reads the sizes in `meta`.
    const data = batch.data.buffer as ArrayBuffer;
    const message: FileBatch = { id, paths: batch.paths, links: batch.links, meta, data };
    this.sent.set(id, { rels: batch.rels, names: batch.names });
    this.worker.postMessage(message, [meta.buffer, data]);
  }

  private done(result: FileBatchResult): void {
    this.free.push(result.data);
    const sent = this.sent.get(result.id);
    if (!sent) return;
    this.sent.delete(result.id);
    for (const rel of sent.rels) this.pending.delete(rel);
    if (result.failedAt !== undefined) {
      const cause = Object.assign(new Error(result.message), { code: result.code });
      this.failure ??= this.failed(sent.names[result.failedAt] ?? '', cause);
    }
    this.notify();
  }

  /** The thread itself failed: blamed on the first entry it had not finished. */
  private fail(err: Error): void {
    const unfinished = this.sent.values().next().value?.names[0];
    this.failure ??= this.failed(unfinished ?? '(none)', err);
    this.notify();
  }

  private changed(): Promise<void> {
    return new Promise((resolve) => {
      const previous = this.wake;
      this.wake = () => {
        previous?.();
        resolve();
      };
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private throwIfFailed(): void {
    if (this.failure) throw this.failure;
  }
}
