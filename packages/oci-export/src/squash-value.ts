/**
 * What keeping a layer as its own blob is worth, for the squash plan: how
 * many images contain the layer (the one being exported included) times its
 * compressed size.
 *
 * The images are those tagged in the target layout, read back through the
 * {@link LAYERS_ANNOTATION} of each layer descriptor (and, for images
 * exported without it, through the blob digests of the stack's own layers).
 * An image counts when it has the layer as a blob of its own: one that merged
 * it into a run shares nothing with an image keeping it, and counting it
 * would let a popular layer win in an image whose neighbours dropped it.
 * Or the caller names the sibling stacks instead, and an image counts when
 * its stack has the layer.
 */
import { basename } from 'node:path';
import * as Layout from './layout.js';
import { MediaTypes, ManifestSchema, REF_NAME } from './oci.js';

/**
 * The layer-descriptor annotation listing the day11 layers a blob holds:
 * their directory names (`build-<12 hex>`), bottom to top, comma-separated;
 * one name for a layer kept as itself, several for a merged run.
 */
export const LAYERS_ANNOTATION = 'org.day11.layers';

/** One layer of the stack being valued. */
export interface ValuedLayer {
  /** The layer directory. */
  dir: string;
  /** Its blob digest (finds it in images exported without annotations). */
  digest: string;
  /** Its blob size in bytes. */
  size: number;
}

/** Options of {@link values}. */
export interface ValueOptions {
  /** The stack, base first. */
  layers: readonly ValuedLayer[];
  /** The layout whose tagged images count, unless `siblings` is given. */
  layout: string;
  /** The tag being exported: its current image in the layout does not count (it is being replaced). */
  tag: string;
  /** Stacks (layer directories) of the other images, counted instead of the layout's. */
  siblings?: readonly (readonly string[])[] | undefined;
}

/**
 * The value of each layer of the stack: (1 + other images containing it) × its blob size.
 *
 * @example
 * ```ts
 * const v = await SquashValue.values({ layers, layout: '/srv/oci', tag: 'app' });
 * ```
 * @throws {OciExportError} `OCI_INDEX_CORRUPT` when the layout's index.json is; a manifest
 *   that is missing or corrupt only does not count.
 */
export async function values(options: ValueOptions): Promise<number[]> {
  const counts = options.siblings
    ? countStacks(options.siblings)
    : await countLayout(options.layout, options.tag, options.layers);
  return options.layers.map((l) => (1 + (counts.get(basename(l.dir)) ?? 0)) * l.size);
}

/** Images containing each layer name, over sibling stacks. */
function countStacks(stacks: readonly (readonly string[])[]): Map<string, number> {
  const counts = new Map<string, number>();
  for (const stack of stacks) addImage(counts, new Set(stack.map((dir) => basename(dir))));
  return counts;
}

/** Images tagged in `layout` (other than `tag`) having each layer name as a blob of its own. */
async function countLayout(
  layout: string,
  tag: string,
  layers: readonly ValuedLayer[],
): Promise<Map<string, number>> {
  const byDigest = new Map(layers.map((l) => [l.digest, basename(l.dir)]));
  const counts = new Map<string, number>();
  for (const entry of (await Layout.readIndex(layout)).manifests) {
    const other = entry.annotations?.[REF_NAME];
    if (other === undefined || other === tag || entry.mediaType !== MediaTypes.manifest) continue;
    const manifest = await Layout.readJsonBlob(layout, entry, ManifestSchema).catch(
      () => undefined,
    );
    if (!manifest) continue;
    const names = new Set<string>();
    for (const d of manifest.layers) {
      const listed = d.annotations?.[LAYERS_ANNOTATION]?.split(',') ?? [byDigest.get(d.digest)];
      if (listed.length === 1 && listed[0]) names.add(listed[0]);
    }
    addImage(counts, names);
  }
  return counts;
}

function addImage(counts: Map<string, number>, names: ReadonlySet<string>): void {
  for (const name of names) counts.set(name, (counts.get(name) ?? 0) + 1);
}
