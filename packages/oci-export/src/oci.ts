/**
 * The OCI image-spec documents day11 writes and reads: media types, the
 * ref-name grammar, zod schemas for parsing what other tools wrote, and
 * builders that serialise config, manifest and index with a fixed key order
 * (so equal inputs give equal digests).
 */
import { createHash } from 'node:crypto';
import { z } from 'zod';
import { OciExportCodes, OciExportError } from './errors.js';

/** Media types of the documents and blobs of an image. */
export const MediaTypes = {
  layer: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerTar: 'application/vnd.oci.image.layer.v1.tar',
  config: 'application/vnd.oci.image.config.v1+json',
  manifest: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerLayer: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
} as const;

/** Media types of image manifests (OCI and Docker v2). */
export const MANIFEST_TYPES: readonly string[] = [MediaTypes.manifest, MediaTypes.dockerManifest];
/** Media types of image indexes (OCI and Docker manifest lists). */
export const INDEX_TYPES: readonly string[] = [MediaTypes.index, MediaTypes.dockerManifestList];

/** The index annotation naming a tag. */
export const REF_NAME = 'org.opencontainers.image.ref.name';

/** The content of `oci-layout`. */
export const IMAGE_LAYOUT_VERSION = '1.0.0';

const COMPONENT = '[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*';
/** The image-spec grammar of `org.opencontainers.image.ref.name`. */
export const REF_NAME_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);

/** A `sha256:<64 hex>` digest. */
export const SHA256_RE = /^sha256:[0-9a-f]{64}$/;
const DIGEST_RE = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;

/**
 * Throws unless `tag` is a valid OCI ref name (`0install.2.18`, `ocaml/dune:3.22`).
 *
 * @example
 * ```ts
 * assertTag('hello.1.0'); // ok
 * assertTag('hello world'); // throws OCI_BAD_TAG
 * ```
 */
export function assertTag(tag: string): void {
  if (typeof tag === 'string' && REF_NAME_RE.test(tag)) return;
  throw new OciExportError(OciExportCodes.BAD_TAG, `Invalid tag ${JSON.stringify(tag)}`, {
    hint:
      'A tag is components of letters and digits joined by one of - . _ : @ + or --, ' +
      'separated by /, e.g. "hello.1.0" or "ocaml/dune.3.22"',
  });
}

/**
 * A zod error on one line (`manifests.0.digest: Invalid string: ...; ...`), as
 * the CLI prints errors.
 *
 * @example
 * ```ts
 * const parsed = IndexSchema.safeParse(value);
 * if (!parsed.success) console.error(describeIssues(parsed.error));
 * ```
 */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.map(String).join('.') || 'the top level'}: ${i.message}`)
    .join('; ');
}

/** Schema of a content descriptor; unknown keys (`platform`, `urls`, ...) are kept. */
export const DescriptorSchema = z.looseObject({
  mediaType: z.string(),
  digest: z.string().regex(DIGEST_RE),
  size: z.number().int().nonnegative(),
  annotations: z.record(z.string(), z.string()).optional(),
});
/** A content descriptor. */
export type Descriptor = z.infer<typeof DescriptorSchema>;

/** Schema of an image index (`index.json` or a nested index blob). */
export const IndexSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  manifests: z.array(DescriptorSchema),
});
/** `index.json`, or an image index blob. */
export type OciIndex = z.infer<typeof IndexSchema>;

/** Schema of an image manifest. */
export const ManifestSchema = z.looseObject({
  schemaVersion: z.literal(2),
  mediaType: z.string().optional(),
  config: DescriptorSchema,
  layers: z.array(DescriptorSchema),
});
/** An image manifest. */
export type OciManifest = z.infer<typeof ManifestSchema>;

/** Schema of the parts of an image config that verify reads. */
export const ConfigSchema = z.looseObject({
  architecture: z.string(),
  os: z.string(),
  rootfs: z.looseObject({ type: z.literal('layers'), diff_ids: z.array(z.string()) }),
});

/** The runtime part of an image config, as the caller gives it. */
export interface ImageConfigInput {
  Env?: string[] | undefined;
  Cmd?: string[] | undefined;
  Entrypoint?: string[] | undefined;
  WorkingDir?: string | undefined;
  User?: string | undefined;
  Labels?: Record<string, string> | undefined;
}

const ConfigInputSchema = z.strictObject({
  Env: z.array(z.string().regex(/^[^=]+=/, 'each Env entry is NAME=value')).optional(),
  Cmd: z.array(z.string()).optional(),
  Entrypoint: z.array(z.string()).optional(),
  WorkingDir: z.string().optional(),
  User: z.string().optional(),
  Labels: z.record(z.string(), z.string()).optional(),
});

/** One `history` entry of the config, one per layer. */
export interface HistoryEntry {
  created: string;
  created_by: string;
  comment?: string | undefined;
}

/** Inputs of {@link buildConfig}. */
export interface ConfigParts {
  architecture: string;
  os: string;
  created: string;
  config: ImageConfigInput | undefined;
  diffIds: readonly string[];
  history: readonly HistoryEntry[];
}

/**
 * Serialises the image config (fixed key order; only given runtime fields).
 *
 * @example
 * ```ts
 * const bytes = buildConfig({ architecture: 'amd64', os: 'linux', created, config: { Cmd: ['/bin/sh'] }, diffIds, history });
 * ```
 * @throws {OciExportError} `OCI_BAD_ARGUMENT` for a malformed runtime config.
 */
export function buildConfig(parts: ConfigParts): Buffer {
  const parsed = ConfigInputSchema.safeParse(parts.config ?? {});
  if (!parsed.success) {
    throw new OciExportError(
      OciExportCodes.BAD_ARGUMENT,
      `Invalid image config: ${describeIssues(parsed.error)}`,
      {
        hint: 'config takes Env (NAME=value strings), Cmd, Entrypoint (string arrays), WorkingDir, User (strings) and Labels (string to string)',
      },
    );
  }
  const c = parsed.data;
  const runtime = {
    ...(c.User !== undefined && { User: c.User }),
    ...(c.Env !== undefined && { Env: c.Env }),
    ...(c.Entrypoint !== undefined && { Entrypoint: c.Entrypoint }),
    ...(c.Cmd !== undefined && { Cmd: c.Cmd }),
    ...(c.WorkingDir !== undefined && { WorkingDir: c.WorkingDir }),
    ...(c.Labels !== undefined && { Labels: sortedRecord(c.Labels) }),
  };
  return json({
    created: parts.created,
    architecture: parts.architecture,
    os: parts.os,
    config: runtime,
    rootfs: { type: 'layers', diff_ids: parts.diffIds },
    history: parts.history.map((h) => ({
      created: h.created,
      created_by: h.created_by,
      ...(h.comment !== undefined && { comment: h.comment }),
    })),
  });
}

/**
 * Serialises an image manifest.
 *
 * @example
 * ```ts
 * const bytes = buildManifest(configDescriptor, layerDescriptors);
 * ```
 */
export function buildManifest(config: Descriptor, layers: readonly Descriptor[]): Buffer {
  return json({
    schemaVersion: 2,
    mediaType: MediaTypes.manifest,
    config: descriptor(config),
    layers: layers.map(descriptor),
  });
}

/**
 * A descriptor with its keys in the usual order.
 *
 * @example
 * ```ts
 * descriptor({ size: 3, digest, mediaType }); // { mediaType, digest, size }
 * ```
 */
export function descriptor(d: Descriptor): Descriptor {
  return {
    mediaType: d.mediaType,
    digest: d.digest,
    size: d.size,
    ...(d.annotations && { annotations: d.annotations }),
    ...(d.platform !== undefined && { platform: d.platform }),
  };
}

/**
 * Serialises `index.json`.
 *
 * @example
 * ```ts
 * await writeAtomic(join(layout, 'index.json'), buildIndex(index));
 * ```
 */
export function buildIndex(index: OciIndex): Buffer {
  const { schemaVersion, mediaType, manifests, ...rest } = index;
  return json({ schemaVersion, mediaType: mediaType ?? MediaTypes.index, manifests, ...rest });
}

/**
 * `sha256:<hex>` of `bytes`.
 *
 * @example
 * ```ts
 * sha256(Buffer.from('')); // 'sha256:e3b0c442...'
 * ```
 */
export function sha256(bytes: Buffer): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

function sortedRecord(record: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(record).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
  );
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8');
}

/**
 * The `architecture` of an image built on this machine, in OCI (Go) terms.
 *
 * @example
 * ```ts
 * defaultArchitecture(); // 'amd64' on x86-64
 * ```
 */
export function defaultArchitecture(): string {
  const map: Record<string, string> = {
    x64: 'amd64',
    ia32: '386',
    ppc64: 'ppc64le',
    arm: 'arm',
    arm64: 'arm64',
  };
  return map[process.arch] ?? process.arch;
}
