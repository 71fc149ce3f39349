/**
 * Which layers of a stack keep their own blob when an image may have at most
 * `maxLayers` layers, and which contiguous runs are merged into one blob each.
 *
 * Only contiguous runs may be merged: merging layers that are not adjacent
 * would move a lower layer above the ones between, changing which file wins.
 * So a plan is a partition of the ordered stack into segments; a segment of
 * one layer keeps that layer's blob (shared with every image that has it), a
 * longer one becomes a merged blob. The base is always a segment of its own.
 *
 * {@link plan} maximises the total value of the kept layers (the caller's
 * measure of what keeping a layer is worth, e.g. images sharing it × its
 * size) over all partitions into at most `maxLayers` segments, by dynamic
 * programming over the stack: O(layers × maxLayers) time and memory.
 * {@link suffix} and {@link flatten} are what existing tools do, kept as
 * baselines and for callers who want them.
 */
import { OciExportCodes, OciExportError } from './errors.js';

/** Docker's limit (moby's layer store, `maxLayerDepth`): an image of more layers does not load. */
export const DOCKER_MAX_LAYERS = 125;

/** Layers `start` to `end - 1` of the stack (bottom first); one layer is kept, more are merged. */
export interface Segment {
  start: number;
  end: number;
}

/** A partition of the stack into segments, bottom first, covering every layer once. */
export interface SquashPlan {
  segments: Segment[];
  /** Sum of the values of the kept layers (segments of one layer). */
  keptValue: number;
}

/** How the runs to merge are chosen: see {@link plan}, {@link suffix}, {@link flatten}. */
export type SquashStrategy = 'value' | 'suffix' | 'flatten';

/** Options of {@link plan}. */
export interface PlanOptions {
  /** The value of keeping each layer as its own blob, bottom (the base) first; finite, ≥ 0. */
  values: readonly number[];
  /** At most this many segments (≥ 2: the base and at least one more). */
  maxLayers: number;
}

/**
 * The partition into at most `maxLayers` contiguous segments, the base alone,
 * that maximises the summed value of the layers kept alone. A stack that fits
 * keeps every layer. Ties go to keeping the lower layer, and to the shorter
 * run, so the plan is a pure function of its inputs.
 *
 * @example
 * ```ts
 * SquashPlan.plan({ values: [9, 1, 1, 5, 1], maxLayers: 3 }).segments;
 * // [{ start: 0, end: 1 }, { start: 1, end: 3 }, ...] – the base, a run, and so on
 * ```
 * @throws {OciExportError} `OCI_BAD_ARGUMENT` for a bad `maxLayers` or value.
 */
export function plan({ values, maxLayers }: PlanOptions): SquashPlan {
  checkMaxLayers(maxLayers);
  values.forEach(checkValue);
  const n = values.length;
  if (n <= maxLayers) return planOf(singles(0, n), values);
  // best[k][i]: the most value layers i..n-1 can keep in at most k segments.
  // tail[k][i]: max over j ≥ i of best[k][j], the best a run starting before i can be followed by.
  const best = Array.from({ length: maxLayers + 1 }, () => new Float64Array(n + 1));
  const tail = Array.from({ length: maxLayers + 1 }, () => new Float64Array(n + 2));
  best[0]!.fill(-Infinity, 0, n); // no segment left: only the empty rest is possible
  for (let k = 0; k <= maxLayers; k++) {
    const row = best[k]!;
    if (k > 0) {
      const prev = best[k - 1]!;
      const prevTail = tail[k - 1]!;
      for (let i = n - 1; i >= 0; i--) {
        const keep = values[i]! + prev[i + 1]!;
        row[i] = i + 2 <= n ? Math.max(keep, prevTail[i + 2]!) : keep;
      }
    }
    const t = tail[k]!;
    t[n + 1] = -Infinity;
    for (let i = n; i >= 0; i--) t[i] = Math.max(row[i]!, t[i + 1]!);
  }
  return planOf(rebuild({ values, best, tail, maxLayers }), values);
}

interface Tables {
  values: readonly number[];
  best: Float64Array[];
  tail: Float64Array[];
  maxLayers: number;
}

/** Follows the tables from the base up, preferring to keep, then the shortest run. */
function rebuild({ values, best, tail, maxLayers }: Tables): Segment[] {
  const n = values.length;
  const segments: Segment[] = [{ start: 0, end: 1 }];
  let k = maxLayers - 1;
  for (let i = 1; i < n; k--) {
    const prev = best[k - 1]!;
    const keep = values[i]! + prev[i + 1]!;
    const merge = i + 2 <= n ? tail[k - 1]![i + 2]! : -Infinity;
    if (keep >= merge) {
      segments.push({ start: i, end: i + 1 });
      i++;
      continue;
    }
    let end = i + 2;
    while (prev[end]! < merge) end++;
    segments.push({ start: i, end });
    i = end;
  }
  return segments;
}

/**
 * What docker-squash and friends do: keep the lowest `maxLayers - 1` layers,
 * merge everything above into one.
 *
 * @example
 * ```ts
 * SquashPlan.suffix({ values, maxLayers: 60 }); // layers 0–58 kept, 59–end merged
 * ```
 */
export function suffix({ values, maxLayers }: PlanOptions): SquashPlan {
  checkMaxLayers(maxLayers);
  const n = values.length;
  if (n <= maxLayers) return planOf(singles(0, n), values);
  return planOf([...singles(0, maxLayers - 1), { start: maxLayers - 1, end: n }], values);
}

/**
 * `crane flatten` with the base kept: the base, then everything above as one
 * layer (the most sharing a flatten can keep).
 *
 * @example
 * ```ts
 * SquashPlan.flatten({ values, maxLayers: 60 }); // [base, everything else]
 * ```
 */
export function flatten({ values, maxLayers }: PlanOptions): SquashPlan {
  checkMaxLayers(maxLayers);
  const n = values.length;
  if (n <= 2) return planOf(singles(0, n), values);
  return planOf(
    [
      { start: 0, end: 1 },
      { start: 1, end: n },
    ],
    values,
  );
}

/**
 * The plan of `strategy`.
 *
 * @example
 * ```ts
 * const { segments } = SquashPlan.byStrategy('value', { values, maxLayers: 125 });
 * ```
 */
export function byStrategy(strategy: SquashStrategy, options: PlanOptions): SquashPlan {
  assertStrategy(strategy);
  return STRATEGIES[strategy](options);
}

const STRATEGIES = { value: plan, suffix, flatten } as const;

/**
 * Throws unless `strategy` is one of `value`, `suffix`, `flatten`.
 *
 * @example
 * ```ts
 * assertStrategy('suffix'); // ok
 * ```
 */
export function assertStrategy(strategy: string): asserts strategy is SquashStrategy {
  if (Object.hasOwn(STRATEGIES, strategy)) return;
  throw new OciExportError(
    OciExportCodes.BAD_ARGUMENT,
    `Unknown squash strategy ${JSON.stringify(strategy)}`,
    { hint: "Use 'value' (the default), 'suffix' or 'flatten'" },
  );
}

/**
 * Throws unless `maxLayers` is an integer ≥ 2.
 *
 * @example
 * ```ts
 * checkMaxLayers(125); // ok
 * ```
 */
export function checkMaxLayers(maxLayers: number): void {
  if (Number.isSafeInteger(maxLayers) && maxLayers >= 2) return;
  throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `Invalid maxLayers ${String(maxLayers)}`, {
    hint: `Pass an integer of at least 2 (the base and one more layer); Docker takes ${DOCKER_MAX_LAYERS}`,
  });
}

function checkValue(value: number, index: number): void {
  if (Number.isFinite(value) && value >= 0) return;
  throw new OciExportError(
    OciExportCodes.BAD_ARGUMENT,
    `Invalid value ${String(value)} of layer ${index}`,
    { hint: 'Layer values are finite numbers ≥ 0 (e.g. images sharing it × its size)' },
  );
}

function singles(start: number, end: number): Segment[] {
  return Array.from({ length: end - start }, (_, i) => ({ start: start + i, end: start + i + 1 }));
}

function planOf(segments: Segment[], values: readonly number[]): SquashPlan {
  const keptValue = segments
    .filter((s) => s.end - s.start === 1)
    .reduce((sum, s) => sum + values[s.start]!, 0);
  return { segments, keptValue };
}
