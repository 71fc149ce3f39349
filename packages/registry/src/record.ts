/**
 * `registry.json`: a sidecar in a layer directory remembering where the
 * layer is known to be published (registry, repository, manifest and blob
 * digests). It saves requests: a layer recorded there is not looked up again
 * when a stack above it is published, and republishing it costs one HEAD.
 * Only hits are recorded; a miss is never remembered on disk. Bookkeeping,
 * never an error: a missing or corrupt record is an empty one.
 */
import { Sidecar } from '@day11/layer';
import { z } from 'zod';

/** The sidecar's file name. */
export const SIDECAR = 'registry.json';

/** One place where the layer is. */
export interface RegistryRecord {
  registry: string;
  repository: string;
  /** Digest of its `build-<hash>` manifest there. */
  manifest: string;
  /** Digest of its own layer blob. */
  blob: string;
}

const RecordSchema = z.object({
  registry: z.string(),
  repository: z.string(),
  manifest: z.string(),
  blob: z.string(),
});
const FileSchema = z.looseObject({ published: z.array(RecordSchema) });

/** At most this many places are remembered per layer (the newest win). */
const MAX_RECORDS = 16;

/**
 * Where layer `dir` is recorded as published; empty when nowhere (or unreadable).
 *
 * @example
 * ```ts
 * const places = await records(LayerDir.path({ osDir, hash }));
 * ```
 */
export async function records(dir: string): Promise<RegistryRecord[]> {
  try {
    const value = await Sidecar.read(dir, SIDECAR);
    const parsed = FileSchema.safeParse(value);
    return parsed.success ? parsed.data.published : [];
  } catch {
    return [];
  }
}

/** The record of layer `dir` for one registry and repository. */
export async function recordFor(
  dir: string,
  where: { registry: string; repository: string },
): Promise<RegistryRecord | undefined> {
  return (await records(dir)).find(
    (r) => r.registry === where.registry && r.repository === where.repository,
  );
}

/**
 * Records that layer `dir` is published as `record` (replacing what was
 * recorded for the same registry and repository). Best effort: never throws.
 */
export async function remember(dir: string, record: RegistryRecord): Promise<void> {
  try {
    const kept = (await records(dir)).filter(
      (r) => r.registry !== record.registry || r.repository !== record.repository,
    );
    await Sidecar.write(dir, SIDECAR, { published: [...kept, record].slice(-MAX_RECORDS) });
  } catch {
    // A lost record costs one request later, nothing else.
  }
}

/** Forgets what is recorded for one registry and repository (after it proved wrong). */
export async function forget(
  dir: string,
  where: { registry: string; repository: string },
): Promise<void> {
  try {
    const all = await records(dir);
    const kept = all.filter(
      (r) => r.registry !== where.registry || r.repository !== where.repository,
    );
    if (kept.length !== all.length) await Sidecar.write(dir, SIDECAR, { published: kept });
  } catch {
    // as above
  }
}
