/** Reusable chunk buffers (a module of its own, `@day11/exec/buffer-pool`: worker threads load it alone). */

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

  /**
   * A buffer of `size` bytes, uninitialised. Sizes of 4 KiB and less come from
   * Node's shared slab (a view at an offset), which `give` does not keep.
   */
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
