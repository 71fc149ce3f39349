/** `day11 recover --cache DIR` */
import { parseArgs } from 'node:util';
import { recover } from '@day11/runner';
import { COMMON_OPTIONS, parse } from '../args.js';
import { assertCacheExists, cacheDir } from '../cache.js';

export const summary =
  'remove what killed day11 processes left: mounts, containers, temp dirs, stale locks';

export const help = `Usage: day11 recover --cache DIR

After a day11 process was killed (kill -9, a crash, a reboot), removes its
overlay mounts, runtime containers, temporary directories, stale locks and
leases. Never touches what a live process is using. Safe to run at any time.

Example:
  day11 recover --cache /var/cache/day11
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parse('recover', () =>
    parseArgs({
      args: argv,
      allowPositionals: true,
      options: { ...COMMON_OPTIONS, cache: { type: 'string' }, json: { type: 'boolean' } },
    }),
  );
  const osDir = cacheDir('recover', values.cache);
  await assertCacheExists(osDir);
  const report = await recover({ osDir });
  if (values.json) console.log(JSON.stringify(report));
  else console.log(`Recovered ${osDir}: ${JSON.stringify(report)}`);
  return 0;
}
