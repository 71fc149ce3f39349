/** Turns a plan's base (busybox, tarball, directory, Docker image) into a base layer in the cache. */
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Import, type Base } from '@day11/layer';
import { busyboxImageName, makeBusyboxRootfs } from './busybox.js';
import type { BaseSource } from './plan.js';
import { TempName } from '@day11/exec';

/** The base layer for `source` in `osDir`, imported on first use. */
export async function resolveBase(source: BaseSource, osDir: string): Promise<Base> {
  switch (source.kind) {
    case 'busybox':
      return busyboxBase(osDir);
    case 'tarball':
      return Import.fromTarball({ osDir, tarball: source.path });
    case 'dir':
      return Import.fromDirectory({ osDir, dir: source.path });
    case 'docker':
      return Import.fromDocker({ osDir, image: source.image });
  }
}

async function busyboxBase(osDir: string): Promise<Base> {
  const image = await busyboxImageName();
  const found = await Import.find({ osDir, image });
  if (found) return found;
  await mkdir(osDir, { recursive: true });
  const work = TempName.inside(osDir, 'busybox');
  await mkdir(work);
  try {
    await makeBusyboxRootfs(join(work, 'rootfs'));
    return await Import.fromDirectory({ osDir, dir: join(work, 'rootfs'), image });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** A short description of a base source for messages. */
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
  }
}
