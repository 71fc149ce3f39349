/**
 * Overlayfs mounts of layer stacks up to the kernel's 500 lower layers, with
 * no copying, and their unmounting and recovery (SPEC §5).
 *
 * Three strategies, tried in this order unless one is asked for:
 *
 * 1. `fsconfig`: the new mount API, one `fsconfig(lowerdir+)` per layer, so
 *    no option string is limited to a page (Linux >= 6.8, probed once per
 *    process). Runs in this process through `Sys` (koffi), so it needs root.
 * 2. `classic`: one `mount(2)` with absolute paths, when they fit in the page
 *    the kernel copies (4096 bytes, NUL included). Preferred to `relative`
 *    when both fit: no subprocess, and `/proc/mounts` shows absolute paths.
 * 3. `relative`: containerd's method, lowers relative to their deepest
 *    common parent, given to `mount(8)` run with that directory as its
 *    working directory (the kernel resolves relative paths against the
 *    caller's cwd; this process never changes its own).
 *
 * When not root, `classic` and `relative` run `mount(8)`/`umount(8)` through
 * `sudo -n` (via `Exec.run`; sudoers must allow both without a password),
 * and `fsconfig` is unavailable (it runs in this process). `mount(8)` is run
 * with `LIBMOUNT_FORCE_MOUNT2=always`: util-linux >= 2.39 would otherwise
 * pass `lowerdir=` through fsconfig, which copies only 255 bytes. sudo drops
 * the variable unless sudoers keeps it (`Defaults env_keep +=
 * "LIBMOUNT_FORCE_MOUNT2"`); util-linux 2.38 (Debian 12) needs nothing.
 *
 * Every mount uses {@link DEFAULT_FEATURES} (`redirect_dir=off`,
 * `metacopy=off`, `index=off`) so the upper stays exportable. A lower-only
 * mount of a single layer (the kernel wants two lowers when there is no
 * upper) adds an empty, invisible data-only layer (`datadir+` / `::`) that is
 * removed as soon as the mount exists, so whiteouts stay hidden exactly as in
 * any other overlay.
 *
 * @example
 * ```ts
 * import { Overlay } from '@day11/container';
 * const mounted = await Overlay.mount({
 *   lowers: ['/cache/build-b/fs', '/cache/build-a/fs'], // topmost first
 *   upper: '/tmp/run/upper',
 *   work: '/tmp/run/work',
 *   target: '/tmp/run/merged',
 * });
 * try {
 *   // ... run the build in /tmp/run/merged ...
 * } finally {
 *   await mounted.unmount();
 * }
 * ```
 */
import { closeSync, constants, openSync } from 'node:fs';
import { access, mkdtemp, open, readFile, rmdir, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CommandError, Exec, ExecCodes, Sys, SysError, isDay11Error } from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';
import { canonicalDir, mountsUnder, readMountinfo, type MountEntry } from './mountinfo.js';
import {
  DEFAULT_PAGE_BYTES,
  FSCONFIG_STRING_MAX,
  OVL_MAX_STACK,
  absolutePath,
  byteLength,
  classicMaxLowers,
  classicOptions,
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

export { parseMountinfo, type MountEntry } from './mountinfo.js';
export { DEFAULT_FEATURES, OVL_MAX_STACK } from './overlay-options.js';

// ---------------------------------------------------------------- types

/** How an overlay is mounted; see the module documentation. */
export type Strategy = 'fsconfig' | 'relative' | 'classic';

/** The order in which {@link mount} tries strategies when none is asked for. */
export const STRATEGY_ORDER: readonly Strategy[] = ['fsconfig', 'classic', 'relative'];

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

/** A mounted overlay. */
export interface OverlayMount {
  /** The absolute mount point. */
  readonly target: string;
  /** How it was mounted. */
  readonly strategy: Strategy;
  /** The lowers actually mounted: absolute, de-duplicated, topmost first. */
  readonly lowers: readonly string[];
  /** Unmounts it (see {@link unmount}); calling it again after success does nothing. */
  unmount(opts?: UnmountOptions): Promise<void>;
}

/** Options of {@link unmount}. */
export interface UnmountOptions {
  /** Further attempts while the mount is busy (EBUSY), with doubling delays from 20 ms. Default 5. */
  retries?: number;
  /** When still busy after the retries, detach it lazily (MNT_DETACH) instead of failing. */
  lazy?: boolean;
}

/** What one strategy offers on this machine (see {@link capabilities}). */
export interface StrategyCapability {
  available: boolean;
  /** The most lower layers it can ever mount: the kernel's limit (probed through fsconfig when possible). */
  maxLowers: number;
  /** `classic`/`relative`: bytes the option string may take, NUL included; path lengths decide the layer count. */
  pageBytes?: number;
  /** `fsconfig`: paths longer than 255 bytes can be passed as file descriptors (Linux >= 6.13). */
  longPaths?: boolean;
  /** Why it is unavailable. */
  reason?: string;
}

/** What {@link capabilities} probed, once per process. */
export interface Capabilities {
  /** This process runs as root (else privileged steps go through `sudo -n`). */
  root: boolean;
  /** The available strategies, in the order {@link mount} tries them. */
  strategies: Strategy[];
  fsconfig: StrategyCapability;
  classic: StrategyCapability;
  relative: StrategyCapability;
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
 * many of the given lowers (topmost first) the best strategy fits: keep that
 * many minus one and merge the rest into one directory (`Stack.planLowerdir`
 * + `Stack.merge` in `@day11/layer`, with the merged directory's own length
 * in the budget), then mount again.
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
  override name = 'TooManyLowersError';
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
        hint: `Merge the deepest ${merge} layers into one directory (Stack.planLowerdir + Stack.merge) and mount the remaining ${maxLowers}`,
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

// ---------------------------------------------------------------- capabilities

let probed: Promise<Capabilities> | undefined;

/**
 * Probes, once per process, which strategies work here and their limits:
 * whether the kernel accepts `lowerdir+` and how many (it says "limit is
 * 500"), whether it accepts layers as file descriptors, the page size (from
 * the auxiliary vector), and whether `mount(8)` is there (and, when not
 * root, runs through `sudo -n`). Mounts nothing.
 *
 * @example
 * ```ts
 * const caps = await Overlay.capabilities();
 * caps.strategies; // ['fsconfig', 'classic', 'relative'] as root on Linux >= 6.8
 * caps.fsconfig.maxLowers; // 500
 * caps.classic.pageBytes; // 4096
 * ```
 */
export function capabilities(): Promise<Capabilities> {
  probed ??= probe();
  return probed;
}

async function probe(): Promise<Capabilities> {
  const root = Exec.isRoot();
  const [pageBytes, command] = await Promise.all([pageSize(), mountCommandProbe()]);
  const fsconfig: StrategyCapability = root
    ? probeFsconfigStrategy()
    : { available: false, maxLowers: 0, reason: 'needs root: fsconfig runs in this process' };
  const kernelMax = fsconfig.available ? fsconfig.maxLowers : OVL_MAX_STACK;
  const syscallsWork = root && Sys.libcAvailable();
  const classic: StrategyCapability = {
    available: syscallsWork || command === undefined,
    maxLowers: kernelMax,
    pageBytes,
    ...(!syscallsWork && command !== undefined && { reason: command }),
  };
  const relative: StrategyCapability = {
    available: command === undefined,
    maxLowers: kernelMax,
    pageBytes,
    ...(command !== undefined && { reason: command }),
  };
  const byStrategy = { fsconfig, classic, relative };
  const strategies = STRATEGY_ORDER.filter((s) => byStrategy[s].available);
  return { root, strategies, ...byStrategy };
}

function probeFsconfigStrategy(): StrategyCapability {
  try {
    // '/' repeated: fsconfig only looks each path up; the limit check comes first.
    const many = Sys.probeFsconfig({
      fstype: 'overlay',
      options: Array.from({ length: OVL_MAX_STACK + 1 }, () => ['lowerdir+', '/'] as const),
    });
    if (many.accepted === 0) {
      return { available: false, maxLowers: 0, reason: many.error?.message ?? 'refused' };
    }
    return { available: true, maxLowers: many.accepted, longPaths: probeFdLayers() };
  } catch (err) {
    return { available: false, maxLowers: 0, reason: messageOf(err) };
  }
}

function probeFdLayers(): boolean {
  // Synchronous on purpose: one open of '/', next to synchronous Sys calls.
  const fd = openSync('/', constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    return (
      Sys.probeFsconfig({ fstype: 'overlay', options: [['lowerdir+', { fd }]] }).error === undefined
    );
  } finally {
    closeSync(fd);
  }
}

/** The kernel's page size, from the auxiliary vector (AT_PAGESZ = 6): no subprocess. */
async function pageSize(): Promise<number> {
  try {
    const auxv = await readFile('/proc/self/auxv');
    // Pairs of native-endian 64-bit words (type, value), ending with type 0.
    for (let at = 0; at + 16 <= auxv.length; at += 16) {
      const type = auxv.readBigUInt64LE(at);
      if (type === 0n) break;
      if (type === 6n) return Number(auxv.readBigUInt64LE(at + 8));
    }
  } catch {
    // No /proc: fall through to the common size.
  }
  return DEFAULT_PAGE_BYTES;
}

/** `undefined` when `mount(8)` can run with the needed privilege, else why not. */
async function mountCommandProbe(): Promise<string | undefined> {
  // As root only its presence matters; look it up instead of starting it.
  if (Exec.isRoot()) {
    const found = await onPath('mount');
    return found ? undefined : 'mount(8) is not installed or not on PATH';
  }
  try {
    await Exec.run('mount', ['--version'], { privileged: true, timeoutMs: 10_000 });
    return undefined;
  } catch (err) {
    return `mount(8) is unusable: ${messageOf(err)}`;
  }
}

async function onPath(command: string): Promise<boolean> {
  for (const dir of (process.env['PATH'] ?? '').split(delimiter).filter(Boolean)) {
    try {
      await access(join(dir, command), constants.X_OK);
      return true;
    } catch {
      // Not in this directory.
    }
  }
  return false;
}

// ---------------------------------------------------------------- planning

/** A validated mount request. */
interface Prepared {
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

function prepare(opts: MountOptions): Prepared {
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

const DATA_LOWER_PREFIX = 'day11-ovl-data-';

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

/** The relative form of a request: lowers (and the data lower) relative to their common parent. */
function relativeParts(p: Prepared, dataLower: string | undefined): ClassicParts & { cwd: string } {
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
  const prepared = prepare(opts);
  const known = caps ?? (await capabilities());
  return STRATEGY_ORDER.find((s) => fitOf(s, prepared, known).problem === undefined);
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

/** The first strategy that fits (or the asked one if it does); the others are not even planned. */
function choose(p: Prepared, caps: Capabilities, asked: Strategy | undefined): Strategy {
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

// ---------------------------------------------------------------- mounting

/** A request ready to mount: `dataLower` exists when needed. */
interface Ready extends Prepared {
  dataLower: string | undefined;
  signal: AbortSignal | undefined;
}

async function fsconfigValue(
  path: string,
  text: string,
  handles: FileHandle[],
): Promise<Sys.FsConfigValue> {
  if (byteLength(text) <= FSCONFIG_STRING_MAX) return text;
  // Past 255 bytes a string would be refused: pass the open directory instead.
  const handle = await open(path, constants.O_RDONLY | constants.O_DIRECTORY);
  handles.push(handle);
  return { fd: handle.fd };
}

async function mountFsconfig(r: Ready): Promise<void> {
  const handles: FileHandle[] = [];
  try {
    const options: Array<readonly [string, Sys.FsConfigValue]> = [];
    for (const lower of r.lowers)
      options.push(['lowerdir+', await fsconfigValue(lower, lower, handles)]);
    if (r.dataLower !== undefined)
      options.push(['datadir+', await fsconfigValue(r.dataLower, r.dataLower, handles)]);
    if (r.upper !== undefined && r.work !== undefined) {
      options.push([
        'upperdir',
        await fsconfigValue(r.upper, escapeFsconfigUpper(r.upper), handles),
      ]);
      options.push(['workdir', await fsconfigValue(r.work, escapeFsconfigUpper(r.work), handles)]);
    }
    options.push(...r.features);
    r.signal?.throwIfAborted();
    Sys.mountWithFsconfig({ fstype: 'overlay', target: r.target, options });
  } finally {
    await Promise.all(handles.map((h) => h.close()));
  }
}

/** Runs `mount(8)` with exactly this option string, privileged, forcing classic mount(2). */
async function mountCommand(r: Ready, data: string, cwd: string | undefined): Promise<void> {
  // -i: no /sbin/mount.overlay helper, so the kernel gets this string and nothing else.
  const args = ['-i', '-t', 'overlay', '-o', data, 'overlay', r.target];
  // util-linux >= 2.39 would pass lowerdir= through fsconfig (255 bytes at most). Under
  // sudo the variable survives only where sudoers keeps it (env_keep); sudoers rules
  // name `mount`, so it is not smuggled in through env(1).
  const env = { LIBMOUNT_FORCE_MOUNT2: 'always' };
  await withoutLeftover(r.target, () =>
    Exec.run('mount', args, { cwd, privileged: true, env, signal: r.signal }),
  );
}

/** Runs a mount subprocess; if it fails (killed, timed out) after mounting, takes the mount down again. */
async function withoutLeftover(target: string, run: () => Promise<unknown>): Promise<void> {
  const before = await mountsAt(target);
  try {
    await run();
  } catch (err) {
    if ((await mountsAt(target)) > before) await unmount(target, { lazy: true });
    throw err;
  }
}

async function mountsAt(target: string): Promise<number> {
  const dir = await canonicalDir(target);
  return (await readMountinfo()).filter((e) => e.mountPoint === dir).length;
}

async function mountClassic(r: Ready): Promise<void> {
  const data = classicOptions(r);
  if (Exec.isRoot() && Sys.libcAvailable()) {
    r.signal?.throwIfAborted();
    Sys.mount({ source: 'overlay', target: r.target, fstype: 'overlay', data });
  } else {
    await mountCommand(r, data, undefined);
  }
}

async function mountRelative(r: Ready): Promise<void> {
  const parts = relativeParts(r, r.dataLower);
  await mountCommand(r, classicOptions(parts), parts.cwd);
}

const MOUNTERS: Record<Strategy, (r: Ready) => Promise<void>> = {
  fsconfig: mountFsconfig,
  classic: mountClassic,
  relative: mountRelative,
};

function mountHint(err: unknown): string {
  const errno = err instanceof SysError ? err.errno : undefined;
  const text = err instanceof CommandError ? err.stderrTail : messageOf(err);
  if (errno === 'EPERM' || /permission denied|must be superuser/i.test(text))
    return 'Mounting needs root (or passwordless sudo for mount)';
  if (errno === 'ELOOP')
    return 'A directory is given twice under different names, or one layer lies inside another';
  if (errno === 'ENOENT')
    return 'Check that every lower, the upper, the work and the target directories exist';
  return 'overlayfs logs its reason in the kernel log: see `dmesg | tail`';
}

function mountFailed(r: Ready, strategy: Strategy, err: unknown): ContainerError {
  const detail =
    err instanceof CommandError ? err.stderrTail.trim() || err.message : messageOf(err);
  return new ContainerError(
    ContainerCodes.MOUNT_FAILED,
    `Cannot mount overlay of ${r.lowers.length} lowers on ${r.target} (${strategy}): ${detail}`,
    { path: r.target, cause: err, hint: mountHint(err) },
  );
}

function handleFor(target: string, strategy: Strategy, lowers: readonly string[]): OverlayMount {
  // One unmount at a time: a second concurrent call must not take down a mount stacked below.
  let pending: Promise<void> | undefined;
  return {
    target,
    strategy,
    lowers,
    unmount(opts?: UnmountOptions): Promise<void> {
      pending ??= unmount(target, opts).catch((err: unknown) => {
        pending = undefined; // failed: a later call may retry (e.g. lazily)
        throw err;
      });
      return pending;
    },
  };
}

/**
 * Mounts an overlay of `lowers` (topmost first) on `target`, with `upper` and
 * `work` when given (else read-only), choosing the strategy (see the module
 * documentation). Nothing stays mounted when it fails.
 *
 * @example
 * ```ts
 * const m = await Overlay.mount({ lowers: [depB, depA, base], upper, work, target });
 * console.log(m.strategy); // 'fsconfig'
 * await m.unmount();
 * ```
 * @throws {TooManyLowersError} (`CONTAINER_TOO_MANY_LOWERS`) when no strategy fits
 *   the stack; `maxLowers` says how many would.
 * @throws {ContainerError} `BAD_PATH` for a path no usable strategy can pass,
 *   `BAD_ARGUMENT` for a malformed request, `MOUNT_FAILED` when the kernel or
 *   `mount(8)` refuses (the message carries the kernel's reason when it gives one).
 */
export async function mount(opts: MountOptions): Promise<OverlayMount> {
  opts.signal?.throwIfAborted();
  const prepared = prepare(opts);
  const strategy = choose(prepared, await capabilities(), opts.strategy);
  const dataLower = prepared.needsDataLower
    ? await mkdtemp(join(tmpdir(), DATA_LOWER_PREFIX))
    : undefined;
  const ready: Ready = { ...prepared, dataLower, signal: opts.signal };
  try {
    await MOUNTERS[strategy](ready);
  } catch (err) {
    if (isDay11Error(err, ExecCodes.ABORTED) || (err as Error).name === 'AbortError') throw err;
    throw mountFailed(ready, strategy, err);
  } finally {
    // The data lower is invisible and never read once mounted: it can go now.
    if (dataLower !== undefined) await rmdir(dataLower).catch(() => undefined);
  }
  return handleFor(ready.target, strategy, ready.lowers);
}

// ---------------------------------------------------------------- unmounting

type UmountResult = 'done' | 'busy' | 'not-mounted';

function unmountFailed(target: string, message: string, cause?: unknown): ContainerError {
  return new ContainerError(ContainerCodes.UNMOUNT_FAILED, message, {
    path: target,
    cause,
    hint: `Find the processes using it with \`fuser -vm ${target}\` (or \`lsof +D ${target}\`) and stop them, or unmount lazily with { lazy: true } (MNT_DETACH, \`umount -l\`)`,
  });
}

function umountSyscall(target: string, lazy: boolean): UmountResult {
  try {
    Sys.umount(target, lazy ? Sys.MNT_DETACH : 0);
    return 'done';
  } catch (err) {
    const errno = err instanceof SysError ? err.errno : undefined;
    if (errno === 'EBUSY') return 'busy';
    // EINVAL: not a mount point; ENOENT: no such path. Either way nothing to take down.
    if (errno === 'EINVAL' || errno === 'ENOENT') return 'not-mounted';
    throw unmountFailed(target, `Cannot unmount ${target}: ${messageOf(err)}`, err);
  }
}

async function umountCommand(target: string, lazy: boolean): Promise<UmountResult> {
  const args = lazy ? ['-l', target] : [target];
  const { exitCode, stderr } = await Exec.run('umount', args, {
    privileged: true,
    allowNonZeroExit: true,
  });
  if (exitCode === 0) return 'done';
  if (/busy/i.test(stderr)) return 'busy';
  if (/not mounted|no mount point|not found|no such file/i.test(stderr)) return 'not-mounted';
  throw unmountFailed(
    target,
    `Cannot unmount ${target}: umount exited with ${exitCode}: ${stderr.trim()}`,
  );
}

async function umountOnce(target: string, lazy: boolean): Promise<UmountResult> {
  return Exec.isRoot() && Sys.libcAvailable()
    ? umountSyscall(target, lazy)
    : umountCommand(target, lazy);
}

/**
 * Unmounts `target`, retrying while it is busy (EBUSY) with doubling delays,
 * then detaching it lazily if `lazy` is set, else failing. Unmounting a path
 * where nothing is mounted does nothing. Removes only the topmost mount when
 * several are stacked on `target`.
 *
 * @example
 * ```ts
 * await Overlay.unmount('/tmp/run/merged');
 * await Overlay.unmount('/tmp/run/merged', { retries: 10, lazy: true }); // in a cleanup path
 * ```
 * @throws {ContainerError} `UNMOUNT_FAILED` naming the target when it stays busy
 *   (the hint suggests `fuser -m` and lazy unmounting) or the unmount is refused.
 */
export async function unmount(target: string, opts: UnmountOptions = {}): Promise<void> {
  const path = resolve(target);
  const retries = opts.retries ?? 5;
  for (let attempt = 0; ; attempt++) {
    if ((await umountOnce(path, false)) !== 'busy') return;
    if (attempt >= retries) break;
    await sleep(20 * 2 ** attempt);
  }
  if (opts.lazy && (await umountOnce(path, true)) !== 'busy') return;
  throw unmountFailed(path, `Cannot unmount ${path}: still busy after ${retries + 1} attempts`);
}

/**
 * The mounts at `underDir` or below it (from `/proc/self/mountinfo`, escapes
 * undone), deepest first and, on one mount point, newest first: the order
 * in which they can be unmounted. For recovery sweeps after a crash.
 *
 * @example
 * ```ts
 * for (const m of await Overlay.listMounts('/var/tmp/day11')) await Overlay.unmount(m.mountPoint);
 * ```
 */
export async function listMounts(underDir: string): Promise<MountEntry[]> {
  const dir = await canonicalDir(underDir);
  return mountsUnder(await readMountinfo(), dir);
}

/**
 * Unmounts everything mounted at `underDir` or below it, deepest first (see
 * {@link listMounts}); returns the mount points taken down. A recovery sweep.
 *
 * @example
 * ```ts
 * const swept = await Overlay.unmountAll(workRoot, { lazy: true });
 * ```
 */
export async function unmountAll(underDir: string, opts: UnmountOptions = {}): Promise<string[]> {
  const done: string[] = [];
  for (const entry of await listMounts(underDir)) {
    await unmount(entry.mountPoint, opts);
    done.push(entry.mountPoint);
  }
  return done;
}
