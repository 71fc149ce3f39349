/**
 * One OCI layer blob, streamed into a directory: the (already verified)
 * blob, any taps on its compressed bytes, gunzip, a diff_id check, and
 * `@day11/layer`'s safe extraction. Shared by pulls (`whiteouts: 'overlay'`)
 * and base image imports (`'apply'`).
 */
import { PassThrough, type Readable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { LayerError, TarExtract } from '@day11/layer';
import { Sha256Tap } from './digest-stream.js';
import { RegistryCodes, RegistryError, isAbort, messageOf, registryCause } from './errors.js';

/** Options of {@link extractLayer}. */
export interface ExtractLayerOptions {
  /** The blob's bytes (a verified stream: its digest errors explain any later failure). */
  body: Readable;
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
  const stages = [...(o.taps ?? []), ...(o.gzip ? [createGunzip()] : []), diff, tar];
  // Settles with the first stream error (or undefined): never an unhandled rejection.
  const piping = (pipeline as (...s: unknown[]) => Promise<void>)(o.body, ...stages).then(
    () => undefined,
    (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
  );
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
    o.body.destroy();
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
