/**
 * Directory enumeration: the layers of a cache and the symlink registry.
 * Generic: the caller filters and interprets. A layer that cannot be read is
 * listed with the reason, never skipped silently and never fatal to the scan.
 */
import { readdirSync, statSync } from 'node:fs';
import { readdir, readlink, stat } from 'node:fs/promises';
import { join, resolve, dirname } from 'node:path';
import { SmallFiles } from '@day11/exec';
import { errnoCode, LayerCodes, LayerError, messageOf, removeLayerHint } from './errors.js';
import * as LastUsed from './last-used.js';
import { LEASE_DIR } from './in-use.js';
import { hashPrefix } from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';
import * as Sidecar from './sidecar.js';

/** One layer directory found by {@link layers}. */
export interface ScannedLayer {
  /** Absolute path of the layer directory. */
  dir: string;
  /** Its name, `build-` + 12 hex. */
  name: string;
  /** The 12 hex characters of the name. */
  hashPrefix: string;
  /** Parsed `layer.json`, when it could be read. */
  meta: LayerMeta.LayerMeta | undefined;
  /** Why `layer.json` could not be read (missing or corrupt), when it could not. */
  metaError: LayerError | undefined;
  /**
   * Sidecar file names, sorted. The directory is listed when this (or
   * {@link leased}) is first read, not before: a scan that never asks
   * makes five system calls fewer per layer (of twelve).
   */
  readonly sidecars: string[];
  /**
   * The sidecars asked for with {@link ScanOptions.read} that the layer has
   * and that are JSON objects, by name. (`Sidecar.read` says why one is not.)
   */
  values: Map<string, Sidecar.SidecarValue>;
  /** `last_used` mtime (epoch ms), when recorded. */
  lastUsed: number | undefined;
  /**
   * Whether the layer has a lease directory: only then can it be in use
   * (`InUse.isInUse` says whether a live process holds a lease). Listed
   * with {@link sidecars}, when first read.
   */
  readonly leased: boolean;
}

/** Options of {@link layers}. */
export interface ScanOptions {
  /**
   * Sidecars to read and parse in the same pass (e.g. `['step.json']`).
   * Each is opened as it is named: for a layer without it the open fails,
   * which costs ~12 µs (a thrown `ENOENT`), three times a read. Ask for the
   * sidecars most layers have; read a rare one with `Sidecar.read` for the
   * layers whose {@link ScannedLayer.sidecars} name it.
   */
  read?: readonly string[];
}

/**
 * Layers read per slice. Each slice is read with synchronous calls (4-5× faster
 * than a thread-pool hop per file for these tiny files); between slices the
 * event loop runs, so a 10,000-layer scan never blocks it for more than a few ms.
 */
const SLICE = 128;

/**
 * Lists every `build-xxxxxxxxxxxx` directory of `osDir`, sorted by name.
 * Temporary and lock directories are not listed. A missing `osDir` gives `[]`.
 *
 * @example
 * ```ts
 * for (const l of await Scan.layers(osDir, { read: ['step.json'] }))
 *   console.log(l.name, l.values.get('step.json')?.['id'] ?? '-');
 * ```
 */
export async function layers(osDir: string, options: ScanOptions = {}): Promise<ScannedLayer[]> {
  const out: ScannedLayer[] = [];
  await each(osDir, (layer) => out.push(layer), options);
  return out;
}

/**
 * {@link layers}, one layer at a time: `visit` gets each layer as it is read,
 * in name order, and nothing is kept. What a caller keeps of a large cache
 * (a line to print, a few fields) is then all that stays in memory: a
 * `layer.json` lists its whole stack, and 10,000 of them parsed and kept cost
 * more in garbage collection than reading them.
 *
 * @example
 * ```ts
 * let failed = 0;
 * await Scan.each(osDir, (l) => { if (l.meta && l.meta.exit_status !== 0) failed++; });
 * ```
 */
export async function each(
  osDir: string,
  visit: (layer: ScannedLayer) => void,
  options: ScanOptions = {},
): Promise<void> {
  const read = options.read ?? [];
  for (const name of read) Sidecar.assertName(name);
  const found = await names(osDir);
  const files = new SmallFiles();
  for (let start = 0; start < found.length; start += SLICE) {
    if (start > 0) await new Promise((resolve) => setImmediate(resolve));
    for (const name of found.slice(start, start + SLICE))
      visit(scanOne(files, join(osDir, name), name, read));
  }
}

/**
 * The names of the `build-xxxxxxxxxxxx` directories of `osDir`, sorted
 * (what {@link layers} lists, without reading them). A missing `osDir` gives `[]`.
 *
 * @example
 * ```ts
 * const count = (await Scan.names(osDir)).length;
 * ```
 */
export async function names(osDir: string): Promise<string[]> {
  try {
    const entries = await readdir(osDir, { withFileTypes: true });
    return entries
      .filter((e) => e.isDirectory() && hashPrefix(e.name) !== undefined)
      .map((e) => e.name)
      .sort();
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return [];
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Cannot list the cache ${osDir}: ${messageOf(cause)}`,
      {
        path: osDir,
        cause,
        hint: 'Pass the cache directory (the one holding build-* directories)',
      },
    );
  }
}

function scanOne(
  files: SmallFiles,
  dir: string,
  name: string,
  read: readonly string[],
): ScannedLayer {
  // The directory is listed when `sidecars` or `leased` is first asked for:
  // the listing is the dearest part of a scan (open, fstat, two getdents,
  // close), and `layers ls` needs it for few layers.
  let listing: { sidecars: string[]; leased: boolean } | undefined;
  const listed = (): { sidecars: string[]; leased: boolean } => (listing ??= list(dir));
  const values = new Map<string, Sidecar.SidecarValue>();
  for (const sidecar of read) {
    const value = readObject(files, join(dir, sidecar));
    if (value !== undefined) values.set(sidecar, value);
  }
  return {
    dir,
    name,
    hashPrefix: hashPrefix(name)!,
    ...readMeta(files, dir),
    get sidecars() {
      return listed().sidecars;
    },
    values,
    lastUsed: lastUsed(dir),
    get leased() {
      return listed().leased;
    },
  };
}

function list(dir: string): { sidecars: string[]; leased: boolean } {
  let entries: string[] = [];
  try {
    entries = readdirSync(dir);
  } catch {
    // Vanished since it was read (collected meanwhile): nothing to list.
  }
  return {
    sidecars: entries.filter(Sidecar.isSidecarName).sort(),
    leased: entries.includes(LEASE_DIR),
  };
}

/** A JSON object file's value, or `undefined` when it cannot be read or is not one. */
function readObject(files: SmallFiles, path: string): Sidecar.SidecarValue | undefined {
  try {
    const value: unknown = JSON.parse(files.text(path));
    return typeof value === 'object' && value !== null && !Array.isArray(value)
      ? (value as Sidecar.SidecarValue)
      : undefined;
  } catch {
    return undefined;
  }
}

function readMeta(files: SmallFiles, dir: string): Pick<ScannedLayer, 'meta' | 'metaError'> {
  const path = LayerMeta.file(dir);
  let text: string;
  try {
    text = files.text(path);
  } catch (cause) {
    const missing = errnoCode(cause) === 'ENOENT';
    const error = new LayerError(
      missing ? LayerCodes.META_MISSING : LayerCodes.META_CORRUPT,
      missing ? `No layer metadata at ${path}` : `Cannot read ${path}: ${messageOf(cause)}`,
      { path, cause, hint: removeLayerHint(dirname(path)) },
    );
    return { meta: undefined, metaError: error };
  }
  try {
    return { meta: LayerMeta.parse(text, path), metaError: undefined };
  } catch (err) {
    if (err instanceof LayerError) return { meta: undefined, metaError: err };
    throw err;
  }
}

function lastUsed(dir: string): number | undefined {
  try {
    return statSync(LastUsed.file(dir), { throwIfNoEntry: false })?.mtimeMs;
  } catch {
    return undefined;
  }
}

/** One registry link found by {@link symlinks}. */
export interface ScannedSymlink {
  /** The registry id (the directory under `packages/`). */
  id: string;
  /** The link's name, `build-` + 12 hex. */
  name: string;
  /** Absolute path of the link. */
  path: string;
  /** What the link points to, resolved to an absolute path. */
  target: string;
  /** Whether the target exists (a collected layer leaves a dangling link). */
  exists: boolean;
}

/** Lists the registry links under `packagesDir`, sorted by id then name. Missing dir gives `[]`. */
export async function symlinks(packagesDir: string): Promise<ScannedSymlink[]> {
  const ids = await readdir(packagesDir, { withFileTypes: true }).catch((cause: unknown) => {
    if (errnoCode(cause) === 'ENOENT') return [];
    throw cause;
  });
  const out: ScannedSymlink[] = [];
  for (const idEntry of ids.filter((e) => e.isDirectory()).sort(byName)) {
    const idDir = join(packagesDir, idEntry.name);
    const links = await readdir(idDir, { withFileTypes: true });
    for (const link of links.filter((e) => e.isSymbolicLink() && hashPrefix(e.name)).sort(byName)) {
      const path = join(idDir, link.name);
      const target = resolve(dirname(path), await readlink(path));
      const exists = await stat(target).then(
        () => true,
        () => false,
      );
      out.push({ id: idEntry.name, name: link.name, path, target, exists });
    }
  }
  return out;
}

function byName(a: { name: string }, b: { name: string }): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}
