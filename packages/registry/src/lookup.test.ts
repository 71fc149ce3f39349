/**
 * Lookups against the fake registry: request counts for stacks (targets
 * first), the tag list and its page budget, misses never remembered.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { MediaTypes } from '@day11/oci-export';
import { buildManifest, buildTag } from './cache-image.js';
import { RegistryClient } from './client.js';
import { FakeRegistry } from './fixtures/fake-registry.js';
import { ManifestCache, lookupLayers } from './lookup.js';

const REPO = 'ns/cache';
const open: { close: () => unknown }[] = [];
afterEach(async () => {
  for (const o of open.splice(0)) await o.close();
});

const hashOf = (n: number) => n.toString(16).padStart(64, '0');

/** Puts a day11-looking manifest for `hash` whose stack is `below` then itself. */
function publish(registry: FakeRegistry, hash: string, below: string[] = []): void {
  const stack = [...below, hash].map((h) => ({ digest: `sha256:${h}`, size: 1, hash: h }));
  const bytes = buildManifest({
    config: { mediaType: MediaTypes.config, digest: `sha256:${'1'.repeat(64)}`, size: 1 },
    stack,
    meta: {
      exit_status: 0,
      parent_hashes: [...below].reverse().slice(0, -1),
      uid: 0,
      gid: 0,
      base_hash: below[0] ?? hash,
      disk_usage: 1,
      timing: [],
      created_at: '2025-01-01T00:00:00Z',
      failed_dep: null,
    },
    sidecars: {},
    log: { digest: `sha256:${'2'.repeat(64)}`, size: 0 },
    blob: { diffId: `sha256:${'3'.repeat(64)}`, tarSize: 0, format: 1, level: 6, chunkSize: 1 },
    fsRoot: { mode: 0o755, uid: 0, gid: 0, mtime: '0' },
    baseImage: 'x',
  });
  registry.putManifest(REPO, buildTag(hash), bytes, MediaTypes.manifest);
}

async function setup(options = {}) {
  const registry = await FakeRegistry.start(options);
  const client = new RegistryClient({ registry: registry.host });
  open.push(registry, client);
  return { registry, client };
}

describe('lookupLayers', () => {
  it('answers a chain from its target: one GET, however deep', async () => {
    const { registry, client } = await setup();
    const chain = Array.from({ length: 20 }, (_, i) => hashOf(i + 1));
    chain.forEach((h, i) => publish(registry, h, chain.slice(0, i)));
    const manifests = new ManifestCache();
    const hashes = [...chain].reverse(); // targets first, as the builder asks
    const found = await lookupLayers({
      client,
      repository: REPO,
      hashes,
      hits: new Set(),
      manifests,
    });
    expect(found).toEqual(new Set(chain));
    expect(client.stats.requests).toBe(1);
    expect(manifests.take(chain.at(-1)!)).toBeDefined(); // kept for the fetch that follows
  });

  it('counts misses once each, and never keeps them', async () => {
    const { registry, client } = await setup();
    const hits = new Set<string>();
    const hashes = [hashOf(1), hashOf(2), hashOf(3)];
    expect(await lookupLayers({ client, repository: REPO, hashes, hits })).toEqual(new Set());
    expect(client.stats.requests).toBe(3);
    publish(registry, hashOf(2));
    expect(await lookupLayers({ client, repository: REPO, hashes, hits })).toEqual(
      new Set([hashOf(2)]),
    );
  });

  it('does not count a foreign image under a build- tag', async () => {
    const { registry, client } = await setup();
    registry.putManifest(
      REPO,
      buildTag(hashOf(7)),
      Buffer.from('{"schemaVersion":2,"layers":[]}'),
      MediaTypes.manifest,
    );
    expect(
      await lookupLayers({ client, repository: REPO, hashes: [hashOf(7)], hits: new Set() }),
    ).toEqual(new Set());
  });

  it('reads the tag list for many hashes, within its page budget', async () => {
    const { registry, client } = await setup({ maxPageSize: 1000 });
    for (let i = 1; i <= 1500; i++) publish(registry, hashOf(i));
    const hashes = Array.from({ length: 200 }, (_, i) => hashOf(i * 10 + 1)); // 1..1991, 150 present
    const found = await lookupLayers({ client, repository: REPO, hashes, hits: new Set() });
    expect(found.size).toBe(150);
    expect(client.stats.requests).toBe(2); // two pages
  });

  it('falls back to manifests when the list is too long for the budget', async () => {
    const { registry, client } = await setup({ maxPageSize: 10 });
    for (let i = 1; i <= 500; i++) publish(registry, hashOf(i));
    const hashes = Array.from({ length: 40 }, (_, i) => hashOf(1000 + i)).concat([hashOf(3)]);
    const found = await lookupLayers({ client, repository: REPO, hashes, hits: new Set() });
    expect(found).toEqual(new Set([hashOf(3)]));
    // One page (the budget), which shows hashOf(3) present; then a GET for each of the others.
    expect(client.stats.requests).toBe(1 + 40);
  });
});
