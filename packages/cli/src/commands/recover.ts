/** `day11 recover --cache DIR [--oci LAYOUT]...` */
import { resolve } from 'node:path';
import { parseCommand } from '../args.js';
import { assertCacheExists, cacheDir, prepareCache } from '../cache.js';

export const help = `Usage: day11 recover --cache DIR [--oci LAYOUT]...

After a day11 process was killed (kill -9, a crash, a reboot), removes its
overlay mounts, runtime containers and their cgroups, temporary files, stale
locks and leases: in the cache, and in the OCI image layouts it was exporting
into. Never touches what a live process is using. Safe to run at any time.

Layouts: every export notes its layout in the cache it exports from
(DIR/oci-layouts/), so recover finds them by itself; --oci names more (a
layout written by another cache). Only temporary files and a dead exporter's
lock go; blobs no tag needs stay until \`day11 layout gc\`.

Options:
  --oci LAYOUT       an OCI image layout to recover as well (repeatable)
  --json             the report as JSON

Example:
  day11 recover --cache /var/cache/day11
  day11 recover --cache /var/cache/day11 --oci /srv/oci
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommand('recover', argv, {
    cache: { type: 'string' },
    oci: { type: 'string', multiple: true },
    json: { type: 'boolean' },
  });
  const osDir = cacheDir('recover', values.cache);
  await assertCacheExists(osDir);
  await prepareCache(osDir);
  const [{ Layout }, { recover }] = await Promise.all([
    import('@day11/oci-export'),
    import('@day11/runner'),
  ]);
  const report = await recover({ osDir });
  const named = (values.oci ?? []).map((l) => resolve(l));
  const layouts = [...new Set([...(await Layout.remembered(osDir)), ...named])].sort();
  const layoutReports = [];
  for (const layout of layouts) layoutReports.push(await Layout.recover(layout));
  if (values.json) {
    console.log(JSON.stringify({ ...report, layouts: layoutReports }));
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
    ['layers set aside by a killed gc put back (a live process uses them)', cache.restored],
    ['temporary files removed from layouts', layoutReports.flatMap((l) => l.temps)],
    ['layout locks of dead exporters removed', layoutReports.flatMap((l) => l.locks)],
  ];
  const done = lines.filter(([, items]) => items.length > 0);
  console.log(
    done.length === 0
      ? `Nothing to recover in ${osDir}${layouts.length ? ` or its ${layouts.length} layouts` : ''}: no process left anything behind`
      : `Recovered ${osDir}${layouts.length ? ` and its ${layouts.length} layouts` : ''}:`,
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
  if (cache.leased.length > 0) {
    console.log(
      `  ${cache.leased.length} layers set aside by a killed gc kept: a live process uses them and their name is taken again (a later recover removes them):`,
    );
    for (const item of cache.leased) console.log(`    ${item}`);
  }
  if (cache.incompleteLayers.length > 0) {
    console.log(
      `  ${cache.incompleteLayers.length} layer directories without layer.json (not made by day11; remove them by hand):`,
    );
    for (const item of cache.incompleteLayers) console.log(`    ${item}`);
  }
  return left.length > 0 ? 1 : 0;
}
