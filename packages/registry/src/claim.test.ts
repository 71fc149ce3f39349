import { afterEach, describe, expect, it } from 'vitest';
import { Claims, claimTag } from './claim.js';
import { RegistryClient } from './client.js';
import { FakeRegistry } from './fixtures/fake-registry.js';

const REPO = 'ci/day11-cache';
const HASH = 'a'.repeat(64);
const running: { close: () => Promise<void> | void }[] = [];

afterEach(async () => {
  for (const r of running.splice(0)) await r.close();
});

async function setup(): Promise<{ registry: FakeRegistry; claims: (ttlMs?: number) => Claims }> {
  const registry = await FakeRegistry.start();
  running.push(registry);
  return {
    registry,
    claims: (ttlMs) => {
      const client = new RegistryClient({ registry: registry.host, backoffMs: 1 });
      running.push(client);
      return new Claims({ client, repository: REPO, ttlMs });
    },
  };
}

describe('Claims', () => {
  it('gives a layer to one worker at a time; releasing it lets the next one have it', async () => {
    const { claims } = await setup();
    const first = claims();
    const second = claims();
    expect(await first.claim(HASH)).toBe(true);
    expect(await second.claim(HASH)).toBe(false);
    // Claiming again what one holds is fine (a retry, a second step of one build).
    expect(await first.claim(HASH)).toBe(true);
    await first.release(HASH);
    expect(await second.claim(HASH)).toBe(true);
  });

  it('lets a claim whose holder went silent expire', async () => {
    const { claims } = await setup();
    const dead = claims(1);
    expect(await dead.claim(HASH)).toBe(true);
    await new Promise((r) => setTimeout(r, 5));
    expect(await claims().claim(HASH)).toBe(true);
  });

  it('of two writers at one moment, gives it to one of them (the one the registry kept)', async () => {
    const { claims } = await setup();
    const results = await Promise.all([claims().claim(HASH), claims().claim(HASH)]);
    expect(results.filter(Boolean)).toHaveLength(1);
  });

  it("does not delete another writer's claim when releasing, and treats a foreign tag as no claim", async () => {
    const { registry, claims } = await setup();
    const a = claims(1);
    expect(await a.claim(HASH)).toBe(true);
    await new Promise((r) => setTimeout(r, 5));
    const b = claims();
    expect(await b.claim(HASH)).toBe(true); // a's expired
    await a.release(HASH); // must not take b's away
    expect(await claims().claim(HASH)).toBe(false);
    expect(registry.requests('DELETE', /.*/)).toHaveLength(0);
    // Something else under the tag: holds nothing.
    const other = 'b'.repeat(64);
    const client = new RegistryClient({ registry: registry.host, backoffMs: 1 });
    running.push(client);
    await client.putManifest(REPO, claimTag(other), {
      bytes: Buffer.from('{"schemaVersion":2,"layers":[]}'),
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
    });
    expect(await claims().claim(other)).toBe(true);
  });
});
