/**
 * An OCI image layout directory: `oci-layout`, `index.json` and
 * `blobs/<alg>/<hex>`. Every file is written to a temporary name and renamed;
 * `index.json` changes only under the layout lock (`index.json.lock`, a
 * `Lock.withPath` lock of `@day11/layer`), so any number of processes can tag
 * images in one layout at once. Garbage collection takes the same lock.
 */
import { createReadStream } from 'node:fs';
import { lstat, mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { createHash } from 'node:crypto';
import { Lock } from '@day11/layer';
import { z } from 'zod';
import { OciExportCodes, OciExportError, errnoCode, fsError, messageOf } from './errors.js';
import { TEMP_PREFIX, writeAtomic } from './files.js';
import {
  IMAGE_LAYOUT_VERSION,
  IndexSchema,
  ManifestSchema,
  ConfigSchema,
  MediaTypes,
  REF_NAME,
  REF_NAME_RE,
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
 * Makes `layout` an OCI image layout if it is not one yet: `blobs/sha256/`
 * and `oci-layout`. An existing `oci-layout` must name version 1.0.0. A
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
    if (name.startsWith(TEMP_PREFIX)) continue;
    if (name !== 'blobs') return name;
    for (const alg of await listDir(join(layout, 'blobs'))) {
      const files = await listDir(join(layout, 'blobs', alg)).catch(() => undefined);
      if (files === undefined) return `blobs/${alg}`;
      const file = files.find((f) => !f.startsWith(TEMP_PREFIX));
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

function layoutProblem(text: string): string | undefined {
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
 * Reads `index.json`; a layout without one has an empty index.
 *
 * @example
 * ```ts
 * const index = await Layout.readIndex('/tmp/oci');
 * console.log(index.manifests.length);
 * ```
 * @throws {OciExportError} `OCI_INDEX_CORRUPT` naming the file, `OCI_READ_FAILED`.
 */
export async function readIndex(layout: string): Promise<OciIndex> {
  const file = join(layout, INDEX_FILE);
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (errnoCode(err) === 'ENOENT')
      return { schemaVersion: 2, mediaType: MediaTypes.index, manifests: [] };
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
 * @throws {OciExportError} `OCI_INDEX_CORRUPT`.
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
 * @throws {OciExportError} `OCI_BAD_TAG`, `OCI_INDEX_CORRUPT`, `OCI_WRITE_FAILED`; lock errors.
 */
export async function removeTag(
  layout: string,
  tag: string,
  options: LayoutLockOptions = {},
): Promise<boolean> {
  assertTag(tag);
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
 * @throws {OciExportError} `OCI_INDEX_CORRUPT`, `OCI_BLOB_MISSING`, `OCI_BLOB_CORRUPT`,
 *   `OCI_WRITE_FAILED`; lock errors.
 */
export async function gc(layout: string, options: LayoutLockOptions = {}): Promise<GcResult> {
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
    if (!name.startsWith(TEMP_PREFIX) || ownerAlive(name)) continue;
    const path = join(layout, name);
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
    if (name.startsWith(TEMP_PREFIX)) {
      if (!ownerAlive(name)) {
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

/** Temp names carry the writer's pid: `.day11-tmp-<pid>-...`. */
function ownerAlive(name: string): boolean {
  const pid = Number(/^\.day11-tmp-(\d+)-/.exec(name)?.[1]);
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return errnoCode(err) === 'EPERM';
  }
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

async function listDir(dir: string): Promise<string[]> {
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

const MANIFEST_TYPES: readonly string[] = [MediaTypes.manifest, MediaTypes.dockerManifest];
const INDEX_TYPES: readonly string[] = [MediaTypes.index, MediaTypes.dockerManifestList];

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
          hint: 'Export the image again (or remove its tag with Layout.removeTag), then run Layout.verify',
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
        hint: 'Export the image again (or remove its tag with Layout.removeTag), then run Layout.verify',
      },
    );
  }
}

// ---------------------------------------------------------------- verify

/** One problem found by {@link verify}. */
export interface Problem {
  /** The file concerned. */
  path: string;
  /** The tag whose image has the problem, when known. */
  tag?: string | undefined;
  /** The blob concerned, when there is one. */
  digest?: string | undefined;
  message: string;
}

interface BlobCheck {
  ok: boolean;
  /** sha256 of the decompressed content, for gzip layers that passed. */
  diffId?: string | undefined;
}

interface VerifyState {
  layout: string;
  problems: Problem[];
  checked: Map<string, Promise<BlobCheck>>;
}

/**
 * Checks the whole layout: `oci-layout`, `index.json`, and for every tagged
 * manifest that each blob it references exists with its digest and size, and
 * that each layer's uncompressed digest equals its config's diff_id. Reads
 * every blob once; changes nothing.
 *
 * @example
 * ```ts
 * const problems = await Layout.verify('/tmp/oci');
 * for (const p of problems) console.error(`${p.tag ?? ''} ${p.path}: ${p.message}`);
 * ```
 * @returns the problems found; empty when the layout is sound.
 */
export async function verify(layout: string): Promise<Problem[]> {
  const state: VerifyState = { layout, problems: [], checked: new Map() };
  await verifyLayoutFile(state);
  let index: OciIndex;
  try {
    index = await readIndex(layout);
  } catch (err) {
    state.problems.push({ path: join(layout, INDEX_FILE), message: messageOf(err) });
    return state.problems;
  }
  for (const d of index.manifests) {
    const tag = d.annotations?.[REF_NAME];
    if (tag !== undefined && !REF_NAME_RE.test(tag)) {
      state.problems.push({
        path: join(layout, INDEX_FILE),
        tag,
        message: `invalid ref name ${JSON.stringify(tag)}`,
      });
    }
    await verifyDescriptor(state, d, tag);
  }
  return state.problems;
}

async function verifyLayoutFile(state: VerifyState): Promise<void> {
  const file = join(state.layout, OCI_LAYOUT_FILE);
  const text = await readFile(file, 'utf8').catch(() => undefined);
  const problem = text === undefined ? 'missing' : layoutProblem(text);
  if (problem) state.problems.push({ path: file, message: problem });
}

async function verifyDescriptor(
  state: VerifyState,
  d: Descriptor,
  tag: string | undefined,
): Promise<void> {
  if (!(await checkBlob(state, d, tag)).ok) return;
  try {
    if (MANIFEST_TYPES.includes(d.mediaType)) await verifyManifest(state, d, tag);
    else if (INDEX_TYPES.includes(d.mediaType)) {
      for (const child of (await readJsonBlob(state.layout, d, IndexSchema)).manifests) {
        await verifyDescriptor(state, child, tag);
      }
    }
  } catch (err) {
    state.problems.push({
      path: blobPath(state.layout, d.digest),
      tag,
      digest: d.digest,
      message: messageOf(err),
    });
  }
}

async function verifyManifest(
  state: VerifyState,
  d: Descriptor,
  tag: string | undefined,
): Promise<void> {
  const manifest = await readJsonBlob(state.layout, d, ManifestSchema);
  if (!(await checkBlob(state, manifest.config, tag)).ok) return;
  const config = await readJsonBlob(state.layout, manifest.config, ConfigSchema);
  const diffIds = config.rootfs.diff_ids;
  const configPath = blobPath(state.layout, manifest.config.digest);
  if (diffIds.length !== manifest.layers.length) {
    state.problems.push({
      path: configPath,
      tag,
      digest: manifest.config.digest,
      message: `${diffIds.length} diff_ids for ${manifest.layers.length} layers`,
    });
  }
  for (const [i, layer] of manifest.layers.entries()) {
    const check = await checkBlob(state, layer, tag);
    const expected = diffIds[i];
    if (
      check.ok &&
      check.diffId !== undefined &&
      expected !== undefined &&
      check.diffId !== expected
    ) {
      state.problems.push({
        path: blobPath(state.layout, layer.digest),
        tag,
        digest: layer.digest,
        message: `layer ${i} uncompresses to ${check.diffId}, the config says ${expected}`,
      });
    }
  }
}

/** Checks one blob once (memoised): exists, size, digest; for layers also the diff_id. */
function checkBlob(state: VerifyState, d: Descriptor, tag: string | undefined): Promise<BlobCheck> {
  let check = state.checked.get(d.digest);
  if (!check) {
    check = hashBlob(state, d, tag);
    state.checked.set(d.digest, check);
  }
  return check;
}

async function hashBlob(
  state: VerifyState,
  d: Descriptor,
  tag: string | undefined,
): Promise<BlobCheck> {
  const path = blobPath(state.layout, d.digest);
  const fail = (message: string): BlobCheck => {
    state.problems.push({ path, tag, digest: d.digest, message });
    return { ok: false };
  };
  if (!d.digest.startsWith('sha256:')) return fail(`unsupported digest algorithm in ${d.digest}`);
  const st = await lstat(path).catch(() => undefined);
  if (!st) return fail('missing blob');
  if (st.size !== d.size) return fail(`size ${st.size}, the descriptor says ${d.size}`);
  const gzip = d.mediaType === MediaTypes.layer || d.mediaType === MediaTypes.dockerLayer;
  try {
    const { digest, diffId } = await digestFile(path, gzip);
    if (digest !== d.digest) return fail(`content hashes to ${digest}`);
    return {
      ok: true,
      diffId: gzip ? diffId : d.mediaType === MediaTypes.layerTar ? digest : undefined,
    };
  } catch (err) {
    // Say whether the bytes are wrong or just not gzip: hash them alone.
    const digest = await digestFile(path, false).then(
      (r) => r.digest,
      () => undefined,
    );
    if (digest !== undefined && digest !== d.digest) return fail(`content hashes to ${digest}`);
    return fail(`cannot read${gzip ? ' or decompress' : ''}: ${messageOf(err)}`);
  }
}

/** sha256 of a file and, when `gzip`, of its decompressed content, in one streaming pass. */
async function digestFile(
  path: string,
  gzip: boolean,
): Promise<{ digest: string; diffId: string | undefined }> {
  const outer = createHash('sha256');
  const inner = createHash('sha256');
  const tap = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      outer.update(chunk);
      cb(null, gzip ? chunk : undefined);
    },
  });
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      inner.update(chunk);
      cb();
    },
  });
  if (gzip) await pipeline(createReadStream(path), tap, createGunzip(), sink);
  else await pipeline(createReadStream(path), tap, sink);
  return {
    digest: `sha256:${outer.digest('hex')}`,
    diffId: gzip ? `sha256:${inner.digest('hex')}` : undefined,
  };
}
