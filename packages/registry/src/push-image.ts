/**
 * `exportToRegistry`: an exported stack pushed straight to a registry, for
 * `day11 export --to docker://…`. The image is exactly what `exportImage`
 * writes into a layout (same config, same manifest, same digest); its layer
 * blobs are mounted from the cache repository when the layers are recorded
 * as published there, so nothing is uploaded twice to one registry.
 */
import { readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Layout, MediaTypes, exportImage, type ExportOptions } from '@day11/oci-export';
import { mapLimit, TempName } from '@day11/exec';
import { RegistryClient, type ClientOptions, type PushOutcome } from './client.js';
import { RegistryCodes, RegistryError } from './errors.js';
import { fileBlob } from './publish.js';
import * as Record from './record.js';
import { formatImage, parseImage } from './reference.js';

/** Options of {@link exportToRegistry}. */
export interface ExportToRegistryOptions
  extends Omit<ExportOptions, 'layout' | 'tag'>, Partial<Omit<ClientOptions, 'registry'>> {
  /** Where to: `docker://HOST/REPO:TAG` (or `HOST/REPO:TAG`). */
  ref: string;
  /**
   * Repositories of the same registry to mount blobs from, besides those the
   * layers' `registry.json` records name (e.g. the cache repository).
   */
  mountFrom?: readonly string[] | undefined;
  /** Reuse this client (it must be for the ref's registry). */
  client?: RegistryClient | undefined;
}

/** What {@link exportToRegistry} did. */
export interface ExportToRegistryResult {
  /** `HOST/REPO@sha256:…`: the pushed image, pinned. */
  ref: string;
  manifestDigest: string;
  /** How each blob (layers base first, then the config) got there. */
  blobs: { digest: string; size: number; outcome: PushOutcome }[];
}

/**
 * Exports `base` + `layers` and pushes the image as `ref`.
 *
 * @example
 * ```ts
 * const { ref } = await exportToRegistry({
 *   ref: 'docker://127.0.0.1:5000/apps/hello:1.0',
 *   base,
 *   layers: [libsDir, appDir],
 *   config: { Cmd: ['/opt/app/main'] },
 * });
 * ```
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE` (no tag), the client's errors;
 *   the export's errors (`OciExportError`, `LayerError`).
 */
export async function exportToRegistry(
  options: ExportToRegistryOptions,
): Promise<ExportToRegistryResult> {
  const image = parseImage(options.ref);
  if (image.tag === undefined || image.digest !== undefined) {
    throw new RegistryError(
      RegistryCodes.BAD_REFERENCE,
      `Cannot push to ${options.ref}: it needs a tag and no digest`,
      { hint: 'Write docker://HOST/REPO:TAG' },
    );
  }
  const client = options.client ?? new RegistryClient({ ...options, registry: image.registry });
  const osDir = dirname(options.base.dir);
  const layout = TempName.beside(join(osDir, 'registry-export'));
  try {
    const exported = await exportImage({ ...options, layout, tag: 'export' });
    const dirs = [options.base.dir, ...options.layers];
    const blobs = await mapLimit(exported.layers, options.concurrency ?? 4, async (layer, i) => {
      const sources = await mountSources({
        dir: dirs[i]!,
        registry: image.registry,
        extra: options.mountFrom ?? [],
      });
      const source = fileBlob(Layout.blobPath(layout, layer.digest), layer);
      // A HEAD first, then a mount from where it is recorded (an upload if the registry says 202).
      const outcome = await client.pushBlob(image.repository, source, {
        mountFrom: sources[0],
        signal: options.signal,
      });
      return { digest: layer.digest, size: layer.size, outcome };
    });
    const config = await readFile(Layout.blobPath(layout, exported.configDigest));
    const configSource = fileBlob(Layout.blobPath(layout, exported.configDigest), {
      digest: exported.configDigest,
      size: config.length,
    });
    const configOutcome = await client.pushBlob(image.repository, configSource, {
      signal: options.signal,
    });
    const manifest = await readFile(Layout.blobPath(layout, exported.manifestDigest));
    const digest = await client.putManifest(
      image.repository,
      image.tag,
      { bytes: manifest, mediaType: MediaTypes.manifest },
      options,
    );
    return {
      ref: formatImage({ ...image, tag: undefined, digest }),
      manifestDigest: digest,
      blobs: [
        ...blobs,
        { digest: exported.configDigest, size: config.length, outcome: configOutcome },
      ],
    };
  } finally {
    await rm(layout, { recursive: true, force: true }).catch(() => undefined);
    if (!options.client) client.close();
  }
}

/** Repositories of `registry` that hold layer `dir`'s blob, by its record, then `extra`. */
async function mountSources(o: {
  dir: string;
  registry: string;
  extra: readonly string[];
}): Promise<string[]> {
  const recorded = (await Record.records(o.dir))
    .filter((r) => r.registry === o.registry)
    .map((r) => r.repository);
  return [...new Set([...recorded, ...o.extra])];
}
