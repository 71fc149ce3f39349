/**
 * Which directories a run mounts as its overlay lowers (SPEC §5).
 *
 * Every layer stays its own lowerdir whenever `Overlay.mount` can take the
 * stack (the new mount API takes the kernel's 500 layers, with no copying).
 * Only when more layers are given than any strategy fits are the deepest
 * ones hardlink-merged into one directory (`Stack.planLowerdir` +
 * `Stack.merge`), keeping the layers nearest the top separate.
 */
import { join, resolve } from 'node:path';
import { Overlay } from '@day11/container';
import { Stack } from '@day11/layer';

/** Options of {@link planLowers}. */
export interface PlanLowersOptions {
  /** Layer directories (each with `fs/`), topmost first: the dependencies, then the base. */
  layerDirs: readonly string[];
  upper: string;
  work: string;
  /** The mount point. */
  target: string;
  /** Where the merged lower goes if one is needed (same filesystem as the layers). */
  mergeTarget: string;
  /** Plan against these instead of this machine's (tests). */
  capabilities?: Overlay.Capabilities;
}

/** What {@link planLowers} decided. */
export interface LowerPlan {
  /** The directories to mount as lowers, topmost first. */
  lowers: string[];
  /** Layer directories to merge into {@link LowerPlan.mergeTarget} first; empty when nothing is merged. */
  merge: string[];
  /** The merged lower (the last of `lowers`) when `merge` is not empty. */
  mergeTarget: string | undefined;
}

/**
 * Plans the lowers of a run: all layers separate when they fit, else the
 * most that fit separate and the rest merged into `mergeTarget` below them.
 * Merges nothing itself (see {@link LowerPlan.merge}).
 *
 * @example
 * ```ts
 * const plan = await planLowers({ layerDirs: [dep2, dep1, base.dir], upper, work, target, mergeTarget });
 * if (plan.merge.length) await Stack.merge({ layerDirs: plan.merge, target: plan.mergeTarget! });
 * await Overlay.mount({ lowers: plan.lowers, upper, work, target });
 * ```
 */
export async function planLowers(opts: PlanLowersOptions): Promise<LowerPlan> {
  const layerDirs = [...new Set(opts.layerDirs.map((d) => resolve(d)))];
  const all = layerDirs.map(fsOf);
  const mount = { upper: opts.upper, work: opts.work, target: opts.target };
  const separate = { lowers: all, merge: [], mergeTarget: undefined };
  if ((await Overlay.strategyFor({ ...mount, lowers: all }, opts.capabilities)) !== undefined) {
    return separate;
  }
  const first = await Overlay.plan({ ...mount, lowers: all }, opts.capabilities);
  const counted = first.fits.filter((f) => f.problem?.kind === 'too-many-lowers');
  // Unavailable, or a path no strategy can pass: merging would not help, and
  // Overlay.mount reports the real reason.
  if (counted.length === 0) return separate;
  const fit = Math.max(...first.fits.map((f) => f.maxLowers));
  // The merged directory's own path may cost more than a layer's (a page-limited
  // strategy counts bytes): keep one layer fewer until the plan fits.
  for (let slots = Math.min(fit, layerDirs.length - 1); slots >= 1; slots--) {
    const split = Stack.planLowerdir({
      available: slots,
      mergedOverhead: 1,
      entryCost: () => 1,
      layers: layerDirs,
    });
    const lowers = [...split.separate.map(fsOf), opts.mergeTarget];
    const again = await Overlay.plan({ ...mount, lowers }, opts.capabilities);
    if (again.strategy !== undefined) {
      return { lowers, merge: split.merged, mergeTarget: opts.mergeTarget };
    }
  }
  return separate;
}

function fsOf(layerDir: string): string {
  return join(layerDir, 'fs');
}
