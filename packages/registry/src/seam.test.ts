/**
 * `RegistryCache` fits the builder's `sources`/`publishers` seam (defined by
 * `@day11/build`, which this package may not import): the interfaces are
 * restated here as the seam document gives them, and the assignments below
 * fail to compile if the cache drifts from them.
 */
import { describe, expect, it } from 'vitest';
import { RegistryCache } from './cache.js';
import { RegistryCodes } from './errors.js';

interface LayerSource {
  readonly name: string;
  lookup(hashes: readonly string[], opts: { signal?: AbortSignal }): Promise<ReadonlySet<string>>;
  fetch(hash: string, opts: { osDir: string; signal?: AbortSignal }): Promise<boolean>;
}

interface LayerPublisher {
  readonly name: string;
  publish(layer: { hash: string; osDir: string }, opts: { signal?: AbortSignal }): Promise<void>;
}

describe('the builder seam', () => {
  it('is implemented structurally by RegistryCache', async () => {
    const cache = new RegistryCache({ ref: '127.0.0.1:1/ns/day11-cache' });
    const source: LayerSource = cache;
    const publisher: LayerPublisher = cache;
    expect(source.name).toBe('registry 127.0.0.1:1/ns/day11-cache');
    expect(publisher.name).toBe(source.name);
    // A malformed hash is a typed error before any request.
    await expect(source.lookup(['abc'], {})).rejects.toMatchObject({
      code: RegistryCodes.BAD_ARGUMENT,
    });
    await cache.close();
    await expect(source.fetch('a'.repeat(64), { osDir: '/nonexistent' })).rejects.toMatchObject({
      code: RegistryCodes.BAD_ARGUMENT,
    });
  });

  it('refuses a malformed reference', () => {
    expect(() => new RegistryCache({ ref: 'day11-cache' })).toThrow(/registry host/);
  });
});
