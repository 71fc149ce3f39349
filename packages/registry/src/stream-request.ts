/**
 * Bulk transfers (blob uploads and downloads), sent with `node:http(s)`.
 *
 * Node 20's `fetch` (undici 6) keeps every chunk of a streamed request body
 * in memory until the request ends (nodejs/undici#4058, open): uploading a
 * 2 GiB blob took 2 GiB of RSS. `http.request` piped from the source honours
 * backpressure, so memory stays at a few chunks whatever the blob size. On
 * the way down, a Node stream skips the WHATWG stream machinery, which cost
 * a quarter of the throughput of a blob download here. The answer is handed
 * back as a `Response` (status and headers) whose body is read with
 * {@link bodyOf}, so everything above the transport treats both paths alike.
 * Control requests (manifests, HEADs, tokens) still go through `fetch`.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Sys } from '@day11/exec';
import { FileBody, FileBodyWriter } from './file-body.js';
import { zeroCopyGet, type ZeroCopyBody } from './zero-copy-get.js';

/** Statuses whose responses have no body. */
const NULL_BODY = new Set([101, 103, 204, 205, 304]);

/** Bodies of the responses this module made, read as Node streams. */
const nodeBodies = new WeakMap<Response, IncomingMessage>();

/** Bodies of zero-copy downloads (see `zero-copy-get.ts`). */
const zeroCopyBodies = new WeakMap<Response, ZeroCopyBody>();

/** Bodies smaller than this are drained (the connection is kept); larger ones cut. */
const DRAIN_BYTES = 64 * 1024;

/**
 * The body of a response as chunks: the Node stream of a bulk transfer, else the WHATWG one.
 *
 * @example
 * ```ts
 * for await (const chunk of bodyOf(res) ?? []) hash.update(chunk);
 * ```
 */
export function bodyOf(res: Response): AsyncIterable<Uint8Array> | null {
  return (
    zeroCopyBodies.get(res) ?? nodeBodies.get(res) ?? (res.body as AsyncIterable<Uint8Array> | null)
  );
}

/**
 * The body of a response to a `zeroCopy` GET, to read with `pipeTo`.
 *
 * @example
 * ```ts
 * const bytes = await zeroCopyBodyOf(res)?.pipeTo((piece) => hash.update(piece));
 * ```
 */
export function zeroCopyBodyOf(res: Response): ZeroCopyBody | undefined {
  return zeroCopyBodies.get(res);
}

/**
 * Drops a response body: a small one is drained so its connection is reused, a large one cut.
 *
 * @example
 * ```ts
 * if (res.status !== 200) await discardBody(res);
 * ```
 */
export async function discardBody(res: Response): Promise<void> {
  const zeroCopy = zeroCopyBodies.get(res);
  if (zeroCopy) {
    zeroCopy.discard();
    return;
  }
  const node = nodeBodies.get(res);
  if (!node) {
    await res.body?.cancel().catch(() => undefined);
    return;
  }
  if (node.readableEnded || node.destroyed) return;
  if (Number(node.headers['content-length'] ?? DRAIN_BYTES) >= DRAIN_BYTES) node.destroy();
  else node.resume();
}

/** Sends streamed-body requests over keep-alive connections; `close()` drops them. */
export class StreamSender {
  private readonly http = new HttpAgent({ keepAlive: true });
  private readonly https = new HttpsAgent({ keepAlive: true });
  private readonly files = new FileBodyWriter();
  private tuned: boolean;

  /**
   * @param opts.keepFreedMemory Tune the process's malloc for streaming before
   *   the first transfer ({@link Sys.keepFreedMemory}); default true.
   */
  constructor(opts: { keepFreedMemory?: boolean | undefined } = {}) {
    this.tuned = opts.keepFreedMemory === false;
  }

  /**
   * Sends a request (with `body` streamed, when given); resolves with the
   * response once its headers arrive (its body unread: {@link bodyOf}),
   * rejects when the request fails first. A {@link FileBody} is written
   * through reused buffers; `onBytes` counts what the socket was handed.
   */
  send(
    url: URL,
    init: {
      method: string;
      headers: Record<string, string>;
      body: AsyncIterable<Uint8Array> | undefined;
      signal: AbortSignal;
      onBytes?: ((n: number) => void) | undefined;
    },
  ): Promise<Response> {
    this.tune();
    const secure = url.protocol === 'https:';
    const request = secure ? httpsRequest : httpRequest;
    return new Promise<Response>((resolve, reject) => {
      const req = request(url, {
        method: init.method,
        headers: init.headers,
        agent: secure ? this.https : this.http,
        signal: init.signal,
      });
      req.once('response', (res) => resolve(toResponse(res, init.method)));
      req.once('error', reject);
      if (init.body === undefined) {
        req.end();
        return;
      }
      // A registry may answer (413, 401) before it read everything: the response decides.
      const { body, onBytes = () => undefined } = init;
      const sent =
        body instanceof FileBody
          ? this.files.write(body, req, onBytes)
          : pipeline(Readable.from(counted(body, onBytes)), req);
      sent.catch((cause: unknown) => {
        const err = cause instanceof Error ? cause : new Error(String(cause));
        req.destroy(err);
        reject(err);
      });
    });
  }

  /**
   * A GET whose body is read without an allocation per chunk (see
   * `zero-copy-get.ts`); resolves once the head is in. Read the body with
   * {@link zeroCopyBodyOf}.
   */
  async getZeroCopy(
    url: URL,
    init: { headers: Record<string, string>; signal: AbortSignal },
  ): Promise<Response> {
    this.tune();
    const got = await zeroCopyGet(url, init);
    const response = new Response(null, {
      status: got.status,
      statusText: got.statusText,
      headers: got.headers,
    });
    zeroCopyBodies.set(response, got.body);
    return response;
  }

  private tune(): void {
    if (this.tuned) return;
    Sys.keepFreedMemory();
    this.tuned = true;
  }

  /** Closes idle connections and refuses to keep new ones. */
  close(): void {
    this.http.destroy();
    this.https.destroy();
  }
}

async function* counted(
  source: AsyncIterable<Uint8Array>,
  onBytes: (n: number) => void,
): AsyncIterable<Uint8Array> {
  for await (const chunk of source) {
    onBytes(chunk.length);
    yield chunk;
  }
}

function toResponse(res: IncomingMessage, method: string): Response {
  const headers = new Headers();
  for (const [name, value] of Object.entries(res.headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  const status = res.statusCode ?? 0;
  const response = new Response(null, { status, statusText: res.statusMessage, headers });
  if (NULL_BODY.has(status) || method === 'HEAD') res.resume();
  else nodeBodies.set(response, res);
  return response;
}
