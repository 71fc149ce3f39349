/**
 * `exportImage`: a stack of day11 layers as a multi-layer OCI image, one blob
 * per layer (base first, the target last), tagged in an image layout.
 *
 * 1. Lease every layer (so `Gc.prune` leaves them alone while they are read).
 * 2. Make sure each layer's blob is cached in its directory (`LayerBlob.ensure`),
 *    compressing the missing ones in parallel on a shared pool of slots.
 *    With `maxLayers`, a deeper stack merges contiguous runs of layers into
 *    one blob each (the squash hook, `squash.ts`).
 * 3. Add the blobs to the layout (`Layout.linkBlob`: hardlinks from the cache,
 *    a copy across filesystems; idempotent), outside the lock.
 * 4. Under the layout lock: link again any blob a concurrent `Layout.gc`
 *    removed meanwhile, add config and manifest (`Layout.putBlob`), and
 *    replace the tag's entry in `index.json`.
 */
import { basename, dirname, resolve } from 'node:path';
import { InUse, LayerMeta, Lineage, type Base } from '@day11/layer';
import { OciExportCodes, OciExportError } from './errors.js';
import { levelOf } from './gzip.js';
import * as LayerBlob from './layer-blob.js';
import * as Layout from './layout.js';
import {
  MediaTypes,
  assertTag,
  buildConfig,
  buildManifest,
  defaultArchitecture,
  sha256,
  type Descriptor,
  type HistoryEntry,
  type ImageConfigInput,
} from './oci.js';
import { compressionSlots, concurrencyOf, mapLimit } from './pool.js';
import {
  checkSquashOptions,
  squashLayers,
  type ImageLayer,
  type SquashOptions,
  type SquashProgress,
} from './squash.js';
import type { WalkWarning } from './walk.js';

/** Progress of an export, reported to {@link ExportOptions.onProgress}. */
export type ExportProgress =
  | { phase: 'compress'; index: number; dir: string; tarBytes: number }
  | {
      phase: 'layer';
      index: number;
      total: number;
      dir: string;
      digest: string;
      size: number;
      cached: boolean;
    }
  | { phase: 'tagged'; tag: string; manifestDigest: string }
  /** A merged run (with `maxLayers`); its blob's `layer` event follows, indexed among the runs. */
  | SquashProgress;

/** Options of {@link exportImage}. */
export interface ExportOptions extends SquashOptions {
  /** The OCI image layout directory; created when missing. A directory holding files but no `oci-layout` is refused. */
  layout: string;
  /** The tag (`org.opencontainers.image.ref.name`), e.g. `0install.2.18`. */
  tag: string;
  /** The base layer: the image's first layer. */
  base: Base;
  /** Layer directories above the base, bottom to top (install order, the target last). */
  layers: readonly string[];
  /**
   * What made each layer of `layers` (same order), for the config's
   * `history[].created_by`, e.g. `day11 step hello: make install`; default
   * `day11 build build-xxxxxxxxxxxx`.
   */
  createdBy?: readonly (string | undefined)[] | undefined;
  /** Runtime config of the image: Env, Cmd, Entrypoint, WorkingDir, User, Labels. */
  config?: ImageConfigInput | undefined;
  /** Default: this machine's, in OCI terms (`amd64`, `arm64`, ...). */
  architecture?: string | undefined;
  /** Default `linux`. */
  os?: string | undefined;
  /**
   * The image's creation time. Default: `SOURCE_DATE_EPOCH` when set, else the
   * newest layer's `created_at`, so re-exporting the same layers gives the same image.
   */
  created?: Date | string | undefined;
  /** gzip level 0–9, default 6. */
  gzipLevel?: number | undefined;
  /** Chunks (of any layer) compressed at once; default the number of cores. */
  concurrency?: number | undefined;
  /** Aborting stops the export; nothing half-written stays visible. */
  signal?: AbortSignal | undefined;
  onProgress?: ((event: ExportProgress) => void) | undefined;
  /** Called for each file skipped (sockets); default `process.emitWarning`. */
  onWarning?: ((warning: WalkWarning) => void) | undefined;
  /** How long to wait for the layout lock (default 5 minutes). */
  lockTimeoutMs?: number | undefined;
}

/** One layer of an exported image. */
export interface ExportedLayer {
  dir: string;
  /** Blob digest (of the gzip). */
  digest: string;
  /** Digest of the uncompressed tar. */
  diffId: string;
  /** Blob size in bytes. */
  size: number;
  /** True when the blob came from the layer's cache (nothing compressed). */
  cached: boolean;
  /** For a merged run (with `maxLayers`): the layer directories it holds, bottom to top. */
  squashed?: string[];
}

/** What {@link exportImage} made. */
export interface ExportResult {
  manifestDigest: string;
  configDigest: string;
  /** Base first, the target last. */
  layers: ExportedLayer[];
}

/**
 * Exports `base` + `layers` as image `tag` in `layout`.
 *
 * @example
 * ```ts
 * const { manifestDigest, layers } = await exportImage({
 *   layout: '/tmp/oci',
 *   tag: '0install.2.18',
 *   base,                       // from Import.fromDirectory / fromDocker
 *   layers: [ocamlDir, duneDir, appDir],
 *   config: { Env: ['PATH=/usr/bin:/bin'], Cmd: ['/bin/sh'] },
 * });
 * // skopeo copy oci:/tmp/oci:0install.2.18 docker://registry.example/0install:2.18
 * ```
 * @throws {OciExportError} `OCI_BAD_TAG`, `OCI_BAD_ARGUMENT`, `OCI_LAYER_NOT_FOUND`,
 *   `OCI_UNSUPPORTED_UPPER`, `OCI_INDEX_CORRUPT`, `OCI_LAYOUT_INVALID`, `OCI_WRITE_FAILED`, ...;
 *   `LayerError`s for leases and locks; the signal's reason when aborted.
 */
export async function exportImage(options: ExportOptions): Promise<ExportResult> {
  const dirs = checkOptions(options);
  // A layer exported without what it was built on is not the image its build saw.
  await Lineage.check({ base: options.base, layers: dirs.slice(1) });
  // Before anything is written there: what a kill leaves, recovering the cache finds.
  await Layout.remember({ osDir: dirname(dirs[0]!), layout: options.layout });
  await Layout.init(options.layout);
  // Fail fast on a corrupt index.json, before compressing anything (read again under the lock).
  await Layout.readIndex(options.layout);
  const leases = await leaseAll(dirs);
  let squashed;
  try {
    const blobs = await ensureBlobs(dirs, options);
    squashed = await squashLayers({
      dirs,
      blobs,
      options,
      ensureBlobs: (more) => ensureBlobs(more, options),
    });
    const layers = squashed?.layers ?? dirs.map((dir, i) => ({ blob: blobs[i]!, members: [dir] }));
    const config = await configBlob(layers, options);
    const manifestDigest = await publish(options, layers, config);
    options.onProgress?.({ phase: 'tagged', tag: options.tag, manifestDigest });
    return {
      manifestDigest,
      configDigest: sha256(config),
      layers: layers.map(({ blob: { dir, digest, diffId, size, cached }, members }) => ({
        dir,
        digest,
        diffId,
        size,
        cached,
        ...(members.length > 1 && { squashed: [...members] }),
      })),
    };
  } finally {
    await squashed?.release();
    await Promise.all(leases.map((l) => l.release().catch(() => undefined)));
  }
}

function checkOptions(options: ExportOptions): string[] {
  assertTag(options.tag);
  if (typeof options.base?.dir !== 'string' || typeof options.layers?.length !== 'number') {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, 'No base layer or layer list given', {
      hint: 'Pass base: { hash, dir, image } and layers: an array of layer directories',
    });
  }
  levelOf(options.gzipLevel);
  concurrencyOf(options.concurrency);
  checkSquashOptions(options);
  if (typeof options.layout !== 'string' || options.layout === '') {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, 'No layout directory given', {
      hint: 'Pass layout: the OCI image layout directory to write into',
    });
  }
  const dirs = [options.base.dir, ...options.layers].map((d) => resolve(d));
  const duplicate = dirs.find((d, i) => dirs.indexOf(d) !== i);
  if (duplicate) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `Layer ${duplicate} is listed twice`, {
      path: duplicate,
      hint: 'List the base once and each dependency layer once, bottom to top',
    });
  }
  return dirs;
}

/** Leases the layers, grouped by cache directory. */
async function leaseAll(dirs: readonly string[]): Promise<InUse.Lease[]> {
  const byOsDir = new Map<string, string[]>();
  for (const dir of dirs) byOsDir.set(dirname(dir), [...(byOsDir.get(dirname(dir)) ?? []), dir]);
  const leases: InUse.Lease[] = [];
  try {
    for (const [osDir, group] of byOsDir) leases.push(await InUse.acquire({ osDir, dirs: group }));
  } catch (err) {
    await Promise.all(leases.map((l) => l.release().catch(() => undefined)));
    throw err;
  }
  return leases;
}

async function ensureBlobs(
  dirs: readonly string[],
  options: ExportOptions,
): Promise<LayerBlob.LayerBlob[]> {
  const slots = compressionSlots(options.concurrency);
  const onWarning = options.onWarning ?? defaultWarning;
  // As many layers in progress as slots: a layer waiting on its fsync or on
  // another process's lock leaves its slots to the others.
  return mapLimit(dirs, slots.size, async (dir, index) => {
    const blob = await LayerBlob.ensure(dir, {
      gzipLevel: options.gzipLevel,
      slots,
      signal: options.signal,
      onWarning,
      onProgress: (tarBytes) => options.onProgress?.({ phase: 'compress', index, dir, tarBytes }),
    });
    const { digest, size, cached } = blob;
    options.onProgress?.({ phase: 'layer', index, total: dirs.length, dir, digest, size, cached });
    return blob;
  });
}

function defaultWarning(warning: WalkWarning): void {
  process.emitWarning(warning.message, { code: 'DAY11_OCI_SKIPPED' });
}

/** What an image's config is made of, besides its layers. */
export type ConfigOptions = Pick<
  ExportOptions,
  'base' | 'layers' | 'createdBy' | 'config' | 'architecture' | 'os' | 'created'
>;

/**
 * The config blob {@link exportImage} writes for this stack (no squash),
 * without writing a layout: for a publisher that sends the cached blobs
 * elsewhere, such as a registry. `blobs` are the layers' cached blobs
 * (`LayerBlob.ensure`), base first.
 *
 * @example
 * ```ts
 * const blobs = await Promise.all([base.dir, ...layers].map((d) => LayerBlob.ensure(d)));
 * const config = await imageConfig({ base, layers }, blobs);
 * ```
 * @throws {OciExportError} `OCI_BAD_ARGUMENT` for a bad `created` or a blob count that does not match.
 */
export async function imageConfig(
  options: ConfigOptions,
  blobs: readonly LayerBlob.LayerBlob[],
): Promise<Buffer> {
  const dirs = [options.base.dir, ...options.layers].map((d) => resolve(d));
  if (blobs.length !== dirs.length) {
    throw new OciExportError(
      OciExportCodes.BAD_ARGUMENT,
      `${blobs.length} blobs given for ${dirs.length} layers`,
      { hint: 'Pass one cached blob per layer, base first' },
    );
  }
  return configBlob(
    dirs.map((dir, i) => ({ blob: blobs[i]!, members: [dir] })),
    options,
  );
}

async function configBlob(layers: readonly ImageLayer[], options: ConfigOptions): Promise<Buffer> {
  const fixed = fixedCreated(options.created);
  const createdBy = new Map(
    options.layers.flatMap((dir, i) => {
      const line = options.createdBy?.[i];
      return line === undefined ? [] : [[resolve(dir), line] as const];
    }),
  );
  const history: HistoryEntry[] = [];
  for (const [i, { members }] of layers.entries()) {
    const names = members.map((dir) => basename(dir)).join(' ');
    history.push({
      created: fixed ?? (await newestCreated(members)) ?? EPOCH,
      created_by:
        i === 0
          ? `day11 import ${options.base.image}`
          : members.length > 1
            ? `day11 squash ${names}`
            : (createdBy.get(members[0]!) ?? `day11 build ${names}`),
    });
  }
  const newest =
    history
      .map((h) => h.created)
      .sort()
      .at(-1) ?? EPOCH;
  return buildConfig({
    architecture: options.architecture ?? defaultArchitecture(),
    os: options.os ?? 'linux',
    created: fixed ?? newest,
    config: options.config,
    diffIds: layers.map((l) => l.blob.diffId),
    history,
  });
}

const EPOCH = '1970-01-01T00:00:00Z';

/** When the newest of `dirs` was made (a merged run was made when its newest layer was). */
async function newestCreated(dirs: readonly string[]): Promise<string | undefined> {
  const times = await Promise.all(
    dirs.map(async (dir) =>
      normalise((await LayerMeta.find(dir).catch(() => undefined))?.created_at),
    ),
  );
  return times
    .filter((t) => t !== undefined)
    .sort()
    .at(-1);
}

/** The creation time fixed by the caller or SOURCE_DATE_EPOCH, as RFC 3339 UTC. */
function fixedCreated(created: Date | string | undefined): string | undefined {
  if (created !== undefined) {
    const date = created instanceof Date ? created : new Date(created);
    if (Number.isNaN(date.getTime())) {
      throw new OciExportError(
        OciExportCodes.BAD_ARGUMENT,
        `Invalid created time ${String(created)}`,
        {
          hint: 'Pass a Date or an ISO-8601 string',
        },
      );
    }
    return iso(date);
  }
  const epoch = process.env['SOURCE_DATE_EPOCH'];
  if (epoch === undefined || epoch === '') return undefined;
  if (!/^\d+$/.test(epoch)) {
    throw new OciExportError(
      OciExportCodes.BAD_ARGUMENT,
      `Invalid SOURCE_DATE_EPOCH ${JSON.stringify(epoch)}`,
      {
        hint: 'SOURCE_DATE_EPOCH is whole seconds since 1970; unset it or fix it',
      },
    );
  }
  return iso(new Date(Number(epoch) * 1000));
}

function normalise(text: string | undefined): string | undefined {
  if (text === undefined) return undefined;
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? undefined : iso(date);
}

/** RFC 3339 in UTC, whole seconds (what Go's time.Time round-trips exactly). */
function iso(date: Date): string {
  return date.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

// ---------------------------------------------------------------- publishing

/**
 * Adds the blobs to the layout, then, under the layout lock, makes sure they
 * are still there (a concurrent `Layout.gc` may have removed them as
 * unreferenced), writes config and manifest, and tags the manifest.
 */
async function publish(
  options: ExportOptions,
  image: readonly ImageLayer[],
  config: Buffer,
): Promise<string> {
  const { layout } = options;
  const unique = uniqueByDigest(image.map((l) => l.blob));
  // Outside the lock: a copy across filesystems may take a while.
  for (const blob of unique) await Layout.linkBlob(layout, blob);
  const configDesc = { mediaType: MediaTypes.config, digest: sha256(config), size: config.length };
  const layers: Descriptor[] = image.map(({ blob: b, annotations }) => ({
    mediaType: MediaTypes.layer,
    digest: b.digest,
    size: b.size,
    ...(annotations && { annotations }),
  }));
  const manifest = buildManifest(configDesc, layers);
  const manifestDigest = sha256(manifest);
  await Layout.withLock(
    layout,
    async () => {
      // Read first: a corrupt index.json must fail the export before the tag is written.
      const index = await Layout.readIndex(layout);
      for (const blob of unique) await Layout.linkBlob(layout, blob);
      await Layout.putBlob(layout, config);
      await Layout.putBlob(layout, manifest);
      const entry = {
        mediaType: MediaTypes.manifest,
        digest: manifestDigest,
        size: manifest.length,
        platform: {
          architecture: options.architecture ?? defaultArchitecture(),
          os: options.os ?? 'linux',
        },
      };
      await Layout.writeIndex(layout, Layout.withTag(index, options.tag, entry));
    },
    { timeoutMs: options.lockTimeoutMs, signal: options.signal },
  );
  return manifestDigest;
}

function uniqueByDigest(blobs: readonly LayerBlob.LayerBlob[]): LayerBlob.LayerBlob[] {
  const seen = new Set<string>();
  return blobs.filter((b) => !seen.has(b.digest) && seen.add(b.digest));
}
