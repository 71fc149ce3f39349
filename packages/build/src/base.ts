/**
 * A plan's base as a base layer in the cache: imported on first use
 * (busybox, a tarball, a directory, a Docker image), or one already there
 * (an imported image name, a layer hash). Images from registries
 * (`docker://…`, `oci:DIR:TAG`) need an {@link ImageResolver}, which the
 * caller wires (the CLI uses `@day11/registry`).
 */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { TempName } from '@day11/exec';
import { CacheDir, Hash, Import, LayerDir, LayerMeta, Sidecar, type Base } from '@day11/layer';
import { busyboxImageName, makeBusyboxRootfs } from './busybox.js';
import { BuildCodes, BuildError } from './errors.js';
import type { BaseSource } from './plan.js';

/**
 * Brings an image reference with a transport (`docker://HOST/REPO:TAG`,
 * `oci:DIR:TAG`) into the cache as a base layer.
 */
export type ImageResolver = (opts: {
  ref: string;
  osDir: string;
  signal?: AbortSignal | undefined;
}) => Promise<Base>;

/** Options of {@link resolveBase}. */
export interface ResolveBaseOptions {
  source: BaseSource;
  osDir: string;
  resolveImage?: ImageResolver | undefined;
  signal?: AbortSignal | undefined;
}

/** Transports an {@link ImageResolver} handles. */
const TRANSPORT = /^(docker|oci|oci-archive|docker-archive):/;

/**
 * The base layer for `source` in `osDir`, imported on first use.
 *
 * @example
 * ```ts
 * const base = await resolveBase({ source: { kind: 'busybox' }, osDir });
 * ```
 * @throws {BuildError} `BUILD_BAD_BASE` for a base that is not in the cache
 *   and cannot be imported; import errors of `@day11/layer` pass through.
 */
export async function resolveBase(o: ResolveBaseOptions): Promise<Base> {
  const { source, osDir } = o;
  await CacheDir.ensure(osDir);
  const signal = o.signal;
  switch (source.kind) {
    case 'busybox': {
      const image = await busyboxImageName();
      return (await Import.find({ osDir, image })) ?? importBusybox(osDir, image);
    }
    case 'tarball':
      return Import.fromTarball({ osDir, tarball: source.path, signal });
    case 'dir':
      return Import.fromDirectory({ osDir, dir: source.path, signal });
    case 'docker':
      return (
        (await Import.find({ osDir, image: source.image })) ??
        Import.fromDocker({ osDir, image: source.image, signal })
      );
    case 'image':
      return imageBase(source.ref, o);
    case 'layer':
      return layerBase(source.hash, osDir);
  }
}

async function imageBase(ref: string, o: ResolveBaseOptions): Promise<Base> {
  if (TRANSPORT.test(ref)) {
    if (!o.resolveImage) {
      throw new BuildError(
        BuildCodes.BAD_BASE,
        `The base image ${ref} must be pulled, and this builder has no image resolver`,
        {
          hint: 'Build with the day11 command, or pass resolveImage (e.g. from @day11/registry) to createBuilder',
        },
      );
    }
    return o.resolveImage({ ref, osDir: o.osDir, signal: o.signal });
  }
  const found = await Import.find({ osDir: o.osDir, image: ref });
  if (found) return found;
  throw new BuildError(BuildCodes.BAD_BASE, `No base named ${ref} in the cache ${o.osDir}`, {
    hint: `Import it first: \`day11 import --cache ${o.osDir} --image ${ref} --tarball ROOTFS.tar\` (or --dir, --docker), or name a registry image as docker://HOST/REPO:TAG`,
  });
}

/** A base layer already in the cache, named by its hash (or the first 12+ hex of it). */
async function layerBase(hash: string, osDir: string): Promise<Base> {
  const dir = LayerDir.path({ osDir, hash });
  const sidecar = await Sidecar.read(dir, Import.SIDECAR).catch(() => undefined);
  const image = sidecar?.['image'];
  if (typeof image !== 'string') {
    const exists = await LayerMeta.find(dir).catch(() => undefined);
    throw new BuildError(
      BuildCodes.BAD_BASE,
      exists
        ? `The layer ${LayerDir.name(hash)} in ${osDir} is not a base layer (it has no ${Import.SIDECAR})`
        : `No base layer ${LayerDir.name(hash)} in ${osDir}`,
      {
        path: dir,
        hint: 'List the layers with `day11 layers ls`; bases are made by `day11 import`',
      },
    );
  }
  const full = Hash.baseHash({ image });
  if (!full.startsWith(hash)) {
    throw new BuildError(
      BuildCodes.HASH_COLLISION,
      `The layer ${LayerDir.name(hash)} in ${osDir} is the base ${image}, whose hash ${full} does not start with ${hash}`,
      { path: dir, hint: 'Name the base by its image name instead: "base": { "image": NAME }' },
    );
  }
  return { hash: full, dir, image };
}

async function importBusybox(osDir: string, image: string): Promise<Base> {
  const work = TempName.inside(osDir, 'busybox');
  await mkdir(work, { mode: 0o700 });
  try {
    await makeBusyboxRootfs(join(work, 'rootfs'));
    return await Import.fromDirectory({ osDir, dir: join(work, 'rootfs'), image });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * A short description of a base source for messages.
 *
 * @example
 * ```ts
 * describeBase({ kind: 'tarball', path: '/srv/debian.tar' }); // 'tarball /srv/debian.tar'
 * ```
 */
export function describeBase(source: BaseSource): string {
  switch (source.kind) {
    case 'busybox':
      return 'busybox (host busybox-static)';
    case 'tarball':
      return `tarball ${source.path}`;
    case 'dir':
      return `directory ${source.path}`;
    case 'docker':
      return `docker image ${source.image}`;
    case 'image':
      return `image ${source.ref}`;
    case 'layer':
      return `base layer ${LayerDir.name(source.hash)}`;
  }
}
