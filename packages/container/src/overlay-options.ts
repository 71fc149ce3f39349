/**
 * The pure half of {@link ./overlay.ts}: how overlayfs options are spelled for
 * each mount strategy, and how many lower layers fit. No I/O here, so every
 * rule is unit-tested without a mount.
 *
 * Facts this module relies on (Linux 6.18, verified by experiment):
 * - classic `mount(2)` copies one page of options and NUL-terminates it at
 *   byte `PAGE_SIZE - 1`: a 4095-byte option string mounts, 4096 does not;
 * - in the classic `lowerdir=`, `upperdir=` and `workdir=` values overlayfs
 *   unescapes `\x` to `x`, so `\\`, `\:` and `\,` protect those characters;
 * - `fsconfig(FSCONFIG_SET_STRING)` copies at most 255 bytes of a value; for
 *   `lowerdir+` the value is taken literally (no unescaping: `,` `:` `\` need
 *   nothing), but `upperdir`/`workdir` are unescaped (`\` must be doubled);
 * - a lower-only overlay needs two lowers; a data-only lower (`datadir+`, or
 *   after `::` in the classic syntax) counts and stays invisible.
 */
import { dirname, relative, resolve, sep } from 'node:path';
import { ContainerCodes, ContainerError } from './errors.js';

/** The kernel's limit on lower layers (overlayfs `OVL_MAX_STACK`). */
export const OVL_MAX_STACK = 500;

/** Bytes of the page `mount(2)` copies options into, NUL included, on 4 KiB-page machines. */
export const DEFAULT_PAGE_BYTES = 4096;

/** Longest string value `fsconfig(FSCONFIG_SET_STRING)` accepts (the kernel copies 256 bytes incl. NUL). */
export const FSCONFIG_STRING_MAX = 255;

/**
 * Feature options of every day11 overlay mount, so the upper stays exportable
 * as an OCI layer: `redirect_dir=off` (a renamed lower directory is copied,
 * not recorded as a redirect xattr), `metacopy=off` (a chmod copies the data
 * up, not just the metadata), `index=off` (no origin records: a directory
 * used once as an upper can later be a lower under any stack). `xino` is left
 * to the kernel: forcing it off would give non-unique inode numbers when
 * layers span filesystems, and it writes nothing to the upper.
 */
export const DEFAULT_FEATURES: Readonly<Record<string, string>> = {
  redirect_dir: 'off',
  metacopy: 'off',
  index: 'off',
};

/** Option keys day11 sets itself; a caller cannot override them through `options`. */
const RESERVED_KEYS = new Set(['lowerdir', 'lowerdir+', 'datadir+', 'upperdir', 'workdir']);

/** Escapes `\`, `:` and `,` for a classic overlayfs option value. */
export function escapeClassic(path: string): string {
  return path.replace(/[\\:,]/g, (c) => `\\${c}`);
}

/** Escapes a `upperdir`/`workdir` string for fsconfig, where only `\` is special. */
export function escapeFsconfigUpper(path: string): string {
  return path.replace(/\\/g, '\\\\');
}

/** An absolute path already in normal form: no empty, `.` or `..` segment, no trailing `/`. */
const NORMAL_ABSOLUTE = /^(?:\/(?!\.{1,2}(?:\/|$))[^/]+)+$/;

/**
 * `path.resolve(path)`, without its cost for a path that is already absolute
 * and normal (the usual case: planning a 500-layer stack resolves every layer).
 */
export function absolutePath(path: string): string {
  return NORMAL_ABSOLUTE.test(path) ? path : resolve(path);
}

/** UTF-8 length: the kernel's limits are in bytes, not UTF-16 code units. */
export function byteLength(text: string): number {
  return Buffer.byteLength(text, 'utf8');
}

/** The result of {@link dedupeLowers}. */
export interface DedupedLowers {
  /** Absolute, normalized lower paths, topmost first, each once. */
  lowers: string[];
  /** Paths dropped because an earlier entry named the same directory. */
  removed: string[];
}

/**
 * Resolves lowers to absolute paths and drops repeats, keeping the first
 * (topmost) occurrence: overlayfs refuses a layer given twice.
 *
 * Only the spelling is normalized (`.`, `..`, `//`, a trailing `/`); two
 * different paths to one directory (a symlink) still reach the kernel, which
 * refuses them with ELOOP.
 */
export function dedupeLowers(lowers: readonly string[]): DedupedLowers {
  const seen = new Set<string>();
  const out: DedupedLowers = { lowers: [], removed: [] };
  for (const lower of lowers) {
    const path = absolutePath(lower);
    if (seen.has(path)) out.removed.push(lower);
    else {
      seen.add(path);
      out.lowers.push(path);
    }
  }
  return out;
}

/**
 * The deepest directory that contains every path as a strict descendant, so
 * each path relative to it is non-empty (containerd's relative-lowerdir
 * method). `/a/x/l1` and `/a/y/l2` give `/a`; a single `/a/b` gives `/a`.
 */
export function commonParent(paths: readonly string[]): string {
  if (paths.length === 0) throw new RangeError('commonParent needs at least one path');
  const split = (p: string): string[] => dirname(absolutePath(p)).split(sep).filter(Boolean);
  let common = split(paths[0]!);
  for (const path of paths.slice(1)) {
    const parts = split(path);
    let i = 0;
    while (i < common.length && i < parts.length && common[i] === parts[i]) i++;
    common = common.slice(0, i);
  }
  return sep + common.join(sep);
}

/** `paths` relative to `parent` (which must contain them, see {@link commonParent}). */
export function relativeTo(parent: string, paths: readonly string[]): string[] {
  const prefix = parent === sep ? sep : parent + sep;
  return paths.map((p) => {
    const path = absolutePath(p);
    // A strict descendant is its own tail; anything else goes the long way.
    return path.startsWith(prefix) && path.length > prefix.length
      ? path.slice(prefix.length)
      : relative(parent, path);
  });
}

/** Feature options after merging a caller's overrides over {@link DEFAULT_FEATURES}. */
export type FeatureOptions = ReadonlyArray<readonly [key: string, value: string | true]>;

/**
 * Merges `overrides` over {@link DEFAULT_FEATURES}: a string sets `key=value`,
 * `true` sets a flag (e.g. `userxattr`), `false` drops a default.
 *
 * @throws {ContainerError} `BAD_ARGUMENT` for a layer key (set through
 *   `lowers`/`upper`/`work` instead) or a key or value that would break the
 *   comma-separated option string.
 */
export function featureOptions(
  overrides: Readonly<Record<string, string | boolean>> = {},
): FeatureOptions {
  const merged = new Map<string, string | true>(Object.entries(DEFAULT_FEATURES));
  for (const [key, value] of Object.entries(overrides)) {
    checkFeature(key, value);
    if (value === false) merged.delete(key);
    else merged.set(key, value);
  }
  return [...merged];
}

function checkFeature(key: string, value: string | boolean): void {
  const bad = RESERVED_KEYS.has(key)
    ? `${key} is set from lowers/upper/work`
    : !/^[a-z_]+$/.test(key)
      ? `option name ${JSON.stringify(key)} is not a plain overlayfs option name`
      : typeof value === 'string' && /[,\0=]/.test(value)
        ? `option ${key} has a value with ',', '=' or NUL: ${JSON.stringify(value)}`
        : undefined;
  if (bad === undefined) return;
  throw new ContainerError(ContainerCodes.BAD_ARGUMENT, `Invalid overlay option: ${bad}`, {
    hint: 'Pass feature options only, e.g. { metacopy: "off", userxattr: true }',
  });
}

/** What goes into one classic option string. */
export interface ClassicParts {
  /** Lower entries, topmost first, as the kernel should read them (absolute or relative), unescaped. */
  lowers: readonly string[];
  /** A data-only lower (after `::`), for a lower-only mount of a single layer. */
  dataLower?: string | undefined;
  upper?: string | undefined;
  work?: string | undefined;
  features: FeatureOptions;
}

/** The text after the `lowerdir=` list: upper, work and features, each with its leading comma. */
function classicTail(parts: ClassicParts): string {
  const items: string[] = [];
  if (parts.upper !== undefined) items.push(`upperdir=${escapeClassic(parts.upper)}`);
  if (parts.work !== undefined) items.push(`workdir=${escapeClassic(parts.work)}`);
  for (const [key, value] of parts.features) items.push(value === true ? key : `${key}=${value}`);
  return items.map((item) => `,${item}`).join('');
}

/** The classic `mount(2)` data string: `lowerdir=a:b[::data],upperdir=...,workdir=...,features`. */
export function classicOptions(parts: ClassicParts): string {
  const data = parts.dataLower === undefined ? '' : `::${escapeClassic(parts.dataLower)}`;
  return `lowerdir=${parts.lowers.map(escapeClassic).join(':')}${data}${classicTail(parts)}`;
}

/**
 * How many of `parts.lowers` (topmost first) fit in one classic option string
 * of `pageBytes` bytes including its NUL, capped at `limit`: the largest `k`
 * with `bytes(options of the first k lowers) + 1 <= pageBytes`. 0 when not
 * even one fits.
 */
export function classicMaxLowers(
  parts: ClassicParts,
  budget: { pageBytes: number; limit?: number },
): number {
  const limit = budget.limit ?? OVL_MAX_STACK;
  const data = parts.dataLower === undefined ? 0 : 2 + byteLength(escapeClassic(parts.dataLower));
  // 'lowerdir=' + the tail + the NUL: what every count pays.
  let used = byteLength('lowerdir=') + data + byteLength(classicTail(parts)) + 1;
  let count = 0;
  for (const lower of parts.lowers) {
    const cost = byteLength(escapeClassic(lower)) + (count > 0 ? 1 : 0);
    if (count >= limit || used + cost > budget.pageBytes) break;
    used += cost;
    count++;
  }
  return count;
}

/** True when the whole classic option string fits in the page (NUL included). */
export function fitsPage(options: string, pageBytes: number): boolean {
  return byteLength(options) + 1 <= pageBytes;
}

/** A path `mount(8)` cannot pass, and why. */
export interface CommandPathProblem {
  path: string;
  why: string;
}

/**
 * The first path that `mount(8)` cannot pass through intact, if any: libmount
 * treats `"` in an option string as quoting and drops it, and it mangles a
 * value ending in an escaped `,` when another option follows (util-linux
 * 2.38: `upperdir=/a\,,workdir=...` fails with "special device overlay does
 * not exist"). A direct `mount(2)` and fsconfig pass both intact.
 */
export function mountCommandBadPath(paths: readonly string[]): CommandPathProblem | undefined {
  for (const path of paths) {
    if (path.includes('"')) return { path, why: `its '"' (libmount reads it as quoting)` };
    if (path.endsWith(',')) return { path, why: "its trailing ',' (libmount mangles it)" };
  }
  return undefined;
}

/** The first path no strategy can pass (a NUL cannot reach the kernel), if any. */
export function unusablePath(paths: readonly string[]): string | undefined {
  return paths.find((p) => p.length === 0 || p.includes('\0'));
}
