/**
 * Best-effort claims: a worker about to build layer `hash` says so under the
 * tag `claim-<hash>`, so that other workers sharing the repository wait for
 * the layer instead of building it too. A registry has no compare-and-set:
 * a claim is written, then read back after a moment, and is ours when the
 * read shows our writer id (of several writers at one moment, the registry
 * keeps one, and every reader sees the same one once the writes settled).
 * Two writers whose read-backs both came before the other's write both win:
 * a duplicate build, as without claims. A claim expires (its holder may have
 * died), and is deleted once the layer is published.
 */
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { MediaTypes } from '@day11/oci-export';
import { CacheMediaTypes, EMPTY_CONFIG, EMPTY_DIGEST } from './cache-image.js';
import type { RegistryClient } from './client.js';

/** The tag of a claim on layer `hash`. */
export const claimTag = (hash: string): string => `claim-${hash}`;

/** `artifactType` of a claim. */
export const CLAIM_TYPE = 'application/vnd.day11.claim.v1';
const OWNER = 'dev.day11.claim.owner';
const EXPIRES = 'dev.day11.claim.expires';

/** How long after writing a claim it is read back. */
const SETTLE_MS = 150;

/** Options of {@link Claims}. */
export interface ClaimOptions {
  client: RegistryClient;
  repository: string;
  /** How long a claim holds when its holder says nothing more (default 10 minutes). */
  ttlMs?: number | undefined;
}

/** The claims of one writer (one cache object: one build). */
export class Claims {
  /** This writer's id, in every claim it writes. */
  readonly owner = randomBytes(8).toString('hex');
  private readonly held = new Map<string, string>();
  private emptyPushed = false;

  constructor(private readonly o: ClaimOptions) {}

  /**
   * Claims `hash` for this writer: true when no other live claim holds it
   * (the claim is then ours), false when another writer's does.
   * @throws {RegistryError} when the registry fails.
   */
  async claim(hash: string, opts: { signal?: AbortSignal | undefined } = {}): Promise<boolean> {
    const { client, repository } = this.o;
    const tag = claimTag(hash);
    const before = await this.read(tag, opts);
    if (before && before.owner !== this.owner && before.expires > Date.now()) return false;
    if (!this.emptyPushed) {
      await client.pushBlob(repository, emptyBlob(), opts);
      this.emptyPushed = true;
    }
    const bytes = claimManifest(this.owner, Date.now() + (this.o.ttlMs ?? 10 * 60_000));
    const digest = await client.putManifest(
      repository,
      tag,
      { bytes, mediaType: MediaTypes.manifest },
      opts,
    );
    await sleep(SETTLE_MS, undefined, { signal: opts.signal });
    const after = await this.read(tag, opts);
    const mine = after === undefined || after.owner === this.owner;
    if (mine) this.held.set(hash, digest);
    return mine;
  }

  /** Deletes our claim on `hash`, if we hold one; a registry without deletes keeps it until it expires. */
  async release(hash: string, opts: { signal?: AbortSignal | undefined } = {}): Promise<void> {
    const digest = this.held.get(hash);
    if (digest === undefined) return;
    this.held.delete(hash);
    const current = await this.read(claimTag(hash), opts).catch(() => undefined);
    if (current?.digest !== digest) return; // another writer's claim by now: not ours to delete
    await this.o.client.deleteManifest(this.o.repository, digest, opts).catch(() => undefined);
  }

  private async read(
    tag: string,
    opts: { signal?: AbortSignal | undefined },
  ): Promise<{ owner: string; expires: number; digest: string } | undefined> {
    const fetched = await this.o.client.manifest(this.o.repository, tag, opts);
    if (!fetched) return undefined;
    try {
      const m = JSON.parse(fetched.bytes.toString('utf8')) as {
        annotations?: Record<string, string>;
      };
      const owner = m.annotations?.[OWNER];
      const expires = Date.parse(m.annotations?.[EXPIRES] ?? '');
      if (typeof owner !== 'string' || !Number.isFinite(expires)) return undefined;
      return { owner, expires, digest: fetched.digest };
    } catch {
      return undefined; // not a claim: whoever wrote it, it holds nothing
    }
  }
}

function claimManifest(owner: string, expires: number): Buffer {
  const empty = {
    mediaType: CacheMediaTypes.empty,
    digest: EMPTY_DIGEST,
    size: EMPTY_CONFIG.length,
  };
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.manifest,
      artifactType: CLAIM_TYPE,
      config: empty,
      layers: [empty],
      annotations: { [OWNER]: owner, [EXPIRES]: new Date(expires).toISOString() },
    }),
  );
}

function emptyBlob(): { digest: string; size: number; open: () => Buffer } {
  return { digest: EMPTY_DIGEST, size: EMPTY_CONFIG.length, open: () => EMPTY_CONFIG };
}
