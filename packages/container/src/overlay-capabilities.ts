/**
 * What this machine offers for overlay mounts: which strategies work and
 * their limits, probed once per process (see `overlay.ts` for the strategies).
 */
import { closeSync, constants, openSync } from 'node:fs';
import { access, readFile } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { Exec, Sys } from '@day11/exec';
import { messageOf } from './errors.js';
import { DEFAULT_PAGE_BYTES, OVL_MAX_STACK } from './overlay-options.js';

/** How an overlay is mounted; see the module documentation. */
export type Strategy = 'fsconfig' | 'relative' | 'classic';

/** The order in which {@link mount} tries strategies when none is asked for. */
export const STRATEGY_ORDER: readonly Strategy[] = ['fsconfig', 'classic', 'relative'];

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
