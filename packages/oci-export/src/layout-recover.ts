/**
 * What a killed exporter leaves in a layout, and how a cache finds the
 * layouts it exported into. An export killed at any moment leaves only
 * temporary names of its pid (a blob being copied or written, a temporary
 * `index.json`, a lock being assembled) and, when it held it, the layout
 * lock: {@link recover} removes those once the process is gone, without
 * taking the lock or touching a blob or `index.json`.
 *
 * So that recovering a cache can reach its layouts without being told, every
 * export leaves a note in the cache it exported from,
 * `{osDir}/oci-layouts/<16 hex>` holding the layout's path ({@link remember}).
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Recover } from '@day11/layer';
import { OciExportCodes, fsError } from './errors.js';
import { writeAtomic } from './files.js';
import { INDEX_FILE, OCI_LAYOUT_FILE, ensureIndex, listDir } from './layout-index.js';

/** The directory of a cache where its exports note their layouts. */
export const REGISTRY_DIR = 'oci-layouts';

/** What {@link recover} removed from one layout. */
export interface RecoverResult {
  /** The layout. */
  layout: string;
  /** Temporary files and directories of dead processes. */
  temps: string[];
  /** The layout lock, when its holder had died. */
  locks: string[];
  /**
   * True when `index.json` was missing beside `oci-layout` (a process killed
   * while it made the layout) and an empty one was written: no tag can have
   * been lost, since every tag is in `index.json`.
   */
  indexWritten: boolean;
}

/**
 * Removes what killed processes left in `layout`: their temporary entries
 * at its root and in `blobs/<alg>/`, and the layout lock (`index.json.lock`)
 * when its holder is dead; and completes a layout whose making was cut
 * short (`oci-layout` without `index.json`) with an empty index, as
 * {@link init} would. Never removes a blob or changes an existing `index.json`
 * (unreferenced blobs are {@link gc}'s), never touches what a live process
 * owns, and does not take the layout lock: safe while others export. A
 * missing layout has nothing to recover.
 *
 * @example
 * ```ts
 * const { temps, locks } = await Layout.recover('/srv/oci');
 * ```
 * @throws {LayerError} `LAYER_WRITE_FAILED` when a leftover cannot be removed;
 *   {@link OciExportError} `OCI_READ_FAILED` when the layout cannot be listed.
 */
export async function recover(layout: string): Promise<RecoverResult> {
  const root = resolve(layout);
  const dirs = [root];
  for (const alg of await listDir(join(root, 'blobs'))) dirs.push(join(root, 'blobs', alg));
  const report = await Recover.sweepDirs({ dirs, locks: [join(root, `${INDEX_FILE}.lock`)] });
  const halfMade =
    (await stat(join(root, OCI_LAYOUT_FILE)).catch(() => undefined)) !== undefined &&
    (await stat(join(root, INDEX_FILE)).catch(() => undefined)) === undefined;
  if (halfMade) await ensureIndex(root);
  return { layout: root, temps: report.temps, locks: report.locks, indexWritten: halfMade };
}

/**
 * Notes in cache `osDir` that it exports into `layout` (idempotent: one
 * read when already noted). {@link exportImage} calls it before writing
 * anything into the layout.
 *
 * @example
 * ```ts
 * await Layout.remember({ osDir: '/var/cache/day11', layout: '/srv/oci' });
 * ```
 * @throws {OciExportError} `OCI_WRITE_FAILED` when the note cannot be written.
 */
export async function remember({
  osDir,
  layout,
}: {
  osDir: string;
  layout: string;
}): Promise<void> {
  const path = notePath(osDir, layout);
  const text = await readFile(path, 'utf8').catch(() => undefined);
  if (text !== undefined && parseNote(text) === resolve(layout)) return;
  try {
    await mkdir(dirname(path), { recursive: true });
  } catch (cause) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot create',
      dirname(path),
      cause,
      'Check that the cache directory is writable',
    );
  }
  await writeAtomic(path, `${JSON.stringify({ layout: resolve(layout) })}\n`);
}

/**
 * The layouts cache `osDir` has noted (see {@link remember}) that still
 * exist; the notes of layouts gone since are removed, and so are notes a
 * killed process left half-written.
 *
 * @example
 * ```ts
 * for (const layout of await Layout.remembered('/var/cache/day11')) await Layout.recover(layout);
 * ```
 * @throws {OciExportError} `OCI_READ_FAILED` when the notes cannot be read.
 */
export async function remembered(osDir: string): Promise<string[]> {
  const dir = join(osDir, REGISTRY_DIR);
  await Recover.sweepDirs({ dirs: [dir] });
  const layouts: string[] = [];
  for (const name of await listDir(dir)) {
    const path = join(dir, name);
    const layout = parseNote(await readFile(path, 'utf8').catch(() => ''));
    if (layout !== undefined && (await isDirectory(layout))) layouts.push(layout);
    else await forgetNote(path);
  }
  return layouts.sort();
}

function notePath(osDir: string, layout: string): string {
  const key = createHash('sha256').update(resolve(layout)).digest('hex').slice(0, 16);
  return join(osDir, REGISTRY_DIR, key);
}

function parseNote(text: string): string | undefined {
  try {
    const { layout } = JSON.parse(text) as { layout?: unknown };
    return typeof layout === 'string' && layout.startsWith('/') ? layout : undefined;
  } catch {
    return undefined;
  }
}

async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined))?.isDirectory() === true;
}

async function forgetNote(path: string): Promise<void> {
  try {
    await rm(path, { force: true });
  } catch (cause) {
    throw fsError(OciExportCodes.WRITE_FAILED, 'Cannot remove', path, cause, 'Check permissions');
  }
}
