/**
 * Garbage collection of an OCI image layout: every blob that `index.json`
 * does not reach, and the temporary entries of dead writers, under the
 * layout lock, so it never races an export's tagging.
 */
import { lstat, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Proc, TempName } from '@day11/exec';
import { OciExportCodes, fsError } from './errors.js';
import {
  listDir,
  readIndex,
  readJsonBlob,
  withLock,
  type LayoutLockOptions,
} from './layout-index.js';
import {
  INDEX_TYPES,
  IndexSchema,
  MANIFEST_TYPES,
  ManifestSchema,
  type Descriptor,
} from './oci.js';

/** What {@link gc} removed. */
export interface GcResult {
  /** Digests of the deleted blobs. */
  removed: string[];
  /** Their total size. */
  bytes: number;
  /** Temporary files of dead processes that were deleted. */
  temps: string[];
}

/**
 * Deletes every blob no manifest of `index.json` references (directly, through
 * a manifest's config and layers, or through a nested index), and temporary
 * files left by killed processes. Runs under the layout lock, so it never
 * races an export's tagging. If a referenced manifest is missing or corrupt,
 * nothing is deleted.
 *
 * @example
 * ```ts
 * await Layout.removeTag('/tmp/oci', 'old');
 * const { removed, bytes } = await Layout.gc('/tmp/oci');
 * ```
 * @throws {OciExportError} `OCI_LAYOUT_INVALID` (no layout, or no `index.json`), `OCI_INDEX_CORRUPT`, `OCI_BLOB_MISSING`, `OCI_BLOB_CORRUPT`,
 *   `OCI_WRITE_FAILED`; lock errors.
 */
export async function gc(layout: string, options: LayoutLockOptions = {}): Promise<GcResult> {
  // Not a layout (or no index): say so before the lock would be made inside it.
  await readIndex(layout);
  return withLock(
    layout,
    async () => {
      const referenced = await referencedBlobs(layout);
      const result: GcResult = { removed: [], bytes: 0, temps: [] };
      await sweepRootTemps(layout, result);
      for (const alg of await listDir(join(layout, 'blobs'))) {
        await sweepAlgorithm(layout, alg, referenced, result);
      }
      return result;
    },
    options,
  );
}

/**
 * A process killed while writing `index.json` or `oci-layout`, or while making
 * the layout lock, leaves its temporary file or directory at the root.
 */
async function sweepRootTemps(layout: string, result: GcResult): Promise<void> {
  for (const name of await listDir(layout)) {
    const path = join(layout, name);
    if (!(await leftover(name, path))) continue;
    await remove(path);
    result.temps.push(path);
  }
}

async function sweepAlgorithm(
  layout: string,
  alg: string,
  referenced: Set<string>,
  result: GcResult,
): Promise<void> {
  const dir = join(layout, 'blobs', alg);
  for (const name of await listDir(dir)) {
    const path = join(dir, name);
    if (TempName.is(name)) {
      if (await leftover(name, path)) {
        await remove(path);
        result.temps.push(path);
      }
      continue;
    }
    if (referenced.has(`${alg}:${name}`)) continue;
    const st = await lstat(path).catch(() => undefined);
    if (!st?.isFile()) continue;
    await remove(path);
    result.removed.push(`${alg}:${name}`);
    result.bytes += st.size;
  }
}

/** A temporary entry whose writer is gone (the one rule of `Proc.ownerGone`). */
async function leftover(name: string, path: string): Promise<boolean> {
  const pid = TempName.ownerPid(name);
  if (pid === undefined) return false;
  const st = await lstat(path).catch(() => undefined);
  return st !== undefined && (await Proc.ownerGone(pid, st.ctimeMs));
}

async function remove(path: string): Promise<void> {
  try {
    await rm(path, { force: true, recursive: true });
  } catch (cause) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot delete',
      path,
      cause,
      'Check permissions of the layout',
    );
  }
}

/** Every digest reachable from `index.json`. */
async function referencedBlobs(layout: string): Promise<Set<string>> {
  const seen = new Set<string>();
  const visit = async (d: Descriptor): Promise<void> => {
    if (seen.has(d.digest)) return;
    seen.add(d.digest);
    if (MANIFEST_TYPES.includes(d.mediaType)) {
      const m = await readJsonBlob(layout, d, ManifestSchema);
      for (const child of [m.config, ...m.layers]) seen.add(child.digest);
    } else if (INDEX_TYPES.includes(d.mediaType)) {
      for (const child of (await readJsonBlob(layout, d, IndexSchema)).manifests)
        await visit(child);
    }
  };
  for (const d of (await readIndex(layout)).manifests) await visit(d);
  return seen;
}
