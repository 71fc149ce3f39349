/**
 * The seam through which a builder reaches layers made elsewhere and sends
 * the ones it makes: sources and publishers (e.g. a registry cache from
 * `@day11/registry`, which implements both without depending on this
 * package). The caller wires them into `createBuilder`.
 */

/**
 * Where a layer can come from other than building it.
 *
 * @example
 * ```ts
 * const source: LayerSource = {
 *   name: 'shared disk',
 *   async lookup(hashes) { return new Set(hashes.filter((h) => existsSync(`/mnt/layers/${h}.tar`))); },
 *   async fetch(hash, { osDir }) { await importInto(osDir, `/mnt/layers/${hash}.tar`); return true; },
 * };
 * ```
 */
export interface LayerSource {
  /** Short name for events and errors, e.g. `registry 127.0.0.1:5000/ns/day11-cache`. */
  readonly name: string;
  /**
   * Which of these full 64-hex layer hashes the source can provide. Called
   * once per build with every hash of the plan not in the local cache,
   * targets first (a step's hash before the hashes of the layers it is built
   * on), so a source can answer a whole stack from one manifest. "Not found"
   * is not an error: the hash is just not in the set. A rejection (the
   * source is down, auth failed) is reported and the build goes on without it.
   */
  lookup(
    hashes: readonly string[],
    options: { signal?: AbortSignal },
  ): Promise<ReadonlySet<string>>;
  /**
   * Brings layer `hash` into cache `osDir`, committed as `Commit.commit`
   * would (its `layer.json`, log and sidecars from the source), so it is
   * indistinguishable from a built one. Resolves true when the layer is now
   * in the cache, false when the source does not have it after all. Called
   * under the layer's lock, once every layer of its stack is in the cache.
   */
  fetch(hash: string, options: { osDir: string; signal?: AbortSignal }): Promise<boolean>;
}

/**
 * Where a committed layer is sent after the builder made it.
 *
 * @example
 * ```ts
 * const publisher: LayerPublisher = {
 *   name: 'audit log',
 *   async publish({ hash }) { await appendFile('/var/log/layers', `${hash}\n`); },
 * };
 * ```
 */
export interface LayerPublisher {
  readonly name: string;
  /**
   * Publishes the committed layer `hash` of cache `osDir` (its `layer.json`
   * records its base and stack). Idempotent. Failed steps are published too.
   * Runs in the background of the build; a rejection is reported, never fatal.
   */
  publish(layer: { hash: string; osDir: string }, options: { signal?: AbortSignal }): Promise<void>;
  /**
   * Optional, best effort: claims layer `hash` for this build before it runs,
   * so that other workers publishing to the same place wait for it instead
   * of building it too. Resolves false when another worker holds the claim:
   * the builder then asks its sources for the layer from time to time, and
   * claims again (a claim expires; its holder may have died). Publishing
   * the layer ends the claim. A rejection lets the step run.
   */
  claim?(hash: string, options: { signal?: AbortSignal }): Promise<boolean>;
  /** Optional: gives up a claim whose step was not built after all (interrupted). */
  unclaim?(hash: string, options: { signal?: AbortSignal }): Promise<void>;
}
