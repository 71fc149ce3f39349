/**
 * `RegistryClient`: the OCI distribution API of one registry, on Node's
 * `fetch` (see {@link Transport} for auth, retries and redirects).
 *
 * - Blobs: HEAD for existence; downloads are streams verified against digest
 *   and size on the way through; uploads are cross-repository mounts when a
 *   source repository is given (an upload when the registry answers 202),
 *   else one monolithic PUT, falling back to chunked PATCHes on 413.
 *   Request bodies are streams made on demand: memory stays bounded
 *   whatever the blob size.
 * - Manifests: GET (at most 4 MiB, digest checked), HEAD, PUT.
 * - Tags: paginated listing (`Link: <…>; rel="next"`).
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import { MediaTypes } from '@day11/oci-export';
import { mergeScopes, scopeOf, type Scope } from './auth.js';
import { sha256Of, verified, type VerifyFailure } from './digest-stream.js';
import { answered, RegistryCodes, RegistryError, isAbort } from './errors.js';
import { DIGEST_RE } from './reference.js';
import { bodyOf, zeroCopyBodyOf } from './stream-request.js';
import { EarlyEnd } from './zero-copy-get.js';
import {
  Transport,
  discard,
  type Body,
  type RequestSpec,
  type TransportOptions,
  type TransportStats,
} from './transport.js';

/** The largest manifest read (the distribution spec's recommended limit). */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;

/** Every manifest kind day11 reads, for `Accept`. */
export const MANIFEST_ACCEPT = [
  MediaTypes.manifest,
  MediaTypes.index,
  MediaTypes.dockerManifest,
  MediaTypes.dockerManifestList,
].join(', ');

/** A blob to upload. */
export interface BlobSource {
  /** `sha256:<hex>`. */
  digest: string;
  size: number;
  /** The bytes from `start` (inclusive) to `end` (exclusive); the whole blob without a range. */
  open: (range?: { start: number; end: number }) => Body;
}

/** How a blob got into the repository. */
export type PushOutcome = 'present' | 'mounted' | 'uploaded';

/** A manifest as read. */
export interface FetchedManifest {
  bytes: Buffer;
  /** `sha256:<hex>` of `bytes`. */
  digest: string;
  /** From `Content-Type`, else the document's `mediaType`. */
  mediaType: string;
}

/** What HEAD says of a manifest. */
export interface ManifestHead {
  digest: string | undefined;
  mediaType: string | undefined;
  size: number | undefined;
}

/** Options of {@link RegistryClient}: those of the transport. */
export type ClientOptions = TransportOptions;

interface Signal {
  signal?: AbortSignal | undefined;
}

/** The smallest chunk a chunked upload tries before giving up on 413. */
const MIN_CHUNK = 64 * 1024;
/** The first chunk size of a chunked upload. */
const FIRST_CHUNK = 8 * 1024 * 1024;

/**
 * A client of one registry. Make one per registry and share it: it caches
 * tokens and bounds the requests in flight.
 *
 * @example
 * ```ts
 * const client = new RegistryClient({ registry: '127.0.0.1:5000' });
 * const head = await client.headManifest('ns/day11-cache', 'build-0123…');
 * client.close();
 * ```
 */
export class RegistryClient {
  readonly registry: string;
  private readonly transport: Transport;

  constructor(options: ClientOptions) {
    this.registry = options.registry;
    this.transport = new Transport(options);
  }

  /** Requests made, retries, tokens, bytes sent. */
  get stats(): TransportStats {
    return this.transport.stats;
  }

  /** Aborts every request in flight; later calls fail. */
  close(): void {
    this.transport.close();
  }

  /**
   * The size of blob `digest` in `repository`, or `undefined` when it is not there.
   * @throws {RegistryError}
   */
  async blobSize(
    repository: string,
    digest: string,
    opts: Signal = {},
  ): Promise<number | undefined> {
    const res = await this.transport.request({
      method: 'HEAD',
      url: `/v2/${repository}/blobs/${digest}`,
      repository,
      scope: scopeOf(repository, 'pull'),
      accept: [200, 404],
      what: `check blob ${digest}`,
      digest,
      signal: opts.signal,
    });
    await discard(res);
    if (res.status === 404) return undefined;
    const length = Number(res.headers.get('content-length'));
    return Number.isSafeInteger(length) ? length : 0;
  }

  /**
   * Blob `digest` as a stream that fails with `REGISTRY_DIGEST_MISMATCH` or
   * `REGISTRY_TRUNCATED` before it ends when the bytes are not the right ones.
   * @throws {RegistryError} `REGISTRY_NOT_FOUND` when the blob is not there.
   */
  async blob(
    repository: string,
    blob: { digest: string; size?: number | undefined },
    opts: Signal = {},
  ): Promise<Readable> {
    const { spec, res } = await this.getBlob(repository, blob, opts, false);
    return verified(bodyOf(res), {
      digest: blob.digest,
      size: blob.size,
      fail: (f) => this.verifyError(spec, f),
      failSource: (err, bytes) => this.truncated(spec, bytes, err),
    });
  }

  /**
   * Blob `digest`, fed piece by piece to `sink` (synchronously; a piece is
   * only valid during the call: hash it, `writeSync` it), verified against
   * digest and size before this resolves. From a plain-http registry the
   * bytes arrive without an allocation per chunk (`zero-copy-get.ts`): the
   * fastest way to a file. What `sink` throws fails the download as is.
   *
   * @example
   * ```ts
   * const fd = openSync(file, 'wx');
   * await client.blobTo(repo, { digest, size }, (piece) => writeSync(fd, piece));
   * ```
   * @throws {RegistryError} `REGISTRY_NOT_FOUND`, `REGISTRY_DIGEST_MISMATCH`,
   *   `REGISTRY_TRUNCATED` and the transport's errors.
   */
  async blobTo(
    repository: string,
    blob: { digest: string; size?: number | undefined },
    sink: (piece: Buffer) => void,
    opts: Signal = {},
  ): Promise<number> {
    const { spec, res } = await this.getBlob(repository, blob, opts, true);
    const hash = createHash('sha256');
    let bytes = 0;
    /** What the sink threw, passed on untouched. */
    let sinkError: { err: unknown } | undefined;
    const take = (piece: Buffer) => {
      bytes += piece.length;
      if (blob.size !== undefined && bytes > blob.size) {
        throw this.verifyError(spec, { kind: 'too-long', bytes });
      }
      hash.update(piece);
      try {
        sink(piece);
      } catch (err) {
        sinkError = { err };
        throw err;
      }
    };
    try {
      const zeroCopy = zeroCopyBodyOf(res);
      if (zeroCopy) await zeroCopy.pipeTo(take);
      else
        for await (const chunk of bodyOf(res) ?? [])
          take(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength));
    } catch (err) {
      if (sinkError || err instanceof RegistryError || isAbort(err, opts.signal)) throw err;
      throw this.truncated(spec, err instanceof EarlyEnd ? err.bytes : bytes, err);
    }
    if (blob.size !== undefined && bytes < blob.size) {
      throw this.verifyError(spec, { kind: 'too-short', bytes });
    }
    const actual = `sha256:${hash.digest('hex')}`;
    if (actual !== blob.digest) throw this.verifyError(spec, { kind: 'digest', actual });
    return bytes;
  }

  /**
   * Puts a blob into `repository` unless it is there: HEAD, then a mount from
   * `mountFrom` (another repository of this registry) when given, else an
   * upload. A mount answered with 202 continues as an upload in the session
   * the registry opened.
   * @throws {RegistryError}
   */
  async pushBlob(
    repository: string,
    blob: BlobSource,
    opts: Signal & { mountFrom?: string | undefined; skipCheck?: boolean | undefined } = {},
  ): Promise<PushOutcome> {
    assertDigest(blob.digest);
    if (!opts.skipCheck && (await this.blobSize(repository, blob.digest, opts)) !== undefined) {
      return 'present';
    }
    const scope = opts.mountFrom
      ? mergeScopes(scopeOf(repository, 'push'), scopeOf(opts.mountFrom, 'pull'))
      : scopeOf(repository, 'push');
    let location: string;
    if (opts.mountFrom && opts.mountFrom !== repository) {
      const query = new URLSearchParams({ mount: blob.digest, from: opts.mountFrom });
      const res = await this.startUpload({ repository, scope, blob, query, signal: opts.signal });
      if (res.status === 201) return 'mounted';
      location = this.location(res, repository, blob.digest);
    } else {
      const res = await this.startUpload({ repository, scope, blob, signal: opts.signal });
      location = this.location(res, repository, blob.digest);
    }
    const put = await this.transport.request({
      method: 'PUT',
      url: withQuery(location, { digest: blob.digest }),
      repository,
      scope,
      headers: {
        'content-type': 'application/octet-stream',
        'content-length': String(blob.size),
      },
      body: () => blob.open(),
      accept: [201, 204, 413],
      what: `upload blob ${blob.digest}`,
      digest: blob.digest,
      signal: opts.signal,
      retry: false,
    });
    await discard(put);
    if (put.status !== 413) return 'uploaded';
    await this.chunkedUpload({ repository, scope, blob, signal: opts.signal });
    return 'uploaded';
  }

  private async startUpload(o: {
    repository: string;
    scope: Scope;
    blob: BlobSource;
    query?: URLSearchParams;
    signal: AbortSignal | undefined;
  }): Promise<Response> {
    const query = o.query ? `?${o.query.toString()}` : '';
    const res = await this.transport.request({
      method: 'POST',
      url: `/v2/${o.repository}/blobs/uploads/${query}`,
      repository: o.repository,
      scope: o.scope,
      headers: { 'content-length': '0' },
      accept: o.query ? [201, 202] : [202],
      what: o.query ? `mount blob ${o.blob.digest}` : `start the upload of ${o.blob.digest}`,
      digest: o.blob.digest,
      signal: o.signal,
    });
    await discard(res);
    return res;
  }

  /** The upload session's URL from a 202's `Location`. */
  private location(res: Response, repository: string, digest: string): string {
    const location = res.headers.get('location');
    if (location) return new URL(location, `${this.transport.origin}/v2/${repository}/`).href;
    throw new RegistryError(
      RegistryCodes.PROTOCOL,
      `The upload of ${digest} to ${this.registry} got no Location`,
      {
        registry: this.registry,
        repository,
        digest,
        status: res.status,
        hint: 'The registry does not follow the OCI distribution spec',
      },
    );
  }

  /** PATCH in chunks, halving the chunk on 413, then the closing PUT. */
  private async chunkedUpload(o: {
    repository: string;
    scope: Scope;
    blob: BlobSource;
    signal: AbortSignal | undefined;
  }): Promise<void> {
    const { repository, scope, blob } = o;
    const start = await this.startUpload({ repository, scope, blob, signal: o.signal });
    let location = this.location(start, repository, blob.digest);
    let chunk = Math.min(FIRST_CHUNK, Math.max(MIN_CHUNK, blob.size));
    for (let offset = 0; offset < blob.size;) {
      const end = Math.min(blob.size, offset + chunk);
      const res = await this.transport.request({
        method: 'PATCH',
        url: location,
        repository,
        scope,
        headers: {
          'content-type': 'application/octet-stream',
          'content-length': String(end - offset),
          'content-range': `${offset}-${end - 1}`,
        },
        body: () => blob.open({ start: offset, end }),
        accept: [202, 413],
        what: `upload bytes ${offset}-${end - 1} of blob ${blob.digest}`,
        digest: blob.digest,
        signal: o.signal,
        retry: false,
      });
      await discard(res);
      if (res.status === 413) {
        if (chunk <= MIN_CHUNK) throw this.tooLarge(repository, blob.digest, chunk);
        chunk = Math.max(MIN_CHUNK, Math.floor(chunk / 2));
        continue;
      }
      location = this.location(res, repository, blob.digest);
      offset = end;
    }
    const done = await this.transport.request({
      method: 'PUT',
      url: withQuery(location, { digest: blob.digest }),
      repository,
      scope,
      headers: { 'content-length': '0' },
      accept: [201, 204],
      what: `finish the upload of ${blob.digest}`,
      digest: blob.digest,
      signal: o.signal,
      retry: false,
    });
    await discard(done);
  }

  /**
   * What HEAD says of manifest `reference` (tag or digest), or `undefined` when absent.
   * @throws {RegistryError}
   */
  async headManifest(
    repository: string,
    reference: string,
    opts: Signal = {},
  ): Promise<ManifestHead | undefined> {
    const res = await this.transport.request({
      method: 'HEAD',
      url: `/v2/${repository}/manifests/${reference}`,
      repository,
      scope: scopeOf(repository, 'pull'),
      headers: { accept: MANIFEST_ACCEPT },
      accept: [200, 404],
      what: `check manifest ${reference}`,
      digest: reference,
      signal: opts.signal,
    });
    await discard(res);
    if (res.status === 404) return undefined;
    const size = Number(res.headers.get('content-length'));
    return {
      digest: res.headers.get('docker-content-digest') ?? undefined,
      mediaType: res.headers.get('content-type') ?? undefined,
      size: Number.isSafeInteger(size) ? size : undefined,
    };
  }

  /**
   * Manifest `reference` (tag or digest), or `undefined` when absent. Refuses
   * more than 4 MiB, bytes that do not match a digest reference, and a
   * `Docker-Content-Digest` that disagrees with the bytes.
   * @throws {RegistryError} `REGISTRY_MANIFEST_TOO_LARGE`, `REGISTRY_DIGEST_MISMATCH`, ...
   */
  async manifest(
    repository: string,
    reference: string,
    opts: Signal = {},
  ): Promise<FetchedManifest | undefined> {
    const spec: RequestSpec = {
      method: 'GET',
      url: `/v2/${repository}/manifests/${reference}`,
      repository,
      scope: scopeOf(repository, 'pull'),
      headers: { accept: MANIFEST_ACCEPT },
      accept: [200, 404],
      what: `get manifest ${reference}`,
      digest: reference,
      signal: opts.signal,
    };
    const res = await this.transport.request(spec);
    if (res.status === 404) {
      await discard(res);
      return undefined;
    }
    const bytes = await this.readManifest(spec, res);
    const digest = sha256Of(bytes);
    const claimed = res.headers.get('docker-content-digest');
    const expected = DIGEST_RE.test(reference) ? reference : claimed;
    if (expected !== null && expected !== digest && DIGEST_RE.test(expected)) {
      throw this.mismatch(spec, `its bytes hash to ${digest}, not ${expected}`);
    }
    return { bytes, digest, mediaType: mediaTypeOf(res, bytes) };
  }

  private async readManifest(spec: RequestSpec, res: Response): Promise<Buffer> {
    const announced = Number(res.headers.get('content-length') ?? NaN);
    if (announced > MAX_MANIFEST_BYTES) {
      await discard(res);
      throw this.manifestTooLarge(spec, announced);
    }
    const parts: Buffer[] = [];
    let size = 0;
    try {
      for await (const chunk of bodyOf(res) ?? []) {
        size += chunk.length;
        if (size > MAX_MANIFEST_BYTES) {
          await discard(res);
          throw this.manifestTooLarge(spec, size);
        }
        parts.push(Buffer.from(chunk));
      }
    } catch (err) {
      if (err instanceof RegistryError || isAbort(err, spec.signal)) throw err;
      throw this.truncated(spec, size, err);
    }
    const bytes = Buffer.concat(parts);
    if (!Number.isNaN(announced) && bytes.length !== announced) {
      throw this.truncated(spec, bytes.length, undefined);
    }
    return bytes;
  }

  /**
   * Puts `bytes` as manifest `reference` (a tag, or its digest); resolves with its digest.
   * A `DIGEST_INVALID` answer (the digest is ours, computed from the bytes sent)
   * is taken as a lost race, not as bad bytes: distribution gave it to one of
   * two workers putting the same manifest at once. When the reference then
   * holds these bytes, the put is done; otherwise it is tried once more. A
   * digest reference that is not the bytes' own is refused at once.
   * @throws {RegistryError}
   */
  async putManifest(
    repository: string,
    reference: string,
    manifest: { bytes: Buffer; mediaType: string },
    opts: Signal = {},
  ): Promise<string> {
    const digest = sha256Of(manifest.bytes);
    const put = async (): Promise<void> => {
      const res = await this.transport.request({
        method: 'PUT',
        url: `/v2/${repository}/manifests/${reference}`,
        repository,
        scope: scopeOf(repository, 'push'),
        headers: { 'content-type': manifest.mediaType },
        body: () => manifest.bytes,
        accept: [201, 204],
        what: `put manifest ${reference}`,
        digest: reference,
        signal: opts.signal,
      });
      await discard(res);
    };
    try {
      await put();
    } catch (err) {
      // Put by another digest than the bytes': the refusal is right.
      if (
        !answered(err, 400, 'DIGEST_INVALID') ||
        (DIGEST_RE.test(reference) && reference !== digest)
      )
        throw err;
      const there = await this.headManifest(repository, reference, opts).catch(() => undefined);
      if (there?.digest !== digest) await put();
    }
    return digest;
  }

  /**
   * Deletes manifest `digest` (registries that allow deletes; used by tests and cleanup).
   * @throws {RegistryError}
   */
  async deleteManifest(repository: string, digest: string, opts: Signal = {}): Promise<void> {
    const res = await this.transport.request({
      method: 'DELETE',
      url: `/v2/${repository}/manifests/${digest}`,
      repository,
      scope: scopeOf(repository, 'push'),
      accept: [202, 204],
      what: `delete manifest ${digest}`,
      digest,
      signal: opts.signal,
    });
    await discard(res);
  }

  /**
   * The tags of `repository`, page by page (`n` per page), stopping after
   * `maxPages`; `complete` says whether every page was read. A repository
   * that does not exist has no tags.
   * @throws {RegistryError}
   */
  async tags(
    repository: string,
    opts: Signal & { pageSize?: number; maxPages?: number } = {},
  ): Promise<{ tags: string[]; complete: boolean; pages: number }> {
    const tags: string[] = [];
    let url: string | undefined = `/v2/${repository}/tags/list?n=${opts.pageSize ?? 1000}`;
    let pages = 0;
    while (url !== undefined) {
      if (pages >= (opts.maxPages ?? Infinity)) return { tags, complete: false, pages };
      const spec: RequestSpec = {
        method: 'GET',
        url,
        repository,
        scope: scopeOf(repository, 'pull'),
        accept: [200, 404],
        what: 'list tags',
        signal: opts.signal,
      };
      const res = await this.transport.request(spec);
      pages++;
      if (res.status === 404) {
        await discard(res);
        return { tags, complete: true, pages };
      }
      const page = parseTagPage(await this.readManifest(spec, res));
      if (!page) throw this.invalid(spec, 'the tag list is not {"tags": [...]}');
      tags.push(...page);
      url = nextLink(res.headers.get('link'));
    }
    return { tags, complete: true, pages };
  }

  /** The GET of a blob, its head in; refused when it announces another size than the descriptor's. */
  private async getBlob(
    repository: string,
    blob: { digest: string; size?: number | undefined },
    opts: Signal,
    zeroCopy: boolean,
  ): Promise<{ spec: RequestSpec; res: Response }> {
    assertDigest(blob.digest);
    const spec: RequestSpec = {
      method: 'GET',
      url: `/v2/${repository}/blobs/${blob.digest}`,
      repository,
      scope: scopeOf(repository, 'pull'),
      accept: [200],
      what: `download blob ${blob.digest}`,
      digest: blob.digest,
      signal: opts.signal,
      bulk: true,
      zeroCopy,
    };
    const res = await this.transport.request(spec);
    const announced = res.headers.get('content-length');
    if (blob.size !== undefined && announced !== null && Number(announced) !== blob.size) {
      await discard(res);
      throw this.mismatch(
        spec,
        `it announces ${announced} bytes, the descriptor says ${blob.size}`,
      );
    }
    return { spec, res };
  }

  private verifyError(spec: RequestSpec, f: VerifyFailure): RegistryError {
    if (f.kind === 'too-short') return this.truncated(spec, f.bytes, undefined);
    if (f.kind === 'too-long')
      return this.mismatch(
        spec,
        `it sent more than the descriptor's size (${f.bytes} bytes so far)`,
      );
    return this.mismatch(spec, `its bytes hash to ${f.actual}`);
  }

  private mismatch(spec: RequestSpec, why: string): RegistryError {
    return new RegistryError(
      RegistryCodes.DIGEST_MISMATCH,
      `The registry ${this.registry} sent wrong bytes for ${spec.digest}: ${why}`,
      {
        registry: this.registry,
        repository: spec.repository,
        digest: spec.digest,
        hint: 'The registry (or a proxy) is corrupt or lying; nothing was stored. Check its storage, or use another registry',
      },
    );
  }

  private truncated(spec: RequestSpec, bytes: number, cause: unknown): RegistryError {
    return new RegistryError(
      RegistryCodes.TRUNCATED,
      `The download of ${spec.digest} from ${this.registry} ended early, after ${bytes} bytes`,
      {
        registry: this.registry,
        repository: spec.repository,
        digest: spec.digest,
        cause,
        hint: 'The connection dropped or the registry cut the body short; nothing was stored, try again',
      },
    );
  }

  private manifestTooLarge(spec: RequestSpec, bytes: number): RegistryError {
    return new RegistryError(
      RegistryCodes.MANIFEST_TOO_LARGE,
      `Manifest ${spec.digest} of ${this.registry} has ${bytes} bytes or more, over the ${MAX_MANIFEST_BYTES}-byte limit`,
      {
        registry: this.registry,
        repository: spec.repository,
        digest: spec.digest,
        hint: 'This is not a manifest day11 wrote; check the reference',
      },
    );
  }

  private invalid(spec: RequestSpec, why: string): RegistryError {
    return new RegistryError(
      RegistryCodes.MANIFEST_INVALID,
      `Cannot ${spec.what} at ${this.registry}: ${why}`,
      {
        registry: this.registry,
        repository: spec.repository,
        hint: 'The registry does not follow the OCI distribution spec',
      },
    );
  }

  private tooLarge(repository: string, digest: string, chunk: number): RegistryError {
    return new RegistryError(
      RegistryCodes.TOO_LARGE,
      `The registry ${this.registry} refuses even ${chunk}-byte chunks of blob ${digest} (HTTP 413)`,
      {
        registry: this.registry,
        repository,
        digest,
        status: 413,
        hint: 'Raise the body size limit of the registry or of the proxy in front of it',
      },
    );
  }
}

function assertDigest(digest: string): void {
  if (DIGEST_RE.test(digest)) return;
  throw new RegistryError(RegistryCodes.BAD_ARGUMENT, `Invalid digest ${JSON.stringify(digest)}`, {
    hint: 'Pass sha256:<64 lowercase hex>',
  });
}

function withQuery(url: string, params: Record<string, string>): string {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.href;
}

function mediaTypeOf(res: Response, bytes: Buffer): string {
  const header = res.headers.get('content-type')?.split(';')[0]?.trim();
  if (header && header !== 'application/json' && header !== 'application/octet-stream')
    return header;
  try {
    const type = (JSON.parse(bytes.toString('utf8')) as { mediaType?: unknown }).mediaType;
    if (typeof type === 'string') return type;
  } catch {
    // not JSON: the caller's parse reports it
  }
  return header ?? '';
}

function parseTagPage(bytes: Buffer): string[] | undefined {
  try {
    const json = JSON.parse(bytes.toString('utf8')) as { tags?: unknown };
    if (json.tags === null || json.tags === undefined) return [];
    if (Array.isArray(json.tags) && json.tags.every((t) => typeof t === 'string')) {
      return json.tags;
    }
  } catch {
    // reported by the caller
  }
  return undefined;
}

/** The `rel="next"` target of a `Link` header. */
export function nextLink(header: string | null): string | undefined {
  if (!header) return undefined;
  for (const part of header.split(',')) {
    const match = /<([^>]*)>\s*;\s*rel="?next"?/i.exec(part);
    if (match) return match[1];
  }
  return undefined;
}
