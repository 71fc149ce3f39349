/**
 * The deterministic tar of a layer, produced as a sequence of fixed-size
 * chunks: headers are encoded straight into the current chunk and file
 * content is read straight into it (no per-file buffer), so memory stays at a
 * chunk or two whatever the size of the files. Chunks are what the parallel
 * gzip compresses, one job each.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { OciExportCodes, OciExportError, fsError } from './errors.js';
import {
  BLOCK,
  END_OF_ARCHIVE,
  encodeHeader,
  encodeHeaderInto,
  padding,
  type TarHeader,
} from './tar-header.js';
import { BufferPool } from '@day11/exec/buffer-pool';
import * as Sys from '@day11/exec/sys';
import { walk, type WalkEntry, type WalkOptions } from './walk.js';

/**
 * Default bytes of tar per chunk (1 MiB): small enough that a few chunks in
 * flight per core cost little memory, large enough that the per-chunk costs
 * (a thread-pool job, a 32 KiB dictionary, a sync flush) are noise. The gzip
 * output depends on it; keep it fixed.
 */
export const DEFAULT_CHUNK_SIZE = 1024 * 1024;
/** Entries archived between two turns of the event loop. */
const YIELD_EVERY = 256;

/** One piece of the archive; the last one has `last: true`. */
export interface TarChunk {
  data: Buffer;
  last: boolean;
}

/** Options of {@link tarChunks}. */
export interface TarOptions extends WalkOptions {
  /** Bytes per chunk (all but the last are exactly this long); default {@link DEFAULT_CHUNK_SIZE}. */
  chunkSize?: number | undefined;
  /** Aborting stops the walk at the next entry or chunk. */
  signal?: AbortSignal | undefined;
  /**
   * Where chunk buffers come from (its `size` is the chunk size). The consumer
   * gives each chunk back once done with it; without a pool every chunk is new.
   */
  pool?: BufferPool | undefined;
}

/**
 * Yields the tar of the tree at `root` (see `walk` for the order and the
 * overlay conversions) in chunks of `chunkSize` bytes, the last one shorter
 * and flagged `last`. The archive ends with two zero blocks.
 *
 * @example
 * ```ts
 * const out = createWriteStream('/tmp/layer.tar');
 * for await (const { data } of tarChunks('/var/cache/day11/build-0123456789ab/fs')) out.write(data);
 * ```
 * @throws {OciExportError} as `walk`, and `OCI_LAYER_CHANGED` when a file shrinks while read.
 */
export function tarChunks(root: string, options: TarOptions = {}): AsyncGenerator<TarChunk> {
  return tarOf(walk(root, options), options);
}

/**
 * The tar of `entries` (in archive order) in chunks, as {@link tarChunks}:
 * each header, then the content of each regular file read from its source
 * and padded to a block, then the end of the archive.
 *
 * The work is synchronous between chunks (a generator step or a promise per
 * entry would cost more than its system calls); it yields each full chunk,
 * and a turn of the event loop every {@link YIELD_EVERY} entries.
 *
 * @example
 * ```ts
 * for await (const { data, last } of tarOf(walk(fsDir), { pool })) compress(data, last);
 * ```
 * @throws {OciExportError} `OCI_READ_FAILED`, `OCI_LAYER_CHANGED`; what `entries` throws.
 */
export async function* tarOf(
  entries: Iterable<WalkEntry>,
  options: Omit<TarOptions, 'onWarning'> = {},
): AsyncGenerator<TarChunk> {
  const chunker = new Chunker(
    options.pool ?? new BufferPool(options.chunkSize ?? DEFAULT_CHUNK_SIZE, 0),
  );
  const writer = new TarWriter(entries[Symbol.iterator](), chunker);
  try {
    let turnAt = YIELD_EVERY;
    for (;;) {
      const done = writer.fill(turnAt);
      for (const data of chunker.takeSealed()) yield { data, last: false };
      if (done) break;
      if (writer.entries >= turnAt) {
        turnAt = writer.entries + YIELD_EVERY;
        await nextTurn();
      }
      options.signal?.throwIfAborted();
    }
  } finally {
    writer.close();
  }
  options.signal?.throwIfAborted();
  yield { data: chunker.rest(), last: true };
}

/** The state of one archive between two chunks: the entry iterator and the file being read. */
class TarWriter {
  /** Entries archived so far. */
  entries = 0;
  private file: OpenFile | undefined;
  private ended = false;

  constructor(
    private readonly iterator: Iterator<WalkEntry>,
    private readonly chunker: Chunker,
  ) {}

  /**
   * Archives until a chunk is full, `stop` entries are done, or the archive
   * is complete, its end written and every full chunk taken (then true).
   */
  fill(stop: number): boolean {
    const { chunker } = this;
    while (!chunker.hasSealed()) {
      if (this.ended) return true;
      if (this.file) {
        this.readMore(this.file);
        continue;
      }
      if (this.entries >= stop) return false;
      const next = this.iterator.next();
      if (next.done) {
        chunker.put(END_OF_ARCHIVE);
        this.ended = true;
        continue;
      }
      this.entries++;
      const { header, source, open } = next.value;
      chunker.header(header);
      if (source !== undefined) this.file = openFile(source, header.size, open);
    }
    return false;
  }

  /** Releases the open file, if any (after a failure or an abort). */
  close(): void {
    if (this.file) closeFile(this.file);
    this.file = undefined;
    if (!this.ended) this.iterator.return?.();
  }

  private readMore(file: OpenFile): void {
    if (file.done < file.size) {
      file.done += this.chunker.readFrom({
        fd: file.fd,
        path: file.path,
        position: file.done,
        length: file.size - file.done,
      });
      return;
    }
    this.file = undefined;
    closeFile(file);
    this.chunker.zeros(padding(file.size));
  }
}

/** A regular file being copied into the archive. */
interface OpenFile {
  fd: number;
  path: string;
  size: number;
  done: number;
  /** Opened relative to its directory, not through node:fs (see Sys.closeFdSync). */
  relative: boolean;
}

function openFile(path: string, size: number, open: (() => number) | undefined): OpenFile {
  try {
    return { fd: open ? open() : openSync(path, 'r'), path, size, done: 0, relative: !!open };
  } catch (cause) {
    throw fsError(
      OciExportCodes.READ_FAILED,
      'Cannot open',
      path,
      cause,
      'Check that the layer is readable',
    );
  }
}

function closeFile(file: OpenFile): void {
  if (file.relative) Sys.closeFdSync(file.fd);
  else closeSync(file.fd);
}

/**
 * Fills fixed-size buffers. A full buffer is sealed lazily, when more bytes
 * come, so the final chunk is never empty and is known to be the last.
 */
class Chunker {
  private buf: Buffer;
  private pos = 0;
  private sealed: Buffer[] = [];
  private readonly size: number;

  constructor(private readonly pool: BufferPool) {
    this.size = pool.size;
    if (!Number.isSafeInteger(this.size) || this.size < 64 * 1024) {
      throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `Invalid tar chunk size ${this.size}`, {
        hint: 'Use at least 64 KiB (the default is 1 MiB)',
      });
    }
    this.buf = pool.take();
  }

  /** Writes an entry's header: straight into the chunk when one ustar block says it all. */
  header(h: TarHeader): void {
    this.makeRoom();
    if (encodeHeaderInto(h, this.buf, this.pos)) this.pos += BLOCK;
    else this.put(encodeHeader(h));
  }

  put(bytes: Buffer): void {
    for (let off = 0; off < bytes.length;) {
      this.makeRoom();
      const n = bytes.copy(this.buf, this.pos, off);
      this.pos += n;
      off += n;
    }
  }

  zeros(count: number): void {
    for (let left = count; left > 0;) {
      this.makeRoom();
      const n = Math.min(left, this.size - this.pos);
      this.buf.fill(0, this.pos, this.pos + n);
      this.pos += n;
      left -= n;
    }
  }

  /** Reads up to the room left in the current buffer; returns the bytes read. */
  readFrom(file: { fd: number; path: string; position: number; length: number }): number {
    this.makeRoom();
    const want = Math.min(file.length, this.size - this.pos);
    let n: number;
    try {
      n = readSync(file.fd, this.buf, this.pos, want, file.position);
    } catch (cause) {
      throw fsError(OciExportCodes.READ_FAILED, 'Cannot read', file.path, cause, 'Check the disk');
    }
    if (n === 0) throw shrank(file.path, file.position, file.position + file.length);
    this.pos += n;
    return n;
  }

  hasSealed(): boolean {
    return this.sealed.length > 0;
  }

  /** The full chunks, oldest first; the chunker forgets them. */
  takeSealed(): Buffer[] {
    const sealed = this.sealed;
    this.sealed = [];
    return sealed;
  }

  rest(): Buffer {
    return this.buf.subarray(0, this.pos);
  }

  private makeRoom(): void {
    if (this.pos < this.size) return;
    this.sealed.push(this.buf);
    this.buf = this.pool.take();
    this.pos = 0;
  }
}

function shrank(path: string, got: number, expected: number): OciExportError {
  return new OciExportError(
    OciExportCodes.LAYER_CHANGED,
    `${path} shrank while being archived (${got} of ${expected} bytes)`,
    {
      path,
      hint: 'A layer must not change once committed; stop what writes into it and export again',
    },
  );
}
