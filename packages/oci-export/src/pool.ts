/** Small concurrency helpers: a counting semaphore and a bounded parallel map. */
import { availableParallelism } from 'node:os';
import { OciExportCodes, OciExportError } from './errors.js';

/**
 * A counting semaphore: at most `size` holders at once, served in FIFO order.
 *
 * @example
 * ```ts
 * const slots = new Semaphore(2);
 * await slots.use(() => compress(chunk));
 * ```
 */
export class Semaphore {
  private free: number;
  private readonly waiting: Array<() => void> = [];

  constructor(readonly size: number) {
    this.free = size;
  }

  /** Waits for a slot; call the returned function exactly once to give it back. */
  async acquire(): Promise<() => void> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    };
  }

  /** Runs `fn` holding a slot. */
  async use<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }
}

/**
 * Maps `items` through `fn` with at most `limit` calls in flight; results keep
 * the input order. The first rejection rejects the whole (after the calls in
 * flight settle, so nothing keeps running behind the caller's back).
 *
 * @example
 * ```ts
 * const sizes = await mapLimit(files, 4, async (f) => (await stat(f)).size);
 * ```
 */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T, index: number) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      const i = next++;
      try {
        results[i] = await fn(items[i]!, i);
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const settled = await Promise.allSettled(
    Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, worker),
  );
  const rejected = settled.find((s) => s.status === 'rejected');
  if (rejected) throw rejected.reason;
  return results;
}

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
