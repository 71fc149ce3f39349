/**
 * Freeing large buffers at once. V8 frees an `ArrayBuffer`'s memory only when
 * it collects the object, and a stream of megabyte buffers can pile up tens
 * of megabytes before it does (more on a busy machine). An `ArrayBuffer`
 * posted in the transfer list of a closed `MessagePort` is detached (every
 * view of it then has length 0, so none can read freed memory) and the
 * message, with its memory, is dropped there and then.
 */
import { MessageChannel, type MessagePort } from 'node:worker_threads';

/** A closed port, made on first use (one per thread). */
let closed: MessagePort | undefined;

/**
 * Frees the memory of `buffers` now and detaches them. Pass only buffers
 * nothing else uses (never the shared slab behind small `Buffer`s); detached
 * ones are skipped.
 *
 * @example
 * ```ts
 * const piece = Buffer.allocUnsafe(1 << 20);
 * await handle.write(piece);
 * freeNow([piece.buffer]); // piece.length is 0 from here on
 * ```
 */
export function freeNow(buffers: Iterable<ArrayBufferLike>): void {
  const live = new Set<ArrayBuffer>();
  for (const b of buffers) if (b instanceof ArrayBuffer && b.byteLength > 0) live.add(b);
  if (live.size === 0) return;
  if (!closed) {
    const { port1, port2 } = new MessageChannel();
    port1.close();
    port2.close();
    closed = port1;
  }
  try {
    closed.postMessage(null, [...live]);
  } catch {
    // Not transferable here (another Node, a buffer marked untransferable):
    // the collector frees them as before.
  }
}
