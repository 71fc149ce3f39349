/** `day11 export --cache DIR (--oci LAYOUT --tag TAG | --to docker://REF) LAYER...` */
import { resolve } from 'node:path';
import {
  gzipLevelOption,
  maxLayersOption,
  parseCommand,
  REGISTRY_OPTIONS,
  usage,
} from '../args.js';
import { assertCacheExists, cacheDir, layerDirOf, prepareCache, stackOf } from '../cache.js';
import { formatBytes } from '../progress.js';

export const help = `Usage: day11 export --cache DIR --oci LAYOUT --tag TAG LAYER [LAYER...]
       day11 export --cache DIR --to docker://HOST/REPO:TAG LAYER [LAYER...]

Exports LAYER with the stack it was built on (its base, then every layer
below it in build order, recorded when it was built) as the image TAG in
the OCI image layout LAYOUT. LAYER is a hash, a build-xxxxxxxxxxxx name or a
step id. Each layer becomes one blob, cached in the layer directory, so
images share the blobs of the layers they share and a re-export compresses
nothing. Naming several layers exports exactly those, bottom to top; a list
that leaves out or misorders a layer one of them was built on is refused.
With --to, the image goes straight to a registry: blobs the registry has
(in that repository, or in a cache repository the layers were published to,
mounted from there) are not uploaded again.

Options:
  --cmd CMD          the image's default command (repeatable: one argv word each; default /bin/sh)
  --max-layers N     at most N layers (2-500, or docker = 125): a deeper stack keeps
                     its layers most shared in LAYOUT (× size) and merges contiguous runs of
                     the others into one cached blob each; the image unpacks the same
  --gzip-level N     gzip level of the layer blobs, 0 (store) to 9 (smallest; default 6);
                     each layer caches its blob at one level, another level compresses again
  --to REF           push the image to a registry instead (docker://HOST/REPO:TAG)
  --insecure         with --to: plain http to a registry that is not on this machine
  --json             print the result as JSON

Example:
  day11 export --cache /var/cache/day11 --oci /srv/oci --tag app app
  skopeo inspect oci:/srv/oci:app
  day11 export --cache /var/cache/day11 --oci /srv/oci --tag deep --max-layers docker app
  day11 export --cache /var/cache/day11 --to docker://127.0.0.1:5000/apps/app:1.0 app
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseCommand('export', argv, {
    cache: { type: 'string' },
    oci: { type: 'string' },
    tag: { type: 'string' },
    cmd: { type: 'string', multiple: true },
    'max-layers': { type: 'string' },
    'gzip-level': { type: 'string' },
    to: { type: 'string' },
    ...REGISTRY_OPTIONS,
    json: { type: 'boolean' },
  });
  const osDir = cacheDir('export', values.cache);
  if (values.to !== undefined) {
    if (values.oci !== undefined || values.tag !== undefined)
      throw usage('export', '--to REF names the image: give it without --oci and --tag');
  } else {
    if (!values.oci) throw usage('export', '--oci LAYOUT (or --to REF) is required');
    if (!values.tag) throw usage('export', '--tag TAG is required');
  }
  if (positionals.length === 0) throw usage('export', 'name the LAYER to export');
  const [{ imageOfStep }, { Sidecar }, { DOCKER_MAX_LAYERS, exportImage }] = await Promise.all([
    import('@day11/build'),
    import('@day11/layer'),
    import('@day11/oci-export'),
  ]);
  const maxLayers = maxLayersOption('export', values['max-layers'], DOCKER_MAX_LAYERS);
  const gzipLevel = gzipLevelOption('export', values['gzip-level']);
  await assertCacheExists(osDir);
  await prepareCache(osDir);
  const named = await Promise.all(positionals.map((h) => layerDirOf(osDir, h)));
  const { base, layers } = await stackOf(osDir, named);
  const steps = await Promise.all(
    layers.map((dir) => Sidecar.read(dir, 'step.json').catch(() => undefined)),
  );
  const top = imageOfStep(steps.at(-1));
  const image = {
    base,
    layers,
    createdBy: steps.map((s) => imageOfStep(s).createdBy),
    config: { ...top.config, Cmd: values.cmd ?? ['/bin/sh'] },
    ...(maxLayers !== undefined && { maxLayers }),
    ...(gzipLevel !== undefined && { gzipLevel }),
  };
  if (values.to !== undefined) {
    const { exportToRegistry } = await import('@day11/registry');
    const pushed = await exportToRegistry({
      ...image,
      ref: values.to,
      insecure: values.insecure === true,
    });
    if (values.json) console.log(JSON.stringify(pushed));
    else {
      for (const b of pushed.blobs)
        console.log(`${b.digest.slice(0, 19)}  ${formatBytes(b.size).padStart(10)}  ${b.outcome}`);
      console.log(`${values.to}  pushed as ${pushed.ref}`);
    }
    return 0;
  }
  const result = await exportImage({ layout: resolve(values.oci!), tag: values.tag!, ...image });
  if (values.json) {
    console.log(JSON.stringify(result));
    return 0;
  }
  for (const l of result.layers) {
    const merged = l.squashed ? `  (${l.squashed.length} layers merged)` : '';
    console.log(
      `${l.digest.slice(0, 19)}  ${formatBytes(l.size).padStart(10)}  ${l.cached ? 'cached' : 'compressed'}  ${l.dir}${merged}`,
    );
  }
  console.log(`${values.oci}:${values.tag}  manifest ${result.manifestDigest}`);
  return 0;
}
