/** `day11 export --cache DIR --oci LAYOUT --tag TAG HASH...` */
import { parseArgs } from 'node:util';
import { resolve } from 'node:path';
import { DOCKER_MAX_LAYERS, exportImage } from '@day11/oci-export';
import { COMMON_OPTIONS, maxLayersOption, parse, usage } from '../args.js';
import { assertCacheExists, baseOf, cacheDir, layerDirOf } from '../cache.js';
import { formatBytes } from '../progress.js';

export const summary = 'export layers as an OCI image (one blob per layer) into an image layout';

export const help = `Usage: day11 export --cache DIR --oci LAYOUT --tag TAG HASH...

Exports the layers HASH... (bottom to top, the target last) on top of their
base as the image TAG in the OCI image layout LAYOUT. Each layer becomes one
blob, cached in the layer directory, so images share the blobs of the layers
they share and a re-export compresses nothing.

Options:
  --cmd CMD          the image's default command (repeatable: one argv word each; default /bin/sh)
  --max-layers N     at most N layers (2-500, or docker = ${DOCKER_MAX_LAYERS}): a deeper stack keeps
                     its layers most shared in LAYOUT (× size) and merges contiguous runs of
                     the others into one cached blob each; the image unpacks the same
  --json             print the result as JSON

Example:
  day11 export --cache /var/cache/day11 --oci /srv/oci --tag app 0123456789ab 89abcdef0123
  skopeo inspect oci:/srv/oci:app
  day11 export --cache /var/cache/day11 --oci /srv/oci --tag deep --max-layers docker $(cat stack.txt)
`;

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parse('export', () =>
    parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        ...COMMON_OPTIONS,
        cache: { type: 'string' },
        oci: { type: 'string' },
        tag: { type: 'string' },
        cmd: { type: 'string', multiple: true },
        'max-layers': { type: 'string' },
        json: { type: 'boolean' },
      },
    }),
  );
  const osDir = cacheDir('export', values.cache);
  if (!values.oci) throw usage('export', '--oci LAYOUT is required');
  if (!values.tag) throw usage('export', '--tag TAG is required');
  if (positionals.length === 0) throw usage('export', 'name at least one layer HASH');
  const maxLayers = maxLayersOption('export', values['max-layers'], DOCKER_MAX_LAYERS);
  await assertCacheExists(osDir);
  const layers = await Promise.all(positionals.map((h) => layerDirOf(osDir, h)));
  const base = await baseOf(osDir, layers.at(-1)!);
  const result = await exportImage({
    layout: resolve(values.oci),
    tag: values.tag,
    base,
    layers: layers.filter((dir) => dir !== base.dir),
    config: { Cmd: values.cmd ?? ['/bin/sh'] },
    ...(maxLayers !== undefined && { maxLayers }),
  });
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
