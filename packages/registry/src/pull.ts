/**
 * Pulling a layer by hash from the cache repository into a local cache.
 *
 * The layers of its stack come first (each from its own `build-` tag, the
 * base as a base layer), so a visible layer always has its stack. The
 * layer's blob is downloaded, digest checked, to a temporary file (kept as
 * the layer's cached blob, so a later export or push compresses nothing),
 * then read back through gunzip and a diff_id check into `@day11/layer`'s
 * safe extraction, which turns `.wh.<name>` back into
 * overlay whiteouts and `.wh..wh..opq` into opaque directories. The tree is
 * committed with `Commit.commit` and the `layer.json`, log and sidecars the
 * publisher recorded: a pulled layer is indistinguishable from a built one.
 *
 * Everything is written under `.day11-tmp-<pid>-…` names in the cache and
 * renamed into place at the end: a failure or a kill leaves no partial
 * layer, and `Recover.sweep` removes the temporaries of a killed process.
 */
import { writeSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Commit, Hash, Import, LayerDir, Lock } from '@day11/layer';
import { LayerBlob } from '@day11/oci-export';
import { mapLimit, TempName } from '@day11/exec';
import { buildTag, parseManifest, type CacheImage } from './cache-image.js';
import type { RegistryClient } from './client.js';
import { extractLayer } from './extract-layer.js';
import { RegistryCodes, RegistryError, isAbort, messageOf, registryCause } from './errors.js';
import { applyFsRoot, isCommitted, stackOf } from './local.js';
import * as Record from './record.js';

/** State shared by the pulls of one cache object: a layer wanted twice is pulled once. */
export interface PullSession {
  readonly inflight: Map<string, Promise<PullStatus>>;
}

/** A fresh {@link PullSession}. */
export function newPullSession(): PullSession {
  return { inflight: new Map() };
}

/** Options of {@link pullLayer}. */
export interface PullOptions {
  client: RegistryClient;
  /** The cache repository on `client`'s registry. */
  repository: string;
  osDir: string;
  /** The layer's full 64-hex hash. */
  hash: string;
  /** Layers of the stack downloaded at once (default 4). */
  concurrency?: number | undefined;
  signal?: AbortSignal | undefined;
  session?: PullSession | undefined;
  /** The layer's manifest when the caller has it already (a lookup read it). */
  manifest?: { bytes: Buffer; digest: string } | undefined;
}

/** `pulled`: committed by this call; `present`: it was in the cache; `missing`: the registry lacks it (or part of its stack). */
export type PullStatus = 'pulled' | 'present' | 'missing';

/** What {@link pullLayer} did. */
export interface PullResult {
  hash: string;
  status: PullStatus;
  /** Hashes committed by this call, the stack's included, bottom first. */
  pulled: string[];
}

/**
 * Brings layer `hash` (and the stack it was built on) from the cache
 * repository into `osDir`.
 *
 * @example
 * ```ts
 * const client = new RegistryClient({ registry: '127.0.0.1:5000' });
 * const { status } = await pullLayer({ client, repository: 'ns/day11-cache', osDir, hash });
 * ```
 * @throws {RegistryError} `REGISTRY_FOREIGN_IMAGE`, `REGISTRY_MANIFEST_INVALID`,
 *   `REGISTRY_DIGEST_MISMATCH`, `REGISTRY_TRUNCATED`, `REGISTRY_UNSAFE_LAYER`,
 *   `REGISTRY_WRITE_FAILED` and the client's errors. Nothing half-written stays.
 */
export async function pullLayer(options: PullOptions): Promise<PullResult> {
  const pulled: string[] = [];
  const ctx: Context = { ...options, session: options.session ?? newPullSession(), pulled };
  const status = await pullOne(ctx, options.hash, options.manifest);
  return { hash: options.hash, status, pulled };
}

type Context = PullOptions & { session: PullSession; pulled: string[] };

function pullOne(
  ctx: Context,
  hash: string,
  manifest?: { bytes: Buffer; digest: string },
): Promise<PullStatus> {
  const running = ctx.session.inflight.get(hash);
  if (running) return running;
  const promise = pullFresh(ctx, hash, manifest).finally(() => ctx.session.inflight.delete(hash));
  ctx.session.inflight.set(hash, promise);
  return promise;
}

async function pullFresh(
  ctx: Context,
  hash: string,
  given?: { bytes: Buffer; digest: string },
): Promise<PullStatus> {
  if (await isCommitted(ctx.osDir, hash)) return 'present';
  const image = await readImage(ctx, hash, given);
  if (!image) return 'missing';
  const below = image.stack.slice(0, -1).map((l) => l.hash);
  // The stack comes in while this layer's blob is extracted; it is committed after them.
  const stack = mapLimit(below, ctx.concurrency ?? 4, (h) => pullOne(ctx, h));
  stack.catch(() => undefined); // awaited below; never an unhandled rejection meanwhile
  const status = await Lock.withLayer(
    { osDir: ctx.osDir, hash, timeoutMs: Infinity, signal: ctx.signal },
    async () => {
      if (await isCommitted(ctx.osDir, hash)) return 'present';
      return extractAndCommit(ctx, image, stack);
    },
  ).finally(() => stack.catch(() => undefined)); // settled before we return or throw
  if (status === 'pulled') ctx.pulled.push(hash);
  return status;
}

/** The `build-<hash>` image, checked for consistency; `undefined` when the tag is absent. */
async function readImage(
  ctx: Context,
  hash: string,
  given?: { bytes: Buffer; digest: string },
): Promise<CacheImage | undefined> {
  const { client, repository } = ctx;
  const tag = buildTag(hash);
  const fetched = given ?? (await client.manifest(repository, tag, ctx));
  if (!fetched) return undefined;
  const origin = { registry: client.registry, repository, reference: tag };
  const image = parseManifest(fetched.bytes, { hash, digest: fetched.digest, origin });
  const expected = stackOf({ hash, meta: image.meta });
  const actual = image.stack.map((l) => l.hash);
  const baseName = image.sidecars[Import.SIDECAR]?.['image'];
  const why =
    expected.join() !== actual.join()
      ? 'its layers are not the stack its layer.json names'
      : expected.length === 1 &&
          typeof baseName === 'string' &&
          Hash.baseHash({ image: baseName }) !== hash
        ? `its base.json names image ${JSON.stringify(baseName)}, whose hash is not ${hash}`
        : undefined;
  if (why) {
    throw new RegistryError(
      RegistryCodes.MANIFEST_INVALID,
      `${client.registry}/${repository}:${tag} is inconsistent: ${why}`,
      {
        registry: client.registry,
        repository,
        digest: fetched.digest,
        hint: 'The image is damaged or was edited; delete the tag so the layer is built and published again',
      },
    );
  }
  return image;
}

/**
 * Downloads, checks and extracts the layer's own blob, waits for its stack,
 * then commits it (`missing` when part of the stack is not in the registry).
 */
async function extractAndCommit(
  ctx: Context,
  image: CacheImage,
  stack: Promise<PullStatus[]>,
): Promise<PullStatus> {
  const { osDir, hash } = { osDir: ctx.osDir, hash: image.hash };
  const name = LayerDir.name(hash);
  const upper = TempName.beside(LayerDir.path({ osDir, hash }));
  const gz = TempName.beside(join(osDir, `${name}.tar.gz`));
  const log = TempName.beside(join(osDir, `${name}.log`));
  const own = image.stack.at(-1)!;
  try {
    await mkdir(osDir, { recursive: true });
    await mkdir(upper, { mode: 0o700 });
    const tar = await extractBlob(ctx, { image, upper, gz });
    await applyFsRoot(upper, image.fsRoot);
    if (image.log.size > 0) await download(ctx, image.log, log);
    if ((await stack).includes('missing')) return 'missing';
    const { dir, committed } = await Commit.commit({
      osDir,
      hash,
      upper,
      meta: image.meta,
      log: image.log.size > 0 ? { file: log } : undefined,
      sidecars: image.sidecars,
    });
    if (committed && LayerBlob.knownFormat(image.blob.format)) {
      const { diffId, format, level, chunkSize } = image.blob;
      await LayerBlob.adopt(dir, {
        file: gz,
        digest: own.digest,
        diffId,
        size: own.size,
        tarSize: tar.bytes,
        encoding: { format, level, chunkSize },
      }).catch(() => undefined); // only a cache: a later export compresses again
    }
    await Record.remember(dir, {
      registry: ctx.client.registry,
      repository: ctx.repository,
      manifest: image.digest,
      blob: own.digest,
    });
    return committed ? 'pulled' : 'present';
  } catch (err) {
    throw asPullError(ctx, image, err);
  } finally {
    await Promise.all(
      [upper, gz, log].map((p) => rm(p, { recursive: true, force: true }).catch(() => undefined)),
    );
  }
}

/**
 * Downloads the blob into `gz` (verified; kept as the layer's cached blob),
 * then extracts it into `upper`; resolves with the tar's size. Downloading
 * first lets the bytes go straight from the socket to the file (no
 * allocation per chunk, see `zero-copy-get.ts`); reading the file back
 * comes from the page cache.
 */
async function extractBlob(
  ctx: Context,
  o: { image: CacheImage; upper: string; gz: string },
): Promise<{ bytes: number }> {
  const own = o.image.stack.at(-1)!;
  await download(ctx, own, o.gz);
  const { tarBytes } = await extractLayer({
    body: { file: o.gz },
    gzip: true,
    diffId: o.image.blob.diffId,
    dest: o.upper,
    whiteouts: 'overlay',
    where: { registry: ctx.client.registry, repository: ctx.repository, digest: own.digest },
    label: `layer ${o.image.hash} (blob ${own.digest} of ${ctx.client.registry}/${ctx.repository})`,
    signal: ctx.signal,
  });
  return { bytes: tarBytes };
}

/** Downloads a blob to a new `file`, verified, and syncs it. */
async function download(
  ctx: Context,
  blob: { digest: string; size: number },
  file: string,
): Promise<void> {
  const handle = await open(file, 'wx', 0o644);
  try {
    await ctx.client.blobTo(ctx.repository, blob, (piece) => writeAll(handle.fd, piece), ctx);
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/**
 * Synchronous writes, as the extractor's: each lands in the page cache in
 * microseconds, and the piece is only valid during the call.
 */
function writeAll(fd: number, piece: Buffer): void {
  for (let at = 0; at < piece.length;) at += writeSync(fd, piece, at);
}

/** Our own errors and aborts pass; anything else is a failure to store the layer. */
function asPullError(ctx: Context, image: CacheImage, err: unknown): unknown {
  if (isAbort(err, ctx.signal)) return err;
  const ours = registryCause(err);
  if (ours) return ours;
  return new RegistryError(
    RegistryCodes.WRITE_FAILED,
    `Cannot store layer ${image.hash} pulled from ${ctx.client.registry}/${ctx.repository}: ${messageOf(err)}`,
    {
      registry: ctx.client.registry,
      repository: ctx.repository,
      digest: image.stack.at(-1)!.digest,
      path: ctx.osDir,
      cause: err,
      hint: 'Check free space and permissions of the cache (pulling keeps owners and devices: run as root)',
    },
  );
}
