/** `day11 layers ls | show LAYER | rm LAYER... | du | gc` */
import { basename } from 'node:path';
import { readStats } from '@day11/build';
import { Gc, LayerDir, LayerMeta, Scan, Sidecar } from '@day11/layer';
import { numberOption, parseCommand, sizeOption, usage } from '../args.js';
import { assertCacheExists, cacheDir, layerDirOf } from '../cache.js';
import { formatBytes } from '../progress.js';

export const summary = 'list, show, remove, measure and garbage-collect the layers of a cache';

export const help = `Usage: day11 layers <ls|show|rm|du|gc> --cache DIR [options]

  ls                 every layer: name, last use, status, the step that made it
  show LAYER         layer.json and every sidecar, pretty-printed (LAYER: a hash,
                     a build-xxxxxxxxxxxx name, or a step id)
  rm LAYER...        remove these layers now (a damaged one, say); a layer in use
                     is refused. Layers built on one stay: a build makes it again
  du                 real disk usage per layer and in total (hardlinked files once),
                     and the cache's hits and misses
  gc                 delete least-recently-used layers; layers in use are never deleted
     --before DAYS       only layers last used more than DAYS days ago
     --keep-bytes SIZE   delete the oldest until the cache is at most SIZE (e.g. 500M, 10G)
     --dry-run           say what would be deleted, delete nothing

Options:
  --cache DIR        the layer cache (default $DAY11_CACHE)
  --json             machine-readable output (ls, du, gc)

Examples:
  day11 layers ls --cache /var/cache/day11
  day11 layers show 0123456789ab --cache /var/cache/day11
  day11 layers rm build-0123456789ab --cache /var/cache/day11
  day11 layers gc --cache /var/cache/day11 --before 30 --keep-bytes 50G --dry-run
`;

const OPTIONS = {
  cache: { type: 'string' },
  json: { type: 'boolean' },
  before: { type: 'string' },
  'keep-bytes': { type: 'string' },
  'dry-run': { type: 'boolean' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('layers', argv, OPTIONS);
  const [sub, ...rest] = positionals;
  const osDir = cacheDir('layers', values.cache);
  await assertCacheExists(osDir);
  const json = values.json === true;
  switch (sub) {
    case 'ls':
      return ls(osDir, json);
    case 'show':
      if (rest.length !== 1) throw usage('layers', 'show takes one LAYER');
      return show(osDir, rest[0]!);
    case 'rm':
      if (rest.length === 0) throw usage('layers', 'rm takes one or more LAYERs');
      return remove(osDir, rest);
    case 'du':
      return du(osDir, json);
    case 'gc': {
      const days = numberOption('layers gc', 'before', values.before, 100 * 365);
      const keepBytes = sizeOption('layers gc', 'keep-bytes', values['keep-bytes']);
      if (days === undefined && keepBytes === undefined)
        throw usage('layers gc', 'give --before DAYS and/or --keep-bytes SIZE');
      return gc({ osDir, json, dryRun: values['dry-run'] === true, days, keepBytes });
    }
    default:
      throw usage(
        'layers',
        sub
          ? `unknown subcommand ${JSON.stringify(sub)}`
          : 'give a subcommand: ls, show, rm, du or gc',
      );
  }
}

/** What made a layer: its step (id and plan), a base import, a `day11 run`, a squash. */
async function originOf(l: Scan.ScannedLayer): Promise<{ label: string; step: unknown }> {
  if (l.sidecars.includes('step.json')) {
    const step = await Sidecar.read(l.dir, 'step.json').catch(() => undefined);
    const id = typeof step?.['id'] === 'string' ? step['id'] : '?';
    const plan = typeof step?.['plan'] === 'string' ? `  [${step['plan']}]` : '';
    return { label: `step ${id}${plan}`, step: step ?? null };
  }
  if (l.sidecars.includes('base.json')) {
    const base = await Sidecar.read(l.dir, 'base.json').catch(() => undefined);
    const image = base?.['image'];
    return { label: `base ${typeof image === 'string' ? image : '?'}`, step: null };
  }
  if (l.sidecars.includes('run.json')) return { label: 'day11 run --commit', step: null };
  return { label: l.sidecars.join(' '), step: null };
}

async function ls(osDir: string, json: boolean): Promise<number> {
  const layers = await Scan.layers(osDir);
  if (json) {
    for (const l of layers) {
      const { step } = await originOf(l);
      console.log(
        JSON.stringify({
          name: l.name,
          dir: l.dir,
          lastUsed: l.lastUsed ?? null,
          sidecars: l.sidecars,
          step,
          meta: l.meta ?? null,
          error: l.metaError?.message ?? null,
        }),
      );
    }
    return 0;
  }
  for (const l of layers.sort((a, b) => (b.lastUsed ?? 0) - (a.lastUsed ?? 0))) {
    const status = l.metaError
      ? `unreadable (${l.metaError.code})`
      : l.meta!.failed_dep
        ? `skipped: ${l.meta!.failed_dep} failed`
        : l.meta!.exit_status === 0
          ? 'ok'
          : `exit ${l.meta!.exit_status}`;
    const used = l.lastUsed
      ? new Date(l.lastUsed).toISOString().slice(0, 19).replace('T', ' ')
      : 'never';
    console.log(`${l.name}  ${used}  ${status.padEnd(24)} ${(await originOf(l)).label}`);
  }
  console.log(`${layers.length} layers in ${osDir}`);
  return 0;
}

async function show(osDir: string, name: string): Promise<number> {
  const dir = await layerDirOf(osDir, name);
  console.log(`# ${dir}\n\n## layer.json`);
  console.log(JSON.stringify(await LayerMeta.load(dir), null, 2));
  for (const sidecar of await Sidecar.list(dir)) {
    console.log(`\n## ${sidecar}`);
    console.log(JSON.stringify(await Sidecar.read(dir, sidecar), null, 2));
  }
  return 0;
}

async function remove(osDir: string, names: readonly string[]): Promise<number> {
  // Every name resolved first: a typo removes nothing.
  const dirs = await Promise.all(names.map((name) => layerDirOf(osDir, name)));
  for (const dir of dirs) {
    const hash = LayerDir.hashPrefix(basename(dir))!;
    const removed = await Gc.removeLayer({ osDir, hash });
    console.log(`${removed ? 'removed' : 'already gone:'} ${basename(dir)}`);
  }
  return 0;
}

async function du(osDir: string, json: boolean): Promise<number> {
  const layers = await Scan.layers(osDir);
  let own = 0;
  for (const l of layers) {
    const bytes = await Gc.diskUsage(l.dir);
    own += bytes;
    if (json) console.log(JSON.stringify({ name: l.name, bytes }));
    else console.log(`${formatBytes(bytes).padStart(10)}  ${l.name}`);
  }
  const total = await Gc.diskUsage(osDir);
  const stats = await readStats(osDir);
  if (json) console.log(JSON.stringify({ total, sumOfLayers: own, stats }));
  else {
    console.log(
      `${formatBytes(total).padStart(10)}  total (files hardlinked between layers counted once; the layers alone add up to ${formatBytes(own)})`,
    );
    const asked = stats.hits + stats.misses;
    const rate = asked > 0 ? ` (${((100 * stats.hits) / asked).toFixed(1)}% hits)` : '';
    console.log(
      `Cache use since ${stats.since}: ${stats.hits} hits, ${stats.misses} misses${rate}; of the misses ${stats.built} built, ${stats.fetched} fetched`,
    );
  }
  return 0;
}

async function gc(opts: {
  osDir: string;
  json: boolean;
  dryRun: boolean;
  days: number | undefined;
  keepBytes: number | undefined;
}): Promise<number> {
  const result = await Gc.prune({
    osDir: opts.osDir,
    dryRun: opts.dryRun,
    ...(opts.days !== undefined && { before: Date.now() - opts.days * 24 * 3600 * 1000 }),
    ...(opts.keepBytes !== undefined && { keepBytes: opts.keepBytes }),
  });
  if (opts.json) {
    console.log(JSON.stringify(result));
    return 0;
  }
  const verb = opts.dryRun ? 'would delete' : 'deleted';
  for (const d of result.deletions)
    console.log(
      `${verb} ${d.name} (${formatBytes(d.bytes)}, last used ${new Date(d.lastUsed).toISOString()})`,
    );
  for (const s of result.skipped)
    console.log(`kept ${LayerDir.hashPrefix(s.dir.split('/').pop()!) ?? s.dir}: ${s.reason}`);
  if (result.inUse.length) console.log(`${result.inUse.length} layers in use were not considered`);
  console.log(
    `${opts.dryRun ? 'Dry run: would delete' : 'Deleted'} ${result.deletions.length} layers; ` +
      `cache ${formatBytes(result.totalBytes)} → ${formatBytes(result.totalAfterBytes)}`,
  );
  return 0;
}
