/**
 * HTTP to one registry over Node's `fetch`: authentication, retries with
 * backoff that honour `Retry-After` (429, 5xx, dropped connections),
 * redirects followed by hand so `Authorization` never leaves the registry's
 * origin, a bound on requests in flight, and counters of what was sent.
 *
 * Bodies are never buffered here: a request body is a factory (called again
 * for a retry or a redirect) and a response is handed over unread. Streamed
 * request bodies go through `node:http` (see `stream-request.ts` for why).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Semaphore } from '@day11/exec';
import { Authenticator, type Scope } from './auth.js';
import { findCredentials, type Credentials } from './credentials.js';
import { RegistryCodes, RegistryError, isAbort, messageOf, type RegistryCode } from './errors.js';
import { apiHost, isLoopback } from './reference.js';
import { StreamSender, bodyOf, discardBody } from './stream-request.js';

/** A request body: bytes, or a stream of chunks (sent with `duplex: 'half'`). */
export type Body = Uint8Array | AsyncIterable<Uint8Array>;

/** What a client has sent and received; for tests and benchmarks. */
export interface TransportStats {
  /** HTTP requests made, token requests and redirect hops included. */
  requests: number;
  /** Requests repeated after a 429, a 5xx or a dropped connection. */
  retries: number;
  /** Token requests. */
  tokenRequests: number;
  /** Request body bytes sent. */
  bytesSent: number;
}

/** Options of a {@link Transport} (and of the client built on it). */
export interface TransportOptions {
  /** `host[:port]` of the registry. */
  registry: string;
  /** Plain http for a registry that is not on this machine (loopback always is). */
  insecure?: boolean | undefined;
  /** Credentials; default: looked up with {@link findCredentials} on the first challenge. */
  credentials?: Credentials | undefined;
  /** Retries after a 429, a 5xx or a dropped connection (default 4). */
  retries?: number | undefined;
  /** First backoff in ms, doubled per retry, ±50 % jitter (default 250). */
  backoffMs?: number | undefined;
  /** A `Retry-After` longer than this fails at once instead of waiting (default 60 s). */
  maxRetryAfterMs?: number | undefined;
  /** Requests waiting for their response headers at once (default 16). */
  maxConcurrentRequests?: number | undefined;
  /** How long to wait for response headers (default 60 s); bodies stream as long as they flow. */
  headersTimeoutMs?: number | undefined;
  /** The fetch to use (default `globalThis.fetch`). */
  fetch?: typeof fetch | undefined;
  /**
   * Before the first blob transfer, make glibc's malloc keep freed memory
   * (`Sys.keepFreedMemory` of `@day11/exec`, process-wide): with its defaults
   * every socket read faults fresh pages in, and downloads take 3–4× the CPU.
   * Default true.
   */
  keepFreedMemory?: boolean | undefined;
}

/** One request. */
export interface RequestSpec {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** A path such as `/v2/ns/cache/manifests/x`, or an absolute URL (an upload `Location`). */
  url: string;
  /** The repository, for the scope and for errors. */
  repository: string;
  /** The access the request needs. */
  scope: Scope;
  headers?: Record<string, string> | undefined;
  /** Makes the body; called once per attempt. */
  body?: (() => Body) | undefined;
  /** Statuses returned to the caller; any other is an error (after retries). */
  accept: readonly number[];
  /** What the request does, for errors: `get manifest build-…`. */
  what: string;
  /** The digest or tag it concerns, for errors. */
  digest?: string | undefined;
  signal?: AbortSignal | undefined;
  /** False for a request that must not be repeated (default true). */
  retry?: boolean | undefined;
  /** A blob transfer: sent over `node:http` (see `stream-request.ts`); read its body with `bodyOf`. */
  bulk?: boolean | undefined;
  /** A GET whose body is read with `zeroCopyBodyOf(res).pipeTo` (see `zero-copy-get.ts`). */
  zeroCopy?: boolean | undefined;
}

const REDIRECTS = new Set([301, 302, 303, 307, 308]);
const RETRIED = new Set([408, 429, 500, 502, 503, 504]);
/** Connection-level failures worth another try. */
const TRANSIENT = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'EPIPE',
  'ETIMEDOUT',
  'EAI_AGAIN',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_CLOSED',
]);
const MAX_REDIRECTS = 5;
const ERROR_BODY_BYTES = 64 * 1024;

/** The HTTP side of a registry client (see the module doc). */
export class Transport {
  readonly registry: string;
  /** `http://host:port` or `https://host`. */
  readonly origin: string;
  readonly stats: TransportStats = { requests: 0, retries: 0, tokenRequests: 0, bytesSent: 0 };
  private readonly auth: Authenticator;
  private readonly limiter: Semaphore;
  private readonly closing = new AbortController();
  private readonly streams: StreamSender;
  private readonly fetch: typeof fetch;
  private readonly retries: number;
  private readonly backoffMs: number;
  private readonly maxRetryAfterMs: number;
  private readonly headersTimeoutMs: number;

  constructor(opts: TransportOptions) {
    this.registry = opts.registry;
    const plain = opts.insecure === true || isLoopback(opts.registry);
    this.origin = `${plain ? 'http' : 'https'}://${apiHost(opts.registry)}`;
    this.fetch = opts.fetch ?? globalThis.fetch;
    this.streams = new StreamSender({ keepFreedMemory: opts.keepFreedMemory });
    this.retries = nonNegative('retries', opts.retries ?? 4);
    this.backoffMs = nonNegative('backoffMs', opts.backoffMs ?? 250);
    this.maxRetryAfterMs = nonNegative('maxRetryAfterMs', opts.maxRetryAfterMs ?? 60_000);
    this.headersTimeoutMs = nonNegative('headersTimeoutMs', opts.headersTimeoutMs ?? 60_000);
    this.limiter = new Semaphore(Math.max(1, opts.maxConcurrentRequests ?? 16));
    const given = opts.credentials;
    this.auth = new Authenticator({
      registry: opts.registry,
      credentials: () => (given ? Promise.resolve(given) : findCredentials(opts.registry)),
      fetchToken: (url, init) => this.tokenRequest(url, init),
      allowHttpRealm: (url) => opts.insecure === true || isLoopback(url.host),
    });
  }

  /** Aborts every request in flight and refuses new ones. */
  close(): void {
    this.streams.close();
    this.closing.abort(
      new RegistryError(RegistryCodes.BAD_ARGUMENT, `The client of ${this.registry} is closed`, {
        registry: this.registry,
        hint: 'Create a new client',
      }),
    );
  }

  /**
   * Sends `spec`, retrying and authenticating as needed; resolves with the
   * response (body unread) when its status is in `spec.accept`.
   * @throws {RegistryError} mapped from the status, or `REGISTRY_UNREACHABLE`.
   */
  async request(spec: RequestSpec): Promise<Response> {
    let authRetried = false;
    for (let attempt = 0; ;) {
      this.closing.signal.throwIfAborted();
      spec.signal?.throwIfAborted();
      const authorization = await this.auth.header(spec.scope);
      let res: Response;
      try {
        res = await this.limiter.use(() => this.send(spec, authorization));
      } catch (err) {
        if (isAbort(err) && (spec.signal?.aborted || this.closing.signal.aborted)) {
          throw spec.signal?.reason ?? this.closing.signal.reason;
        }
        if (err instanceof RegistryError) throw err;
        if (spec.retry !== false && attempt < this.retries && isTransient(err)) {
          await this.pause(this.backoff(attempt++), spec.signal);
          continue;
        }
        throw this.unreachable(spec, err);
      }
      if (res.status === 401 && !authRetried) {
        authRetried = true;
        await discard(res);
        if (await this.auth.challenged(res.headers.get('www-authenticate'), spec.scope)) continue;
        throw this.statusError(spec, res, '');
      }
      if (RETRIED.has(res.status) && spec.retry !== false && attempt < this.retries) {
        const wait = retryAfterMs(res.headers.get('retry-after')) ?? this.backoff(attempt);
        if (wait > this.maxRetryAfterMs) throw await this.failed(spec, res, wait);
        await discard(res);
        attempt++;
        await this.pause(wait, spec.signal);
        continue;
      }
      if (spec.accept.includes(res.status)) return res;
      throw await this.failed(spec, res);
    }
  }

  /** One attempt: the request and its redirects. */
  private async send(spec: RequestSpec, authorization: string | undefined): Promise<Response> {
    let url = new URL(spec.url, this.origin);
    let method: string = spec.method;
    let body = spec.body;
    for (let hop = 0; ; hop++) {
      const headers: Record<string, string> = { 'user-agent': 'day11-registry', ...spec.headers };
      // The registry's token is for the registry: never for a CDN or storage host it redirects to.
      if (authorization !== undefined && url.origin === this.origin) {
        headers['authorization'] = authorization;
      }
      const res = await this.fetchOnce(
        url,
        {
          method,
          headers,
          body: body?.(),
          bulk: spec.bulk === true,
          zeroCopy: spec.zeroCopy === true && method === 'GET' && url.protocol === 'http:',
        },
        spec.signal,
      );
      if (!REDIRECTS.has(res.status)) return res;
      const location = res.headers.get('location');
      await discard(res);
      if (!location || hop >= MAX_REDIRECTS) {
        throw this.error(spec, RegistryCodes.PROTOCOL, {
          why: location ? `more than ${MAX_REDIRECTS} redirects` : 'a redirect without Location',
          status: res.status,
          hint: 'Check the registry and any proxy in front of it',
        });
      }
      url = new URL(location, url);
      if (res.status === 303) {
        method = 'GET';
        body = undefined;
      }
    }
  }

  private async fetchOnce(
    url: URL,
    init: {
      method: string;
      headers: Record<string, string>;
      body: Body | undefined;
      bulk?: boolean;
      zeroCopy?: boolean;
    },
    signal: AbortSignal | undefined,
  ): Promise<Response> {
    const timeout = new AbortController();
    const signals = [this.closing.signal, timeout.signal, ...(signal ? [signal] : [])];
    const timer = setTimeout(() => timeout.abort(headersTimeout()), this.headersTimeoutMs);
    this.stats.requests++;
    const streamed = init.body !== undefined && !(init.body instanceof Uint8Array);
    if (init.body instanceof Uint8Array) this.stats.bytesSent += init.body.length;
    try {
      if (init.zeroCopy === true) {
        return await this.streams.getZeroCopy(url, {
          headers: init.headers,
          signal: AbortSignal.any(signals),
        });
      }
      if (streamed || init.bulk === true) {
        const body = init.body as AsyncIterable<Uint8Array> | undefined;
        return await this.streams.send(url, {
          method: init.method,
          headers: init.headers,
          body,
          onBytes: (n) => (this.stats.bytesSent += n),
          signal: AbortSignal.any(signals),
        });
      }
      return await this.fetch(url, {
        method: init.method,
        headers: init.headers,
        body: init.body,
        redirect: 'manual',
        signal: AbortSignal.any(signals),
      });
    } finally {
      clearTimeout(timer);
    }
  }

  /** A token request, through the same retries (it goes to the realm's host, not the registry). */
  private async tokenRequest(
    url: string,
    init: { method: string; headers: Record<string, string>; body?: string },
  ): Promise<{ status: number; text: string }> {
    for (let attempt = 0; ; attempt++) {
      this.stats.tokenRequests++;
      let res: Response;
      try {
        res = await this.fetchOnce(
          new URL(url),
          {
            method: init.method,
            headers: { 'user-agent': 'day11-registry', ...init.headers },
            body: init.body === undefined ? undefined : Buffer.from(init.body),
          },
          undefined,
        );
      } catch (err) {
        if (attempt < this.retries && isTransient(err)) {
          await this.pause(this.backoff(attempt), undefined);
          continue;
        }
        throw new RegistryError(
          RegistryCodes.UNREACHABLE,
          `Cannot reach the token server ${new URL(url).origin} of ${this.registry}: ${causeText(err)}`,
          { registry: this.registry, cause: err, hint: 'Check the network and the registry' },
        );
      }
      if (RETRIED.has(res.status) && attempt < this.retries) {
        const wait = retryAfterMs(res.headers.get('retry-after')) ?? this.backoff(attempt);
        await discard(res);
        if (wait <= this.maxRetryAfterMs) {
          await this.pause(wait, undefined);
          continue;
        }
      }
      return { status: res.status, text: await res.text() };
    }
  }

  private backoff(attempt: number): number {
    const base = this.backoffMs * 2 ** attempt;
    return Math.min(base * (0.5 + Math.random()), 8_000 + this.backoffMs);
  }

  private async pause(ms: number, signal: AbortSignal | undefined): Promise<void> {
    this.stats.retries++;
    const signals = [this.closing.signal, ...(signal ? [signal] : [])];
    await sleep(ms, undefined, { signal: AbortSignal.any(signals) }).catch((err: unknown) => {
      throw signal?.aborted
        ? signal.reason
        : this.closing.signal.aborted
          ? this.closing.signal.reason
          : err;
    });
  }

  /** The error for a final, unaccepted answer; reads (a bounded part of) its body for the registry's reason. */
  private async failed(spec: RequestSpec, res: Response, waitMs?: number): Promise<RegistryError> {
    const reason = spec.method === 'HEAD' ? '' : await errorText(res);
    const err = this.statusError(spec, res, reason);
    if (waitMs === undefined) return err;
    return this.error(spec, err.code, {
      why: `HTTP ${res.status}, and it asks to wait ${Math.ceil(waitMs / 1000)} s`,
      status: res.status,
      hint: 'The registry is busy or rate-limits this client; try again later',
    });
  }

  private statusError(spec: RequestSpec, res: Response, reason: string): RegistryError {
    const status = res.status;
    const [code, hint] = statusMeaning(status);
    const why = `HTTP ${status}${reason ? `: ${reason}` : ''}`;
    return this.error(spec, code, { why, status, hint });
  }

  private unreachable(spec: RequestSpec, err: unknown): RegistryError {
    return this.error(spec, RegistryCodes.UNREACHABLE, {
      why: causeText(err),
      cause: err,
      hint: `Check that the registry runs and answers at ${this.origin} (a local registry is spoken to over http, others over https unless insecure is set)`,
    });
  }

  private error(
    spec: RequestSpec,
    code: RegistryCode,
    o: { why: string; status?: number; hint: string; cause?: unknown },
  ): RegistryError {
    return new RegistryError(code, `Cannot ${spec.what} at ${this.registry}: ${o.why}`, {
      registry: this.registry,
      repository: spec.repository,
      digest: spec.digest,
      status: o.status,
      cause: o.cause,
      hint: o.hint,
    });
  }
}

function statusMeaning(status: number): [RegistryCode, string] {
  if (status === 401) {
    return [
      RegistryCodes.UNAUTHORIZED,
      'Log in (`docker login HOST`, REGISTRY_AUTH_FILE, or DAY11_REGISTRY_USERNAME/PASSWORD) and check the credentials',
    ];
  }
  if (status === 403) {
    return [RegistryCodes.DENIED, 'The credentials may not do this here; ask for push/pull access'];
  }
  if (status === 404) {
    return [RegistryCodes.NOT_FOUND, 'Check the repository name, tag and digest'];
  }
  if (status === 413) {
    return [RegistryCodes.TOO_LARGE, 'The registry (or a proxy) refuses bodies this large'];
  }
  if (status === 429) {
    return [RegistryCodes.RATE_LIMITED, 'The registry rate-limits this client; try again later'];
  }
  if (status >= 500) {
    return [RegistryCodes.SERVER_ERROR, 'The registry failed; try again later or check its logs'];
  }
  return [RegistryCodes.PROTOCOL, 'The registry answered what the OCI distribution spec does not'];
}

/** `Retry-After` as milliseconds: delta seconds or an HTTP date; `undefined` when absent or unreadable. */
export function retryAfterMs(value: string | null): number | undefined {
  if (value === null || value.trim() === '') return undefined;
  if (/^\d+$/.test(value.trim())) return Number(value.trim()) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/** The registry's own reason (`{"errors":[{"code","message"}]}`), from at most 64 KiB of body. */
async function errorText(res: Response): Promise<string> {
  const text = await readCapped(res, ERROR_BODY_BYTES).catch(() => '');
  try {
    const json = JSON.parse(text) as { errors?: { code?: unknown; message?: unknown }[] };
    const first = json.errors?.[0];
    if (first) return [first.code, first.message].filter((x) => typeof x === 'string').join(' ');
  } catch {
    // not JSON: the text itself
  }
  return text.trim().split('\n')[0]?.slice(0, 200) ?? '';
}

/** Reads at most `max` bytes of a body as text, then drops the rest. */
async function readCapped(res: Response, max: number): Promise<string> {
  const body = bodyOf(res);
  if (!body) return '';
  const parts: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    parts.push(Buffer.from(chunk));
    size += chunk.length;
    if (size >= max) break;
  }
  return Buffer.concat(parts).toString('utf8', 0, max);
}

/**
 * Drops a response body so its connection can be reused.
 *
 * @example
 * ```ts
 * if (res.status !== 200) await discard(res);
 * ```
 */
export async function discard(res: Response): Promise<void> {
  await discardBody(res);
}

function isTransient(err: unknown): boolean {
  for (let at: unknown = err, depth = 0; at && depth < 5; depth++) {
    const code = (at as { code?: unknown }).code;
    if (typeof code === 'string' && TRANSIENT.has(code)) return true;
    if ((at as { name?: unknown }).name === 'TimeoutError') return true;
    at = (at as { cause?: unknown }).cause;
  }
  // undici reports a body cut short as a plain "terminated" / "other side closed".
  return /terminated|other side closed|socket hang up/i.test(causeText(err));
}

/** `fetch failed` says nothing; its cause says what happened. */
function causeText(err: unknown): string {
  const parts: string[] = [];
  for (let at: unknown = err, depth = 0; at && depth < 5; depth++) {
    const message = messageOf(at);
    const code = (at as { code?: unknown }).code;
    parts.push(
      typeof code === 'string' && !message.includes(code) ? `${message} (${code})` : message,
    );
    at = (at as { cause?: unknown }).cause;
  }
  return parts.filter((p, i) => i === 0 || !parts[0]!.includes(p)).join(': ');
}

function headersTimeout(): Error {
  const err = new Error('no response headers in time');
  err.name = 'TimeoutError';
  return err;
}

function nonNegative(name: string, value: number): number {
  if (Number.isFinite(value) && value >= 0) return value;
  throw new RegistryError(RegistryCodes.BAD_ARGUMENT, `Invalid ${name} ${value}`, {
    hint: `Pass a number >= 0 for ${name}`,
  });
}
