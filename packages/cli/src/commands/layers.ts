/** `day11 layers ls | show LAYER | rm LAYER... | du | gc` */
import { basename } from 'node:path';
import type { Scan } from '@day11/layer';
import { numberOption, parseCommand, sizeOption, usage } from '../args.js';
import { assertCacheExists, cacheDir, layerDirOf } from '../cache.js';
import { formatBytes } from '../progress.js';

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

/**
 * The sidecar read with each layer by `ls`: nearly every layer has one, and
 * the few that do not (bases, `day11 run --commit`) are told by their listing.
 */
const STEP_SIDECAR = 'step.json';

/**
 * What made a layer: its step (id and plan), a base import, a `day11 run`, a
 * squash. For a base the image is in `base.json`, which `ls` reads after
 * the scan (bases are few; the scan reads only `step.json`).
 */
function originOf(l: Scan.ScannedLayer): { label: string; step: unknown; base?: true } {
  // `values` first: `sidecars` lists the layer's directory, which most layers need not.
  if (l.values.has(STEP_SIDECAR) || l.sidecars.includes(STEP_SIDECAR)) {
    const step = l.values.get(STEP_SIDECAR);
    const id = typeof step?.['id'] === 'string' ? step['id'] : '?';
    const plan = typeof step?.['plan'] === 'string' ? `  [${step['plan']}]` : '';
    return { label: `step ${id}${plan}`, step: step ?? null };
  }
  if (l.sidecars.includes('base.json')) return { label: 'base', step: null, base: true };
  if (l.sidecars.includes('run.json')) return { label: 'day11 run --commit', step: null };
  return { label: l.sidecars.join(' '), step: null };
}

/**
 * Prints lines in chunks: one write per line would cost more than the
 * listing itself on a large cache. (A reader that went away ends the
 * process with 141, as main.ts arranges.)
 */
class Lines {
  private chunk: string[] = [];

  add(line: string): void {
    this.chunk.push(line);
    if (this.chunk.length >= 512) this.flush();
  }

  flush(): void {
    if (this.chunk.length === 0) return;
    process.stdout.write(`${this.chunk.join('\n')}\n`);
    this.chunk = [];
  }
}

async function ls(osDir: string, json: boolean): Promise<number> {
  const { Scan, Sidecar } = await import('@day11/layer');
  const out = new Lines();
  if (json) {
    await Scan.each(
      osDir,
      (l) => {
        out.add(
          JSON.stringify({
            name: l.name,
            dir: l.dir,
            lastUsed: l.lastUsed ?? null,
            sidecars: l.sidecars,
            step: originOf(l).step,
            meta: l.meta ?? null,
            error: l.metaError?.message ?? null,
          }),
        );
      },
      { read: [STEP_SIDECAR] },
    );
    out.flush();
    return 0;
  }
  // Only what a line shows is kept (see Scan.each), then sorted by last use.
  // `head`: the line up to what made the layer, which for a base is read after the scan.
  const rows: { lastUsed: number; head: string; origin: string; baseDir?: string }[] = [];
  await Scan.each(
    osDir,
    (l) => {
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
      const origin = originOf(l);
      rows.push({
        lastUsed: l.lastUsed ?? 0,
        head: `${l.name}  ${used}  ${status.padEnd(24)} `,
        origin: origin.label,
        ...(origin.base ? { baseDir: l.dir } : {}),
      });
    },
    { read: [STEP_SIDECAR] },
  );
  for (const row of rows) {
    if (row.baseDir === undefined) continue;
    const image = (await Sidecar.read(row.baseDir, 'base.json').catch(() => undefined))?.['image'];
    row.origin = `base ${typeof image === 'string' ? image : '?'}`;
  }
  for (const row of rows.sort((a, b) => b.lastUsed - a.lastUsed)) out.add(row.head + row.origin);
  out.add(`${rows.length} layers in ${osDir}`);
  out.flush();
  return 0;
}

async function show(osDir: string, name: string): Promise<number> {
  const dir = await layerDirOf(osDir, name);
  const { LayerMeta, Sidecar } = await import('@day11/layer');
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
  const { Gc, LayerDir } = await import('@day11/layer');
  for (const dir of dirs) {
    const hash = LayerDir.hashPrefix(basename(dir))!;
    const removed = await Gc.removeLayer({ osDir, hash });
    console.log(`${removed ? 'removed' : 'already gone:'} ${basename(dir)}`);
  }
  return 0;
}

async function du(osDir: string, json: boolean): Promise<number> {
  const [{ DiskUsage, LayerDir }, { readStats }] = await Promise.all([
    import('@day11/layer'),
    import('@day11/build'),
  ]);
  // One walk of the cache: each layer's usage and the total (shared inodes once).
  const { total, children } = await DiskUsage.measureChildren(osDir);
  const layers = [...children].filter(([name]) => LayerDir.isLayerName(name)).sort(byName);
  const out = new Lines();
  let own = 0;
  for (const [name, bytes] of layers) {
    own += bytes;
    out.add(json ? JSON.stringify({ name, bytes }) : `${formatBytes(bytes).padStart(10)}  ${name}`);
  }
  out.flush();
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

function byName([a]: [string, number], [b]: [string, number]): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

async function gc(opts: {
  osDir: string;
  json: boolean;
  dryRun: boolean;
  days: number | undefined;
  keepBytes: number | undefined;
}): Promise<number> {
  const { Gc, LayerDir } = await import('@day11/layer');
  const result = await Gc.prune({
    osDir: opts.osDir,
    dryRun: opts.dryRun,
    ...(opts.days !== undefined && { before: Date.now() - opts.days * 24 * 3600 * 1000 }),
    ...(opts.keepBytes !== undefined && { keepBytes: opts.keepBytes }),
  });
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return 0;
  }
  const verb = opts.dryRun ? 'would delete' : 'deleted';
  const out = new Lines();
  for (const d of result.deletions)
    out.add(
      `${verb} ${d.name} (${formatBytes(d.bytes)}, last used ${new Date(d.lastUsed).toISOString()})`,
    );
  for (const s of result.skipped)
    out.add(`kept ${LayerDir.hashPrefix(s.dir.split('/').pop()!) ?? s.dir}: ${s.reason}`);
  out.flush();
  if (result.inUse.length) console.log(`${result.inUse.length} layers in use were not considered`);
  console.log(
    `${opts.dryRun ? 'Dry run: would delete' : 'Deleted'} ${result.deletions.length} layers; ` +
      `cache ${formatBytes(result.totalBytes)} → ${formatBytes(result.totalAfterBytes)}`,
  );
  return 0;
}
