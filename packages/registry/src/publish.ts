/**
 * Publishing a committed layer to the cache repository.
 *
 * Order (the manifest PUT is the commit point, so a kill at any moment never
 * leaves a tag pointing at missing blobs, nor a tag whose stack's tags are
 * missing):
 * 1. the blobs: the stack's layer blobs (the exporter's cached tar+gzip,
 *    never recompressed) first, then each image's config and log beside
 *    them: each skipped when known, else HEAD (big ones), else uploaded;
 * 2. the `log-<hash>` artifact, beside the big blobs;
 * 3. once the image's blobs are up, HEAD `build-<hash>`, while the layers
 *    of its stack (each under its own `build-` tag, unless recorded as
 *    published already) put their manifests, bottom up;
 * 4. PUT its manifest.
 *
 * First writer wins: an existing tag is never overwritten. When it holds a
 * different blob for the layer than ours, the step is not reproducible: a
 * warning says so and theirs stays.
 */
import { link, mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { InUse, LayerDir, LayerMeta } from '@day11/layer';
import { LayerBlob, MediaTypes, imageConfig } from '@day11/oci-export';
import { mapLimit, TempName } from '@day11/exec';
import {
  CacheMediaTypes,
  EMPTY_CONFIG,
  buildLogManifest,
  buildManifest,
  buildTag,
  logTag,
  parseManifest,
  type BlobRef,
} from './cache-image.js';
import type { BlobSource, PushOutcome, RegistryClient } from './client.js';
import { sha256Of } from './digest-stream.js';
import { FileBody } from './file-body.js';
import { answered } from './errors.js';
import {
  baseOf,
  fsRootOf,
  loadLayer,
  logOf,
  portableSidecars,
  stackOf,
  type LocalLayer,
} from './local.js';
import * as Record from './record.js';

/** Something worth telling the user that is not an error. */
export interface RegistryWarning {
  /** `NOT_REPRODUCIBLE`: the registry has this layer with other content; theirs is kept. */
  code: 'NOT_REPRODUCIBLE' | 'SKIPPED_FILE';
  message: string;
  hash?: string | undefined;
}

/** State shared by the publishes of one cache object (one build). */
export interface PublishSession {
  /** Blob digests known to be in the repository. */
  readonly knownBlobs: Set<string>;
  /** Blob uploads in flight: a blob two images need is uploaded once. */
  readonly uploads: Map<string, Promise<PushOutcome>>;
  /** Layers known to be published: hash → manifest digest. */
  readonly published: Map<string, string>;
  /** Publishes in flight, so a layer shared by two stacks is published once. */
  readonly inflight: Map<string, Promise<PublishResult>>;
  /**
   * Tags a complete listing showed (see {@link listTags}): a tag in it exists,
   * one missing from it did not exist then, so neither needs a HEAD.
   */
  listed?: ReadonlySet<string> | undefined;
}

/** Blob uploads at once, as `skopeo copy` does. */
const DEFAULT_CONCURRENCY = 6;

/** Blobs below this size (configs, most logs) are uploaded without a HEAD first. */
const SMALL_BLOB = 64 * 1024;

/** A fresh {@link PublishSession}. */
export function newSession(): PublishSession {
  return { knownBlobs: new Set(), uploads: new Map(), published: new Map(), inflight: new Map() };
}

/**
 * Lists the repository's tags into `session` when that costs fewer requests
 * than a HEAD per layer: for publishing many layers at once (`day11 push`).
 * A listing longer than the budget is dropped, and the layers are HEADed.
 */
export async function listTags(
  ctx: {
    client: RegistryClient;
    repository: string;
    session: PublishSession;
    signal?: AbortSignal | undefined;
  },
  layers: number,
): Promise<void> {
  if (layers < 32) return;
  const { tags, complete } = await ctx.client.tags(ctx.repository, {
    pageSize: 1000,
    maxPages: Math.ceil(layers / 100),
    signal: ctx.signal,
  });
  if (complete) ctx.session.listed = new Set(tags);
}

/** Options of {@link publishLayer}. */
export interface PublishOptions {
  client: RegistryClient;
  /** The cache repository on `client`'s registry, e.g. `ns/day11-cache`. */
  repository: string;
  osDir: string;
  /** The layer's full 64-hex hash. */
  hash: string;
  /** gzip level of blobs that are not cached yet (default 6). */
  gzipLevel?: number | undefined;
  /** Blob uploads at once (default 6). */
  concurrency?: number | undefined;
  signal?: AbortSignal | undefined;
  /** Default: `process.emitWarning`. */
  onWarning?: ((warning: RegistryWarning) => void) | undefined;
  /** Shared state (a {@link RegistryCache} passes its own); default a fresh one. */
  session?: PublishSession | undefined;
}

/** What {@link publishLayer} did for the layer asked for. */
export interface PublishResult {
  hash: string;
  /**
   * `published`: this call put the tag; `present`: it was there with our
   * blob; `conflict`: it was there with another blob (kept, see the warning).
   */
  status: 'published' | 'present' | 'conflict';
  /** Digest of the manifest under the tag (ours or, on conflict, theirs). */
  manifestDigest: string;
  /** Blobs this call uploaded (the stack's publishes included). */
  uploaded: number;
  /** Bytes of those blobs. */
  uploadedBytes: number;
}

/**
 * Publishes committed layer `hash` of `osDir` (and the stack it was built on)
 * as `build-<hash>` in the cache repository. Idempotent: a layer already
 * there costs one HEAD (none for a stack layer recorded as published).
 *
 * @example
 * ```ts
 * const client = new RegistryClient({ registry: '127.0.0.1:5000' });
 * const r = await publishLayer({ client, repository: 'ns/day11-cache', osDir, hash });
 * console.log(r.status, r.uploaded);
 * ```
 * @throws {RegistryError} `REGISTRY_LAYER_MISSING` (the layer or one of its
 *   stack is not in the cache), `REGISTRY_FOREIGN_IMAGE` (the tag holds
 *   something else), and the client's errors; `OciExportError`s of the blob cache.
 */
export async function publishLayer(options: PublishOptions): Promise<PublishResult> {
  const session = options.session ?? newSession();
  const tally = { uploaded: 0, uploadedBytes: 0 };
  const result = await publishOne({ ...options, session, tally }, options.hash, false);
  // Counted where the uploads happen: a layer below is shared by the stacks above it.
  return { ...result, ...tally };
}

type Context = PublishOptions & {
  session: PublishSession;
  /** What this {@link publishLayer} call uploaded. */
  tally: { uploaded: number; uploadedBytes: number };
};

/** Publishes `hash` once per session; a layer below the one asked for trusts its record. */
function publishOne(ctx: Context, hash: string, below: boolean): Promise<PublishResult> {
  const running = ctx.session.inflight.get(hash);
  if (running) return running;
  const promise = publishFresh(ctx, hash, below).finally(() => ctx.session.inflight.delete(hash));
  ctx.session.inflight.set(hash, promise);
  return promise;
}

async function publishFresh(ctx: Context, hash: string, below: boolean): Promise<PublishResult> {
  const { client, repository, session } = ctx;
  const known = session.published.get(hash);
  if (known !== undefined) return noop(hash, known);
  const where = { registry: client.registry, repository };
  const record = await Record.recordFor(LayerDir.path({ osDir: ctx.osDir, hash }), where);
  const listed = session.listed?.has(buildTag(hash));
  // Below the layer asked for, a record is trusted: if the registry lost it, the manifest PUT says so.
  if (record && (below || listed === true)) return trusted(ctx, hash, record);
  // A layer below the one asked for, with no record, is almost always new: it is not HEADed
  // here, only right before its manifest goes up (where an existing tag still wins).
  const head =
    listed === undefined && !below
      ? await client.headManifest(repository, buildTag(hash), ctx)
      : undefined;
  if (record && head?.digest === record.manifest) return trusted(ctx, hash, record);
  const layer = await loadLayer(ctx.osDir, hash);
  if (head || listed === true) return settleExisting(ctx, layer);
  if (record) await Record.forget(layer.dir, where); // the registry lost it: publish again
  // Every layer of the stack must be here: its blob goes into this layer's image.
  for (const lower of stackOf(layer).slice(0, -1)) await loadLayer(ctx.osDir, lower);
  return publishStack(ctx, layer, below);
}

function trusted(ctx: Context, hash: string, record: Record.RegistryRecord): PublishResult {
  ctx.session.published.set(hash, record.manifest);
  ctx.session.knownBlobs.add(record.blob);
  return noop(hash, record.manifest);
}

function noop(hash: string, manifestDigest: string): PublishResult {
  return { hash, status: 'present', manifestDigest, uploaded: 0, uploadedBytes: 0 };
}

/** The tag exists: ours if it holds our blob (recorded), else theirs stays and a warning says so. */
async function settleExisting(ctx: Context, layer: LocalLayer): Promise<PublishResult> {
  const { client, repository } = ctx;
  const tag = buildTag(layer.hash);
  const fetched = await client.manifest(repository, tag, ctx);
  if (!fetched) return publishStack(ctx, layer, false); // deleted since we looked
  const theirs = parseManifest(fetched.bytes, {
    hash: layer.hash,
    digest: fetched.digest,
    origin: { registry: client.registry, repository, reference: tag },
  });
  const ours = await LayerBlob.ensure(layer.dir, { gzipLevel: ctx.gzipLevel, signal: ctx.signal });
  const theirBlob = theirs.stack.at(-1)!.digest;
  ctx.session.published.set(layer.hash, fetched.digest);
  if (theirBlob === ours.digest) {
    ctx.session.knownBlobs.add(ours.digest);
    await adoptCreation(layer.dir, theirs.meta.created_at);
    await Record.remember(layer.dir, {
      registry: client.registry,
      repository,
      manifest: fetched.digest,
      blob: ours.digest,
    });
    return noop(layer.hash, fetched.digest);
  }
  warn(ctx, {
    code: 'NOT_REPRODUCIBLE',
    hash: layer.hash,
    message:
      `Layer ${layer.hash} is already in ${client.registry}/${repository} with blob ${theirBlob}, ` +
      `but here its blob is ${ours.digest}: the step is not reproducible. The registry's copy is kept`,
  });
  return {
    hash: layer.hash,
    status: 'conflict',
    manifestDigest: fetched.digest,
    uploaded: 0,
    uploadedBytes: 0,
  };
}

/**
 * Another worker published the same layer first (a duplicate build, the
 * same blob): its record is the layer's, so this cache takes its creation
 * time, which is the images' `created`. Every cache then exports the layer
 * to the same bytes, wherever it was built.
 */
async function adoptCreation(dir: string, createdAt: string): Promise<void> {
  const meta = await LayerMeta.load(dir);
  if (meta.created_at !== createdAt) await LayerMeta.save(dir, meta, { createdAt });
}

/**
 * Publishes `layer` and what is below it. Everything that does not depend on
 * something else runs at once: once this layer's image is made, the stack's
 * blobs go up while the images below are prepared (each waits only for its
 * own blobs and stack); the small blobs and log artifacts go up beside the
 * big ones. Only the manifests wait: each after those of its stack.
 */
async function publishStack(
  ctx: Context,
  layer: LocalLayer,
  leased: boolean,
): Promise<PublishResult> {
  const stack = stackOf(layer);
  // One lease over the stack, taken before the uploads start (the lock files it writes wait
  // behind their I/O): the images below are parts of it and lease nothing more.
  const lease = leased
    ? undefined
    : await InUse.acquire({
        osDir: ctx.osDir,
        dirs: stack.map((h) => LayerDir.path({ osDir: ctx.osDir, hash: h })),
      });
  try {
    return await publishLeased(ctx, layer, stack);
  } finally {
    await lease?.release().catch(() => undefined);
  }
}

async function publishLeased(
  ctx: Context,
  layer: LocalLayer,
  stack: readonly string[],
): Promise<PublishResult> {
  // Layers below recorded as published are known first, so their blobs are not asked about.
  await mapLimit(stack.slice(0, -1), 16, (hash) => trustRecord(ctx, hash));
  // The stack's cached blobs go up at once: they are most of the time, and the registry's.
  const early = cachedBlobs(ctx, stack).then((blobs) => pushBlobs(ctx, blobs));
  const exported = stackImage(ctx, layer);
  const lowers = mapLimit(stack.slice(0, -1), ctx.concurrency ?? DEFAULT_CONCURRENCY, (hash) =>
    publishOne(ctx, hash, true),
  );
  // The small blobs and the log artifact go up beside the big ones; blobs compressed just now after.
  const prepared = exported.then((image) => prepareImage(ctx, layer, image));
  const layerBlobs = exported.then((image) =>
    pushBlobs(
      ctx,
      image.layers.map((l) => fileBlob(blobFile(image, l.digest), l)),
    ),
  );
  try {
    const up = settleAll(early, layerBlobs, prepared);
    // Everything this image needs is up: look at the tag while the layers below commit.
    const existing = up.then(() =>
      ctx.client.headManifest(ctx.repository, buildTag(layer.hash), ctx),
    );
    const [[, , ready], , found] = await settleAll(up, lowers, existing, exported);
    return await commitImage(ctx, layer, ready, found !== undefined);
  } finally {
    // Settled by now (settleAll waits for everything).
    await exported.then(
      (image) => rm(image.dir, { recursive: true, force: true }).catch(() => undefined),
      () => undefined,
    );
  }
}

/** Marks `hash` published when its record in this registry says so (the record is trusted below the layer asked for). */
async function trustRecord(ctx: Context, hash: string): Promise<void> {
  if (ctx.session.published.has(hash)) return;
  const where = { registry: ctx.client.registry, repository: ctx.repository };
  const record = await Record.recordFor(LayerDir.path({ osDir: ctx.osDir, hash }), where);
  if (record) trusted(ctx, hash, record);
}

/** The blobs of `stack` already cached in their layer directories (the others are compressed by the export). */
async function cachedBlobs(ctx: Context, stack: readonly string[]): Promise<BlobSource[]> {
  const found = await Promise.all(
    stack.map((hash) =>
      LayerBlob.find(LayerDir.path({ osDir: ctx.osDir, hash }), { gzipLevel: ctx.gzipLevel }),
    ),
  );
  return found.flatMap((b) => (b ? [fileBlob(b.file, b)] : []));
}

/** All results, once all settled (nothing left running behind a failure); the first failure wins. */
async function settleAll<T extends readonly unknown[]>(
  ...promises: { [K in keyof T]: Promise<T[K]> }
): Promise<T> {
  const settled = await Promise.allSettled(promises);
  const failed = settled.find((r) => r.status === 'rejected');
  if (failed) throw failed.reason;
  return settled.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
}

/**
 * A layer's image, ready to push: its config, and its stack's cached blobs
 * hardlinked into a temporary directory (so GC, or a cache rebuilt at another
 * gzip level, cannot pull them away mid-upload).
 */
interface StackImage {
  /** The temporary directory: `<digest hex>` per blob. */
  dir: string;
  /** Hashes, base first. */
  stack: string[];
  baseImage: string;
  layers: { digest: string; diffId: string; size: number; tarSize: number }[];
  config: { digest: string; bytes: Buffer };
}

/** The file of one of `image`'s blobs. */
function blobFile(image: StackImage, digest: string): string {
  return join(image.dir, digest.slice('sha256:'.length));
}

/**
 * The image `exportImage` would make of the layer's stack, without a layout
 * (whose fsyncs queued behind the uploads' writes: 1–3 s each here): the
 * cached blobs, compressed first where missing, and the same config. The
 * caller holds a lease on the stack.
 */
async function stackImage(ctx: Context, layer: LocalLayer): Promise<StackImage> {
  const stack = stackOf(layer);
  const dirs = stack.map((h) => LayerDir.path({ osDir: ctx.osDir, hash: h }));
  const base = await baseOf(ctx.osDir, stack[0]!);
  const dir = TempName.beside(join(ctx.osDir, 'registry-publish'));
  try {
    const onWarning = (w: { message: string }) =>
      warn(ctx, { code: 'SKIPPED_FILE', message: w.message, hash: layer.hash });
    const blobs = await mapLimit(dirs, 2, (d) =>
      LayerBlob.ensure(d, { gzipLevel: ctx.gzipLevel, signal: ctx.signal, onWarning }),
    );
    const bytes = await imageConfig({ base, layers: dirs.slice(1) }, blobs);
    await mkdir(dir);
    for (const b of blobs) await link(b.file, join(dir, b.digest.slice('sha256:'.length)));
    return {
      dir,
      stack,
      baseImage: base.image,
      layers: blobs.map(({ digest, diffId, size, tarSize }) => ({ digest, diffId, size, tarSize })),
      config: { digest: sha256Of(bytes), bytes },
    };
  } catch (err) {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
}

/** A layer's manifest, ready to go up once its layer blobs are (its small blobs and log artifact are). */
interface PreparedImage {
  manifest: Buffer;
  blobs: BlobSource[];
  ownBlob: string;
}

/** Pushes the layer's config, log and log artifact (not its layer blobs), and builds its manifest. */
async function prepareImage(
  ctx: Context,
  layer: LocalLayer,
  image: StackImage,
): Promise<PreparedImage> {
  const log = await logOf(layer.dir);
  const own = image.layers.at(-1)!;
  const small: BlobSource[] = [
    bufferBlob(image.config.bytes),
    log.file ? fileBlob(log.file, log) : bufferBlob(Buffer.alloc(0)),
    bufferBlob(EMPTY_CONFIG),
  ];
  await pushBlobs(ctx, small);
  await putLog(ctx, layer.hash, log);
  const manifest = buildManifest({
    config: {
      mediaType: layer.meta.exit_status === 0 ? MediaTypes.config : CacheMediaTypes.failedConfig,
      digest: image.config.digest,
      size: image.config.bytes.length,
    },
    stack: image.layers.map((l, i) => ({ digest: l.digest, size: l.size, hash: image.stack[i]! })),
    meta: layer.meta,
    sidecars: await portableSidecars(layer.dir),
    log,
    blob: {
      diffId: own.diffId,
      tarSize: own.tarSize,
      ...LayerBlob.encoding(ctx.gzipLevel),
    },
    fsRoot: await fsRootOf(layer.dir),
    baseImage: image.baseImage,
  });
  const blobs = [...image.layers.map((l) => fileBlob(blobFile(image, l.digest), l)), ...small];
  return { manifest, blobs, ownBlob: own.digest };
}

/**
 * The commit point: PUT the manifest, unless the tag was found to exist
 * (a HEAD made once the image's blobs were up, while the layers below committed:
 * someone may have published it meanwhile; an existing tag wins).
 */
async function commitImage(
  ctx: Context,
  layer: LocalLayer,
  prepared: PreparedImage,
  exists: boolean,
): Promise<PublishResult> {
  const { client, repository, session } = ctx;
  if (exists) return settleExisting(ctx, layer);
  const digest = await putManifest(ctx, {
    layer,
    manifest: prepared.manifest,
    blobs: prepared.blobs,
  });
  session.published.set(layer.hash, digest);
  await Record.remember(layer.dir, {
    registry: client.registry,
    repository,
    manifest: digest,
    blob: prepared.ownBlob,
  });
  return {
    hash: layer.hash,
    status: 'published',
    manifestDigest: digest,
    uploaded: 0,
    uploadedBytes: 0,
  };
}

/** The manifest PUT; when the registry lost a blob we believed it had, push it and try once more. */
async function putManifest(
  ctx: Context,
  o: { layer: LocalLayer; manifest: Buffer; blobs: BlobSource[] },
): Promise<string> {
  const { client, repository } = ctx;
  const put = () =>
    client.putManifest(
      repository,
      buildTag(o.layer.hash),
      { bytes: o.manifest, mediaType: MediaTypes.manifest },
      ctx,
    );
  try {
    return await put();
  } catch (err) {
    if (!answered(err, 400, 'BLOB_UNKNOWN')) throw err;
    for (const b of o.blobs) ctx.session.knownBlobs.delete(b.digest);
    await pushBlobs(ctx, o.blobs);
    return put();
  }
}

/** Pushes what is not known to be there (counted in the call's tally). */
async function pushBlobs(ctx: Context, blobs: readonly BlobSource[]): Promise<void> {
  const { client, repository, session } = ctx;
  const unique = [...new Map(blobs.map((b) => [b.digest, b])).values()].filter(
    (b) => !session.knownBlobs.has(b.digest),
  );
  // Uploads another call started are awaited, not given one of this call's slots.
  const theirs = unique.flatMap((b) => session.uploads.get(b.digest) ?? []);
  const ours = unique.filter((b) => !session.uploads.has(b.digest));
  await mapLimit(ours, ctx.concurrency ?? DEFAULT_CONCURRENCY, async (blob) => {
    if (session.knownBlobs.has(blob.digest)) return; // went up while this one waited
    const running = session.uploads.get(blob.digest);
    if (running) {
      await running; // someone else's upload: counted there
      return;
    }
    // Uploading a small blob again costs what asking whether it is there does.
    const skipCheck = blob.size < SMALL_BLOB;
    // Known before it leaves `uploads`, so no other caller starts it again in between.
    const upload = client
      .pushBlob(repository, blob, { signal: ctx.signal, skipCheck })
      .then((outcome) => {
        session.knownBlobs.add(blob.digest);
        return outcome;
      })
      .finally(() => session.uploads.delete(blob.digest));
    session.uploads.set(blob.digest, upload);
    const outcome = await upload;
    if (outcome === 'uploaded') {
      ctx.tally.uploaded++;
      ctx.tally.uploadedBytes += blob.size;
    }
  });
  await Promise.all(theirs);
}

/** The `log-<hash>` artifact, unless there is one. */
async function putLog(ctx: Context, hash: string, log: BlobRef): Promise<void> {
  const { client, repository } = ctx;
  if (await client.headManifest(repository, logTag(hash), ctx)) return;
  const bytes = buildLogManifest({ hash, log });
  await client.putManifest(
    repository,
    logTag(hash),
    { bytes, mediaType: MediaTypes.manifest },
    ctx,
  );
}

/** A blob read from a file, range by range. */
export function fileBlob(file: string, ref: BlobRef): BlobSource {
  return {
    digest: ref.digest,
    size: ref.size,
    open: (range) => new FileBody(file, range?.start ?? 0, range?.end ?? ref.size),
  };
}

/** A blob held in memory (configs, manifests' small companions). */
export function bufferBlob(bytes: Buffer): BlobSource {
  return {
    digest: sha256Of(bytes),
    size: bytes.length,
    open: (range) => (range ? bytes.subarray(range.start, range.end) : bytes),
  };
}

function warn(ctx: Context, warning: RegistryWarning): void {
  if (ctx.onWarning) ctx.onWarning(warning);
  else process.emitWarning(warning.message, { code: `DAY11_REGISTRY_${warning.code}` });
}
