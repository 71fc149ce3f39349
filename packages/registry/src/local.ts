/**
 * The local-cache side of publishing and pulling: a layer's stack, its
 * sidecars, its log, and the attributes of its `fs/` directory.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, lchown, lstat, lutimes, stat } from 'node:fs/promises';
import { join } from 'node:path';
import {
  Import,
  LayerDir,
  LayerError,
  LayerMeta,
  Sidecar,
  type Base,
  type LayerMetaRecord,
  type SidecarValue,
} from '@day11/layer';
import type { BlobRef, FsRoot } from './cache-image.js';
import { RegistryCodes, RegistryError } from './errors.js';
import { SIDECAR as RECORD_SIDECAR } from './record.js';

/** A committed layer of the local cache. */
export interface LocalLayer {
  hash: string;
  dir: string;
  meta: LayerMetaRecord;
}

/**
 * Layer `hash` of `osDir`, committed (it has a valid `layer.json`).
 * @throws {RegistryError} `REGISTRY_LAYER_MISSING` when it is not there or its
 *   `layer.json` is unreadable.
 */
export async function loadLayer(osDir: string, hash: string): Promise<LocalLayer> {
  const dir = LayerDir.path({ osDir, hash });
  try {
    return { hash, dir, meta: await LayerMeta.load(dir) };
  } catch (cause) {
    throw new RegistryError(
      RegistryCodes.LAYER_MISSING,
      `Layer ${hash} is not committed in ${osDir}`,
      {
        path: dir,
        cause,
        hint:
          cause instanceof LayerError && cause.code !== 'LAYER_META_MISSING'
            ? cause.hint
            : 'Build it first; a layer is published with the whole stack it was built on, which must be in the cache too',
      },
    );
  }
}

/** True when `hash` is in `osDir` (a readable `layer.json`). */
export async function isCommitted(osDir: string, hash: string): Promise<boolean> {
  return (
    (await LayerMeta.find(LayerDir.path({ osDir, hash })).catch(() => undefined)) !== undefined
  );
}

/** True when the layer is a base: its own base, built on nothing. */
export function isBase(layer: { hash: string; meta: LayerMetaRecord }): boolean {
  return layer.meta.base_hash === layer.hash && layer.meta.parent_hashes.length === 0;
}

/**
 * The hashes of the image of a layer: the base, the layers it was built on
 * (bottom to top: `parent_hashes` is topmost first), the layer itself.
 */
export function stackOf(layer: { hash: string; meta: LayerMetaRecord }): string[] {
  if (isBase(layer)) return [layer.hash];
  return [layer.meta.base_hash, ...[...layer.meta.parent_hashes].reverse(), layer.hash];
}

/** The base layer `hash` of `osDir`, with the image name its `base.json` records. */
export async function baseOf(osDir: string, hash: string): Promise<Base> {
  const dir = LayerDir.path({ osDir, hash });
  const sidecar = await Sidecar.read(dir, Import.SIDECAR).catch(() => undefined);
  const image = typeof sidecar?.['image'] === 'string' ? sidecar['image'] : `base:${hash}`;
  return { hash, dir, image };
}

/** The sidecars a layer carries to other machines: all but the registry record. */
export async function portableSidecars(dir: string): Promise<Record<string, SidecarValue>> {
  const out: Record<string, SidecarValue> = {};
  for (const name of await Sidecar.list(dir)) {
    if (name === RECORD_SIDECAR) continue;
    const value = await Sidecar.read(dir, name);
    if (value !== undefined) out[name] = value;
  }
  return out;
}

/** The build log of a layer: its file, digest and size (an absent log is empty). */
export async function logOf(dir: string): Promise<BlobRef & { file: string | undefined }> {
  const file = join(dir, 'layer.log');
  const st = await stat(file).catch(() => undefined);
  if (!st) return { file: undefined, ...EMPTY_LOG };
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return { file, digest: `sha256:${hash.digest('hex')}`, size: st.size };
}

const EMPTY_LOG: BlobRef = {
  digest: 'sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855',
  size: 0,
};

/** Owner, mode and mtime of a layer's `fs/` directory. */
export async function fsRootOf(dir: string): Promise<FsRoot> {
  const st = await lstat(join(dir, 'fs'), { bigint: true });
  const ns = st.mtimeNs;
  const seconds = ns / 1_000_000_000n;
  const fraction = (ns % 1_000_000_000n).toString().padStart(9, '0').replace(/0+$/, '');
  return {
    mode: Number(st.mode & 0o7777n),
    uid: Number(st.uid),
    gid: Number(st.gid),
    mtime: fraction ? `${seconds}.${fraction}` : `${seconds}`,
  };
}

/** Gives directory `path` the attributes of a layer's `fs/` (mtime last: chown and chmod do not touch it). */
export async function applyFsRoot(path: string, root: FsRoot): Promise<void> {
  await lchown(path, root.uid, root.gid);
  await chmod(path, root.mode);
  const mtime = Number(root.mtime);
  await lutimes(path, mtime, mtime);
}
