/**
 * The layer budget of an export (`maxLayers`): where the stack's layers
 * become the image's blobs. A stack deeper than the budget keeps its most
 * valuable layers as their own blobs (shared with other images) and merges
 * contiguous runs of the rest into one blob each, so that the unpacked image
 * is exactly the overlay view of the whole stack:
 *
 * 1. value each layer (`SquashValue`: images containing it × blob size),
 * 2. choose the runs (`SquashPlan`, a dynamic programme; base alone),
 * 3. make each run a merged layer in the cache (`SquashLayer`, leased),
 * 4. compress the merged layers' blobs like any layer's.
 *
 * Without `maxLayers` there is no hook: every layer is its own blob, as before.
 */
import { basename } from 'node:path';
import type { Base } from '@day11/layer';
import { OciExportCodes, OciExportError } from './errors.js';
import type * as LayerBlob from './layer-blob.js';
import * as SquashLayer from './squash-layer.js';
import * as SquashPlan from './squash-plan.js';
import * as SquashValue from './squash-value.js';

/** The squash options of an export. */
export interface SquashOptions {
  /**
   * At most this many layers in the image (≥ 2; Docker takes
   * {@link SquashPlan.DOCKER_MAX_LAYERS}). A deeper stack keeps its most
   * valuable layers and merges contiguous runs of the others. When set, each
   * layer descriptor carries the {@link SquashValue.LAYERS_ANNOTATION}.
   */
  maxLayers?: number | undefined;
  /**
   * Stacks of the other images (layer directories, base first) to value
   * sharing by, instead of the images already tagged in the layout.
   */
  siblings?: readonly (readonly string[])[] | undefined;
  /** `value` (default): the dynamic programme; `suffix`, `flatten`: what other tools do. */
  squashStrategy?: SquashPlan.SquashStrategy | undefined;
}

/** One layer of the image: a layer's blob, or a merged run's. */
export interface ImageLayer {
  blob: LayerBlob.LayerBlob;
  /** The layer directories the blob holds, bottom to top: one, or the merged run. */
  members: readonly string[];
  /** Descriptor annotations (exports with `maxLayers` only). */
  annotations?: Record<string, string> | undefined;
}

/** A merged run made or found, reported as progress. */
export interface SquashProgress {
  phase: 'squash';
  /** Position of the run's blob in the image. */
  index: number;
  /** The merged layer directory. */
  dir: string;
  /** How many layers it merges. */
  layers: number;
  /** True when this export merged it; false when it was cached. */
  built: boolean;
}

/** What {@link squashLayers} needs from the export. */
export interface SquashInput {
  /** The stack's layer directories, base first. */
  dirs: readonly string[];
  /** Their blobs, in the same order. */
  blobs: readonly LayerBlob.LayerBlob[];
  options: SquashOptions & {
    layout: string;
    tag: string;
    base: Base;
    signal?: AbortSignal | undefined;
    onProgress?: ((event: SquashProgress) => void) | undefined;
  };
  /** Makes sure the merged layers' blobs are cached, as the export does for every layer. */
  ensureBlobs: (dirs: readonly string[]) => Promise<LayerBlob.LayerBlob[]>;
}

/** The image's layers, and the leases of its merged runs to release after publishing. */
export interface Squashed {
  layers: ImageLayer[];
  release(): Promise<void>;
}

/**
 * Throws on malformed squash options, before anything is compressed.
 *
 * @example
 * ```ts
 * checkSquashOptions({ maxLayers: 125 });
 * ```
 * @throws {OciExportError} `OCI_BAD_ARGUMENT`.
 */
export function checkSquashOptions(options: SquashOptions): void {
  if (options.maxLayers !== undefined) SquashPlan.checkMaxLayers(options.maxLayers);
  if (options.squashStrategy !== undefined) SquashPlan.assertStrategy(options.squashStrategy);
  const { siblings } = options;
  if (siblings === undefined) return;
  if (!Array.isArray(siblings) || !siblings.every((s) => isStringArray(s))) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, 'Invalid siblings', {
      hint: 'Pass siblings as an array of stacks, each an array of layer directories',
    });
  }
}

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/**
 * The image's layers under the budget `maxLayers`, or `undefined` without one.
 *
 * @example
 * ```ts
 * const squashed = await squashLayers({ dirs, blobs, options, ensureBlobs });
 * try { publish(squashed?.layers ?? plain); } finally { await squashed?.release(); }
 * ```
 * @throws {OciExportError} as `SquashLayer.ensure` and the blob cache; lock and lease errors.
 */
export async function squashLayers(input: SquashInput): Promise<Squashed | undefined> {
  const { dirs, blobs, options } = input;
  const { maxLayers } = options;
  if (maxLayers === undefined) return undefined;
  const values = await SquashValue.values({
    layers: dirs.map((dir, i) => ({ dir, digest: blobs[i]!.digest, size: blobs[i]!.size })),
    layout: options.layout,
    tag: options.tag,
    siblings: options.siblings,
  });
  const { segments } = SquashPlan.byStrategy(options.squashStrategy ?? 'value', {
    values,
    maxLayers,
  });
  const runs: SquashLayer.SquashLayer[] = [];
  const release = async () => {
    await Promise.all(runs.map((r) => r.lease.release().catch(() => undefined)));
  };
  try {
    for (const [index, s] of segments.entries()) {
      if (s.end - s.start < 2) continue;
      const run = await SquashLayer.ensure({
        layers: dirs.slice(s.start, s.end),
        baseHash: options.base.hash,
        signal: options.signal,
      });
      runs.push(run);
      const layers = s.end - s.start;
      options.onProgress?.({ phase: 'squash', index, dir: run.dir, layers, built: run.built });
    }
    const runBlobs = await input.ensureBlobs(runs.map((r) => r.dir));
    let nextRun = 0;
    const layers = segments.map((s): ImageLayer => {
      const members = dirs.slice(s.start, s.end);
      const blob = members.length === 1 ? blobs[s.start]! : runBlobs[nextRun++]!;
      const names = members.map((d) => basename(d)).join(',');
      return { blob, members, annotations: { [SquashValue.LAYERS_ANNOTATION]: names } };
    });
    return { layers, release };
  } catch (err) {
    await release();
    throw err;
  }
}
