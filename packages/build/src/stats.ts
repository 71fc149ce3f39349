/**
 * Cache statistics (OBuilder's `cache_stats`): how often a step's layer was
 * found in the cache, and how often it had to be made. Each builder counts
 * its own; each build appends its counts to `{osDir}/cache-stats.log`, which
 * is folded now and then into `{osDir}/cache-stats.json` (under a lock,
 * written atomically), so the totals of every process that used the cache
 * survive and add up. (Updating the JSON under a lock at the end of every
 * build was a tenth of a fully cached build's time.)
 */
import { appendFile, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { Atomic, TempName } from '@day11/exec';
import { Lock } from '@day11/layer';

/** The folded totals, in the cache directory. */
export const STATS_FILE = 'cache-stats.json';
/** One line per build since the last fold, appended without a lock. */
export const STATS_LOG = 'cache-stats.log';

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

/** The schemas of the stats files, made when first read (not on every build's start-up). */
function makeSchemas() {
  const StoredSchema = z.looseObject({
    hits: z.number().int().nonnegative(),
    misses: z.number().int().nonnegative(),
    fetched: z.number().int().nonnegative().default(0),
    built: z.number().int().nonnegative().default(0),
    since: z.string(),
    updated: z.string().optional(),
  });

  /** A line of the log: one build's counts and when it ended. */
  const DeltaSchema = z.object({
    hits: z.number().int().nonnegative(),
    misses: z.number().int().nonnegative(),
    fetched: z.number().int().nonnegative(),
    built: z.number().int().nonnegative(),
    at: z.string(),
  });
  return { StoredSchema, DeltaSchema };
}

let schemas: ReturnType<typeof makeSchemas> | undefined;
const statsSchemas = () => (schemas ??= makeSchemas());

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
 * The totals persisted in cache `osDir` (zero when none were): the folded
 * totals plus the builds appended since.
 *
 * @example
 * ```ts
 * const { hits, misses, since } = await readStats('/var/cache/day11');
 * ```
 */
export async function readStats(osDir: string): Promise<StoredStats> {
  const [folded, log] = await Promise.all([
    readFile(join(osDir, STATS_FILE), 'utf8').catch(() => undefined),
    readFile(join(osDir, STATS_LOG), 'utf8').catch(() => ''),
  ]);
  return addLines(foldedTotals(folded), log);
}

/** The totals of `cache-stats.json`; a damaged or missing file starts the count again. */
function foldedTotals(text: string | undefined): StoredStats {
  // Bookkeeping never fails a build.
  const parsed =
    text === undefined ? undefined : statsSchemas().StoredSchema.safeParse(safeJson(text));
  return parsed?.success ? parsed.data : { ...zeroStats(), since: new Date().toISOString() };
}

/** `totals` plus each whole, valid line of the log (a torn or damaged line counts nothing). */
function addLines(totals: StoredStats, log: string): StoredStats {
  const out = { ...totals };
  const { DeltaSchema } = statsSchemas();
  for (const line of log.split('\n')) {
    if (line === '') continue;
    const delta = DeltaSchema.safeParse(safeJson(line));
    if (!delta.success) continue;
    out.hits += delta.data.hits;
    out.misses += delta.data.misses;
    out.fetched += delta.data.fetched;
    out.built += delta.data.built;
    out.updated = delta.data.at;
  }
  return out;
}

/**
 * Adds `delta` to the totals of cache `osDir`: one appended line of
 * `cache-stats.log` (an `O_APPEND` write of one short line is whole, whoever
 * else appends), no lock; past {@link FOLD_BYTES} the log is folded into
 * `cache-stats.json` under a lock. Best effort: an error (a full disk, a
 * lock held too long) is swallowed, as for `last_used`.
 *
 * @example
 * ```ts
 * await addStats('/var/cache/day11', { hits: 3, misses: 1, fetched: 0, built: 1 });
 * ```
 */
export async function addStats(osDir: string, delta: CacheStats): Promise<void> {
  if (delta.hits + delta.misses === 0) return;
  const { hits, misses, fetched, built } = delta;
  const line = `${JSON.stringify({ hits, misses, fetched, built, at: new Date().toISOString() })}\n`;
  try {
    const handle = await open(join(osDir, STATS_LOG), 'a', 0o600);
    try {
      await handle.write(line);
      if ((await handle.stat()).size < FOLD_BYTES) return;
    } finally {
      await handle.close();
    }
    await fold(osDir);
  } catch {
    // Counting is not worth failing a build for.
  }
}

/** Log size past which a build folds it into the totals. */
export const FOLD_BYTES = 64 * 1024;

/**
 * Moves the log's lines into `cache-stats.json`. The log is renamed aside
 * first, so builds appending meanwhile start a new one; a build that opened
 * the old log just before may lose its line (counting is best effort).
 */
async function fold(osDir: string): Promise<void> {
  const file = join(osDir, STATS_FILE);
  await mkdir(join(osDir, Lock.LOCKS_DIR), { recursive: true });
  await Lock.withPath(
    file,
    async () => {
      const aside = TempName.inside(osDir, STATS_LOG);
      await rename(join(osDir, STATS_LOG), aside);
      const log = await readFile(aside, 'utf8');
      try {
        const folded = await readFile(file, 'utf8').catch(() => undefined);
        const next = addLines(foldedTotals(folded), log);
        await Atomic.writeFile(file, `${JSON.stringify(next, null, 2)}\n`);
      } catch (err) {
        // Not folded (a full disk, say): the lines go back to the log, not lost
        // (should even that fail, the set-aside log stays for recovery to remove).
        await appendFile(join(osDir, STATS_LOG), log, { mode: 0o600 });
        await rm(aside, { force: true });
        throw err;
      }
      await rm(aside, { force: true });
    },
    { timeoutMs: 10_000, lockfilePath: join(osDir, Lock.LOCKS_DIR, `${STATS_FILE}.lock`) },
  );
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
