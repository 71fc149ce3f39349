/**
 * Request bodies read from a file through a few reused buffers.
 *
 * A `fs.ReadStream` allocates a fresh buffer for every read (and copies it
 * again when a read comes back short): uploading a 300 MB stack cost more
 * main-thread time in allocation, copies and garbage collection than in the
 * socket writes themselves, on a machine whose other core was busy being
 * the registry. Here a buffer goes back to the pool once the socket has
 * taken its bytes (the write's callback), so an upload of any size touches
 * the same few MiB.
 */
import { once } from 'node:events';
import { open } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { BufferPool } from '@day11/exec';

/** Bytes read at a time. */
const PIECE = 1024 * 1024;
/** Pieces in flight per upload: one being read while others are written. */
const PIECES_PER_BODY = 3;
/** Free pieces kept for the next uploads. */
const POOL_LIMIT = 24;

/**
 * The bytes `start` (inclusive) to `end` (exclusive) of `path`. Iterable like
 * any body; a {@link FileBodyWriter} writes it without per-chunk allocations.
 */
export class FileBody implements AsyncIterable<Uint8Array> {
  constructor(
    readonly path: string,
    readonly start: number,
    readonly end: number,
  ) {}

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const file = await open(this.path, 'r');
    try {
      for (let at = this.start; at < this.end;) {
        const piece = Buffer.allocUnsafe(Math.min(PIECE, this.end - at));
        const { bytesRead } = await file.read(piece, 0, piece.length, at);
        if (bytesRead === 0) throw shrank(this, at);
        at += bytesRead;
        yield piece.subarray(0, bytesRead);
      }
    } finally {
      await file.close();
    }
  }
}

/** Writes {@link FileBody}s through reusable pieces; one per sender. */
export class FileBodyWriter {
  private readonly pieces = new BufferPool(PIECE, POOL_LIMIT);

  /**
   * Writes `body` to `sink` (honouring backpressure) and ends it; `onBytes`
   * counts what was handed over. Stops early, without error, when the sink
   * is destroyed (the peer answered or hung up: the response says why).
   */
  async write(body: FileBody, sink: Writable, onBytes: (n: number) => void): Promise<void> {
    const file = await open(body.path, 'r');
    let inFlight = 0;
    let wake: (() => void) | undefined;
    const returned = (piece: Buffer) => {
      inFlight--;
      this.pieces.give(piece);
      wake?.();
    };
    const settled = () => new Promise<void>((resolve) => (wake = resolve));
    // A destroyed socket may never call back the writes it held.
    const closed = () => wake?.();
    sink.once('close', closed);
    try {
      for (let at = body.start; at < body.end;) {
        while (inFlight >= PIECES_PER_BODY && !sink.destroyed) await settled();
        if (sink.destroyed) return;
        const piece = this.pieces.take();
        const { bytesRead } = await file.read(piece, 0, Math.min(PIECE, body.end - at), at);
        if (bytesRead === 0) {
          this.pieces.give(piece);
          throw shrank(body, at);
        }
        at += bytesRead;
        inFlight++;
        onBytes(bytesRead);
        // The callback runs once the socket has the bytes (or failed): then the piece is free.
        const more = sink.write(piece.subarray(0, bytesRead), () => returned(piece));
        if (!more && !sink.destroyed) await drained(sink);
      }
      if (!sink.destroyed) sink.end();
    } finally {
      sink.off('close', closed);
      await file.close();
    }
  }
}

/** Resolves on `drain`, or when the sink closes first. */
async function drained(sink: Writable): Promise<void> {
  const stop = new AbortController();
  await Promise.race([
    once(sink, 'drain', { signal: stop.signal }),
    once(sink, 'close', { signal: stop.signal }),
  ]).catch(() => undefined);
  stop.abort();
}

function shrank(body: FileBody, at: number): Error {
  return new Error(
    `${body.path} ended at byte ${at}, before byte ${body.end}: the file changed while it was uploaded`,
  );
}
