/**
 * The per-layer cache of a layer's OCI blob: `layer.tar.gz` and its digests
 * (`layer.tar.gz.digests`, JSON), kept inside the layer directory beside
 * `fs/`. Built once, under a per-layer lock (`{osDir}/.locks/build-xxxxxxxxxxxx.oci.lock`,
 * separate from the layer's build lock, so a long compression never holds up
 * builds or leases); every later export hardlinks the blob from it and
 * compresses nothing.
 *
 * The digests file is written last and records the inode and size of the
 * `layer.tar.gz` it describes, so a reader never pairs digests with another
 * file. It is not a sidecar (`*.json`) on purpose: it says nothing about what
 * kind of layer this is.
 */
import { mkdir, open, readFile, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { LayerDir, Lock } from '@day11/layer';
import { z } from 'zod';
import { OciExportCodes, OciExportError, fsError } from './errors.js';
import { writeAll, writeAtomic } from './files.js';
import { type GzipEngine, fastestEngine, gzipChunks, levelOf } from './gzip.js';
import { DEFAULT_CHUNK_SIZE } from './layer-tar.js';
import { Semaphore, compressionSlots } from './pool.js';
import { TarThread } from './tar-thread.js';
import type { WalkWarning } from './walk.js';
import { TempName } from '@day11/exec';

/** The cached blob, inside the layer directory. */
export const CACHE_FILE = 'layer.tar.gz';
/** Its digests, inside the layer directory. */
export const DIGESTS_FILE = 'layer.tar.gz.digests';
/**
 * Versions of the tar + gzip encoding: 1, one gzip member (zlib); 2, one
 * member per chunk (libdeflate; see `gzip.ts`). A cache of another version
 * than {@link encoding}'s is rebuilt.
 */
const FORMAT_OF = { zlib: 1, libdeflate: 2 } as const satisfies Record<GzipEngine, number>;
/** Every version of the encoding this release can cache. */
export const FORMATS: readonly number[] = Object.values(FORMAT_OF);

function engineOf(format: number): GzipEngine | undefined {
  return (Object.keys(FORMAT_OF) as GzipEngine[]).find((engine) => FORMAT_OF[engine] === format);
}

const RecordSchema = z.object({
  format: z.number(),
  level: z.number(),
  chunkSize: z.number(),
  digest: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  diffId: z.string().regex(/^sha256:[0-9a-f]{64}$/),
  size: z.number().int().nonnegative(),
  tarSize: z.number().int().nonnegative(),
  ino: z.number().int(),
});

/** A layer's blob, as cached in its directory. */
export interface LayerBlob {
  /** The layer directory. */
  dir: string;
  /** The cached `layer.tar.gz`. */
  file: string;
  /** `sha256:<hex>` of the gzip (the blob digest). */
  digest: string;
  /** `sha256:<hex>` of the tar (the diff_id). */
  diffId: string;
  /** Bytes of the gzip. */
  size: number;
  /** Bytes of the tar. */
  tarSize: number;
  /** True when it was already cached; false when this call built it. */
  cached: boolean;
  /** Inode of `file` that these digests describe (a rebuild at another level replaces it). */
  ino: number;
}

/** Options of {@link ensure}. */
export interface EnsureOptions {
  /** gzip level 0–9 (default 6). A cache made at another level is rebuilt. */
  gzipLevel?: number | undefined;
  /** Compression slots to share with other layers (default: a pool of `concurrency`). */
  slots?: Semaphore | undefined;
  /** Chunks compressed at once when `slots` is not given (default: the number of cores). */
  concurrency?: number | undefined;
  /** Aborting stops the build (nothing is cached) or the wait for another process's build. */
  signal?: AbortSignal | undefined;
  /** Called for each file skipped (sockets). */
  onWarning?: ((warning: WalkWarning) => void) | undefined;
  /** Called as the tar grows, with its bytes so far. */
  onProgress?: ((tarBytes: number) => void) | undefined;
}

/**
 * How a blob was encoded: with equal encodings, equal trees give equal bytes.
 * A blob made elsewhere (pulled from a registry) is cached under the encoding
 * it was made with, and found by {@link find} only at that gzip level.
 */
export interface Encoding {
  /** Version of the tar + gzip encoding, one of {@link FORMATS}. */
  format: number;
  /** gzip level 0–9. */
  level: number;
  /** Bytes of tar per independently compressed chunk. */
  chunkSize: number;
}

/**
 * The encoding this version writes here at `gzipLevel` (default 6): format 2
 * where libdeflate is installed (unless `DAY11_GZIP_ENGINE=zlib`), else 1.
 *
 * @example
 * ```ts
 * LayerBlob.encoding(); // { format: 2, level: 6, chunkSize: 1048576 }
 * ```
 */
export function encoding(gzipLevel?: number): Encoding {
  return {
    format: FORMAT_OF[fastestEngine()],
    level: levelOf(gzipLevel),
    chunkSize: DEFAULT_CHUNK_SIZE,
  };
}

/** True for an encoding version this release can cache (one of {@link FORMATS}). */
export function knownFormat(format: number): boolean {
  return engineOf(format) !== undefined;
}

/** A blob made elsewhere, for {@link adopt}. */
export interface AdoptedBlob {
  /**
   * The gzip file, on the filesystem of `dir` (e.g. a temporary file in the
   * cache). Ownership passes to {@link adopt}: it is moved into place or deleted.
   */
  file: string;
  /** `sha256:<hex>` of the gzip; the caller has verified it. */
  digest: string;
  /** `sha256:<hex>` of the tar; the caller has verified it. */
  diffId: string;
  /** Bytes of the gzip. */
  size: number;
  /** Bytes of the tar. */
  tarSize: number;
  /** The encoding it was made with. */
  encoding: Encoding;
}

/**
 * Caches a blob made elsewhere (a pulled layer's, verified by the caller
 * against its digest and diff_id) as the blob of layer `dir`, so a later
 * export or push compresses nothing. When the layer already has a cached
 * blob, that one stays and `blob.file` is deleted. Resolves with the cached blob.
 *
 * @example
 * ```ts
 * await LayerBlob.adopt(dir, { file: tempGz, digest, diffId, size, tarSize, encoding: LayerBlob.encoding() });
 * ```
 * @throws {OciExportError} `OCI_BAD_ARGUMENT` (not a layer dir, bad digests), `OCI_WRITE_FAILED`;
 *   lock errors of `@day11/layer`.
 */
export async function adopt(dir: string, blob: AdoptedBlob): Promise<LayerBlob> {
  const lockfilePath = await lockPath(dir);
  try {
    assertAdoptable(dir, blob);
    return await Lock.withPath(join(dir, CACHE_FILE), () => adoptLocked(dir, blob), {
      lockfilePath,
      timeoutMs: Infinity,
    });
  } finally {
    await rm(blob.file, { force: true });
  }
}

async function adoptLocked(dir: string, blob: AdoptedBlob): Promise<LayerBlob> {
  const existing = await find(dir, { gzipLevel: blob.encoding.level });
  if (existing) return existing;
  const file = join(dir, CACHE_FILE);
  try {
    const st = await stat(blob.file);
    if (st.size !== blob.size) throw new Error(`it has ${st.size} bytes, not ${blob.size}`);
    await rename(blob.file, file);
    const { digest, diffId, size, tarSize } = blob;
    const record = { ...blob.encoding, digest, diffId, size, tarSize, ino: st.ino };
    await writeAtomic(join(dir, DIGESTS_FILE), `${JSON.stringify(record, null, 2)}\n`);
    return { dir, file, digest, diffId, size, tarSize, cached: true, ino: st.ino };
  } catch (err) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      `Cannot cache ${blob.file} as the blob`,
      file,
      err,
      'Check free space and permissions of the layer directory',
    );
  }
}

function assertAdoptable(dir: string, blob: AdoptedBlob): void {
  const parsed = RecordSchema.safeParse({ ...blob.encoding, ...blob, ino: 0 });
  if (parsed.success && knownFormat(blob.encoding.format)) return;
  throw new OciExportError(
    OciExportCodes.BAD_ARGUMENT,
    `Cannot cache a blob for ${dir}: its digests or encoding are malformed, or of another format`,
    { path: blob.file, hint: 'Pass sha256 digests, sizes and the encoding the blob was made with' },
  );
}

/**
 * The cached blob of layer `dir`, or `undefined` when there is none for this
 * gzip level (or it is incomplete). Reads only; never builds.
 *
 * @example
 * ```ts
 * const blob = await LayerBlob.find('/var/cache/day11/build-0123456789ab');
 * if (blob) console.log(blob.digest, blob.diffId);
 * ```
 */
export async function find(
  dir: string,
  options: { gzipLevel?: number | undefined } = {},
): Promise<LayerBlob | undefined> {
  const level = levelOf(options.gzipLevel);
  let record: z.infer<typeof RecordSchema>;
  try {
    record = RecordSchema.parse(JSON.parse(await readFile(join(dir, DIGESTS_FILE), 'utf8')));
  } catch {
    return undefined; // missing or torn: rebuilt under the lock
  }
  const wanted = encoding(level);
  if (
    record.format !== wanted.format ||
    record.level !== level ||
    record.chunkSize !== wanted.chunkSize
  )
    return undefined;
  const file = join(dir, CACHE_FILE);
  const st = await stat(file).catch(() => undefined);
  if (!st || st.ino !== record.ino || st.size !== record.size) return undefined;
  const { digest, diffId, size, tarSize, ino } = record;
  return { dir, file, digest, diffId, size, tarSize, cached: true, ino };
}

/**
 * Returns the blob of layer `dir`, building and caching it first when needed.
 * Concurrent callers, in this process or others, build it once: the others
 * wait on the lock and then find it cached.
 *
 * @example
 * ```ts
 * const blob = await LayerBlob.ensure('/var/cache/day11/build-0123456789ab', { concurrency: 2 });
 * console.log(blob.cached ? 'reused' : 'built', blob.digest);
 * ```
 * @throws {OciExportError} `OCI_LAYER_NOT_FOUND`, `OCI_BAD_ARGUMENT`, the walk's errors
 *   (`OCI_UNSUPPORTED_UPPER`, ...), `OCI_WRITE_FAILED`; lock errors of `@day11/layer`.
 */
export async function ensure(dir: string, options: EnsureOptions = {}): Promise<LayerBlob> {
  const level = levelOf(options.gzipLevel);
  const lockfilePath = await lockPath(dir);
  await assertLayer(dir);
  const found = await find(dir, { gzipLevel: level });
  if (found) return found;
  return Lock.withPath(
    join(dir, CACHE_FILE),
    async (held) =>
      (await find(dir, { gzipLevel: level })) ??
      build(dir, { ...options, gzipLevel: level }, () => held.assertHeld()),
    // The holder may compress for minutes; waiters wait as long as it lives.
    { lockfilePath, timeoutMs: Infinity, signal: options.signal },
  );
}

async function lockPath(dir: string): Promise<string> {
  const name = basename(dir);
  if (!LayerDir.isLayerName(name)) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `${dir} is not a layer directory`, {
      path: dir,
      hint: 'Pass a layer directory ({osDir}/build-<12 hex>), e.g. from LayerDir.path',
    });
  }
  const locks = join(dirname(dir), Lock.LOCKS_DIR);
  await mkdir(locks, { recursive: true }).catch((cause: unknown) => {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot create',
      locks,
      cause,
      'Check that the cache is writable',
    );
  });
  return join(locks, `${name}.oci${Lock.LOCK_SUFFIX}`);
}

async function assertLayer(dir: string): Promise<void> {
  const fsDir = join(dir, 'fs');
  const st = await stat(fsDir).catch(() => undefined);
  if (st?.isDirectory()) return;
  throw new OciExportError(OciExportCodes.LAYER_NOT_FOUND, `Layer ${dir} has no fs/ directory`, {
    path: fsDir,
    hint: 'Pass a committed layer directory; it may have been garbage-collected, rebuild it',
  });
}

async function build(
  dir: string,
  options: EnsureOptions & { gzipLevel: number },
  assertHeld: () => void,
): Promise<LayerBlob> {
  const file = join(dir, CACHE_FILE);
  const temp = TempName.beside(file);
  const made = encoding(options.gzipLevel);
  try {
    const result = await compressTo(temp, join(dir, 'fs'), {
      ...options,
      engine: engineOf(made.format)!,
    });
    const ino = (await stat(temp)).ino;
    assertHeld();
    await rename(temp, file);
    const record = { ...made, ...result, ino };
    await writeAtomic(join(dir, DIGESTS_FILE), `${JSON.stringify(record, null, 2)}\n`);
    return { dir, file, ...result, cached: false, ino };
  } catch (err) {
    await rm(temp, { force: true });
    if (options.signal?.aborted) throw err;
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot cache the blob',
      file,
      err,
      'Check free space and permissions of the layer directory',
    );
  }
}

async function compressTo(
  temp: string,
  fsDir: string,
  options: EnsureOptions & { gzipLevel: number; engine: GzipEngine },
): Promise<{ digest: string; diffId: string; size: number; tarSize: number }> {
  const slots = options.slots ?? compressionSlots(options.concurrency);
  const window = slots.size + 1;
  // The cache's copy is private (its layer directory is too); Layout.linkBlob
  // makes it readable where a layout publishes it.
  const out = await open(temp, 'wx', 0o600);
  const tar = TarThread.start(fsDir, {
    chunkSize: DEFAULT_CHUNK_SIZE,
    // The chunks being compressed or written, and one ready for the next free slot.
    credits: window + 1,
    // libdeflate's members carry their own.
    crc: options.engine === 'zlib',
    signal: options.signal,
    onWarning: options.onWarning,
  });
  try {
    const result = await gzipChunks(tar, {
      engine: options.engine,
      level: options.gzipLevel,
      slots,
      window,
      write: (b) => writeAll(out, b),
      // writeAll keeps nothing once written.
      freeWritten: true,
      onChunk: options.onProgress,
      recycle: (chunk) => tar.recycle(chunk),
      summary: tar.summary,
    });
    await out.sync();
    return result;
  } finally {
    tar.close();
    await out.close();
  }
}
