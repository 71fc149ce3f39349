import { mapLimit } from '@day11/exec';
import { Claims } from './claim.js';
/**
 * `RegistryCache`: a cache repository on a registry as a builder's layer
 * source and publisher (the `sources`/`publishers` seam of `@day11/build`,
 * implemented structurally: this package does not import the builder).
 */
import { RegistryClient, type ClientOptions } from './client.js';
import { RegistryCodes, RegistryError } from './errors.js';
import { lookupLayers, ManifestCache } from './lookup.js';
import {
  listTags,
  newSession,
  publishLayer,
  type PublishResult,
  type RegistryWarning,
} from './publish.js';
import { newPullSession, pullLayer, type PullResult } from './pull.js';
import { parseRepository } from './reference.js';

/** Options of {@link RegistryCache}. */
export interface RegistryCacheOptions extends Omit<ClientOptions, 'registry'> {
  /** The cache repository: `HOST[:PORT]/REPOSITORY`, e.g. `127.0.0.1:5000/ns/day11-cache`. */
  ref: string;
  /** Requests (lookups), uploads and downloads at once (default 8). */
  concurrency?: number | undefined;
  /** gzip level of blobs compressed for a publish (default 6). */
  gzipLevel?: number | undefined;
  /** Default: `process.emitWarning`. */
  onWarning?: ((warning: RegistryWarning) => void) | undefined;
  /** How long a claim (see {@link RegistryCache.claim}) holds without its layer (default 10 minutes). */
  claimTtlMs?: number | undefined;
}

const HASH_RE = /^[0-9a-f]{64}$/;
/** Requests, uploads and downloads at once. */
const DEFAULT_CONCURRENCY = 8;

/**
 * A registry repository used as a shared build cache: `build-<hash>` images
 * and `log-<hash>` artifacts (see `cache-image.ts`). Made from a reference;
 * `close()` aborts what is in flight. Hits of lookups are kept for the life
 * of the object, misses only for one lookup.
 *
 * @example
 * ```ts
 * const cache = new RegistryCache({ ref: '127.0.0.1:5000/ns/day11-cache' });
 * const found = await cache.lookup(hashes, {});
 * for (const hash of found) await cache.fetch(hash, { osDir });
 * await cache.publish({ hash: built, osDir }, {});
 * await cache.close();
 * ```
 */
export class RegistryCache {
  /** `registry HOST/REPOSITORY`, for events and errors. */
  readonly name: string;
  readonly registry: string;
  readonly repository: string;
  readonly client: RegistryClient;
  private readonly options: RegistryCacheOptions;
  private readonly hits = new Set<string>();
  private readonly manifests = new ManifestCache();
  private readonly publishing = newSession();
  private readonly pulling = newPullSession();
  private readonly claims: Claims;
  private closed = false;

  /** @throws {RegistryError} `REGISTRY_BAD_REFERENCE` for a malformed `ref`. */
  constructor(options: RegistryCacheOptions) {
    const { registry, repository } = parseRepository(options.ref);
    this.registry = registry;
    this.repository = repository;
    this.name = `registry ${registry}/${repository}`;
    this.options = options;
    this.client = new RegistryClient({ ...options, registry });
    this.claims = new Claims({
      client: this.client,
      repository,
      ttlMs: options.claimTtlMs,
    });
  }

  /**
   * A best-effort claim that this cache object is about to build `hash`:
   * false when another worker's live claim holds it (wait for the layer
   * instead: look it up again), true otherwise. See `claim.ts` for what
   * "best effort" means; publishing the layer deletes the claim.
   * @throws {RegistryError} when the registry fails.
   */
  async claim(hash: string, opts: { signal?: AbortSignal | undefined } = {}): Promise<boolean> {
    this.assertOpen();
    assertHashes([hash]);
    return this.claims.claim(hash, opts);
  }

  /** Gives up our claim on `hash` (its build was interrupted: someone else may build it). */
  async unclaim(hash: string, opts: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    await this.claims.release(hash, opts);
  }

  /**
   * Which of these full hashes the repository can provide (targets first:
   * one manifest answers a whole stack). Never throws for a missing layer.
   * @throws {RegistryError} when the registry fails (down, credentials).
   */
  async lookup(
    hashes: readonly string[],
    opts: { signal?: AbortSignal | undefined } = {},
  ): Promise<ReadonlySet<string>> {
    this.assertOpen();
    assertHashes(hashes);
    return lookupLayers({
      client: this.client,
      repository: this.repository,
      hashes,
      hits: this.hits,
      manifests: this.manifests,
      concurrency: this.options.concurrency ?? DEFAULT_CONCURRENCY,
      signal: opts.signal,
    });
  }

  /**
   * Brings layer `hash` (and its stack) into cache `osDir`, committed as
   * `Commit.commit` would; true when it is there now, false when the
   * repository does not have it (or part of its stack) after all.
   * @throws {RegistryError} for a foreign or damaged image, a lying registry, a hostile layer, a failing registry.
   */
  async fetch(
    hash: string,
    opts: { osDir: string; signal?: AbortSignal | undefined },
  ): Promise<boolean> {
    return (await this.pull(hash, opts)).status !== 'missing';
  }

  /** {@link fetch} with the details: what was pulled. */
  async pull(
    hash: string,
    opts: { osDir: string; signal?: AbortSignal | undefined },
  ): Promise<PullResult> {
    this.assertOpen();
    assertHashes([hash]);
    const result = await pullLayer({
      client: this.client,
      repository: this.repository,
      osDir: opts.osDir,
      hash,
      concurrency: this.options.concurrency ?? DEFAULT_CONCURRENCY,
      session: this.pulling,
      manifest: this.manifests.take(hash),
      signal: opts.signal,
    });
    if (result.status === 'missing') this.hits.delete(hash);
    return result;
  }

  /**
   * Publishes committed layer `hash` of `osDir` (and its stack). Cheap when
   * it is there already; a failed step is published too. A tag holding other
   * content for the layer is kept, with a `NOT_REPRODUCIBLE` warning.
   * @throws {RegistryError} `REGISTRY_LAYER_MISSING`, `REGISTRY_FOREIGN_IMAGE`, the client's errors.
   */
  async publish(
    layer: { hash: string; osDir: string },
    opts: { signal?: AbortSignal | undefined } = {},
  ): Promise<void> {
    await this.push(layer, opts);
  }

  /** {@link publish} with the details: status, manifest digest, bytes uploaded. */
  async push(
    layer: { hash: string; osDir: string },
    opts: { signal?: AbortSignal | undefined } = {},
  ): Promise<PublishResult> {
    this.assertOpen();
    assertHashes([layer.hash]);
    const result = await publishLayer({
      client: this.client,
      repository: this.repository,
      osDir: layer.osDir,
      hash: layer.hash,
      gzipLevel: this.options.gzipLevel,
      concurrency: this.options.concurrency ?? DEFAULT_CONCURRENCY,
      onWarning: this.options.onWarning,
      session: this.publishing,
      signal: opts.signal,
    });
    this.hits.add(layer.hash);
    await this.claims.release(layer.hash, opts);
    return result;
  }

  /**
   * Publishes several layers (bounded by `concurrency`); for `day11 push HASH…`.
   * Many layers are checked against one tag listing instead of a HEAD each.
   */
  async pushAll(
    layers: readonly string[],
    opts: { osDir: string; signal?: AbortSignal | undefined },
  ): Promise<PublishResult[]> {
    this.assertOpen();
    assertHashes(layers);
    await listTags(
      {
        client: this.client,
        repository: this.repository,
        session: this.publishing,
        signal: opts.signal,
      },
      layers.length,
    );
    return mapLimit(layers, this.options.concurrency ?? DEFAULT_CONCURRENCY, (hash) =>
      this.push({ hash, osDir: opts.osDir }, opts),
    );
  }

  /** Aborts what is in flight and forgets what it knew; the object cannot be used after. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
    await Promise.allSettled([
      ...this.publishing.inflight.values(),
      ...this.pulling.inflight.values(),
    ]);
    this.hits.clear();
    this.manifests.clear();
  }

  private assertOpen(): void {
    if (!this.closed) return;
    throw new RegistryError(RegistryCodes.BAD_ARGUMENT, `${this.name} is closed`, {
      registry: this.registry,
      repository: this.repository,
      hint: 'Create a new RegistryCache',
    });
  }
}

function assertHashes(hashes: readonly string[]): void {
  const bad = hashes.find((h) => typeof h !== 'string' || !HASH_RE.test(h));
  if (bad === undefined) return;
  throw new RegistryError(RegistryCodes.BAD_ARGUMENT, `Invalid layer hash ${JSON.stringify(bad)}`, {
    hint: 'Pass full 64-hex layer hashes (layer.json `hash`), not the 12-hex directory prefix',
  });
}
