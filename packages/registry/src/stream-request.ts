/**
 * Requests with a streamed body (blob uploads), sent with `node:http(s)`.
 *
 * Node 20's `fetch` (undici 6) keeps every chunk of a streamed request body
 * in memory until the request ends (nodejs/undici#4058, open): uploading a
 * 2 GiB blob took 2 GiB of RSS. `http.request` piped from the source honours
 * backpressure, so memory stays at a few chunks whatever the blob size.
 * The answer is handed back as a WHATWG `Response`, so everything above the
 * transport treats both paths alike. Bodies without a stream (bytes, none)
 * still go through `fetch`.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

/** Statuses whose responses have no body. */
const NULL_BODY = new Set([101, 103, 204, 205, 304]);

/** Sends streamed-body requests over keep-alive connections; `close()` drops them. */
export class StreamSender {
  private readonly http = new HttpAgent({ keepAlive: true });
  private readonly https = new HttpsAgent({ keepAlive: true });

  /**
   * Sends `body` as the request body; resolves with the response once its
   * headers arrive (its body unread), rejects when the request fails first.
   */
  send(
    url: URL,
    init: {
      method: string;
      headers: Record<string, string>;
      body: AsyncIterable<Uint8Array>;
      signal: AbortSignal;
    },
  ): Promise<Response> {
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
      // A registry may answer (413, 401) before it read everything: the response decides.
      pipeline(Readable.from(init.body), req).catch((cause: unknown) => {
        const err = cause instanceof Error ? cause : new Error(String(cause));
        req.destroy(err);
        reject(err);
      });
    });
  }

  /** Closes idle connections and refuses to keep new ones. */
  close(): void {
    this.http.destroy();
    this.https.destroy();
  }
}

function toResponse(res: IncomingMessage, method: string): Response {
  const headers = new Headers();
  for (const [name, value] of Object.entries(res.headers)) {
    if (value === undefined) continue;
    for (const v of Array.isArray(value) ? value : [value]) headers.append(name, v);
  }
  const status = res.statusCode ?? 0;
  const empty = NULL_BODY.has(status) || method === 'HEAD';
  if (empty) res.resume();
  const body = empty ? null : (Readable.toWeb(res) as ReadableStream<Uint8Array>);
  return new Response(body, { status, statusText: res.statusMessage, headers });
}
