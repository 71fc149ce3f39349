/**
 * Cache statistics (OBuilder's `cache_stats`): how often a step's layer was
 * found in the cache, and how often it had to be made. Each builder counts
 * its own; each build adds its counts to `{osDir}/cache-stats.json`, under a
 * lock and written atomically, so the totals of every process that used the
 * cache survive and add up.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Atomic } from '@day11/exec';
import { Lock } from '@day11/layer';

/** The file in the cache directory. */
export const STATS_FILE = 'cache-stats.json';

/** Counters of cache use. */
export interface CacheStats {
  /** Steps whose layer was in the cache (success or recorded failure). */
  hits: number;
  /** Steps whose layer was not: fetched from a source or built. */
  misses: number;
  /** Misses a source (a registry) provided. */
  fetched: number;
  /** Misses that ran (whatever their exit status). */
  built: number;
}

const StoredSchema = z.looseObject({
  hits: z.number().int().nonnegative(),
  misses: z.number().int().nonnegative(),
  fetched: z.number().int().nonnegative().default(0),
  built: z.number().int().nonnegative().default(0),
  since: z.string(),
  updated: z.string().optional(),
});

/** The persisted totals, with when counting started and last changed. */
export type StoredStats = CacheStats & { since: string; updated?: string | undefined };

/**
 * Zero counters.
 *
 * @example
 * ```ts
 * const stats = zeroStats();
 * stats.hits++;
 * ```
 */
export function zeroStats(): CacheStats {
  return { hits: 0, misses: 0, fetched: 0, built: 0 };
}

/**
 * The totals persisted in cache `osDir` (zero when none were).
 *
 * @example
 * ```ts
 * const { hits, misses, since } = await readStats('/var/cache/day11');
 * ```
 */
export async function readStats(osDir: string): Promise<StoredStats> {
  let text: string;
  try {
    text = await readFile(join(osDir, STATS_FILE), 'utf8');
  } catch {
    return { ...zeroStats(), since: new Date().toISOString() };
  }
  // Bookkeeping never fails a build: a damaged file starts the count again.
  const parsed = StoredSchema.safeParse(safeJson(text));
  return parsed.success ? parsed.data : { ...zeroStats(), since: new Date().toISOString() };
}

/**
 * Adds `delta` to the totals of cache `osDir`. Best effort: an error (a
 * full disk, a lock held too long) is swallowed, as for `last_used`.
 *
 * @example
 * ```ts
 * await addStats('/var/cache/day11', { hits: 3, misses: 1, fetched: 0, built: 1 });
 * ```
 */
export async function addStats(osDir: string, delta: CacheStats): Promise<void> {
  if (delta.hits + delta.misses === 0) return;
  const file = join(osDir, STATS_FILE);
  await Lock.withPath(
    file,
    async () => {
      const now = await readStats(osDir);
      const next: StoredStats = {
        ...now,
        hits: now.hits + delta.hits,
        misses: now.misses + delta.misses,
        fetched: now.fetched + delta.fetched,
        built: now.built + delta.built,
        updated: new Date().toISOString(),
      };
      await Atomic.writeFile(file, `${JSON.stringify(next, null, 2)}\n`);
    },
    { timeoutMs: 10_000, lockfilePath: join(osDir, Lock.LOCKS_DIR, `${STATS_FILE}.lock`) },
  ).catch(() => undefined);
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
