/**
 * The registry side of the `day11` command: cache repositories from
 * `--cache-from` / `--cache-to`, the base-image resolver, and their options.
 * One `RegistryCache` per distinct repository, owned by a {@link Caches}.
 * `@day11/registry` is loaded only by a command that uses a registry: a
 * build without one starts faster.
 */
import type { ImageResolver, LayerPublisher, LayerSource } from '@day11/build';
import type { RegistryCache, RegistryWarning } from '@day11/registry';

import type { RegistryFlags } from './args.js';

/** The cache repositories of one command, closed together. */
export interface Caches {
  readonly sources: readonly LayerSource[];
  readonly publishers: readonly LayerPublisher[];
  close(): Promise<void>;
}

/**
 * Opens `from` as layer sources and `to` as publishers; a repository named
 * in both is one object (its lookups' hits serve its publishes).
 *
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE` for a malformed reference.
 */
export async function openCaches(o: {
  from: readonly string[];
  to: readonly string[];
  flags: RegistryFlags;
  onWarning: (warning: RegistryWarning) => void;
}): Promise<Caches> {
  if (o.from.length === 0 && o.to.length === 0)
    return { sources: [], publishers: [], close: () => Promise.resolve() };
  const { RegistryCache } = await import('@day11/registry');
  const byRef = new Map<string, RegistryCache>();
  const open = (ref: string): RegistryCache => {
    const key = ref.replace(/^docker:\/\//, '');
    let cache = byRef.get(key);
    if (cache === undefined) {
      cache = new RegistryCache({ ref: key, insecure: o.flags.insecure, onWarning: o.onWarning });
      byRef.set(key, cache);
    }
    return cache;
  };
  try {
    const sources = o.from.map(open);
    const publishers = o.to.map(open);
    return {
      sources,
      publishers,
      close: async () => {
        await Promise.all([...byRef.values()].map((c) => c.close()));
      },
    };
  } catch (err) {
    for (const cache of byRef.values()) void cache.close();
    throw err;
  }
}

/** Plan bases `{ "image": "docker://…" }` and `{ "image": "oci:DIR:TAG" }`, pulled and pinned. */
export function imageResolver(flags: RegistryFlags): ImageResolver {
  return async ({ ref, osDir, signal }) => {
    const { importBaseImage } = await import('@day11/registry');
    return importBaseImage({ ref, osDir, insecure: flags.insecure, signal });
  };
}

/** A registry warning on stderr: it never fails the command. */
export function printWarning(warning: RegistryWarning): void {
  console.error(`day11: warning: ${warning.message}`);
}
