/**
 * Checking an OCI image layout end to end: `oci-layout`, `index.json`, and
 * every blob a tag reaches (presence, size, digest, and each layer's diff_id).
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import { messageOf } from './errors.js';
import {
  blobPath,
  INDEX_FILE,
  layoutProblem,
  OCI_LAYOUT_FILE,
  readIndex,
  readJsonBlob,
} from './layout-index.js';
import {
  ConfigSchema,
  INDEX_TYPES,
  IndexSchema,
  MANIFEST_TYPES,
  ManifestSchema,
  MediaTypes,
  REF_NAME,
  REF_NAME_RE,
  type Descriptor,
  type OciIndex,
} from './oci.js';

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
