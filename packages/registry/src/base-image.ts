/**
 * Base images from registries and image layouts: `docker://HOST/REPO:TAG`,
 * `oci:DIR:TAG`, and (through `skopeo copy` into a temporary layout) any
 * other skopeo transport.
 *
 * The image is pinned by its manifest digest: the base's name is
 * `oci-image@sha256:…` of the (platform's) manifest, so its hash
 * (`Hash.baseHash`) follows the content, a moved tag is another base, and
 * the same image from two places is one base. Its layers stream through
 * digest and diff_id checks into `@day11/layer`'s safe extraction, applied
 * in order (whiteouts remove what lower layers wrote) into one temporary
 * directory, committed as an ordinary base layer with a `base.json` sidecar.
 */
import { mkdir, rm } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Readable } from 'node:stream';
import { Exec, TempName } from '@day11/exec';
import { Commit, Hash, Import, LayerDir, type Base } from '@day11/layer';
import { Layout, MediaTypes, REF_NAME, defaultArchitecture } from '@day11/oci-export';
import { z } from 'zod';
import { MAX_MANIFEST_BYTES, RegistryClient, type ClientOptions } from './client.js';
import { sha256Of, verified } from './digest-stream.js';
import { extractLayer } from './extract-layer.js';
import { RegistryCodes, RegistryError, isAbort, messageOf } from './errors.js';
import { formatImage, parseImageSource, type ImageRef } from './reference.js';

/** A base imported from an image. */
export interface ImportedBase extends Base {
  /** The manifest digest it is pinned to. */
  digest: string;
  /** True when this call imported it; false when it was in the cache. */
  imported: boolean;
}

/** The platform to take from a multi-platform image. */
export interface Platform {
  os?: string | undefined;
  architecture?: string | undefined;
  variant?: string | undefined;
}

/** Options of {@link importBaseImage}. */
export interface ImportBaseImageOptions extends Partial<Omit<ClientOptions, 'registry'>> {
  osDir: string;
  /** `docker://HOST/REPO[:TAG][@DIGEST]`, `oci:DIR[:TAG]`, or another skopeo transport. */
  ref: string;
  /** Default: linux on this machine's architecture. */
  platform?: Platform | undefined;
  signal?: AbortSignal | undefined;
}

/** The name a base pinned to manifest `digest` is stored under. */
export function pinnedName(digest: string): string {
  return `oci-image@${digest}`;
}

/** Media types of layers that can be applied, and whether they are gzip. */
const LAYER_TYPES: Readonly<Record<string, boolean>> = {
  [MediaTypes.layer]: true,
  [MediaTypes.dockerLayer]: true,
  [MediaTypes.layerTar]: false,
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip': true,
};

const Desc = z.looseObject({
  mediaType: z.string().optional(),
  digest: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  size: z.number().int().nonnegative(),
  platform: z
    .looseObject({ os: z.string(), architecture: z.string(), variant: z.string().optional() })
    .optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});
const ImageManifest = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: Desc,
  layers: z.array(Desc),
});
const ImageIndex = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(Desc),
});
const ImageConfig = z.looseObject({
  rootfs: z.looseObject({ diff_ids: z.array(z.string()) }),
});

/** Where the documents and blobs of an image come from. */
interface ImageStore {
  /** For messages: `docker://…` or `oci:…`. */
  label: string;
  /** The manifest (or index) `reference` names: a tag, a digest, or undefined for the only one. */
  document(reference: string | undefined): Promise<{ bytes: Buffer; digest: string }>;
  /** A blob, verified against digest and size. */
  blob(desc: { digest: string; size: number }): Promise<Readable>;
  where: { registry?: string; repository?: string };
}

/**
 * Imports a base image from a registry or an image layout (see the module doc);
 * a base already imported at that manifest digest is returned as it is.
 *
 * @example
 * ```ts
 * const base = await importBaseImage({ osDir, ref: 'docker://127.0.0.1:5000/library/busybox:1.36' });
 * console.log(base.image); // oci-image@sha256:…
 * ```
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE`, `REGISTRY_NOT_FOUND`, the
 *   client's errors, `REGISTRY_DIGEST_MISMATCH`, `REGISTRY_UNSAFE_LAYER`,
 *   `REGISTRY_IMPORT_FAILED` (no such platform, a media type that cannot be
 *   applied, skopeo failing).
 */
export async function importBaseImage(options: ImportBaseImageOptions): Promise<ImportedBase> {
  const source = parseImageSource(options.ref);
  const osDir = resolve(options.osDir);
  if (source.transport === 'docker') {
    const client = new RegistryClient({ ...options, registry: source.image.registry });
    try {
      const store = registryStore(client, source.image, options.signal);
      return await importFrom({
        ...options,
        osDir,
        store,
        reference: source.image.digest ?? source.image.tag,
      });
    } finally {
      client.close();
    }
  }
  if (source.transport === 'oci') {
    const store = layoutStore(resolve(source.dir), options.ref);
    return importFrom({ ...options, osDir, store, reference: source.reference });
  }
  const layout = TempName.beside(join(osDir, 'skopeo-import'));
  try {
    await mkdir(osDir, { recursive: true });
    await skopeoCopy({ from: source.ref, to: `oci:${layout}:image`, signal: options.signal });
    return await importFrom({
      ...options,
      osDir,
      store: layoutStore(layout, options.ref),
      reference: 'image',
    });
  } finally {
    await rm(layout, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function importFrom(
  o: ImportBaseImageOptions & { store: ImageStore; reference: string | undefined },
): Promise<ImportedBase> {
  const { store } = o;
  const { manifest, digest } = await resolveManifest(store, o.reference, o.platform);
  const image = pinnedName(digest);
  const existing = await Import.find({ osDir: o.osDir, image });
  if (existing) return { ...existing, digest, imported: false };
  const unusable = manifest.layers.find((l) => !((l.mediaType ?? MediaTypes.layer) in LAYER_TYPES));
  if (unusable) {
    throw importError(
      store,
      `its layer ${unusable.digest} is ${unusable.mediaType}, which day11 cannot apply`,
      'Only tar and tar+gzip layers are read; convert the image (e.g. `skopeo copy --dest-compress-format gzip`)',
    );
  }
  const config = ImageConfig.safeParse(
    parseJson(store, await readAll(await store.blob(manifest.config))),
  );
  const diffIds = config.success ? config.data.rootfs.diff_ids : [];
  if (diffIds.length !== manifest.layers.length) {
    throw importError(
      store,
      'its config does not list one diff_id per layer',
      'The image is malformed; rebuild or re-pull it',
    );
  }
  const hash = Hash.baseHash({ image });
  const upper = TempName.beside(LayerDir.path({ osDir: o.osDir, hash }));
  const started = performance.now();
  try {
    await mkdir(o.osDir, { recursive: true });
    await mkdir(upper, { mode: 0o755 });
    for (const [i, layer] of manifest.layers.entries()) {
      await applyLayer({ store, layer, diffId: diffIds[i]!, upper, signal: o.signal });
    }
    const { dir } = await Commit.commit({
      osDir: o.osDir,
      hash,
      upper,
      meta: {
        exit_status: 0,
        parent_hashes: [],
        uid: 0,
        gid: 0,
        base_hash: hash,
        timing: [['import', (performance.now() - started) / 1000]],
        failed_dep: null,
      },
      sidecars: { [Import.SIDECAR]: { image, source: store.label, kind: 'registry', digest } },
    });
    return { hash, dir, image, digest, imported: true };
  } finally {
    await rm(upper, { recursive: true, force: true }).catch(() => undefined);
  }
}

/** The image manifest `reference` names, through an index when there is one, and its digest. */
async function resolveManifest(
  store: ImageStore,
  reference: string | undefined,
  platform: Platform | undefined,
): Promise<{ manifest: z.infer<typeof ImageManifest>; digest: string }> {
  let doc = await store.document(reference);
  for (let depth = 0; depth < 4; depth++) {
    const json = parseJson(store, doc.bytes);
    const index = ImageIndex.safeParse(json);
    if (index.success && !('config' in (json as object))) {
      const chosen = choosePlatform(index.data.manifests, platform);
      if (!chosen) {
        const offered = index.data.manifests
          .map((m) => `${m.platform?.os}/${m.platform?.architecture}`)
          .join(', ');
        throw importError(
          store,
          `it has no image for ${describePlatform(platform)} (it offers ${offered})`,
          'Pass platform: { os, architecture } of one it has',
        );
      }
      doc = await store.document(chosen.digest);
      continue;
    }
    const manifest = ImageManifest.safeParse(json);
    if (manifest.success) return { manifest: manifest.data, digest: doc.digest };
    throw importError(
      store,
      'its manifest is neither an OCI/Docker v2 image nor an index',
      'Docker schema 1 images are not read; re-push the image with a current tool',
    );
  }
  throw importError(store, 'its indexes nest too deep', 'Point at the image itself');
}

function choosePlatform(
  manifests: z.infer<typeof Desc>[],
  wanted: Platform | undefined,
): z.infer<typeof Desc> | undefined {
  const os = wanted?.os ?? 'linux';
  const architecture = wanted?.architecture ?? defaultArchitecture();
  return manifests.find(
    (m) =>
      m.platform?.os === os &&
      m.platform.architecture === architecture &&
      (wanted?.variant === undefined || m.platform.variant === wanted.variant),
  );
}

function describePlatform(p: Platform | undefined): string {
  return `${p?.os ?? 'linux'}/${p?.architecture ?? defaultArchitecture()}${p?.variant ? `/${p.variant}` : ''}`;
}

/** Streams one layer onto `upper`, checking its digest and diff_id. */
async function applyLayer(o: {
  store: ImageStore;
  layer: z.infer<typeof Desc>;
  diffId: string;
  upper: string;
  signal: AbortSignal | undefined;
}): Promise<void> {
  const { store, layer } = o;
  await extractLayer({
    body: await store.blob(layer),
    gzip: LAYER_TYPES[layer.mediaType ?? MediaTypes.layer] === true,
    diffId: o.diffId,
    dest: o.upper,
    whiteouts: 'apply',
    where: { ...store.where, digest: layer.digest },
    label: `layer ${layer.digest} of ${store.label}`,
    signal: o.signal,
  });
}

function registryStore(
  client: RegistryClient,
  image: ImageRef,
  signal: AbortSignal | undefined,
): ImageStore {
  const label = `docker://${formatImage(image)}`;
  const where = { registry: image.registry, repository: image.repository };
  return {
    label,
    where,
    async document(reference) {
      const ref = reference ?? 'latest';
      const found = await client.manifest(image.repository, ref, { signal });
      if (found) return found;
      throw new RegistryError(RegistryCodes.NOT_FOUND, `No image ${label}`, {
        ...where,
        digest: ref,
        hint: 'Check the repository and tag (`skopeo inspect docker://…`)',
      });
    },
    blob: (desc) => client.blob(image.repository, desc, { signal }),
  };
}

/** An OCI image layout on disk; every blob is verified as it is read. */
function layoutStore(dir: string, label: string): ImageStore {
  const where = { registry: undefined, repository: dir };
  const verify = (desc: { digest: string; size: number }) =>
    verified(createReadStream(Layout.blobPath(dir, desc.digest)), {
      digest: desc.digest,
      size: desc.size,
      fail: (f) =>
        new RegistryError(
          RegistryCodes.DIGEST_MISMATCH,
          `Blob ${desc.digest} of ${label} is damaged (${f.kind})`,
          {
            path: Layout.blobPath(dir, desc.digest),
            digest: desc.digest,
            hint: 'The layout is corrupt; copy the image again',
          },
        ),
      failSource: (err) =>
        new RegistryError(
          RegistryCodes.NOT_FOUND,
          `Cannot read blob ${desc.digest} of ${label}: ${messageOf(err)}`,
          {
            path: Layout.blobPath(dir, desc.digest),
            digest: desc.digest,
            cause: err,
            hint: 'The layout is incomplete; copy the image again',
          },
        ),
    });
  return {
    label,
    where,
    async document(reference) {
      const index = await Layout.readIndex(dir).catch((cause: unknown) => {
        throw importError(
          { label, where },
          `it is not an OCI image layout (${messageOf(cause)})`,
          'Point oci: at a directory holding oci-layout and index.json',
        );
      });
      const entries = index.manifests;
      const entry =
        reference === undefined
          ? entries.length === 1
            ? entries[0]
            : undefined
          : entries.find((m) => m.annotations?.[REF_NAME] === reference || m.digest === reference);
      if (!entry) {
        const tags = entries
          .map((m) => m.annotations?.[REF_NAME])
          .filter(Boolean)
          .join(', ');
        throw new RegistryError(
          RegistryCodes.NOT_FOUND,
          `No image ${reference ?? '(the only one)'} in ${dir}`,
          {
            path: dir,
            hint: `Name one of its tags: ${tags || '(none)'}`,
          },
        );
      }
      if (entry.size > MAX_MANIFEST_BYTES)
        throw importError(
          { label, where },
          `its manifest ${entry.digest} is over 4 MiB`,
          'Point at an image day11 can read',
        );
      const bytes = await readAll(verify(entry));
      return { bytes, digest: sha256Of(bytes) };
    },
    blob: async (desc) => verify(desc),
  };
}

async function skopeoCopy(o: {
  from: string;
  to: string;
  signal: AbortSignal | undefined;
}): Promise<void> {
  try {
    await Exec.run('skopeo', ['copy', '--quiet', o.from, o.to], { signal: o.signal });
  } catch (cause) {
    if (isAbort(cause, o.signal) || o.signal?.aborted) throw o.signal?.reason ?? cause;
    throw new RegistryError(
      RegistryCodes.IMPORT_FAILED,
      `Cannot copy ${o.from} with skopeo: ${messageOf(cause)}`,
      {
        cause,
        hint: 'Check the reference (`skopeo inspect`), and that skopeo is installed (apt-get install skopeo)',
      },
    );
  }
}

async function readAll(stream: Readable): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

function parseJson(store: Pick<ImageStore, 'label' | 'where'>, bytes: Buffer): unknown {
  try {
    return JSON.parse(bytes.toString('utf8'));
  } catch (cause) {
    throw new RegistryError(
      RegistryCodes.MANIFEST_INVALID,
      `The manifest of ${store.label} is not JSON`,
      {
        ...store.where,
        cause,
        hint: 'The image is damaged; copy or push it again',
      },
    );
  }
}

function importError(
  store: Pick<ImageStore, 'label' | 'where'>,
  why: string,
  hint: string,
): RegistryError {
  return new RegistryError(RegistryCodes.IMPORT_FAILED, `Cannot import ${store.label}: ${why}`, {
    ...store.where,
    hint,
  });
}
