/**
 * A container's output, streamed: appended to a log file as it comes, with
 * a cap that keeps the head and the tail (a marker in between says how much
 * was left out), and split into lines for a listener. Memory stays bounded
 * whatever the command prints: the head goes straight to the log, the tail
 * cycles through an unlinked scratch file beside it, and a line is held back
 * only up to {@link MAX_LINE_BYTES}.
 */
import { closeSync, openSync, read, unlinkSync, write } from 'node:fs';
import { promisify } from 'node:util';
import { dirname } from 'node:path';
import { TempName, type OutputStream } from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';

/** Default {@link OutputLogOptions.capBytes}: 64 MiB, half head and half tail. */
export const DEFAULT_LOG_CAP = 64 * 2 ** 20;

/** Smallest cap: room for a head, a tail and lines of normal length. */
export const MIN_LOG_CAP = 8192;

/** A line longer than this is passed on (and written) in pieces of this size. */
export const MAX_LINE_BYTES = 64 * 1024;

/** How much of stderr is kept to tell a runtime's refusal from the command's output. */
const STDERR_HEAD_BYTES = 8192;

/** Copying the tail into the log goes through a buffer of this size. */
const COPY_BYTES = 1 << 20;

const NEWLINE = 0x0a;
const NEWLINE_BYTE = Buffer.from([NEWLINE]);

/** Options of {@link OutputLog.open}. */
export interface OutputLogOptions {
  /** Append the output to this file (created, mode 0600, if missing). */
  path?: string | undefined;
  /**
   * Most bytes of output written to `path` by this run (default
   * {@link DEFAULT_LOG_CAP}; `Infinity`: no cap). Past it, the first half and
   * the last half are kept, with a one-line marker in between.
   */
  capBytes?: number | undefined;
  /** Called with each line (without its newline), stdout and stderr apart. */
  onOutput?: ((line: string, stream: OutputStream) => void) | undefined;
}

/** What {@link OutputLog.close} reports. */
export interface OutputLogSummary {
  /** Bytes the command wrote, stdout and stderr together. */
  bytes: number;
  /** Bytes of them left out of the log by the cap (0 when it all fits). */
  omitted: number;
}

/**
 * The sink of a container's stdout and stderr.
 *
 * @example
 * ```ts
 * const log = await OutputLog.open({ path: '/tmp/build.log', capBytes: 1 << 20 });
 * await log.write(Buffer.from('hello\n'), 'stdout');
 * const { bytes, omitted } = await log.close(); // 6, 0
 * ```
 */
export class OutputLog {
  private readonly pending: Record<OutputStream, Buffer[]> = { stdout: [], stderr: [] };
  private readonly pendingBytes: Record<OutputStream, number> = { stdout: 0, stderr: 0 };
  private readonly stderrHeadParts: Buffer[] = [];
  private stderrHeadBytes = 0;
  private chain: Promise<void> = Promise.resolve();
  private bytes = 0;
  private headWritten = 0;
  private headEndsLine = true;
  /** The tail ring's scratch file (a descriptor), once output passes the head. */
  private tail: number | undefined;
  /** Bytes ever put into the tail ring; the ring holds the last `tailCap` of them. */
  private tailWritten = 0;
  private failure: Error | undefined;
  private closed = false;
  /** See {@link joined}. */
  private scratch = Buffer.alloc(0);

  private constructor(
    /** The log (a descriptor). */
    private readonly file: number | undefined,
    private readonly path: string | undefined,
    private readonly headCap: number,
    private readonly tailCap: number,
    private readonly onOutput: OutputLogOptions['onOutput'],
  ) {}

  /**
   * Opens the log (when `path` is given).
   *
   * @throws {ContainerError} `CONTAINER_BAD_ARGUMENT` when the file cannot be
   *   opened or the cap is not a number of bytes of at least {@link MIN_LOG_CAP}.
   */
  static async open(opts: OutputLogOptions): Promise<OutputLog> {
    const cap = opts.capBytes ?? DEFAULT_LOG_CAP;
    if (!(cap === Infinity || (Number.isSafeInteger(cap) && cap >= MIN_LOG_CAP))) {
      throw new ContainerError(ContainerCodes.BAD_ARGUMENT, `Invalid log cap: ${cap}`, {
        hint: `Pass a whole number of bytes of at least ${MIN_LOG_CAP}, or Infinity for no cap`,
      });
    }
    const headCap = cap === Infinity ? Infinity : Math.floor(cap / 2);
    const tailCap = cap === Infinity ? 0 : cap - headCap;
    let file: number | undefined;
    if (opts.path !== undefined) {
      try {
        // Synchronously, as the close: one short call each, where a trip
        // through the thread pool costs more (a step's log is opened per run).
        file = openSync(opts.path, 'a', 0o600);
      } catch (cause) {
        throw new ContainerError(
          ContainerCodes.BAD_ARGUMENT,
          `Cannot open log file ${opts.path}: ${messageOf(cause)}`,
          { path: opts.path, cause, hint: 'Check that its directory exists and is writable' },
        );
      }
    }
    return new OutputLog(file, opts.path, headCap, tailCap, opts.onOutput);
  }

  /** The first few KiB the command (or the runtime) wrote to stderr. */
  get stderrHead(): string {
    return Buffer.concat(this.stderrHeadParts).toString('utf8');
  }

  /**
   * Takes a chunk of output; resolves once it is written, so the caller can
   * wait before reading more (backpressure). Never rejects: a write error is
   * kept for {@link close}, and the rest of the output is then only counted.
   * The caller may reuse `chunk`'s memory once this resolves: nothing keeps it.
   */
  write(chunk: Buffer, stream: OutputStream): Promise<void> {
    this.chain = this.chain.then(() => this.take(chunk, stream));
    return this.chain;
  }

  /**
   * Writes out the held-back partial lines, the marker and the tail, and
   * closes the file.
   *
   * @throws {ContainerError} `CONTAINER_BAD_ARGUMENT` when the log could not be written.
   */
  async close(): Promise<OutputLogSummary> {
    if (this.closed) throw new Error('OutputLog closed twice');
    this.closed = true;
    await this.chain;
    // A last line without its newline gets one in the log, so the two
    // streams' last lines never run together.
    for (const stream of ['stdout', 'stderr'] as const) {
      const rest = this.pending[stream];
      this.pending[stream] = [];
      if (rest.length) await this.emit(Buffer.concat([...rest, NEWLINE_BYTE]), stream);
    }
    let omitted = 0;
    try {
      omitted = await this.writeTail();
    } finally {
      if (this.tail !== undefined) closeQuietly(this.tail);
      if (this.file !== undefined) {
        try {
          closeSync(this.file);
        } catch (err) {
          this.fail(err as Error);
        }
      }
    }
    if (this.failure) {
      throw new ContainerError(
        ContainerCodes.BAD_ARGUMENT,
        `Cannot write log file ${this.path}: ${this.failure.message}`,
        { path: this.path, cause: this.failure, hint: 'Check free space on its filesystem' },
      );
    }
    return { bytes: this.bytes, omitted };
  }

  // ------------------------------------------------------------ lines

  private async take(chunk: Buffer, stream: OutputStream): Promise<void> {
    this.bytes += chunk.length;
    if (stream === 'stderr' && this.stderrHeadBytes < STDERR_HEAD_BYTES) {
      const part = chunk.subarray(0, STDERR_HEAD_BYTES - this.stderrHeadBytes);
      this.stderrHeadParts.push(Buffer.from(part));
      this.stderrHeadBytes += part.length;
    }
    // Whole lines go out as they complete, so stdout and stderr interleave by
    // line in the log, as they did on a terminal; a partial line waits.
    // `chunk` may be lent (its bytes overwritten once this resolves): what is
    // held back for later is copied.
    const newline = chunk.lastIndexOf(NEWLINE);
    const held = this.pending[stream];
    if (newline < 0) {
      const total = this.pendingBytes[stream] + chunk.length;
      if (total < MAX_LINE_BYTES) {
        held.push(Buffer.from(chunk));
        this.pendingBytes[stream] = total;
        return;
      }
      const all = held.length ? Buffer.concat([...held, chunk]) : chunk;
      const cut = all.length - (all.length % MAX_LINE_BYTES);
      this.pending[stream] = cut < all.length ? [Buffer.from(all.subarray(cut))] : [];
      this.pendingBytes[stream] = all.length - cut;
      await this.emit(all.subarray(0, cut), stream);
      return;
    }
    const lines = held.length
      ? this.joined(held, chunk.subarray(0, newline + 1))
      : chunk.subarray(0, newline + 1);
    const rest = chunk.subarray(newline + 1);
    this.pending[stream] = rest.length ? [Buffer.from(rest)] : [];
    this.pendingBytes[stream] = rest.length;
    await this.emit(lines, stream);
  }

  /**
   * `parts` one after the other in a buffer reused from chunk to chunk: the
   * line a chunk completes is nearly always begun in the one before, and a
   * fresh buffer per chunk would pile up as garbage faster than V8 frees it.
   * Valid until the next call (each `take` has emitted it by then).
   */
  private joined(parts: Buffer[], last: Buffer): Buffer {
    const length = parts.reduce((n, p) => n + p.length, last.length);
    if (this.scratch.length < length)
      this.scratch = Buffer.allocUnsafe(Math.max(length, 2 * this.scratch.length));
    let at = 0;
    for (const part of [...parts, last]) at += part.copy(this.scratch, at);
    return this.scratch.subarray(0, length);
  }

  /** `data` is whole lines (each ending in a newline), or a piece of one. */
  private async emit(data: Buffer, stream: OutputStream): Promise<void> {
    if (this.onOutput) this.tellLines(data, stream, this.onOutput);
    if (this.file !== undefined && !this.failure) await this.append(data);
  }

  private tellLines(
    data: Buffer,
    stream: OutputStream,
    onOutput: NonNullable<OutputLogOptions['onOutput']>,
  ): void {
    for (let start = 0; start < data.length;) {
      const newline = data.indexOf(NEWLINE, start);
      const end = newline < 0 ? data.length : newline;
      // An overlong line is passed on in MAX_LINE_BYTES parts.
      for (let at = start; ; at += MAX_LINE_BYTES) {
        const stop = Math.min(end, at + MAX_LINE_BYTES);
        const text = data.toString('utf8', at, stop);
        onOutput(stop === newline && text.endsWith('\r') ? text.slice(0, -1) : text, stream);
        if (stop >= end) break;
      }
      start = end + 1;
    }
  }

  // ------------------------------------------------------------ the file

  private async append(data: Buffer): Promise<void> {
    try {
      let rest = data;
      if (this.headWritten < this.headCap) {
        const room = this.headCap - this.headWritten;
        const head = rest.length <= room ? rest : rest.subarray(0, room);
        await writeAll(this.file!, head);
        this.headWritten += head.length;
        this.headEndsLine = head[head.length - 1] === NEWLINE;
        rest = rest.subarray(head.length);
      }
      if (rest.length) await this.appendTail(rest);
    } catch (err) {
      this.fail(err as Error);
    }
  }

  /**
   * The ring: byte n of the tail lives at offset n % ringBytes of the scratch
   * file. It holds one byte more than the tail, to tell whether the tail
   * starts a line.
   */
  private async appendTail(data: Buffer): Promise<void> {
    this.tail ??= openScratch(this.path!);
    const ringBytes = this.tailCap + 1;
    let rest = data;
    if (rest.length > ringBytes) {
      this.tailWritten += rest.length - ringBytes;
      rest = rest.subarray(rest.length - ringBytes);
    }
    while (rest.length) {
      const at = this.tailWritten % ringBytes;
      const piece = rest.subarray(0, ringBytes - at);
      await writeAll(this.tail, piece, at);
      this.tailWritten += piece.length;
      rest = rest.subarray(piece.length);
    }
  }

  /** Appends the tail (after the marker, when some was left out); returns the bytes left out. */
  private async writeTail(): Promise<number> {
    if (this.tail === undefined || this.failure) return 0;
    let from = Math.max(0, this.tailWritten - this.tailCap); // logical offset of the first byte kept
    if (from > 0) {
      // Start the tail at a line: skip the rest of a line cut in two.
      const before = await this.readRing(
        from - 1,
        Buffer.allocUnsafe(Math.min(MAX_LINE_BYTES, this.tailCap)),
      );
      const newline = before.indexOf(NEWLINE);
      if (newline > 0 && from + newline < this.tailWritten) from += newline;
      const omitted = from;
      const marker =
        `${this.headEndsLine ? '' : '\n'}[day11: ${omitted} bytes of output left out here; ` +
        `the log keeps the first ${this.headCap} and the last ${this.tailCap} bytes ` +
        `(log cap ${this.headCap + this.tailCap} bytes)]\n`;
      try {
        await writeAll(this.file!, Buffer.from(marker));
      } catch (err) {
        this.fail(err as Error);
        return omitted;
      }
    }
    try {
      // One buffer for the whole copy: a fresh one per piece would leave tens of MB of garbage.
      const buffer = Buffer.allocUnsafe(Math.min(COPY_BYTES, this.tailWritten - from));
      for (let at = from; at < this.tailWritten;) {
        const want = Math.min(buffer.length, this.tailWritten - at);
        const piece = await this.readRing(at, buffer.subarray(0, want));
        await writeAll(this.file!, piece);
        at += piece.length;
      }
    } catch (err) {
      this.fail(err as Error);
    }
    return from;
  }

  /**
   * Up to `into.length` bytes of the tail from logical offset `from` (not
   * across the ring's end), read into `into`; the part of it that was read.
   */
  private async readRing(from: number, into: Buffer): Promise<Buffer> {
    const ringBytes = this.tailCap + 1;
    const at = from % ringBytes;
    const n = Math.min(into.length, ringBytes - at);
    const { bytesRead } = await readFd(this.tail!, into, 0, n, at);
    return into.subarray(0, bytesRead);
  }

  private fail(err: Error): void {
    this.failure ??= err;
  }
}

/**
 * The tail's scratch file, beside the log (same filesystem, same owner):
 * created exclusively, never through a symlink, and unlinked at once, so
 * nothing of it outlives the run, even a crash.
 */
function openScratch(logPath: string): number {
  const path = TempName.inside(dirname(logPath), 'log-tail');
  const fd = openSync(path, 'wx+', 0o600);
  try {
    unlinkSync(path);
  } catch {
    // Best effort: what is left has a temporary name.
  }
  return fd;
}

function closeQuietly(fd: number): void {
  try {
    closeSync(fd);
  } catch {
    // Nothing to lose: the scratch file was unlinked at once.
  }
}

const readFd = promisify(read);
const writeFd = promisify(write);

async function writeAll(fd: number, data: Buffer, position?: number): Promise<void> {
  let done = 0;
  while (done < data.length) {
    const { bytesWritten } = await writeFd(
      fd,
      data,
      done,
      data.length - done,
      position === undefined ? null : position + done,
    );
    done += bytesWritten;
  }
}
