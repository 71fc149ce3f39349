/**
 * The index side of an OCI image layout: `oci-layout`, `index.json` and its
 * tags, the layout lock, and reading the JSON blobs the index points to.
 * `index.json` changes only under the layout lock (`index.json.lock`, a
 * `Lock.withPath` lock of `@day11/layer`) and is always replaced atomically,
 * so any number of processes can tag images in one layout at once.
 */
import { link, mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Atomic, TempName } from '@day11/exec';
import { Lock } from '@day11/layer';
import { z } from 'zod';
import { OciExportCodes, OciExportError, errnoCode, fsError, messageOf } from './errors.js';
import { writeAtomic } from './files.js';
import {
  IMAGE_LAYOUT_VERSION,
  IndexSchema,
  REF_NAME,
  assertTag,
  buildIndex,
  describeIssues,
  type Descriptor,
  type OciIndex,
} from './oci.js';

/** Name of the layout marker file. */
export const OCI_LAYOUT_FILE = 'oci-layout';
/** Name of the layout's index. */
export const INDEX_FILE = 'index.json';

/** Options of the calls that take the layout lock. */
export interface LayoutLockOptions {
  /** Give up waiting for the lock after this long (default 5 minutes). */
  timeoutMs?: number | undefined;
  /** Aborting stops waiting for the lock. */
  signal?: AbortSignal | undefined;
}

/**
 * The file of blob `digest` in `layout`.
 *
 * @example
 * ```ts
 * Layout.blobPath('/tmp/oci', 'sha256:ab12...'); // '/tmp/oci/blobs/sha256/ab12...'
 * ```
 */
export function blobPath(layout: string, digest: string): string {
  const [alg, hex] = digest.split(':') as [string, string];
  return join(layout, 'blobs', alg, hex);
}

/**
 * Makes `layout` an OCI image layout if it is not one yet: `blobs/sha256/`,
 * `oci-layout`, and an `index.json` with no images (written under the layout
 * lock, never over an index that is there), so a layout is complete before
 * anything is exported into it. An existing `oci-layout` must name version 1.0.0. A
 * directory that holds files but no `oci-layout` is refused, not turned into
 * a layout: it is either a layout that lost its marker or not a layout at all.
 *
 * @example
 * ```ts
 * await Layout.init('/tmp/oci');
 * ```
 * @throws {OciExportError} `OCI_LAYOUT_INVALID`, `OCI_WRITE_FAILED`.
 */
export async function init(layout: string): Promise<void> {
  const file = join(layout, OCI_LAYOUT_FILE);
  let text = await readLayoutFile(file);
  if (text === undefined) {
    const stray = await strayEntry(layout);
    // A concurrent init may have written oci-layout since the first read: read it again.
    if (stray !== undefined) text = await readLayoutFile(file);
    if (stray !== undefined && text === undefined) throw notALayout(layout, stray);
  }
  const problem = text === undefined ? undefined : layoutProblem(text);
  if (problem) {
    throw new OciExportError(OciExportCodes.LAYOUT_INVALID, `${file}: ${problem}`, {
      path: file,
      hint: `Export into an empty directory, or fix the file to {"imageLayoutVersion":"${IMAGE_LAYOUT_VERSION}"}`,
    });
  }
  try {
    await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
  } catch (cause) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot create the layout',
      layout,
      cause,
      'Check that the path is a writable directory',
    );
  }
  if (text === undefined) {
    await writeAtomic(file, JSON.stringify({ imageLayoutVersion: IMAGE_LAYOUT_VERSION }));
  }
  await ensureIndex(layout);
}

/**
 * Writes an empty `index.json` unless there is one: umoci and skopeo refuse
 * a layout without it. A hardlink of a complete temporary file, which fails
 * rather than replace an index that a concurrent export has just tagged.
 */
export async function ensureIndex(layout: string): Promise<void> {
  const file = join(layout, INDEX_FILE);
  if (await exists(file)) return;
  const temp = TempName.beside(file);
  try {
    await writeFile(temp, buildIndex({ schemaVersion: 2, manifests: [] }), { flag: 'wx' });
    await Atomic.fsyncFile(temp);
    await link(temp, file).catch((err: unknown) => {
      if (errnoCode(err) !== 'EEXIST') throw err;
    });
    await Atomic.fsyncDir(layout);
  } catch (cause) {
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot write',
      file,
      cause,
      'Check that the directory is writable and has free space',
    );
  } finally {
    await rm(temp, { force: true }).catch(() => undefined);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return false;
    throw fsError(OciExportCodes.READ_FAILED, 'Cannot read', path, err, 'Check permissions');
  }
}

async function readLayoutFile(file: string): Promise<string | undefined> {
  return readFile(file, 'utf8').catch((err: unknown) => {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw fsError(OciExportCodes.READ_FAILED, 'Cannot read', file, err, 'Check permissions');
  });
}

/**
 * Something in `layout` that an unfinished {@link init} does not leave (it
 * leaves at most empty `blobs/<alg>/` directories and temporary files), if any.
 */
async function strayEntry(layout: string): Promise<string | undefined> {
  for (const name of await listDir(layout)) {
    if (TempName.is(name)) continue;
    if (name !== 'blobs') return name;
    for (const alg of await listDir(join(layout, 'blobs'))) {
      const files = await listDir(join(layout, 'blobs', alg)).catch(() => undefined);
      if (files === undefined) return `blobs/${alg}`;
      const file = files.find((f) => !TempName.is(f));
      if (file !== undefined) return `blobs/${alg}/${file}`;
    }
  }
  return undefined;
}

function notALayout(layout: string, stray: string): OciExportError {
  const file = join(layout, OCI_LAYOUT_FILE);
  return new OciExportError(
    OciExportCodes.LAYOUT_INVALID,
    `${file} is missing, and ${layout} holds ${stray}: it is not an OCI image layout`,
    {
      path: file,
      hint: `Export into a new or empty directory; if ${layout} is a layout that lost the file, restore it as {"imageLayoutVersion":"${IMAGE_LAYOUT_VERSION}"}`,
    },
  );
}

/**
 * What is wrong with the text of an `oci-layout` file, or `undefined` when nothing is.
 *
 * @example
 * ```ts
 * layoutProblem('{"imageLayoutVersion":"1.0.0"}'); // undefined
 * ```
 */
export function layoutProblem(text: string): string | undefined {
  try {
    const version = (JSON.parse(text) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    return version === IMAGE_LAYOUT_VERSION
      ? undefined
      : `unsupported imageLayoutVersion ${JSON.stringify(version)}`;
  } catch (err) {
    return `not valid JSON (${messageOf(err)})`;
  }
}

/**
 * Reads `index.json`.
 *
 * @example
 * ```ts
 * const index = await Layout.readIndex('/tmp/oci');
 * console.log(index.manifests.length);
 * ```
 * @throws {OciExportError} `OCI_LAYOUT_INVALID` when `layout` does not exist,
 *   is not an OCI image layout, or has no `index.json` (which umoci and
 *   skopeo refuse too); `OCI_INDEX_CORRUPT` naming the file; `OCI_READ_FAILED`.
 */
export async function readIndex(layout: string): Promise<OciIndex> {
  const file = join(layout, INDEX_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') throw await noIndex(layout, err);
    throw fsError(OciExportCodes.READ_FAILED, 'Cannot read', file, err, 'Check permissions');
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw corruptIndex(file, `not valid JSON (${messageOf(cause)})`, cause);
  }
  const parsed = IndexSchema.safeParse(value);
  if (!parsed.success) throw corruptIndex(file, describeIssues(parsed.error), parsed.error);
  return parsed.data;
}

/** Why `layout` has no `index.json`: no such directory, not a layout, or a layout without it. */
async function noIndex(layout: string, cause: unknown): Promise<OciExportError> {
  const creates = `\`day11 export --oci ${layout} --tag TAG LAYER\` (exportImage)`;
  if (!(await exists(layout))) {
    return new OciExportError(
      OciExportCodes.LAYOUT_INVALID,
      `There is no OCI image layout at ${layout}: the directory does not exist`,
      { path: layout, cause, hint: `Check the path; ${creates} makes a layout` },
    );
  }
  if (!(await exists(join(layout, OCI_LAYOUT_FILE)))) {
    return new OciExportError(
      OciExportCodes.LAYOUT_INVALID,
      `${layout} is not an OCI image layout: it has no ${OCI_LAYOUT_FILE} and no ${INDEX_FILE}`,
      { path: layout, cause, hint: `Check the path; ${creates} makes a layout` },
    );
  }
  const file = join(layout, INDEX_FILE);
  return new OciExportError(
    OciExportCodes.LAYOUT_INVALID,
    `${file} is missing: an export into ${layout} stopped before writing it, or it was removed (umoci and skopeo refuse such a layout)`,
    {
      path: file,
      cause,
      hint: `Export an image into it again with ${creates}: that writes ${INDEX_FILE}, and blobs already there are reused`,
    },
  );
}

function corruptIndex(file: string, why: string, cause: unknown): OciExportError {
  return new OciExportError(
    OciExportCodes.INDEX_CORRUPT,
    `${file} is not an OCI image index: ${why}`,
    {
      path: file,
      cause,
      hint: 'Restore it from a backup, or delete it and export each image again (blobs are reused)',
    },
  );
}

/**
 * Runs `fn` holding the layout lock (`index.json.lock` in the layout).
 *
 * @example
 * ```ts
 * await Layout.withLock('/tmp/oci', async () => { ... });
 * ```
 */
export async function withLock<T>(
  layout: string,
  fn: () => Promise<T>,
  options: LayoutLockOptions = {},
): Promise<T> {
  return Lock.withPath(join(layout, INDEX_FILE), fn, {
    ...(options.timeoutMs !== undefined && { timeoutMs: options.timeoutMs }),
    signal: options.signal,
  });
}

/**
 * Writes `index.json` atomically. Call it holding the layout lock.
 *
 * @example
 * ```ts
 * await Layout.withLock(layout, async () => {
 *   const index = await Layout.readIndex(layout);
 *   await Layout.writeIndex(layout, Layout.withTag(index, 'hello.1.0', descriptor));
 * });
 * ```
 */
export async function writeIndex(layout: string, index: OciIndex): Promise<void> {
  await writeAtomic(join(layout, INDEX_FILE), buildIndex(index));
}

/**
 * `index` with `entry` as the only manifest tagged `tag`, entries sorted by tag
 * (untagged entries first, in their order) so the file does not depend on
 * which process tagged first.
 *
 * @example
 * ```ts
 * const next = Layout.withTag(index, 'hello.1.0', { mediaType, digest, size });
 * ```
 */
export function withTag(index: OciIndex, tag: string, entry: Descriptor): OciIndex {
  const others = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
  const tagged = { ...entry, annotations: { ...entry.annotations, [REF_NAME]: tag } };
  return { ...index, manifests: sortByTag([...others, tagged]) };
}

function sortByTag(manifests: Descriptor[]): Descriptor[] {
  const key = (m: Descriptor) => m.annotations?.[REF_NAME];
  return [...manifests].sort((a, b) => {
    const [ka, kb] = [key(a), key(b)];
    if (ka === undefined || kb === undefined) return ka === kb ? 0 : ka === undefined ? -1 : 1;
    return ka < kb ? -1 : ka > kb ? 1 : 0;
  });
}

/** One tag of a layout. */
export interface TagInfo {
  tag: string;
  /** Digest of the manifest it names. */
  digest: string;
  mediaType: string;
  size: number;
}

/**
 * The tags of `layout` (manifests with an `org.opencontainers.image.ref.name`), sorted.
 *
 * @example
 * ```ts
 * for (const { tag, digest } of await Layout.tags('/tmp/oci')) console.log(tag, digest);
 * ```
 * @throws {OciExportError} `OCI_LAYOUT_INVALID` (no layout at that path, or no `index.json`), `OCI_INDEX_CORRUPT`.
 */
export async function tags(layout: string): Promise<TagInfo[]> {
  const index = await readIndex(layout);
  return index.manifests
    .filter((m) => m.annotations?.[REF_NAME] !== undefined)
    .map((m) => ({
      tag: m.annotations![REF_NAME]!,
      digest: m.digest,
      mediaType: m.mediaType,
      size: m.size,
    }))
    .sort((a, b) => (a.tag < b.tag ? -1 : a.tag > b.tag ? 1 : 0));
}

/**
 * Removes `tag` from `index.json` under the layout lock. Blobs stay until {@link gc}.
 *
 * @example
 * ```ts
 * if (await Layout.removeTag('/tmp/oci', 'hello.1.0')) await Layout.gc('/tmp/oci');
 * ```
 * @returns true when the tag existed.
 * @throws {OciExportError} `OCI_BAD_TAG`, `OCI_LAYOUT_INVALID`, `OCI_INDEX_CORRUPT`, `OCI_WRITE_FAILED`; lock errors.
 */
export async function removeTag(
  layout: string,
  tag: string,
  options: LayoutLockOptions = {},
): Promise<boolean> {
  assertTag(tag);
  // Not a layout (or no index): say so before the lock would be made inside it.
  await readIndex(layout);
  return withLock(
    layout,
    async () => {
      const index = await readIndex(layout);
      const manifests = index.manifests.filter((m) => m.annotations?.[REF_NAME] !== tag);
      if (manifests.length === index.manifests.length) return false;
      await writeIndex(layout, { ...index, manifests });
      return true;
    },
    options,
  );
}

/**
 * Reads and parses a JSON blob (a manifest, a config, an index).
 *
 * @example
 * ```ts
 * const manifest = await Layout.readJsonBlob(layout, tagged, ManifestSchema);
 * ```
 * @throws {OciExportError} `OCI_BLOB_MISSING`, `OCI_BLOB_CORRUPT`, `OCI_READ_FAILED`.
 */
export async function readJsonBlob<T>(
  layout: string,
  d: Descriptor,
  schema: z.ZodType<T>,
): Promise<T> {
  const path = blobPath(layout, d.digest);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') {
      throw new OciExportError(
        OciExportCodes.BLOB_MISSING,
        `Blob ${d.digest} is missing: ${path}`,
        {
          path,
          cause,
          hint: blobHint(layout),
        },
      );
    }
    throw fsError(OciExportCodes.READ_FAILED, 'Cannot read', path, cause, 'Check permissions');
  }
  try {
    const parsed = schema.safeParse(JSON.parse(text));
    if (parsed.success) return parsed.data;
    throw new Error(describeIssues(parsed.error), { cause: parsed.error });
  } catch (cause) {
    throw new OciExportError(
      OciExportCodes.BLOB_CORRUPT,
      `Blob ${path} is not a valid ${d.mediaType}: ${messageOf(cause)}`,
      {
        path,
        cause,
        hint: blobHint(layout),
      },
    );
  }
}

/** The fix for a tag whose blobs are damaged, as the `day11` command makes it. */
function blobHint(layout: string): string {
  return `Export the image again (\`day11 export --oci ${layout} ...\`) or remove its tag (\`day11 layout rm --oci ${layout} TAG\`), then check with \`day11 layout verify --oci ${layout}\``;
}

/**
 * The names in `dir`, sorted; `[]` when it does not exist.
 *
 * @example
 * ```ts
 * await listDir(join(layout, 'blobs')); // ['sha256']
 * ```
 */
export async function listDir(dir: string): Promise<string[]> {
  try {
    return (await readdir(dir)).sort();
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return [];
    throw fsError(
      OciExportCodes.READ_FAILED,
      'Cannot list',
      dir,
      err,
      'Check permissions of the layout',
    );
  }
}
