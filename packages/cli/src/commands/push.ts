/** `day11 push LAYER... --to REF --cache DIR` */
import { parseCommand, REGISTRY_OPTIONS, usage } from '../args.js';
import { assertCacheExists, cacheDir, layerDirOf, prepareCache } from '../cache.js';
import { CliCodes, CliError } from '../errors.js';
import { formatBytes } from '../progress.js';

export const help = `Usage: day11 push LAYER [LAYER...] --to REF --cache DIR

Publishes each LAYER of the cache to the cache repository REF
(HOST[:PORT]/REPOSITORY) as the image build-<hash>, with every layer it was
built on, and its build log as log-<hash>, the way \`day11 build --cache-to\`
does. LAYER is a hash, a build-xxxxxxxxxxxx name or a step id. Blobs the
registry has are not uploaded again; a layer already there is left as it is
(and a warning says so if its content differs: the step is not reproducible).

Options:
  --to REF       the cache repository, e.g. 127.0.0.1:5000/ci/day11-cache
  --insecure     plain http to a registry that is not on this machine
  --json         one JSON line per layer

Example:
  day11 push --cache /var/cache/day11 --to registry.example/ci/day11-cache app
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('push', argv, {
    cache: { type: 'string' },
    to: { type: 'string' },
    ...REGISTRY_OPTIONS,
    json: { type: 'boolean' },
  });
  const osDir = cacheDir('push', values.cache);
  if (!values.to) throw usage('push', '--to REF is required');
  if (positionals.length === 0) throw usage('push', 'name the LAYER to push');
  await assertCacheExists(osDir);
  await prepareCache(osDir);
  const hashes = await Promise.all(positionals.map((name) => fullHashOf(osDir, name)));
  const [{ LayerDir }, { RegistryCache }, { printWarning }] = await Promise.all([
    import('@day11/layer'),
    import('@day11/registry'),
    import('../registry.js'),
  ]);
  const cache = new RegistryCache({
    ref: values.to,
    insecure: values.insecure === true,
    onWarning: printWarning,
  });
  try {
    const results = await cache.pushAll(hashes, { osDir });
    for (const r of results) {
      if (values.json)
        console.log(JSON.stringify({ ...r, ref: `${cache.registry}/${cache.repository}` }));
      else
        console.log(
          `${LayerDir.name(r.hash)}  ${r.status.padEnd(9)}  ${r.uploaded} blobs uploaded (${formatBytes(r.uploadedBytes)})  ${cache.registry}/${cache.repository}:build-${r.hash}`,
        );
    }
    return 0;
  } finally {
    await cache.close();
  }
}

/** The full hash a layer recorded; a registry names layers by it. */
async function fullHashOf(osDir: string, name: string): Promise<string> {
  const dir = await layerDirOf(osDir, name);
  const { LayerMeta } = await import('@day11/layer');
  const meta = await LayerMeta.load(dir);
  if (meta.hash === undefined || !/^[0-9a-f]{64}$/.test(meta.hash))
    throw new CliError(
      CliCodes.NO_SUCH_LAYER,
      `Layer ${dir} does not record its full hash (made by an older day11), so it cannot be published`,
      { hint: 'Build it again with this day11 (`day11 layers rm` it first), then push' },
    );
  return meta.hash;
}
