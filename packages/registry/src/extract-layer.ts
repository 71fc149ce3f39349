/**
 * One OCI layer blob, streamed into a directory: the (already verified)
 * blob, any taps on its compressed bytes, gunzip, a diff_id check, and
 * `@day11/layer`'s safe extraction. Shared by pulls (`whiteouts: 'overlay'`)
 * and base image imports (`'apply'`).
 */
import { open } from 'node:fs/promises';
import { PassThrough, Readable, type Transform, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { LayerError, TarExtract } from '@day11/layer';
import { Sha256Tap } from './digest-stream.js';
import { RegistryCodes, RegistryError, isAbort, messageOf, registryCause } from './errors.js';

/** Options of {@link extractLayer}. */
export interface ExtractLayerOptions {
  /**
   * The blob's bytes: a verified stream (its digest errors explain any later
   * failure), or a verified gzip file (with `gzip`, and no `taps`), which is
   * read into gunzip through one reused buffer (a stream would allocate one
   * per read: gigabytes of garbage for a big layer).
   */
  body: Readable | { file: string };
  /** Pass-throughs on the compressed bytes (e.g. a copy to a file). */
  taps?: readonly Transform[] | undefined;
  gzip: boolean;
  /** The expected sha256 of the tar. */
  diffId: string;
  dest: string;
  whiteouts: TarExtract.WhiteoutMode;
  /** Where the blob came from, for errors. */
  where: { registry?: string | undefined; repository?: string | undefined; digest: string };
  /** Names the blob in messages, e.g. `blob sha256:… of 127.0.0.1:5000/ns/cache`. */
  label: string;
  signal?: AbortSignal | undefined;
}

/**
 * Extracts the blob into `dest`; resolves with the tar's size. On failure
 * `dest` holds a partial tree: the caller removes it.
 * @throws {RegistryError} the blob's own errors (`DIGEST_MISMATCH`,
 *   `TRUNCATED`, ...), `DIGEST_MISMATCH` for a tar that is not `diffId`,
 *   `UNSAFE_LAYER` for a hostile or corrupt tar, `WRITE_FAILED` otherwise.
 */
export async function extractLayer(o: ExtractLayerOptions): Promise<{ tarBytes: number }> {
  const diff = new Sha256Tap();
  const tar = new PassThrough();
  const taps = o.taps ?? [];
  const stages = [
    ...taps,
    ...(o.gzip ? [createGunzip({ chunkSize: GUNZIP_CHUNK })] : []),
    diff,
    tar,
  ];
  const body = o.body instanceof Readable ? o.body : undefined;
  // Only gunzip is done with an input chunk when its write callback runs (a tap passes it on).
  if (!body && (!o.gzip || taps.length > 0)) {
    throw new TypeError('extractLayer: a file body must be gzip, with no taps');
  }
  // Settles with the first stream error (or undefined): never an unhandled rejection.
  const piping = (pipeline as (...s: unknown[]) => Promise<void>)(
    ...(body ? [body] : []),
    ...stages,
  ).then(
    () => undefined,
    (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
  );
  if (!body) void feed((o.body as { file: string }).file, stages[0]!);
  try {
    await TarExtract.extractStream({
      source: tar,
      dest: o.dest,
      archive: { label: o.label },
      whiteouts: o.whiteouts,
      signal: o.signal,
    });
    const streamError = await piping;
    if (streamError !== undefined) throw streamError;
  } catch (err) {
    for (const stream of [body, stages[0]]) stream?.destroy();
    throw failure(o, err, await piping);
  }
  if (diff.digest() !== o.diffId) {
    throw new RegistryError(
      RegistryCodes.DIGEST_MISMATCH,
      `The tar of ${o.label} hashes to ${diff.digest()}, not its diff_id ${o.diffId}`,
      { ...o.where, hint: 'The image is damaged; nothing was stored. Push or publish it again' },
    );
  }
  return { tarBytes: diff.bytes };
}

/** Read size of a blob file, and gunzip's output piece. */
const FEED_BYTES = 256 * 1024;
const GUNZIP_CHUNK = 64 * 1024;

/**
 * Writes `file` into `into` through one buffer, reused once `into` has
 * consumed each piece; ends it, or destroys it with the read's error. Stops
 * when `into` is destroyed (gunzip failed on garbled bytes, the extraction
 * failed): the file is closed then too.
 */
async function feed(file: string, into: Writable): Promise<void> {
  let handle;
  try {
    handle = await open(file, 'r');
    const buf = Buffer.allocUnsafe(FEED_BYTES);
    for (;;) {
      const { bytesRead } = await handle.read(buf, 0, buf.length, null);
      if (bytesRead === 0 || into.destroyed) break;
      await consumed(into, buf.subarray(0, bytesRead));
    }
    if (!into.destroyed) into.end();
  } catch (err) {
    into.destroy(err instanceof Error ? err : new Error(String(err)));
  } finally {
    await handle?.close();
  }
}

/**
 * Writes `piece`; resolves once `into` has consumed it, or has closed: a
 * stream destroyed in the middle of a write (gunzip on an error) never calls
 * that write back.
 */
function consumed(into: Writable, piece: Buffer): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const closed = () => resolve();
    into.once('close', closed);
    into.write(piece, (err) => {
      into.off('close', closed);
      if (err) reject(err);
      else resolve();
    });
  });
}

/** Bytes that are not what was promised explain any extraction failure; then the tar's own. */
function failure(o: ExtractLayerOptions, err: unknown, streamError: Error | undefined): unknown {
  const ours = registryCause(streamError) ?? registryCause(err);
  if (ours) return ours;
  if (isAbort(err, o.signal)) return err;
  const unsafe = err instanceof LayerError && err.code.startsWith('LAYER_IMPORT');
  return new RegistryError(
    unsafe ? RegistryCodes.UNSAFE_LAYER : RegistryCodes.WRITE_FAILED,
    `${unsafe ? 'Refusing' : 'Cannot extract'} ${o.label}: ${messageOf(err)}`,
    {
      ...o.where,
      cause: err,
      hint: unsafe
        ? 'The layer is hostile or corrupt; nothing was stored. Delete it from the registry and find out who pushed it'
        : 'Check free space and permissions of the cache (layers keep owners and devices: run as root)',
    },
  );
}
