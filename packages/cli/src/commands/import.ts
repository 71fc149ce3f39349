/** `day11 import --cache DIR [--image NAME] (--tarball F | --dir D | --docker)`, or `--image docker://REF` */
import { resolve } from 'node:path';
import { parseCommand, REGISTRY_OPTIONS, usage } from '../args.js';
import { cacheDir, prepareCache } from '../cache.js';

export const help = `Usage: day11 import --cache DIR --image docker://HOST/REPO:TAG | oci:DIR:TAG
       day11 import --cache DIR [--image NAME] (--tarball FILE | --dir DIR | --docker)

An --image with a transport (docker://, oci:, oci-archive:, docker-archive:)
is pulled: its manifest is pinned by digest (the base's name is
oci-image@sha256:…, so a tag moved later is another base), the layers for
this machine's platform are applied in order with their whiteouts into one
base layer, and every digest is checked. Plan bases { "image": "docker://…" }
do the same on first use.

Creates the base layer NAME (its hash is derived from NAME) from:
  --tarball FILE     a rootfs tarball, plain or gzip (e.g. the output of docker export)
  --dir DIR          a root filesystem directory (copied; owners, modes, xattrs kept)
  --docker           the Docker image NAME (needs a Docker engine)
Without --image (tarball, dir), the name is derived from the content
(tarball:SHA256, directory:DIGEST). The name is the base's identity: every
layer built on it is cached under it. Importing NAME again does nothing when
the tarball or directory still holds what NAME was imported from, and is
refused when it changed: import the new content under a new NAME, or without
--image. A Docker image is not asked for again once imported: name a newer one
by its digest (debian@sha256:...). Hostile tarballs (.. paths, absolute paths,
symlink escapes) are refused and nothing is left behind.

Options:
  --insecure         plain http to a registry that is not on this machine

Examples:
  day11 import --cache /var/cache/day11 --image docker://127.0.0.1:5000/library/debian:12
  day11 import --cache /var/cache/day11 --image debian:12 --tarball debian-12.tar.gz
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommand('import', argv, {
    cache: { type: 'string' },
    image: { type: 'string' },
    tarball: { type: 'string' },
    dir: { type: 'string' },
    docker: { type: 'boolean' },
    ...REGISTRY_OPTIONS,
  });
  const osDir = cacheDir('import', values.cache);
  const sources = [values.tarball, values.dir, values.docker].filter(
    (v) => v !== undefined && v !== false,
  );
  if (values.image !== undefined && TRANSPORT.test(values.image)) {
    if (sources.length > 0)
      throw usage(
        'import',
        `--image ${values.image} is pulled: give it without --tarball, --dir or --docker`,
      );
    await prepareCache(osDir);
    const [{ LayerDir }, { importBaseImage }] = await Promise.all([
      import('@day11/layer'),
      import('@day11/registry'),
    ]);
    const base = await importBaseImage({
      osDir,
      ref: values.image,
      insecure: values.insecure === true,
    });
    console.log(
      `${LayerDir.name(base.hash)}  ${base.image}  (base hash ${base.hash}${base.imported ? '' : ', already imported'})`,
    );
    return 0;
  }
  if (sources.length !== 1)
    throw usage(
      'import',
      'give exactly one of --tarball FILE, --dir DIR, --docker, or an --image docker://… or oci:…',
    );
  if (!values.image && values.docker) throw usage('import', '--docker needs --image NAME');
  const image = values.image;
  await prepareCache(osDir);
  const { Import, LayerDir } = await import('@day11/layer');
  const base = values.tarball
    ? await Import.fromTarball({ osDir, tarball: resolve(values.tarball), image })
    : values.dir
      ? await Import.fromDirectory({ osDir, dir: resolve(values.dir), image })
      : await Import.fromDocker({ osDir, image: image! });
  console.log(`${LayerDir.name(base.hash)}  ${base.image}  (base hash ${base.hash})`);
  return 0;
}

/** References pulled by `@day11/registry` (skopeo's transports). */
const TRANSPORT = /^(docker|oci|oci-archive|docker-archive):/;
