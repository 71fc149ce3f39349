/** `day11 recover --cache DIR` */
import { recover } from '@day11/runner';
import { parseCommand } from '../args.js';
import { assertCacheExists, cacheDir, prepareCache } from '../cache.js';

export const summary =
  'remove what killed day11 processes left: mounts, containers, temp dirs, stale locks';

export const help = `Usage: day11 recover --cache DIR

After a day11 process was killed (kill -9, a crash, a reboot), removes its
overlay mounts, runtime containers, temporary directories, stale locks and
leases. Never touches what a live process is using. Safe to run at any time.

Options:
  --json             the report as JSON

Example:
  day11 recover --cache /var/cache/day11
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommand('recover', argv, {
    cache: { type: 'string' },
    json: { type: 'boolean' },
  });
  const osDir = cacheDir('recover', values.cache);
  await assertCacheExists(osDir);
  await prepareCache(osDir);
  const report = await recover({ osDir });
  if (values.json) {
    console.log(JSON.stringify(report));
    return 0;
  }
  const { cache } = report;
  const lines: [string, readonly string[]][] = [
    ['containers deleted', report.containers],
    ['mounts taken down', report.unmounted],
    ['temporary directories of runs removed', report.removed],
    ['temporary files removed from the cache', cache.temps],
    ['stale locks removed', cache.locks],
    ['leases of dead processes removed', cache.leases],
  ];
  const done = lines.filter(([, items]) => items.length > 0);
  console.log(
    done.length === 0
      ? `Nothing to recover in ${osDir}: no process left anything behind`
      : `Recovered ${osDir}:`,
  );
  for (const [what, items] of done) {
    console.log(`  ${items.length} ${what}`);
    for (const item of items.slice(0, 10)) console.log(`    ${item}`);
    if (items.length > 10) console.log(`    … and ${items.length - 10} more`);
  }
  const left = [...report.left, ...cache.mounted];
  if (left.length > 0) {
    console.log(`  ${left.length} left in place because something is still mounted below them:`);
    for (const item of left) console.log(`    ${item}`);
  }
  if (cache.incompleteLayers.length > 0) {
    console.log(
      `  ${cache.incompleteLayers.length} layer directories without layer.json (not made by day11; remove them by hand):`,
    );
    for (const item of cache.incompleteLayers) console.log(`    ${item}`);
  }
  return left.length > 0 ? 1 : 0;
}
