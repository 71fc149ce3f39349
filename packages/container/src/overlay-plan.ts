/**
 * Planning an overlay mount without mounting: validating a request, how
 * many lowers each strategy fits, which one a mount would use, and how many
 * lowers can stay separate when the rest are merged into one directory.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ContainerCodes, ContainerError } from './errors.js';
import {
  STRATEGY_ORDER,
  capabilities,
  type Capabilities,
  type Strategy,
  type StrategyCapability,
} from './overlay-capabilities.js';
import {
  DEFAULT_PAGE_BYTES,
  FSCONFIG_STRING_MAX,
  absolutePath,
  byteLength,
  classicMaxLowers,
  commonParent,
  dedupeLowers,
  escapeFsconfigUpper,
  featureOptions,
  mountCommandBadPath,
  relativeTo,
  unusablePath,
  type ClassicParts,
  type FeatureOptions,
} from './overlay-options.js';

/** Options of {@link mount} and {@link plan}. */
export interface MountOptions {
  /** Lower layer directories, topmost first. Repeats are dropped, keeping the first. */
  lowers: readonly string[];
  /** The writable upper directory; omit it (and `work`) for a read-only overlay of the lowers. */
  upper?: string;
  /** overlayfs's work directory: empty, on the same filesystem as `upper`. */
  work?: string;
  /** The directory to mount on. */
  target: string;
  /** overlayfs feature options over {@link DEFAULT_FEATURES}: `true` sets a flag, `false` drops a default. */
  options?: Readonly<Record<string, string | boolean>>;
  /** Use this strategy only (tests, benchmarks); by default the first in {@link STRATEGY_ORDER} that fits. */
  strategy?: Strategy;
  /** Aborting it before the mount exists cancels it (and kills a running `mount(8)`). */
  signal?: AbortSignal;
}

/** Why a strategy cannot mount a given stack. */
export interface FitProblem {
  kind: 'unavailable' | 'too-many-lowers' | 'bad-path';
  message: string;
  /** The path it cannot pass, for `bad-path`. */
  path?: string;
}

/** How one strategy fares with a given stack (see {@link plan}). */
export interface StrategyFit {
  strategy: Strategy;
  /** How many of the lowers, topmost first, it could mount here (0 when unavailable). */
  maxLowers: number;
  /** Why it cannot mount this stack; `undefined` when it can. */
  problem: FitProblem | undefined;
}

/** The result of {@link plan}. */
export interface MountPlan {
  /** The strategy {@link mount} would use; `undefined` when none can. */
  strategy: Strategy | undefined;
  /** Every strategy, in {@link STRATEGY_ORDER}. */
  fits: StrategyFit[];
  /** The lowers after resolving and de-duplication, topmost first. */
  lowers: string[];
}

/**
 * More lower layers than any usable strategy can mount. `maxLowers` says how
 * many of the given lowers (topmost first) the best strategy fits;
 * {@link fit} says how many can stay separate when the deepest are merged
 * into one directory mounted below them.
 *
 * @example
 * ```ts
 * try {
 *   await Overlay.mount({ lowers, upper, work, target });
 * } catch (err) {
 *   if (err instanceof Overlay.TooManyLowersError) console.log(`${err.maxLowers} fit`);
 * }
 * ```
 */
export class TooManyLowersError extends ContainerError {
  /** How many of the given lowers, topmost first, the best strategy can mount. */
  readonly maxLowers: number;
  /** How many lowers were asked for (after de-duplication). */
  readonly requested: number;
  /** Every strategy's verdict. */
  readonly fits: readonly StrategyFit[];

  constructor(opts: { target: string; requested: number; fits: readonly StrategyFit[] }) {
    const maxLowers = Math.max(0, ...opts.fits.map((f) => f.maxLowers));
    const merge = opts.requested - maxLowers + 1;
    super(
      ContainerCodes.TOO_MANY_LOWERS,
      `Cannot mount ${opts.requested} lower layers on ${opts.target}: at most ${maxLowers} fit (${describeFits(opts.fits)})`,
      {
        path: opts.target,
        hint: `Merge the deepest ${merge} lowers into one directory and mount it below the other ${maxLowers - 1} (Overlay.fit says how many stay separate)`,
      },
    );
    this.maxLowers = maxLowers;
    this.requested = opts.requested;
    this.fits = opts.fits;
  }
}

function describeFits(fits: readonly StrategyFit[]): string {
  return fits
    .map((f) => `${f.strategy}: ${f.problem?.kind === 'unavailable' ? 'unavailable' : f.maxLowers}`)
    .join(', ');
}

/** A validated mount request. */
export interface Prepared {
  lowers: string[];
  upper: string | undefined;
  work: string | undefined;
  target: string;
  features: FeatureOptions;
  /** One lower and no upper: the kernel needs a second (data-only) lower. */
  needsDataLower: boolean;
}

function badArgument(message: string, hint: string): ContainerError {
  return new ContainerError(ContainerCodes.BAD_ARGUMENT, message, { hint });
}

/**
 * Validates a mount request: absolute paths, lowers de-duplicated, options resolved.
 *
 * @example
 * ```ts
 * const p = prepare({ lowers: ['/l1', '/l1', '/l2'], target: '/m' }); // p.lowers: ['/l1', '/l2']
 * ```
 * @throws {ContainerError} `BAD_ARGUMENT` or `BAD_PATH`.
 */
export function prepare(opts: MountOptions): Prepared {
  const given: unknown = opts.lowers;
  if (!Array.isArray(given) || given.length === 0) {
    throw badArgument(
      'Overlay.mount needs at least one lower directory',
      'Pass lowers: [dir, ...], topmost first',
    );
  }
  if ((opts.upper === undefined) !== (opts.work === undefined)) {
    throw badArgument(
      `Overlay.mount on ${opts.target} got ${opts.upper === undefined ? 'work' : 'upper'} without the other`,
      'Pass both upper and work (same filesystem), or neither for a read-only overlay',
    );
  }
  const dirs = [opts.upper, opts.work].filter((d): d is string => d !== undefined);
  const bad = unusablePath([...opts.lowers, opts.target, ...dirs]);
  if (bad !== undefined)
    throw badPath(bad, 'an empty path or one containing NUL cannot reach the kernel');
  const { lowers } = dedupeLowers(opts.lowers);
  const upper = opts.upper === undefined ? undefined : absolutePath(opts.upper);
  return {
    lowers,
    upper,
    work: opts.work === undefined ? undefined : absolutePath(opts.work),
    target: absolutePath(opts.target),
    features: featureOptions(opts.options),
    needsDataLower: upper === undefined && lowers.length === 1,
  };
}

function badPath(path: string, why: string): ContainerError {
  return new ContainerError(
    ContainerCodes.BAD_PATH,
    `Cannot pass the path ${path} to overlayfs: ${why}`,
    {
      path,
      hint: 'Rename the directory, or move it under a path without such characters',
    },
  );
}

/** Prefix of the temporary empty data-only lower of a lower-only mount of one layer. */
export const DATA_LOWER_PREFIX = 'day11-ovl-data-';

/** A stand-in as long as the data lower {@link mount} will create (mkdtemp adds 6 characters). */
function dataLowerStandIn(): string {
  return join(tmpdir(), `${DATA_LOWER_PREFIX}XXXXXX`);
}

function fsconfigFit(p: Prepared, cap: StrategyCapability): StrategyFit {
  const fit = (maxLowers: number, problem?: FitProblem): StrategyFit => ({
    strategy: 'fsconfig',
    maxLowers,
    problem,
  });
  if (!cap.available) return fit(0, { kind: 'unavailable', message: cap.reason ?? 'unavailable' });
  if (!cap.longPaths) {
    // Without fd support, a value over 255 bytes cannot be passed at all.
    const tooLong = (s: string): boolean => byteLength(s) > FSCONFIG_STRING_MAX;
    const lower = p.lowers.findIndex(tooLong);
    const upper = [p.upper, p.work].find((d) => d !== undefined && tooLong(escapeFsconfigUpper(d)));
    const path = lower >= 0 ? p.lowers[lower] : upper;
    if (path !== undefined) {
      const message = `it is longer than the 255 bytes fsconfig copies, and this kernel takes no layer fds`;
      return fit(lower >= 0 ? lower : 0, { kind: 'bad-path', message, path });
    }
  }
  if (p.lowers.length > cap.maxLowers) {
    return fit(cap.maxLowers, {
      kind: 'too-many-lowers',
      message: `the kernel takes at most ${cap.maxLowers} lowers`,
    });
  }
  return fit(p.lowers.length);
}

function pageFit(
  strategy: 'classic' | 'relative',
  parts: ClassicParts,
  cap: StrategyCapability,
): StrategyFit {
  const pageBytes = cap.pageBytes ?? DEFAULT_PAGE_BYTES;
  const maxLowers = classicMaxLowers(parts, { pageBytes, limit: cap.maxLowers });
  if (maxLowers >= parts.lowers.length) return { strategy, maxLowers, problem: undefined };
  const message = `${maxLowers} of ${parts.lowers.length} lowers fit in the ${pageBytes}-byte option page`;
  return { strategy, maxLowers, problem: { kind: 'too-many-lowers', message } };
}

function commandPathProblem(p: Prepared, dataLower: string | undefined): FitProblem | undefined {
  const bad = mountCommandBadPath([...p.lowers, p.upper ?? '', p.work ?? '', dataLower ?? '']);
  if (bad === undefined) return undefined;
  return { kind: 'bad-path', path: bad.path, message: `mount(8) cannot pass ${bad.why}` };
}

function classicFit(p: Prepared, caps: Capabilities, dataLower: string | undefined): StrategyFit {
  const cap = caps.classic;
  if (!cap.available)
    return {
      strategy: 'classic',
      maxLowers: 0,
      problem: { kind: 'unavailable', message: cap.reason ?? 'unavailable' },
    };
  // As root classic is a direct mount(2); only mount(8) mangles quotes.
  const problem = caps.root ? undefined : commandPathProblem(p, dataLower);
  if (problem) return { strategy: 'classic', maxLowers: 0, problem };
  return pageFit('classic', { ...p, dataLower }, cap);
}

/**
 * The relative form of a request: lowers (and the data lower) relative to their common parent.
 *
 * @example
 * ```ts
 * relativeParts(prepare({ lowers: ['/c/a/fs', '/c/b/fs'], target: '/m' }), undefined).cwd; // '/c'
 * ```
 */
export function relativeParts(
  p: Prepared,
  dataLower: string | undefined,
): ClassicParts & { cwd: string } {
  const cwd = commonParent(dataLower === undefined ? p.lowers : [...p.lowers, dataLower]);
  const dataRel = dataLower === undefined ? undefined : relativeTo(cwd, [dataLower])[0];
  return { ...p, cwd, lowers: relativeTo(cwd, p.lowers), dataLower: dataRel };
}

function relativeFit(p: Prepared, caps: Capabilities, dataLower: string | undefined): StrategyFit {
  const cap = caps.relative;
  if (!cap.available)
    return {
      strategy: 'relative',
      maxLowers: 0,
      problem: { kind: 'unavailable', message: cap.reason ?? 'unavailable' },
    };
  const problem = commandPathProblem(p, dataLower);
  if (problem) return { strategy: 'relative', maxLowers: 0, problem };
  return pageFit('relative', relativeParts(p, dataLower), cap);
}

function fitOf(strategy: Strategy, p: Prepared, caps: Capabilities): StrategyFit {
  const dataLower = p.needsDataLower ? dataLowerStandIn() : undefined;
  switch (strategy) {
    case 'fsconfig':
      return fsconfigFit(p, caps.fsconfig);
    case 'classic':
      return classicFit(p, caps, dataLower);
    case 'relative':
      return relativeFit(p, caps, dataLower);
  }
}

/** The first strategy in {@link STRATEGY_ORDER} that can mount `p`; the others are not planned. */
function firstFitting(p: Prepared, caps: Capabilities): Strategy | undefined {
  return STRATEGY_ORDER.find((s) => fitOf(s, p, caps).problem === undefined);
}

function planWith(p: Prepared, caps: Capabilities): MountPlan {
  const fits = STRATEGY_ORDER.map((s) => fitOf(s, p, caps));
  return { strategy: fits.find((f) => f.problem === undefined)?.strategy, fits, lowers: p.lowers };
}

/**
 * Which strategy {@link mount} would use for this stack, and how many lowers
 * each strategy fits, without mounting. Validates like {@link mount}. Plans
 * against this machine's {@link capabilities} unless others are given (to
 * plan for another machine, or in tests).
 *
 * @example
 * ```ts
 * const { strategy, fits } = await Overlay.plan({ lowers, target });
 * if (!strategy) console.log(Math.max(...fits.map((f) => f.maxLowers)), 'fit');
 * ```
 * @throws {ContainerError} `BAD_ARGUMENT` or `BAD_PATH` for a malformed request.
 */
export async function plan(opts: MountOptions, caps?: Capabilities): Promise<MountPlan> {
  const prepared = prepare(opts);
  return planWith(prepared, caps ?? (await capabilities()));
}

/**
 * The strategy {@link mount} would use for this stack, or `undefined` when
 * none fits: {@link plan}'s `strategy`, without planning the strategies
 * after the first that fits (a run checks this before every mount).
 *
 * @example
 * ```ts
 * if ((await Overlay.strategyFor({ lowers, upper, work, target })) === undefined) {
 *   const { fits } = await Overlay.plan({ lowers, upper, work, target }); // why, and how many fit
 * }
 * ```
 * @throws {ContainerError} `BAD_ARGUMENT` or `BAD_PATH` for a malformed request.
 */
export async function strategyFor(
  opts: MountOptions,
  caps?: Capabilities,
): Promise<Strategy | undefined> {
  return firstFitting(prepare(opts), caps ?? (await capabilities()));
}

/** The error for a plan no strategy (or not the asked-for one) can carry out. */
function planError(p: Prepared, plan: MountPlan, asked: Strategy | undefined): ContainerError {
  const fits = asked === undefined ? plan.fits : plan.fits.filter((f) => f.strategy === asked);
  if (fits.some((f) => f.problem?.kind === 'too-many-lowers')) {
    const counted = fits.filter((f) => f.problem?.kind !== 'unavailable');
    return new TooManyLowersError({ target: p.target, requested: p.lowers.length, fits: counted });
  }
  const badPathFit = fits.find((f) => f.problem?.kind === 'bad-path');
  if (badPathFit?.problem?.path !== undefined)
    return badPath(badPathFit.problem.path, badPathFit.problem.message);
  const reasons = fits.map((f) => `${f.strategy}: ${f.problem?.message ?? 'ok'}`).join('; ');
  const what =
    asked === undefined ? 'No overlay mount strategy is' : `The ${asked} strategy is not`;
  return new ContainerError(
    ContainerCodes.MOUNT_FAILED,
    `${what} available for ${p.target} (${reasons})`,
    {
      path: p.target,
      hint: 'Run as root on Linux with overlayfs, or allow passwordless `sudo mount`',
    },
  );
}

/**
 * The first strategy that fits (or the asked one if it does); the others are not even planned.
 *
 * @example
 * ```ts
 * const strategy = choose(prepare(opts), await capabilities(), opts.strategy);
 * ```
 * @throws {TooManyLowersError} or {@link ContainerError} when none fits.
 */
export function choose(p: Prepared, caps: Capabilities, asked: Strategy | undefined): Strategy {
  if (asked !== undefined && !STRATEGY_ORDER.includes(asked)) {
    throw badArgument(
      `Unknown overlay strategy ${JSON.stringify(asked)}`,
      `Use one of ${STRATEGY_ORDER.join(', ')}`,
    );
  }
  for (const strategy of asked === undefined ? STRATEGY_ORDER : [asked]) {
    if (fitOf(strategy, p, caps).problem === undefined) return strategy;
  }
  throw planError(p, planWith(p, caps), asked);
}

/** Options of {@link fit}. */
export interface FitOptions extends MountOptions {
  /** The directory the deepest lowers would be merged into, mounted below those kept separate. */
  mergedLower: string;
}

/**
 * The stack question, answered once: how many of `lowers` (topmost first,
 * as {@link prepare} de-duplicates them) can stay separate lowers of this
 * mount. All of them when the stack fits as it is; else the most that fit
 * with `mergedLower` (holding the rest, merged) mounted below them. Also all
 * of them when merging would not help (no strategy available, a path no
 * strategy can pass): {@link mount} then reports the real reason.
 *
 * @example
 * ```ts
 * const keep = await Overlay.fit({ lowers, upper, work, target, mergedLower: '/run/lower' });
 * const mounted = keep === lowers.length ? lowers : [...lowers.slice(0, keep), '/run/lower'];
 * // merge lowers.slice(keep) into /run/lower first, then mount `mounted`
 * ```
 * @throws {ContainerError} `BAD_ARGUMENT` or `BAD_PATH` for a malformed request.
 */
export async function fit(opts: FitOptions, caps?: Capabilities): Promise<number> {
  const { mergedLower, ...mount } = opts;
  const prepared = prepare(mount);
  const known = caps ?? (await capabilities());
  const all = prepared.lowers.length;
  if (firstFitting(prepared, known) !== undefined) return all;
  const fits = planWith(prepared, known).fits;
  if (!fits.some((f) => f.problem?.kind === 'too-many-lowers')) return all;
  // The merged directory's own path may cost more than a layer's (a page-limited
  // strategy counts bytes): keep one lower fewer until the stack fits.
  const most = Math.max(...fits.map((f) => f.maxLowers));
  for (let keep = Math.min(most, all) - 1; keep >= 0; keep--) {
    const lowers = [...prepared.lowers.slice(0, keep), mergedLower];
    if (firstFitting(prepare({ ...mount, lowers }), known) !== undefined) return keep;
  }
  return all;
}
