/**
 * Parallel, deterministic gzip of a chunked stream, in one of two encodings:
 *
 * - `'zlib'`, the way pigz does it: each chunk is raw-deflated on its own (in
 *   zlib's thread pool, so chunks of one layer and of several layers compress
 *   on all cores), primed with the last 32 KiB of the chunk before it as the
 *   dictionary, and ended with a sync flush (the last one with a final
 *   block). The pieces concatenate into one single-member gzip stream.
 * - `'libdeflate'`: each chunk becomes a gzip member of its own, made by
 *   libdeflate on koffi's worker threads (~1.7× faster than zlib at level 6,
 *   and smaller). A gzip file is a series of members (RFC 1952); Go's gzip
 *   (Docker, containerd, podman, skopeo, umoci), pigz, GNU gzip and Node all
 *   read it as one stream, as they read eStargz layers, which are made the
 *   same way. Only the first 32 KiB of each 1 MiB chunk lose the previous
 *   chunk as context.
 *
 * Either way the bytes depend only on the input, the chunk size, the level
 * and the engine's version. Memory stays flat whatever the size of the
 * stream: a few chunks and their output are in flight, and buffers are reused
 * (or, with zlib and `freeWritten`, freed as soon as they are written rather
 * than left for V8 to collect).
 *
 * zlib's header has no name and mtime 0, OS 3 (Unix), as Node's own gzip
 * writes it; libdeflate's has mtime 0 and OS 255 (unknown). The CRC-32 and
 * both SHA-256 digests (of the tar: the OCI diff_id; of the gzip: the blob
 * digest) are computed on the way through.
 */
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import { Libdeflate } from '@day11/exec';
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
/** Chunks up to this size get a reused output buffer from libdeflate (the export's chunk size). */
const MEMBER_INPUT = 1024 * 1024;

/** How {@link gzipChunks} compresses: see this module's comment. */
export type GzipEngine = 'zlib' | 'libdeflate';

/** Options of {@link gzipChunks}. */
export interface GzipOptions {
  /**
   * `'zlib'` (default): one gzip member. `'libdeflate'`: one member per chunk,
   * faster; fails with `OCI_BAD_ARGUMENT` where libdeflate is not installed
   * (see {@link fastestEngine}).
   */
  engine?: GzipEngine | undefined;
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
 * Compresses `chunks` (see {@link TarChunk}: the last is flagged) into a
 * gzip stream written through `options.write`: one member (zlib) or one per
 * chunk (libdeflate).
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
  const members = options.engine === 'libdeflate' ? libdeflate() : undefined;
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
  // Jobs in order, each with the buffer libdeflate writes its member into.
  const inFlight: Array<{ job: Promise<Buffer[]>; out?: Buffer }> = [];
  const window = options.window ?? options.slots.size + 1;
  // libdeflate's output buffers, reused once written (with `freeWritten`).
  const outputs = members && new BufferPool(members.bound(MEMBER_INPUT), window + 1);
  const drain = async () => {
    const { job, out } = inFlight.shift()!;
    const pieces = await job;
    for (const piece of pieces) await emit(piece);
    if (!options.freeWritten) return; // `write` may keep the buffers
    if (out) outputs?.give(out);
    else free(pieces);
  };
  // Each chunk's dictionary, reused once that chunk is compressed.
  const dictionaries = new BufferPool(WINDOW, window + 1);
  let dictionary: Buffer | undefined;
  try {
    if (!members) await emit(gzipHeader(level));
    for await (const { data, last } of chunks) {
      if (!options.summary) {
        tarHash.update(data);
        if (!members) crc = zlib.crc32(data, crc);
      }
      tarSize += data.length;
      if (members && outputs) {
        const out =
          data.length <= MEMBER_INPUT
            ? outputs.take()
            : Buffer.allocUnsafe(members.bound(data.length));
        const started = await compressMember({
          data,
          out,
          level,
          slots: options.slots,
          libdeflate: members,
        });
        inFlight.push({ job: started.job.finally(() => options.recycle?.(data)), out });
      } else {
        // Copied now: `data` goes back to its pool once compressed.
        const next = data.length >= WINDOW ? dictionaries.take() : undefined;
        if (next) data.copy(next, 0, data.length - WINDOW);
        const used = dictionary;
        const started = await compress({ data, last, dictionary, level, slots: options.slots });
        inFlight.push({
          job: started.job.finally(() => {
            options.recycle?.(data);
            if (used) dictionaries.give(used);
          }),
        });
        dictionary = next;
      }
      options.onChunk?.(tarSize);
      while (inFlight.length >= window) await drain();
    }
    while (inFlight.length > 0) await drain();
    // An empty stream is still one (empty) member.
    if (members && size === 0) {
      const out = Buffer.allocUnsafe(members.bound(0));
      await emit(out.subarray(0, await members.gzip(level, Buffer.alloc(0), out)));
    }
  } finally {
    // On failure, let the jobs already started finish before the caller moves on.
    await Promise.allSettled(inFlight.map((f) => f.job));
  }
  const summary = options.summary ? await options.summary : undefined;
  if (summary && summary.tarSize !== tarSize) {
    throw new Error(`The tar has ${tarSize} bytes, its producer counted ${summary.tarSize}`);
  }
  if (!members) await emit(gzipTrailer(summary?.crc ?? crc, tarSize));
  return { diffId: summary?.diffId ?? hex(tarHash), tarSize, digest: hex(gzHash), size };
}

/**
 * The engine {@link gzipChunks} should use here: libdeflate where it loads,
 * unless `DAY11_GZIP_ENGINE=zlib` asks for single-member output (for a reader
 * that stops after the first member, such as Rust's `GzDecoder`).
 *
 * @example
 * ```ts
 * fastestEngine(); // 'libdeflate' on Debian with libdeflate0 installed
 * ```
 */
export function fastestEngine(env: NodeJS.ProcessEnv = process.env): GzipEngine {
  if (env.DAY11_GZIP_ENGINE === 'zlib') return 'zlib';
  return Libdeflate.load() ? 'libdeflate' : 'zlib';
}

function libdeflate(): Libdeflate.Libdeflate {
  const lib = Libdeflate.load();
  if (lib) return lib;
  throw new OciExportError(OciExportCodes.BAD_ARGUMENT, 'libdeflate is not installed here', {
    hint: "Install libdeflate0 (apt-get install libdeflate0), or use the 'zlib' engine",
  });
}

/** Starts one libdeflate member once a slot is free (boxed, as {@link compress}). */
async function compressMember(job: {
  data: Buffer;
  out: Buffer;
  level: number;
  slots: Semaphore;
  libdeflate: Libdeflate.Libdeflate;
}): Promise<{ job: Promise<Buffer[]> }> {
  const release = await job.slots.acquire();
  const promise = job.libdeflate
    .gzip(job.level, job.data, job.out)
    .then((n) => [job.out.subarray(0, n)])
    .finally(release);
  promise.catch(() => undefined);
  return { job: promise };
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
