/**
 * The cache directory and the layers in it, as the command line names them.
 * `@day11/layer` is loaded by the functions that use it, not by `--cache` parsing.
 */
import { readdir, stat } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import type { Lineage } from '@day11/layer';
import { usage } from './args.js';
import { CliCodes, CliError } from './errors.js';

/** `--cache DIR`, else `$DAY11_CACHE`. */
export function cacheDir(command: string, value: string | undefined): string {
  const dir = value ?? process.env['DAY11_CACHE'];
  if (!dir) throw usage(command, '--cache DIR is required (or set DAY11_CACHE)');
  return resolve(dir);
}

/**
 * Makes the cache (mode 0700) or checks an existing one: another user's, or
 * a symlink someone else planted (e.g. at a predictable name in /var/tmp), is
 * refused; one other users can enter is made private, and stderr says so.
 */
export async function prepareCache(dir: string): Promise<void> {
  const { CacheDir } = await import('@day11/layer');
  const { tightenedFrom } = await CacheDir.ensure(dir);
  if (tightenedFrom !== undefined) {
    const was = tightenedFrom.toString(8).padStart(4, '0');
    process.stderr.write(
      `day11: the cache ${dir} was mode ${was}, open to other users; it is now 0700\n`,
    );
  }
}

/** Throws a clear error unless `dir` is an existing directory. */
export async function assertCacheExists(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new CliError(CliCodes.BAD_CACHE, `No cache directory at ${dir}`, {
      path: dir,
      hint: 'Pass the directory given to `day11 build --cache`',
    });
  }
}

const HASH_NAME = /^(build-)?([0-9a-f]{12,64})$/;

/**
 * The directory of a layer named by its hash (12 to 64 hex), its
 * `build-xxxxxxxxxxxx` directory, or the id of the step that made it (the
 * most recently used of its layers, when a changed step made several).
 */
export async function layerDirOf(osDir: string, name: string): Promise<string> {
  const { LayerDir } = await import('@day11/layer');
  const hex = HASH_NAME.exec(name)?.[2];
  if (hex !== undefined) {
    const dir = LayerDir.path({ osDir, hash: hex });
    if (await exists(dir)) return dir;
  }
  const byStep = await latestOfStep(osDir, name);
  if (byStep !== undefined) return byStep;
  throw new CliError(
    CliCodes.NO_SUCH_LAYER,
    hex !== undefined
      ? `No layer ${LayerDir.name(hex)} in ${osDir}`
      : `No layer and no step named ${JSON.stringify(name)} in ${osDir}`,
    {
      hint: 'Name a layer by its hash, its build-xxxxxxxxxxxx directory, or the id of the step that made it (see `day11 layers ls`)',
    },
  );
}

/** The most recently used layer a step `id` made (its registry links under `packages/`). */
async function latestOfStep(osDir: string, id: string): Promise<string | undefined> {
  const { LastUsed, LayerDir, LayerMeta, LayerSymlinks } = await import('@day11/layer');
  if (!LayerSymlinks.isId(id)) return undefined;
  const links = await readdir(join(osDir, 'packages', id)).catch(() => [] as string[]);
  let best: { dir: string; used: number } | undefined;
  for (const link of links.filter((n) => LayerDir.isLayerName(n))) {
    const dir = join(osDir, link);
    const meta = await LayerMeta.find(dir).catch(() => undefined);
    if (meta === undefined) continue;
    const used = (await LastUsed.get(dir)) ?? Date.parse(meta.created_at);
    if (best === undefined || used > best.used) best = { dir, used };
  }
  return best?.dir;
}

async function exists(dir: string): Promise<boolean> {
  return (await stat(dir).catch(() => undefined)) !== undefined;
}

/**
 * The stack of the layers named on a command line: one layer gives it with
 * everything it was built on (as recorded); several are taken as the exact
 * stack, bottom to top, on the top one's base, and checked against what
 * each layer recorded.
 */
export async function stackOf(
  osDir: string,
  named: readonly string[],
): Promise<Lineage.LayerStack> {
  const { LayerDir, LayerMeta, Lineage } = await import('@day11/layer');
  const top = named.at(-1)!;
  if (named.length === 1)
    return Lineage.stackOf({ osDir, hash: LayerDir.hashPrefix(basename(top))! });
  const meta = await LayerMeta.load(top);
  const base = await Lineage.baseOf(osDir, meta.base_hash, top);
  const layers = named.filter((dir) => dir !== base.dir);
  await Lineage.check({ base, layers });
  return { base, layers };
}
