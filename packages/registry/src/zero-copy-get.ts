/**
 * Blob downloads that allocate nothing per chunk.
 *
 * `node:http` hands every socket read (64 KiB) to JavaScript in a fresh
 * buffer and copies each body piece into another; for a 75 MB download that
 * was ~2,300 allocations, and the garbage collector then took half a second
 * of CPU, more than hashing and writing the bytes (more than the whole of
 * `skopeo copy`'s CPU for the same blobs). Here the socket reads into one
 * reused buffer (`onread`), a small HTTP/1.1 reader finds the head and the
 * body (Content-Length, chunked, or up to the close), and each piece of body
 * is handed to a synchronous sink that must be done with it when it returns
 * (hash it, `writeSync` it). One connection per download (`Connection:
 * close`): these are large transfers. Plain http only (a registry on this
 * machine or `insecure`); over TLS the transport keeps `node:http`.
 */
import { connect as netConnect, type Socket } from 'node:net';

/** The socket's read buffer, reused for every read of one download. */
const READ_BUFFER_BYTES = 1024 * 1024;
/** A response head longer than this is refused. */
const MAX_HEAD_BYTES = 64 * 1024;
/** What the fallback iterator of a body (an error's text) reads at most. */
const ITERATE_BYTES = 1024 * 1024;
const CRLF2 = Buffer.from('\r\n\r\n');

/** The body of a zero-copy response: read once, with {@link ZeroCopyBody.pipeTo}. */
export interface ZeroCopyBody {
  /**
   * Feeds every piece of the body to `sink`, synchronously, in order; the
   * piece is only valid during the call. Resolves with the body's length
   * when it ended as announced; rejects with what `sink` threw, the socket's
   * error, or an error with `bytes` (what came) when the connection closed
   * early.
   */
  pipeTo(sink: (piece: Buffer) => void): Promise<number>;
  /** Closes the connection without reading (more of) the body. */
  discard(): void;
  /** The body's first MiB as copied chunks (for an error's text). */
  [Symbol.asyncIterator](): AsyncIterator<Uint8Array>;
}

/** A response head and its unread body. */
export interface ZeroCopyResponse {
  status: number;
  statusText: string;
  headers: Headers;
  body: ZeroCopyBody;
}

/** An error for a body that ended before it should have. */
export class EarlyEnd extends Error {
  constructor(readonly bytes: number) {
    super(`the connection closed after ${bytes} bytes of the body`);
    this.name = 'EarlyEnd';
  }
}

/**
 * Sends `GET url` and resolves once the response head is in (its body
 * unread: {@link ZeroCopyBody.pipeTo}); rejects when the connection fails
 * first or the head is malformed.
 *
 * @example
 * ```ts
 * const res = await zeroCopyGet(new URL(url), { headers: {}, signal });
 * const bytes = await res.body.pipeTo((piece) => hash.update(piece));
 * ```
 */
export function zeroCopyGet(
  url: URL,
  init: { headers: Record<string, string>; signal: AbortSignal },
): Promise<ZeroCopyResponse> {
  return new Promise<ZeroCopyResponse>((resolve, reject) => {
    const reader = new ResponseReader(url, init, resolve, reject);
    reader.start();
  });
}

type BodyMode =
  { kind: 'length'; left: number } | { kind: 'chunked' } | { kind: 'close' } | { kind: 'none' };

/** Chunked decoding: reading a size line, a chunk's data, the CRLF after it, or the trailer. */
type ChunkState = 'size' | 'data' | 'data-end' | 'trailer';

class ResponseReader implements ZeroCopyBody {
  private socket: Socket | undefined;
  private readonly readBuffer = Buffer.allocUnsafe(READ_BUFFER_BYTES);
  private head: Buffer[] = [];
  private headBytes = 0;
  private mode: BodyMode | undefined;
  /** Body bytes read before anyone piped: copied once, delivered first. */
  private stash: Buffer[] = [];
  private sink: ((piece: Buffer) => void) | undefined;
  private bytes = 0;
  private done = false;
  private settle: { resolve: (n: number) => void; reject: (e: unknown) => void } | undefined;
  private failure: unknown;
  private chunk: { state: ChunkState; left: number; line: string } = {
    state: 'size',
    left: 0,
    line: '',
  };

  constructor(
    private readonly url: URL,
    private readonly init: { headers: Record<string, string>; signal: AbortSignal },
    private readonly onHead: (res: ZeroCopyResponse) => void,
    private readonly onFail: (err: unknown) => void,
  ) {}

  start(): void {
    const { signal } = this.init;
    if (signal.aborted) {
      this.onFail(signal.reason);
      return;
    }
    if (this.url.protocol !== 'http:') {
      this.onFail(new Error(`zero-copy GET is for http: URLs, not ${this.url.protocol}`));
      return;
    }
    const port = Number(this.url.port || 80);
    const host = this.url.hostname.replace(/^\[|\]$/g, '');
    const onread = { buffer: this.readBuffer, callback: (n: number) => this.onRead(n) };
    const socket = netConnect({ host, port, onread });
    this.socket = socket;
    const abort = () => this.fail(signal.reason);
    signal.addEventListener('abort', abort, { once: true });
    socket.once('close', () => signal.removeEventListener('abort', abort));
    socket.once('connect', () => socket.write(this.request()));
    socket.once('error', (err) => this.fail(err));
    socket.once('end', () => this.onEnd());
    socket.once('close', () => this.onEnd());
  }

  private request(): string {
    const headers: Record<string, string> = {
      host: this.url.host,
      ...this.init.headers,
      connection: 'close',
    };
    const lines = Object.entries(headers).map(([k, v]) => `${k}: ${v}`);
    return `GET ${this.url.pathname}${this.url.search} HTTP/1.1\r\n${lines.join('\r\n')}\r\n\r\n`;
  }

  /** The `onread` callback: false pauses the socket. */
  private onRead(n: number): boolean {
    if (this.done || this.failure !== undefined) return false;
    let piece: Buffer = this.readBuffer.subarray(0, n);
    if (this.mode === undefined) {
      const rest = this.readHead(piece);
      if (rest === undefined) return this.failure === undefined;
      piece = rest;
    }
    if (piece.length > 0) this.body(piece);
    // Nobody reads the body yet: wait for pipeTo (what came meanwhile is stashed).
    return this.sink !== undefined && !this.done;
  }

  /** Collects the head; returns the body bytes after it, or undefined while it is incomplete. */
  private readHead(piece: Buffer): Buffer | undefined {
    const seen = this.headBytes;
    this.head.push(Buffer.from(piece));
    this.headBytes += piece.length;
    const all = Buffer.concat(this.head);
    const end = all.indexOf(CRLF2, Math.max(0, seen - 3));
    if (end < 0) {
      if (this.headBytes > MAX_HEAD_BYTES) this.fail(new Error('the response head is too long'));
      return undefined;
    }
    const parsed = parseHead(all.subarray(0, end).toString('latin1'));
    if (parsed instanceof Error) {
      this.fail(parsed);
      return undefined;
    }
    const rest = all.subarray(end + 4);
    if (parsed.status >= 100 && parsed.status < 200) {
      // An interim answer (100 Continue): the real head follows.
      this.head = [];
      this.headBytes = 0;
      return rest.length > 0 ? this.readHead(rest) : undefined;
    }
    this.head = [];
    this.mode = bodyMode(parsed.status, parsed.headers);
    this.onHead({ ...parsed, body: this });
    if (this.mode.kind === 'none') this.finish();
    // `rest` is a copy (Buffer.concat): safe to stash as is.
    return rest;
  }

  /** Body bytes from the socket: to the sink, or stashed until there is one. */
  private body(piece: Buffer): void {
    const mode = this.mode!;
    if (mode.kind === 'chunked') {
      this.dechunk(piece);
      return;
    }
    if (mode.kind === 'length') {
      const take = Math.min(piece.length, mode.left);
      mode.left -= take;
      this.deliver(piece.subarray(0, take));
      if (mode.left === 0) this.finish();
      return;
    }
    if (mode.kind === 'close') this.deliver(piece);
  }

  private dechunk(piece: Buffer): void {
    const c = this.chunk;
    let at = 0;
    while (at < piece.length && !this.done) {
      if (c.state === 'data') {
        const take = Math.min(c.left, piece.length - at);
        this.deliver(piece.subarray(at, at + take));
        at += take;
        c.left -= take;
        if (c.left === 0) c.state = 'data-end';
        continue;
      }
      // Size lines, CRLFs and trailers are short: read them byte by byte.
      const byte = piece[at++]!;
      if (byte !== 0x0a) {
        if (byte !== 0x0d) c.line += String.fromCharCode(byte);
        if (c.line.length > 1024) this.fail(new Error('a chunk size line is too long'));
        continue;
      }
      const line = c.line;
      c.line = '';
      if (c.state === 'data-end') {
        if (line !== '') this.fail(new Error('a chunk does not end with CRLF'));
        c.state = 'size';
      } else if (c.state === 'size') {
        const size = /^([0-9a-fA-F]{1,12})(?:;.*)?$/.exec(line.trim());
        if (!size) {
          this.fail(new Error(`a bad chunk size line ${JSON.stringify(line.slice(0, 40))}`));
          return;
        }
        c.left = parseInt(size[1]!, 16);
        c.state = c.left === 0 ? 'trailer' : 'data';
      } else if (line === '') {
        this.finish(); // the empty line after the trailer fields
      }
    }
  }

  private deliver(piece: Buffer): void {
    if (piece.length === 0) return;
    if (!this.sink) {
      this.stash.push(Buffer.from(piece));
      return;
    }
    this.bytes += piece.length;
    try {
      this.sink(piece);
    } catch (err) {
      this.fail(err);
    }
  }

  private finish(): void {
    if (this.done || this.failure !== undefined) return;
    this.done = true;
    this.socket?.destroy(); // what was read before anyone piped is in the stash
    this.settleIfPiped();
  }

  private onEnd(): void {
    if (this.done || this.failure !== undefined) return;
    if (this.mode?.kind === 'close') {
      this.finish();
      return;
    }
    this.fail(
      this.mode === undefined
        ? new Error('the connection closed before a response')
        : new EarlyEnd(this.bytes + stashed(this.stash)),
    );
  }

  private fail(err: unknown): void {
    if (this.done || this.failure !== undefined) return;
    this.failure = err ?? new Error('failed');
    this.socket?.destroy();
    if (this.mode === undefined) this.onFail(this.failure);
    this.settleIfPiped();
  }

  private settleIfPiped(): void {
    if (!this.settle) return;
    const { resolve, reject } = this.settle;
    this.settle = undefined;
    if (this.failure !== undefined) reject(this.failure);
    else if (this.done) resolve(this.bytes);
  }

  pipeTo(sink: (piece: Buffer) => void): Promise<number> {
    if (this.sink) return Promise.reject(new Error('the body is being read already'));
    return new Promise<number>((resolve, reject) => {
      this.settle = { resolve, reject };
      this.sink = sink;
      const stash = this.stash;
      this.stash = [];
      for (const piece of stash) {
        if (this.failure !== undefined) break;
        this.bytes += piece.length;
        try {
          sink(piece);
        } catch (err) {
          this.fail(err);
        }
      }
      if (this.done) this.socket?.destroy();
      if (this.done || this.failure !== undefined) this.settleIfPiped();
      else this.socket?.resume();
    });
  }

  discard(): void {
    if (this.done || this.failure !== undefined) return;
    this.done = true;
    this.stash = [];
    this.socket?.destroy();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    const parts: Buffer[] = [];
    let size = 0;
    const cut = new Error('enough');
    await this.pipeTo((piece) => {
      parts.push(Buffer.from(piece));
      size += piece.length;
      if (size >= ITERATE_BYTES) throw cut;
    }).catch((err: unknown) => {
      if (err !== cut) throw err;
    });
    yield* parts;
  }
}

function stashed(stash: readonly Buffer[]): number {
  return stash.reduce((n, b) => n + b.length, 0);
}

function parseHead(text: string): { status: number; statusText: string; headers: Headers } | Error {
  const [statusLine = '', ...lines] = text.split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!status)
    return new Error(`not an HTTP/1.1 response: ${JSON.stringify(statusLine.slice(0, 60))}`);
  const headers = new Headers();
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0)
      return new Error(`a malformed header line ${JSON.stringify(line.slice(0, 60))}`);
    try {
      headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim());
    } catch {
      return new Error(`a malformed header line ${JSON.stringify(line.slice(0, 60))}`);
    }
  }
  return { status: Number(status[1]), statusText: status[2] ?? '', headers };
}

function bodyMode(status: number, headers: Headers): BodyMode {
  if (status === 204 || status === 304) return { kind: 'none' };
  if (/\bchunked\b/i.test(headers.get('transfer-encoding') ?? '')) return { kind: 'chunked' };
  const length = headers.get('content-length');
  if (length !== null && /^\d+$/.test(length.trim())) {
    const left = Number(length.trim());
    return left === 0 ? { kind: 'none' } : { kind: 'length', left };
  }
  return { kind: 'close' };
}
