/** `day11 pull HASH... --from REF --cache DIR` */
import { join } from 'node:path';
import { parseCommand, REGISTRY_OPTIONS, usage } from '../args.js';
import { cacheDir, prepareCache } from '../cache.js';

export const help = `Usage: day11 pull HASH [HASH...] --from REF --cache DIR

Brings each layer HASH (its full 64-hex hash, as \`day11 layers show\` and
the registry's build-<hash> tags name it) from the cache repository REF
into the cache, with every layer it was built on: the same layer.json, log
and files as where it was built, and its compressed blob kept, so a later
export compresses nothing. Digests are checked on the way; a layer is
committed only once whole. Exits 1 when REF lacks one of them.

Options:
  --from REF     the cache repository, e.g. 127.0.0.1:5000/ci/day11-cache
  --insecure     plain http to a registry that is not on this machine
  --json         one JSON line per layer

Example:
  day11 pull --cache /var/cache/day11 --from registry.example/ci/day11-cache 3f5a…e1
`;

const FULL_HASH = /^(?:build-)?([0-9a-f]{64})$/;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('pull', argv, {
    cache: { type: 'string' },
    from: { type: 'string' },
    ...REGISTRY_OPTIONS,
    json: { type: 'boolean' },
  });
  const osDir = cacheDir('pull', values.cache);
  if (!values.from) throw usage('pull', '--from REF is required');
  if (positionals.length === 0) throw usage('pull', 'name the HASH to pull');
  const hashes = positionals.map((name) => {
    const hash = FULL_HASH.exec(name)?.[1];
    if (hash === undefined)
      throw usage('pull', `${JSON.stringify(name)} is not a full 64-hex layer hash`);
    return hash;
  });
  await prepareCache(osDir);
  const [{ LayerDir }, { RegistryCache }, { printWarning }] = await Promise.all([
    import('@day11/layer'),
    import('@day11/registry'),
    import('../registry.js'),
  ]);
  const cache = new RegistryCache({
    ref: values.from,
    insecure: values.insecure === true,
    onWarning: printWarning,
  });
  let missing = 0;
  try {
    for (const hash of hashes) {
      const r = await cache.pull(hash, { osDir });
      if (r.status === 'missing') missing++;
      for (const pulled of r.pulled) await linkStep(osDir, pulled);
      if (values.json) console.log(JSON.stringify(r));
      else
        console.log(
          `${LayerDir.name(hash)}  ${r.status.padEnd(7)}  ${r.pulled.length} layers committed  ${r.status === 'missing' ? `(not in ${cache.registry}/${cache.repository})` : LayerDir.path({ osDir, hash })}`,
        );
    }
  } finally {
    await cache.close();
  }
  return missing > 0 ? 1 : 0;
}

/** Links a pulled layer under the id of the step that made it, as a build does (`day11 export ID`). */
async function linkStep(osDir: string, hash: string): Promise<void> {
  const { LayerDir, LayerSymlinks, Sidecar } = await import('@day11/layer');
  const dir = LayerDir.path({ osDir, hash });
  const step = (await Sidecar.read(dir, 'step.json').catch(() => undefined)) as
    { id?: unknown } | undefined;
  if (typeof step?.id !== 'string') return;
  await LayerSymlinks.ensure({
    packagesDir: join(osDir, 'packages'),
    id: step.id,
    layerName: LayerDir.name(hash),
  });
}
