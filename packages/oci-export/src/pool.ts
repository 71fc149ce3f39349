/** Buffers and compression slots; the semaphore and bounded map live in `@day11/exec`. */
import { availableParallelism } from 'node:os';
import { Semaphore } from '@day11/exec';
import { OciExportCodes, OciExportError } from './errors.js';

export { Semaphore, mapLimit } from '@day11/exec';

/**
 * Reuses equal-sized buffers, so a long stream of chunks does not leave a
 * trail of garbage for the collector (V8 frees large buffers lazily, and the
 * resident size would grow with it).
 *
 * @example
 * ```ts
 * const pool = new BufferPool(1 << 20, 4);
 * const buf = pool.take();
 * pool.give(buf); // once nothing uses it any more
 * ```
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(
    readonly size: number,
    private readonly keep: number,
  ) {}

  /** A buffer of `size` bytes, uninitialised. */
  take(): Buffer {
    return this.free.pop() ?? Buffer.allocUnsafe(this.size);
  }

  /** Returns a buffer taken from this pool; other buffers (and views) are ignored. */
  give(buf: Buffer): void {
    if (buf.length === this.size && buf.byteOffset === 0 && this.free.length < this.keep) {
      this.free.push(buf);
    }
  }
}

/**
 * The compression slots for `concurrency` cores: one more than the cores, so
 * a queued chunk is ready whenever a core finishes one (the main thread,
 * busy walking the tree, would otherwise leave that core idle until it looks).
 *
 * @example
 * ```ts
 * compressionSlots(2).size; // 3
 * ```
 */
export function compressionSlots(concurrency: number | undefined): Semaphore {
  return new Semaphore(concurrencyOf(concurrency) + 1);
}

/**
 * Validates a `concurrency` option; the default is the number of cores.
 *
 * @example
 * ```ts
 * concurrencyOf(undefined); // os.availableParallelism()
 * ```
 */
export function concurrencyOf(value: number | undefined): number {
  if (value === undefined) return availableParallelism();
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `Invalid concurrency ${value}`, {
      hint: 'Pass a positive integer (the default is the number of cores)',
    });
  }
  return value;
}
