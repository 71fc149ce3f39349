/** `day11 import --cache DIR [--image NAME] (--tarball F | --dir D | --docker)` */
import { resolve } from 'node:path';
import { Import, LayerDir } from '@day11/layer';
import { parseCommand, usage } from '../args.js';
import { cacheDir, prepareCache } from '../cache.js';

export const summary = 'import a base layer from a rootfs tarball, a directory or a Docker image';

export const help = `Usage: day11 import --cache DIR [--image NAME] (--tarball FILE | --dir DIR | --docker)

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

Example:
  day11 import --cache /var/cache/day11 --image debian:12 --tarball debian-12.tar.gz
`;

export async function run(argv: string[]): Promise<number> {
  const { values } = parseCommand('import', argv, {
    cache: { type: 'string' },
    image: { type: 'string' },
    tarball: { type: 'string' },
    dir: { type: 'string' },
    docker: { type: 'boolean' },
  });
  const osDir = cacheDir('import', values.cache);
  const sources = [values.tarball, values.dir, values.docker].filter(
    (v) => v !== undefined && v !== false,
  );
  if (sources.length !== 1)
    throw usage('import', 'give exactly one of --tarball FILE, --dir DIR, --docker');
  if (!values.image && values.docker) throw usage('import', '--docker needs --image NAME');
  const image = values.image;
  await prepareCache(osDir);
  const base = values.tarball
    ? await Import.fromTarball({ osDir, tarball: resolve(values.tarball), image })
    : values.dir
      ? await Import.fromDirectory({ osDir, dir: resolve(values.dir), image })
      : await Import.fromDocker({ osDir, image: image! });
  console.log(`${LayerDir.name(base.hash)}  ${base.image}  (base hash ${base.hash})`);
  return 0;
}
