/**
 * A merged run of layers as a layer of its own in the cache: its `fs/` is the
 * upper-style diff that the run's layers make together over whatever lies
 * below them, so its blob can stand in the image for the whole run.
 *
 * The layer is `build-<12 hex>` of `Hash.ofStrings(['squash', ...names])`
 * over the run's directory names, bottom to top, with a `squash.json`
 * sidecar listing them (a layer's kind is its sidecars). It is made once,
 * under the layer lock and with `Commit.commit`, leased while an export uses
 * it, and collected by `Gc.prune` like any layer; its blob is cached inside it
 * by `LayerBlob.ensure`. Two images that squash the same run share that blob.
 *
 * The tree is `Stack.merge` of the run (hardlinks; the highest layer wins;
 * whiteouts and opaque directories kept, a directory cut short by a
 * non-directory lower in the run made opaque), which as one layer shows what
 * the run shows. Then what cannot matter any more is dropped: a whiteout
 * inside a directory that is opaque in the merge hides only files of the run
 * itself, already gone, so it goes (a file deleted within the run vanishes).
 * Whiteouts elsewhere stay: the run does not know what lies below it.
 */
import { lstatSync, readdirSync, rmSync, utimesSync, type Stats } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { OverlayMarks, Sys, TempName } from '@day11/exec';
import { Commit, Hash, InUse, LayerDir, LayerMeta, Lock, Sidecar, Stack } from '@day11/layer';
import { OciExportCodes, OciExportError, fsError } from './errors.js';

/** The sidecar that makes a layer a merged run; `{ format, layers }`, layers bottom to top. */
export const SIDECAR = 'squash.json';
/** Version of the merge rules; a change gives new hashes, so old merged runs are never reused. */
export const FORMAT = 1;

const { OPAQUE_XATTRS } = OverlayMarks;
const WHITEOUT_XATTRS = ['trusted.overlay.whiteout', 'user.overlay.whiteout'] as const;

/** Options of {@link ensure}. */
export interface EnsureOptions {
  /** The run's layer directories, bottom to top (at least two); the merge goes beside the top one. */
  layers: readonly string[];
  /** Hash of the image's base, recorded as the merged layer's `base_hash`. */
  baseHash: string;
  /** Aborting stops the merge (nothing is recorded) or the wait for another process's merge. */
  signal?: AbortSignal | undefined;
}

/** A merged run, leased for the caller. */
export interface SquashLayer {
  /** The merged layer's directory. */
  dir: string;
  /** Its full hash. */
  hash: string;
  /** True when this call merged it; false when it was in the cache. */
  built: boolean;
  /** The lease that keeps `Gc.prune` away; release it once the export is done. */
  lease: InUse.Lease;
}

/**
 * The hash of the merged run of `layers` (bottom to top): a function of the
 * ordered layer names and {@link FORMAT} alone.
 *
 * @example
 * ```ts
 * SquashLayer.hashOf(['/cache/build-aaaaaaaaaaaa', '/cache/build-bbbbbbbbbbbb']);
 * ```
 */
export function hashOf(layers: readonly string[]): string {
  return Hash.ofStrings(['squash', String(FORMAT), ...layers.map(nameOf)]);
}

/**
 * The merged layer of the run `layers`, made first if the cache lacks it, and
 * leased. Concurrent callers, in this process or others, merge it once.
 *
 * @example
 * ```ts
 * const run = await SquashLayer.ensure({ layers: dirs.slice(10, 40), baseHash: base.hash });
 * try { await LayerBlob.ensure(run.dir); } finally { await run.lease.release(); }
 * ```
 * @throws {OciExportError} `OCI_BAD_ARGUMENT` for fewer than two layers, `OCI_LAYER_CHANGED`
 *   when the cached merge names other layers; `LayerError`s of the merge, commit and locks.
 */
export async function ensure(options: EnsureOptions): Promise<SquashLayer> {
  const layers = checkRun(options.layers);
  const osDir = dirname(layers.at(-1)!);
  const hash = hashOf(layers);
  const dir = LayerDir.path({ osDir, hash });
  return Lock.withLayer(
    // The holder may merge for a while; waiters wait as long as it lives.
    { osDir, hash, timeoutMs: Infinity, ...(options.signal && { signal: options.signal }) },
    async () => {
      const existing = await LayerMeta.find(dir).catch(() => undefined);
      if (existing) await assertSameRun(dir, layers);
      else await build({ ...options, layers, osDir, hash });
      // Under the lock Gc.prune takes too: the layer cannot vanish between the check and the lease.
      const lease = await InUse.acquire({ osDir, dirs: [dir] });
      return { dir, hash, built: !existing, lease };
    },
  );
}

function checkRun(layers: readonly string[]): string[] {
  if (layers.length < 2) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, 'A merged run needs two layers or more', {
      hint: 'Export a single layer as itself',
    });
  }
  for (const dir of layers) nameOf(dir);
  return [...layers];
}

function nameOf(dir: string): string {
  const name = basename(dir);
  if (LayerDir.isLayerName(name)) return name;
  throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `${dir} is not a layer directory`, {
    path: dir,
    hint: 'Pass layer directories ({osDir}/build-<12 hex>), e.g. from LayerDir.path',
  });
}

async function assertSameRun(dir: string, layers: readonly string[]): Promise<void> {
  const sidecar = await Sidecar.read(dir, SIDECAR).catch(() => undefined);
  const recorded = sidecar?.['layers'];
  const names = layers.map(nameOf);
  if (Array.isArray(recorded) && recorded.join(' ') === names.join(' ')) return;
  throw new OciExportError(
    OciExportCodes.LAYER_CHANGED,
    `${dir} is not the merge of ${names.join(' ')}: its ${SIDECAR} says ${JSON.stringify(recorded)}`,
    { path: dir, hint: `Delete ${dir} (it is a cache entry) and export again` },
  );
}

async function build(
  options: EnsureOptions & { layers: string[]; osDir: string; hash: string },
): Promise<void> {
  const upper = TempName.inside(options.osDir, 'squash');
  try {
    const { layers, opaque } = cutAtOpaqueRoot([...options.layers].reverse());
    await Stack.merge({
      layerDirs: layers,
      target: upper,
      ...(options.signal && { signal: options.signal }),
    });
    // Stack.merge copies the top root's xattrs only: an opaque root lower in the run
    // hides everything below the run too.
    if (opaque && !isOpaque(upper))
      Sys.setXattrSync(upper, OverlayMarks.OPAQUE_XATTR, OverlayMarks.OPAQUE_VALUE);
    dropHiddenWhiteouts(upper, isOpaque(upper));
    await Commit.commit({
      osDir: options.osDir,
      hash: options.hash,
      upper,
      meta: {
        exit_status: 0,
        parent_hashes: [],
        uid: 0,
        gid: 0,
        base_hash: options.baseHash,
        timing: [],
        failed_dep: null,
      },
      sidecars: { [SIDECAR]: { format: FORMAT, layers: options.layers.map(nameOf) } },
    });
  } catch (err) {
    rmSync(upper, { recursive: true, force: true });
    throw fsError(
      OciExportCodes.WRITE_FAILED,
      'Cannot merge the run into',
      upper,
      err,
      'Check free space and that the layers are on one filesystem',
    );
  }
}

/** The layers down to the highest one whose root is opaque (nothing below it shows), and whether there is one. */
function cutAtOpaqueRoot(topmostFirst: readonly string[]): { layers: string[]; opaque: boolean } {
  const cut = topmostFirst.findIndex((dir) => isOpaque(join(dir, 'fs')));
  if (cut < 0) return { layers: [...topmostFirst], opaque: false };
  return { layers: topmostFirst.slice(0, cut + 1), opaque: true };
}

/**
 * Removes the whiteouts below an opaque directory of the merged tree (they
 * hide nothing that shows), keeping each touched directory's mtime so the
 * archive stays a function of the layers.
 */
function dropHiddenWhiteouts(dir: string, hidden: boolean): void {
  let before: Stats | undefined;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    const st = lstatSync(path);
    if (st.isDirectory()) dropHiddenWhiteouts(path, hidden || isOpaque(path));
    else if (hidden && isWhiteout(path, st)) {
      before ??= lstatSync(dir);
      rmSync(path);
    }
  }
  if (before) utimesSync(dir, before.atimeMs / 1000, before.mtimeMs / 1000);
}

function isOpaque(path: string): boolean {
  return OPAQUE_XATTRS.some((name) => Sys.getXattrSync(path, name)?.toString('latin1') === 'y');
}

function isWhiteout(path: string, st: Stats): boolean {
  if (st.isCharacterDevice()) return st.rdev === 0;
  return (
    st.isFile() &&
    st.size === 0 &&
    WHITEOUT_XATTRS.some((name) => Sys.getXattrSync(path, name) !== undefined)
  );
}
