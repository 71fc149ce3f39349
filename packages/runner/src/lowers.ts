/**
 * Which directories a run mounts as its overlay lowers, for stacks of any
 * depth.
 *
 * Every layer stays its own lowerdir whenever `Overlay.mount` can take the
 * stack (the new mount API takes the kernel's 500 layers, with no copying).
 * Only when more layers are given than any strategy fits are the deepest
 * ones hardlink-merged into one directory (`Stack.merge`), keeping as many
 * layers nearest the top separate as `Overlay.fit` says.
 */
import { join, resolve } from 'node:path';
import { Overlay } from '@day11/container';

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
  const lowers = layerDirs.map((dir) => join(dir, 'fs'));
  const { upper, work, target, mergeTarget } = opts;
  const mount = { lowers, upper, work, target, mergedLower: mergeTarget };
  const keep = await Overlay.fit(mount, opts.capabilities);
  if (keep >= lowers.length) return { lowers, merge: [], mergeTarget: undefined };
  return {
    lowers: [...lowers.slice(0, keep), mergeTarget],
    merge: layerDirs.slice(keep),
    mergeTarget,
  };
}
