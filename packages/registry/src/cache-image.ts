/**
 * The day11 cache on a registry: one repository, one tag per layer.
 *
 * - `build-<64-hex hash>`: an ordinary, runnable OCI image of the layer: the
 *   base blob first, then every layer of the stack it was built on (bottom
 *   to top), then the layer's own blob; each layer descriptor annotated with
 *   its day11 hash. The manifest's annotations carry what a pull needs to
 *   commit the layer exactly as it was built: `layer.json`, the sidecars, the
 *   log's digest, the blob's diff_id and encoding, the attributes of `fs/`
 *   itself (the root has no tar entry), the schema version, and the base
 *   image's name and blob digest. A failed step's image has a config media
 *   type no runtime runs. The base and every layer of a stack have their own
 *   `build-` tag too (a publish pushes the stack first).
 * - `log-<hash>`: an artifact whose one blob is the build log.
 *
 * Blobs are the exporter's deterministic tar+gzip: the same bytes as
 * `exportImage` writes, so a blob is shared by digest with every image.
 */
import { LayerMeta, type LayerMetaRecord, type SidecarValue } from '@day11/layer';
import { MediaTypes, type Descriptor } from '@day11/oci-export';
import { z } from 'zod';
import { RegistryCodes, RegistryError } from './errors.js';
import { DIGEST_RE } from './reference.js';

/** Version of this layout; a reader refuses manifests of another. */
export const SCHEMA_VERSION = '1';

/** Annotation keys. */
export const Annotations = {
  schema: 'dev.day11.schema',
  /** Full 64-hex day11 hash: on the manifest (its layer) and on each layer descriptor. */
  hash: 'dev.day11.layer.hash',
  /** The layer's `layer.json`, compact. */
  layerJson: 'dev.day11.layer.json',
  /** The layer's sidecars: `{ "step.json": {...}, ... }`. */
  sidecars: 'dev.day11.sidecars',
  /** `{ digest, size }` of the build log blob (kept alive by the `log-` tag). */
  log: 'dev.day11.log',
  /** `{ diffId, tarSize, format, level, chunkSize }` of the layer's own blob. */
  blob: 'dev.day11.blob',
  /** `{ mode, uid, gid, mtime }` of `fs/` itself. */
  fsRoot: 'dev.day11.fs.root',
  /** The base image's name (`base.json`'s `image`). */
  baseImage: 'dev.day11.base.image',
  /** The base layer's blob digest. */
  baseDigest: 'dev.day11.base.digest',
} as const;

/** Media types day11 gives its own documents. */
export const CacheMediaTypes = {
  /** Config of a failed step's image: no runtime runs it. */
  failedConfig: 'application/vnd.day11.failed-step.config.v1+json',
  /** `artifactType` of a log artifact. */
  log: 'application/vnd.day11.log.v1',
  /** A log blob. */
  logBlob: 'text/plain; charset=utf-8',
  /** The empty config of an artifact. */
  empty: 'application/vnd.oci.empty.v1+json',
} as const;

/** The empty JSON object, the config of every artifact. */
export const EMPTY_CONFIG = Buffer.from('{}');
/** Its digest. */
export const EMPTY_DIGEST =
  'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a';

/** The tag of layer `hash`'s image. */
export const buildTag = (hash: string): string => `build-${hash}`;
/** The tag of layer `hash`'s log. */
export const logTag = (hash: string): string => `log-${hash}`;

/** A blob reference. */
export interface BlobRef {
  digest: string;
  size: number;
}

/** Attributes of a layer's `fs/` directory (the archive has no entry for its root). */
export interface FsRoot {
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since 1970 as a decimal string (nanoseconds kept in the text). */
  mtime: string;
}

/** What the manifest says of its own layer's blob. */
export interface OwnBlob {
  diffId: string;
  tarSize: number;
  format: number;
  level: number;
  chunkSize: number;
}

/** What a `build-<hash>` manifest says (see the module doc). */
export interface ManifestParts {
  config: BlobRef & { mediaType: string };
  /** Hash and blob of each layer of the image, base first, this layer last. */
  stack: readonly (BlobRef & { hash: string })[];
  meta: LayerMetaRecord;
  sidecars: Record<string, SidecarValue>;
  log: BlobRef;
  blob: OwnBlob;
  fsRoot: FsRoot;
  baseImage: string;
}

/** Everything of a `build-<hash>` image a pull needs. */
export interface CacheImage extends ManifestParts {
  /** The manifest digest. */
  digest: string;
  /** The layer's full hash. */
  hash: string;
  /** True for a failed step (non-runnable config). */
  failed: boolean;
}

/**
 * Serialises the `build-<hash>` manifest (fixed key order: equal inputs, equal digest).
 *
 * @example
 * ```ts
 * const bytes = buildManifest({ config, stack, meta, sidecars, log, blob, fsRoot, baseImage });
 * ```
 */
export function buildManifest(parts: ManifestParts): Buffer {
  const own = parts.stack.at(-1)!;
  const layers: Descriptor[] = parts.stack.map((l) => ({
    mediaType: MediaTypes.layer,
    digest: l.digest,
    size: l.size,
    annotations: { [Annotations.hash]: l.hash },
  }));
  const annotations: Record<string, string> = {
    [Annotations.schema]: SCHEMA_VERSION,
    [Annotations.hash]: own.hash,
    [Annotations.layerJson]: JSON.stringify(parts.meta),
    [Annotations.sidecars]: JSON.stringify(parts.sidecars),
    [Annotations.log]: JSON.stringify({ digest: parts.log.digest, size: parts.log.size }),
    [Annotations.blob]: JSON.stringify(parts.blob),
    [Annotations.fsRoot]: JSON.stringify(parts.fsRoot),
    [Annotations.baseImage]: parts.baseImage,
    [Annotations.baseDigest]: parts.stack[0]!.digest,
  };
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.manifest,
      config: {
        mediaType: parts.config.mediaType,
        digest: parts.config.digest,
        size: parts.config.size,
      },
      layers,
      annotations,
    }),
  );
}

/**
 * Serialises the `log-<hash>` artifact manifest.
 *
 * @example
 * ```ts
 * const bytes = buildLogManifest({ hash, log: { digest, size } });
 * ```
 */
export function buildLogManifest({ hash, log }: { hash: string; log: BlobRef }): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MediaTypes.manifest,
      artifactType: CacheMediaTypes.log,
      config: { mediaType: CacheMediaTypes.empty, digest: EMPTY_DIGEST, size: EMPTY_CONFIG.length },
      layers: [{ mediaType: CacheMediaTypes.logBlob, digest: log.digest, size: log.size }],
      annotations: { [Annotations.schema]: SCHEMA_VERSION, [Annotations.hash]: hash },
    }),
  );
}

const HASH_RE = /^[0-9a-f]{64}$/;
const Digest = z.string().regex(DIGEST_RE);
const Size = z.number().int().nonnegative();

const DescriptorSchema = z.looseObject({
  mediaType: z.string(),
  digest: Digest,
  size: Size,
  annotations: z.record(z.string(), z.string()).optional(),
});

const ManifestSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema),
  annotations: z.record(z.string(), z.string()).optional(),
});

const LogSchema = z.strictObject({ digest: Digest, size: Size });
const BlobSchema = z.strictObject({
  diffId: Digest,
  tarSize: Size,
  format: z.number().int(),
  level: z.number().int().min(0).max(9),
  chunkSize: z.number().int().positive(),
});
const FsRootSchema = z.strictObject({
  mode: z.number().int().min(0).max(0o7777),
  uid: Size,
  gid: Size,
  mtime: z.string().regex(/^\d+(\.\d{1,9})?$/),
});
const SidecarsSchema = z.record(
  z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*\.json$/),
  z.record(z.string(), z.unknown()),
);

/** Where a manifest came from, for errors. */
export interface ManifestOrigin {
  registry: string;
  repository: string;
  /** The tag or digest it was read by. */
  reference: string;
}

/**
 * Reads a `build-<hash>` manifest, checking that day11 wrote it for `hash`.
 *
 * @example
 * ```ts
 * const image = parseManifest(bytes, { hash, digest, origin: { registry, repository, reference: buildTag(hash) } });
 * ```
 * @throws {RegistryError} `REGISTRY_FOREIGN_IMAGE` for an image day11 did not
 *   write (or wrote for another hash, or with another schema);
 *   `REGISTRY_MANIFEST_INVALID` for one that is malformed.
 */
export function parseManifest(
  bytes: Buffer,
  o: { hash: string; digest: string; origin: ManifestOrigin },
): CacheImage {
  const fail = (
    code: typeof RegistryCodes.FOREIGN_IMAGE | typeof RegistryCodes.MANIFEST_INVALID,
    why: string,
    cause?: unknown,
  ) => manifestError({ code, why, cause, origin: o.origin });
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (cause) {
    throw fail(RegistryCodes.MANIFEST_INVALID, 'it is not JSON', cause);
  }
  const parsed = ManifestSchema.safeParse(json);
  if (!parsed.success)
    throw fail(RegistryCodes.FOREIGN_IMAGE, 'it is not an OCI image manifest', parsed.error);
  const m = parsed.data;
  const a = m.annotations ?? {};
  if (m.mediaType !== undefined && m.mediaType !== MediaTypes.manifest) {
    throw fail(RegistryCodes.FOREIGN_IMAGE, `it is a ${m.mediaType}, not an OCI image manifest`);
  }
  if (a[Annotations.schema] === undefined)
    throw fail(RegistryCodes.FOREIGN_IMAGE, 'it has no day11 annotations');
  if (a[Annotations.schema] !== SCHEMA_VERSION) {
    throw fail(
      RegistryCodes.FOREIGN_IMAGE,
      `it has day11 schema ${a[Annotations.schema]}, this version reads ${SCHEMA_VERSION}`,
    );
  }
  if (a[Annotations.hash] !== o.hash) {
    throw fail(
      RegistryCodes.FOREIGN_IMAGE,
      `it is the image of layer ${a[Annotations.hash]}, not ${o.hash}`,
    );
  }
  const failed = m.config.mediaType === CacheMediaTypes.failedConfig;
  if (!failed && m.config.mediaType !== MediaTypes.config) {
    throw fail(RegistryCodes.FOREIGN_IMAGE, `its config is a ${m.config.mediaType}`);
  }
  const stack = m.layers.map((l) => ({
    digest: l.digest,
    size: l.size,
    hash: l.annotations?.[Annotations.hash] ?? '',
    mediaType: l.mediaType,
  }));
  const bad = stack.find((l) => !HASH_RE.test(l.hash) || l.mediaType !== MediaTypes.layer);
  if (stack.length === 0 || bad || stack.at(-1)!.hash !== o.hash) {
    throw fail(
      RegistryCodes.MANIFEST_INVALID,
      'its layers are not day11 layers ending with this one',
    );
  }
  const field = <T>(key: string, schema: z.ZodType<T>): T => {
    const text = a[key];
    let value: unknown;
    try {
      value = text === undefined ? undefined : JSON.parse(text);
    } catch {
      value = undefined;
    }
    const r = schema.safeParse(value);
    if (!r.success)
      throw fail(
        RegistryCodes.MANIFEST_INVALID,
        `its annotation ${key} is missing or malformed`,
        r.error,
      );
    return r.data;
  };
  let meta: LayerMetaRecord;
  try {
    meta = LayerMeta.parse(a[Annotations.layerJson] ?? '', `annotation ${Annotations.layerJson}`);
  } catch (cause) {
    throw fail(
      RegistryCodes.MANIFEST_INVALID,
      `its layer.json annotation is not a LayerMeta`,
      cause,
    );
  }
  const baseImage = a[Annotations.baseImage];
  if (baseImage === undefined) throw fail(RegistryCodes.MANIFEST_INVALID, 'it names no base image');
  return {
    digest: o.digest,
    hash: o.hash,
    failed,
    config: { mediaType: m.config.mediaType, digest: m.config.digest, size: m.config.size },
    stack: stack.map(({ digest, size, hash }) => ({ digest, size, hash })),
    meta,
    sidecars: field(Annotations.sidecars, SidecarsSchema),
    log: field(Annotations.log, LogSchema),
    blob: field(Annotations.blob, BlobSchema),
    fsRoot: field(Annotations.fsRoot, FsRootSchema),
    baseImage,
  };
}

/**
 * The day11 hashes of an image's layers, or `undefined` when it is not a
 * day11 cache image: what lookup learns from one manifest.
 */
export function stackHashes(bytes: Buffer): string[] | undefined {
  try {
    const m = ManifestSchema.parse(JSON.parse(bytes.toString('utf8')));
    if (m.annotations?.[Annotations.schema] !== SCHEMA_VERSION) return undefined;
    const hashes = m.layers.map((l) => l.annotations?.[Annotations.hash] ?? '');
    return hashes.every((h) => HASH_RE.test(h)) ? hashes : undefined;
  } catch {
    return undefined;
  }
}

function manifestError(o: {
  code: typeof RegistryCodes.FOREIGN_IMAGE | typeof RegistryCodes.MANIFEST_INVALID;
  why: string;
  cause: unknown;
  origin: ManifestOrigin;
}): RegistryError {
  const { registry, repository, reference } = o.origin;
  const foreign = o.code === RegistryCodes.FOREIGN_IMAGE;
  return new RegistryError(
    o.code,
    `${registry}/${repository}:${reference} is not a day11 cache image: ${o.why}`,
    {
      registry,
      repository,
      digest: reference,
      cause: o.cause,
      hint: foreign
        ? 'Something else was pushed under this tag; use a repository only day11 writes to, or delete the tag'
        : 'The image is damaged; delete the tag so the layer is built and published again',
    },
  );
}
