/**
 * Reading a child's stdout or stderr into a consumer, with backpressure:
 * the next chunk is read only once the consumer's promise settles.
 *
 * Node's `'data'` events hand out a fresh 64 KiB buffer per read. A command
 * printing hundreds of MB leaves them as garbage faster than V8 collects
 * external memory (it waits for ~64 MB of growth), so the reader's RSS grows
 * by tens of MB. {@link pumpLent} reads every chunk of a stream into one
 * buffer instead, lent to the consumer until it settles.
 * @internal
 */
import { Socket } from 'node:net';
import type { Readable } from 'node:stream';

/** Which stream of a child a chunk came from. */
export type OutputStream = 'stdout' | 'stderr';

/** Takes a chunk; the next is read once the returned promise settles (at once for `void`). */
export type ChunkConsumer = (chunk: Buffer, stream: OutputStream) => void | Promise<void>;

/** Where the first error of a consumer is kept; after it the rest is read and dropped. */
export interface ConsumerState {
  error: unknown;
}

/** Bytes of the buffer a lent stream is read into (what libuv reads at once anyway). */
const LENT_BYTES = 64 * 1024;

/**
 * Hands each chunk of `stream` to `onData`, pausing the stream until a
 * returned promise settles. After `onData` fails, the rest is read and
 * dropped, so the command never blocks on a full pipe. Resolves once the
 * stream is closed.
 */
export function pumpEvents(
  stream: Readable | null,
  name: OutputStream,
  onData: ChunkConsumer,
  consumer: ConsumerState,
): Promise<void> {
  if (!stream) return Promise.resolve();
  return new Promise((resolve) => {
    const fail = (err: unknown): void => {
      consumer.error ??= err;
    };
    stream.on('data', (chunk: Buffer) => {
      if (consumer.error !== undefined) return;
      const settled = call(onData, chunk, name, fail);
      if (settled) {
        stream.pause();
        settled.catch(fail).finally(() => stream.resume());
      }
    });
    stream.once('error', fail);
    stream.once('close', resolve);
  });
}

/**
 * {@link pumpEvents}, but every read of `stream` lands in one buffer, lent
 * to `onData`: a chunk is valid until `onData` returns, or until its promise
 * settles, and is overwritten by the next read after that. Nothing is
 * allocated per read.
 *
 * Node has no public way to read a child's pipe into a buffer of one's own;
 * a `net.Socket` made with `onread` reads into one, so the pipe's handle is
 * moved from the child's socket to such a socket. Where the child's socket
 * does not hold a handle that can do this (another Node, a stream already
 * read), {@link pumpEvents} is used instead, which is always safe.
 */
export function pumpLent(
  stream: Readable | null,
  name: OutputStream,
  onData: ChunkConsumer,
  consumer: ConsumerState,
): Promise<void> {
  const handle = takeHandle(stream);
  if (!handle) return pumpEvents(stream, name, onData, consumer);
  const buffer = Buffer.allocUnsafe(LENT_BYTES);
  return new Promise((resolve) => {
    const fail = (err: unknown): void => {
      consumer.error ??= err;
    };
    const reader: Socket = new Socket({
      handle,
      readable: true,
      writable: false,
      onread: {
        buffer,
        // Returning false pauses the socket until resume(): the buffer stays the consumer's.
        callback: (bytes: number): boolean => {
          if (consumer.error !== undefined) return true;
          const settled = call(onData, buffer.subarray(0, bytes), name, fail);
          if (!settled) return true;
          settled.catch(fail).finally(() => reader.resume());
          return false;
        },
      },
    } as ConstructorParameters<typeof Socket>[0]);
    reader.once('error', fail);
    reader.once('close', () => resolve());
    reader.resume();
  });
}

/** `onData(chunk)`, its throw kept; the promise to wait for, if any. */
function call(
  onData: ChunkConsumer,
  chunk: Buffer,
  name: OutputStream,
  fail: (err: unknown) => void,
): Promise<void> | undefined {
  try {
    const settled = onData(chunk, name);
    return settled instanceof Promise ? settled : undefined;
  } catch (err) {
    fail(err);
    return undefined;
  }
}

/** A stream-base handle as Node's net module keeps it (not public API). */
interface PipeHandle {
  readStart: () => number;
  readStop: () => number;
  useUserBuffer: (buffer: Uint8Array) => void;
}

/**
 * The pipe handle of a child's unread stdio socket, taken from it (the
 * socket is then destroyed, which with no handle only marks it closed). The
 * new socket made on the handle takes its reads over, into the user buffer.
 */
function takeHandle(stream: Readable | null): PipeHandle | undefined {
  if (!(stream instanceof Socket)) return undefined;
  const socket = stream as Socket & { _handle?: unknown };
  const handle = socket._handle as Partial<PipeHandle> | null | undefined;
  const usable =
    handle !== null &&
    typeof handle === 'object' &&
    typeof handle.useUserBuffer === 'function' &&
    typeof handle.readStart === 'function' &&
    // Nothing read yet (the child's socket starts reading as it is made, but
    // no data arrives before the event loop runs).
    socket.readableLength === 0 &&
    socket.bytesRead === 0 &&
    socket.listenerCount('data') === 0;
  if (!usable) return undefined;
  socket._handle = null;
  socket.destroy();
  return handle as PipeHandle;
}
