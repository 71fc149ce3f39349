/**
 * Parallel, deterministic gzip of a chunked stream, the way pigz does it: each
 * chunk is raw-deflated on its own (in zlib's thread pool, so chunks of one
 * layer and of several layers compress on all cores), primed with the last
 * 32 KiB of the chunk before it as the dictionary, and ended with a sync
 * flush (the last one with a final block). The pieces concatenate into one
 * ordinary single-member gzip stream, which any reader accepts; its bytes
 * depend only on the input, the chunk size and the level.
 *
 * Memory stays flat whatever the size of the stream: a few chunks and their
 * output are in flight, dictionaries are reused, and (with `freeWritten`)
 * zlib's output buffers are freed as soon as they are written rather than
 * left for V8 to collect.
 *
 * The header has no name and mtime 0; the OS byte is 3 (Unix), as Node's own
 * gzip writes it. The CRC-32 and both SHA-256 digests (of the tar: the OCI
 * diff_id; of the gzip: the blob digest) are computed on the way through.
 */
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import { BufferPool } from '@day11/exec/buffer-pool';
import { OciExportCodes, OciExportError } from './errors.js';
import { freeNow } from './free.js';
import type { TarChunk } from './layer-tar.js';
import type { TarSummary } from './tar-thread.js';
import { Semaphore } from './pool.js';

/** Default gzip level (gzip's own default). */
export const DEFAULT_LEVEL = 6;
/** Bytes zlib writes per output buffer. */
const OUTPUT_PIECE = 256 * 1024;
/** Size of deflate's window: the dictionary carried from one chunk to the next. */
const WINDOW = 32 * 1024;

/** Options of {@link gzipChunks}. */
export interface GzipOptions {
  /** Where compressed bytes go, in order; awaited (backpressure). */
  write: (bytes: Buffer) => Promise<void>;
  /**
   * True when `write` is done with each buffer once its promise resolves (it
   * neither keeps nor queues it): zlib's output buffers are then freed (and
   * detached) as soon as they are written, instead of when V8 next collects
   * garbage, by when tens of megabytes of them may have piled up.
   */
  freeWritten?: boolean | undefined;
  /** 0–9; default {@link DEFAULT_LEVEL}. */
  level?: number | undefined;
  /** Compression slots, shared by every stream compressed at once. */
  slots: Semaphore;
  /** Chunks of this stream compressed or waiting to be written at once (default `slots.size + 1`). */
  window?: number | undefined;
  /** Called after each chunk is handed to the compressor, with the tar bytes so far. */
  onChunk?: ((tarBytes: number) => void) | undefined;
  /** Called with each input chunk once nothing reads it any more (to reuse its buffer). */
  recycle?: ((chunk: Buffer) => void) | undefined;
  /**
   * The input's SHA-256, size and CRC-32 as its producer computed them (a
   * {@link TarThread}'s summary); without it they are computed here.
   */
  summary?: Promise<TarSummary> | undefined;
}

/** What {@link gzipChunks} produced. */
export interface GzipResult {
  /** `sha256:<hex>` of the uncompressed stream (the OCI diff_id). */
  diffId: string;
  /** Bytes of the uncompressed stream. */
  tarSize: number;
  /** `sha256:<hex>` of the gzip stream (the OCI blob digest). */
  digest: string;
  /** Bytes of the gzip stream. */
  size: number;
}

/**
 * Compresses `chunks` (see {@link TarChunk}: the last is flagged) into one
 * gzip member written through `options.write`.
 *
 * @example
 * ```ts
 * const out = await open('/tmp/layer.tar.gz', 'w');
 * const r = await gzipChunks(tarChunks(fsDir), {
 *   slots: new Semaphore(2),
 *   write: async (b) => void (await out.write(b)),
 * });
 * console.log(r.digest, r.diffId);
 * ```
 */
export async function gzipChunks(
  chunks: AsyncIterable<TarChunk>,
  options: GzipOptions,
): Promise<GzipResult> {
  const level = levelOf(options.level);
  const tarHash = createHash('sha256');
  const gzHash = createHash('sha256');
  let crc = 0;
  let tarSize = 0;
  let size = 0;
  const emit = async (bytes: Buffer) => {
    gzHash.update(bytes);
    size += bytes.length;
    await options.write(bytes);
  };
  const inFlight: Array<Promise<Buffer[]>> = [];
  const window = options.window ?? options.slots.size + 1;
  const drain = async () => {
    const pieces = await inFlight.shift()!;
    for (const piece of pieces) await emit(piece);
    if (options.freeWritten) free(pieces);
  };
  // Each chunk's dictionary, reused once that chunk is compressed.
  const dictionaries = new BufferPool(WINDOW, window + 1);
  let dictionary: Buffer | undefined;
  try {
    await emit(gzipHeader(level));
    for await (const { data, last } of chunks) {
      if (!options.summary) {
        tarHash.update(data);
        crc = zlib.crc32(data, crc);
      }
      tarSize += data.length;
      // Copied now: `data` goes back to its pool once compressed.
      const next = data.length >= WINDOW ? dictionaries.take() : undefined;
      if (next) data.copy(next, 0, data.length - WINDOW);
      const used = dictionary;
      const started = await compress({ data, last, dictionary, level, slots: options.slots });
      inFlight.push(
        started.job.finally(() => {
          options.recycle?.(data);
          if (used) dictionaries.give(used);
        }),
      );
      options.onChunk?.(tarSize);
      dictionary = next;
      while (inFlight.length >= window) await drain();
    }
    while (inFlight.length > 0) await drain();
  } finally {
    // On failure, let the jobs already started finish before the caller moves on.
    await Promise.allSettled(inFlight);
  }
  const summary = options.summary ? await options.summary : undefined;
  if (summary && summary.tarSize !== tarSize) {
    throw new Error(`The tar has ${tarSize} bytes, its producer counted ${summary.tarSize}`);
  }
  await emit(gzipTrailer(summary?.crc ?? crc, tarSize));
  return { diffId: summary?.diffId ?? hex(tarHash), tarSize, digest: hex(gzHash), size };
}

/**
 * Starts compressing one chunk once a slot is free; resolves as soon as the
 * job has started, with its promise boxed (a bare promise would be adopted,
 * and awaited, by the async function).
 */
async function compress(job: {
  data: Buffer;
  last: boolean;
  dictionary: Buffer | undefined;
  level: number;
  slots: Semaphore;
}): Promise<{ job: Promise<Buffer[]> }> {
  const release = await job.slots.acquire();
  const promise = deflatePieces(job).finally(release);
  // Handled by the caller in order; mark it handled so an early failure elsewhere is not "unhandled".
  promise.catch(() => undefined);
  return { job: promise };
}

/**
 * Raw-deflates one chunk in zlib's thread pool. The output stays in the
 * pieces zlib wrote it to (zlib's own one-shot helper would copy them into
 * one more buffer).
 */
function deflatePieces(job: {
  data: Buffer;
  last: boolean;
  dictionary: Buffer | undefined;
  level: number;
}): Promise<Buffer[]> {
  return new Promise((resolve, reject) => {
    const pieces: Buffer[] = [];
    const deflate = zlib.createDeflateRaw({
      level: job.level,
      ...(job.dictionary && { dictionary: job.dictionary }),
      finishFlush: job.last ? zlib.constants.Z_FINISH : zlib.constants.Z_SYNC_FLUSH,
      chunkSize: OUTPUT_PIECE,
    });
    deflate.on('data', (piece: Buffer) => pieces.push(piece));
    deflate.on('end', () => resolve(pieces));
    deflate.on('error', reject);
    deflate.end(job.data);
  });
}

/**
 * Frees zlib's output buffers behind `pieces` now (see `free.ts`): each is a
 * fresh `OUTPUT_PIECE`-byte `ArrayBuffer` of its own, some 1.25 MiB of them
 * per MiB of incompressible tar, that V8 would free only at its next full
 * collection.
 */
function free(pieces: readonly Buffer[]): void {
  // zlib's own buffers only, never a slab shared with other small Buffers.
  freeNow(pieces.map((p) => p.buffer).filter((b) => b.byteLength === OUTPUT_PIECE));
}

/**
 * The 10-byte gzip header: no name, mtime 0, XFL as zlib sets it for `level`, OS 3.
 *
 * @example
 * ```ts
 * gzipHeader(6); // <1f 8b 08 00 00 00 00 00 00 03>
 * ```
 */
export function gzipHeader(level: number): Buffer {
  const xfl = level === 9 ? 2 : level === 1 ? 4 : 0;
  return Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, xfl, 3]);
}

function gzipTrailer(crc: number, size: number): Buffer {
  const b = Buffer.alloc(8);
  b.writeUInt32LE(crc >>> 0, 0);
  b.writeUInt32LE(size % 2 ** 32, 4);
  return b;
}

function hex(hash: ReturnType<typeof createHash>): string {
  return `sha256:${hash.digest('hex')}`;
}

/**
 * Validates a gzip level; `undefined` gives the default.
 *
 * @example
 * ```ts
 * levelOf(undefined); // 6
 * levelOf(10); // throws OCI_BAD_ARGUMENT
 * ```
 */
export function levelOf(level: number | undefined): number {
  if (level === undefined) return DEFAULT_LEVEL;
  if (!Number.isInteger(level) || level < 0 || level > 9) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `Invalid gzip level ${level}`, {
      hint: 'Pass an integer from 0 (store) to 9 (smallest); the default is 6',
    });
  }
  return level;
}
