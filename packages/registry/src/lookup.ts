/**
 * Which of a plan's layers the cache repository has, in few requests.
 *
 * 1. Many unknown hashes: list the repository's tags (1,000 per page) within
 *    a page budget of one page per 100 hashes; a complete listing answers
 *    every hash at once.
 * 2. Otherwise (few hashes, or a repository too large for the budget), GET
 *    the manifests of the hashes in the order given, a few at a time, always
 *    taking the next hash still unknown. Hashes come targets first, and a
 *    target's manifest lists its whole stack, so one GET usually answers a
 *    target and everything below it; a GET costs one request like a HEAD
 *    would, and a miss has no body.
 *
 * Only hits are kept (by the caller, for the life of the cache object); a
 * miss is forgotten when the lookup returns. Manifests read on the way are
 * kept in a bounded cache so the fetch that follows does not read them again.
 */
import { buildTag, stackHashes } from './cache-image.js';
import type { FetchedManifest, RegistryClient } from './client.js';

/** Below this many unknown hashes, listing tags is not worth it. */
const TAG_LIST_MIN = 32;
/** Tags per page asked for. */
const PAGE_SIZE = 1000;
/** Hashes a listed page must answer for, at least, to be worth reading. */
const HASHES_PER_PAGE = 100;

/** Manifests read by a lookup, kept for the fetches that follow (bounded by bytes). */
export class ManifestCache {
  private readonly entries = new Map<string, FetchedManifest>();
  private bytes = 0;

  constructor(private readonly maxBytes = 32 * 1024 * 1024) {}

  /** The manifest of `hash`, once: a fetch reads it at most one time. */
  take(hash: string): FetchedManifest | undefined {
    const found = this.entries.get(hash);
    if (found) {
      this.entries.delete(hash);
      this.bytes -= found.bytes.length;
    }
    return found;
  }

  put(hash: string, manifest: FetchedManifest): void {
    if (manifest.bytes.length > this.maxBytes) return;
    this.take(hash);
    this.entries.set(hash, manifest);
    this.bytes += manifest.bytes.length;
    for (const [key, value] of this.entries) {
      if (this.bytes <= this.maxBytes) break;
      this.entries.delete(key);
      this.bytes -= value.bytes.length;
    }
  }

  clear(): void {
    this.entries.clear();
    this.bytes = 0;
  }
}

/** Options of {@link lookupLayers}. */
export interface LookupOptions {
  client: RegistryClient;
  repository: string;
  /** Full hashes, targets first. */
  hashes: readonly string[];
  /** Hashes already known to be there (kept between lookups by the caller); hits are added. */
  hits: Set<string>;
  /** Where manifests read on the way go. */
  manifests?: ManifestCache | undefined;
  /** Requests at once (default 8). */
  concurrency?: number | undefined;
  /** False: never list tags, ask per hash (for registries whose tag lists lag; and to measure). Default true. */
  tagList?: boolean | undefined;
  signal?: AbortSignal | undefined;
}

/**
 * The subset of `hashes` the repository has as day11 cache images.
 *
 * @example
 * ```ts
 * const found = await lookupLayers({ client, repository: 'ns/day11-cache', hashes, hits: new Set() });
 * ```
 * @throws {RegistryError} when the registry itself fails (down, auth); never for a missing layer.
 */
export async function lookupLayers(options: LookupOptions): Promise<Set<string>> {
  const wanted = new Set(options.hashes);
  const { hits } = options;
  const unknown = [...wanted].filter((h) => !hits.has(h));
  const listed =
    options.tagList !== false &&
    unknown.length >= TAG_LIST_MIN &&
    (await fromTagList(options, unknown));
  if (!listed) {
    await fromManifests(options, { wanted, order: unknown.filter((h) => !hits.has(h)) });
  }
  return new Set([...wanted].filter((h) => hits.has(h)));
}

/** Reads the tag list within the page budget; true when it was complete (every hash settled). */
async function fromTagList(options: LookupOptions, unknown: readonly string[]): Promise<boolean> {
  const maxPages = Math.max(1, Math.ceil(unknown.length / HASHES_PER_PAGE));
  const { tags, complete } = await options.client.tags(options.repository, {
    pageSize: PAGE_SIZE,
    maxPages,
    signal: options.signal,
  });
  const present = new Set(tags);
  for (const hash of unknown) if (present.has(buildTag(hash))) options.hits.add(hash);
  return complete;
}

/** GETs the manifests of the hashes still unknown, in order, each answering its stack. */
async function fromManifests(
  options: LookupOptions,
  state: { wanted: ReadonlySet<string>; order: readonly string[] },
): Promise<void> {
  const { hits } = options;
  const { order } = state;
  const misses = new Set<string>();
  let at = 0;
  const next = (): string | undefined => {
    while (at < order.length) {
      const hash = order[at++]!;
      if (!hits.has(hash) && !misses.has(hash)) return hash;
    }
    return undefined;
  };
  const ask = async (hash: string) => {
    const fetched = await options.client.manifest(options.repository, buildTag(hash), {
      signal: options.signal,
    });
    const stack = fetched ? stackHashes(fetched.bytes) : undefined;
    // Absent, or something day11 did not write there: not a hit.
    if (!fetched || !stack || stack.at(-1) !== hash) {
      misses.add(hash);
      return;
    }
    for (const h of stack) if (state.wanted.has(h)) hits.add(h);
    options.manifests?.put(hash, fetched);
  };
  await slowStart({ next, run: ask, max: options.concurrency ?? 8 });
}

/**
 * Runs `run` on what `next` gives, one at first and one more in parallel
 * after each answer, up to `max`: the first answers (targets) settle much of
 * what would otherwise be asked in parallel.
 */
async function slowStart(o: {
  next: () => string | undefined;
  run: (item: string) => Promise<void>;
  max: number;
}): Promise<void> {
  let allowed = 1;
  let failure: { error: unknown } | undefined;
  const running = new Set<Promise<void>>();
  for (;;) {
    while (failure === undefined && running.size < allowed) {
      const item = o.next();
      if (item === undefined) break;
      const task: Promise<void> = o
        .run(item)
        .catch((error: unknown) => {
          failure ??= { error };
        })
        .finally(() => {
          running.delete(task);
          allowed = Math.min(o.max, allowed + 1);
        });
      running.add(task);
    }
    if (running.size === 0) break;
    await Promise.race(running);
  }
  if (failure) throw failure.error;
}
