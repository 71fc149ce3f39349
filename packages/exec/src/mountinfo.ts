/**
 * Reading `/proc/self/mountinfo` (proc(5)): which mounts exist at or below a
 * directory, in the order they can be unmounted. Used by overlay unmounting,
 * recovery sweeps and the synchronous teardown of a dying process, so every
 * one of them unescapes names and orders mounts the same way.
 */
import { readFileSync, realpathSync } from 'node:fs';
import { readFile, realpath } from 'node:fs/promises';
import { basename, resolve, sep } from 'node:path';

/** One line of `/proc/self/mountinfo`, unescaped. */
export interface MountEntry {
  /** Unique mount id. */
  id: number;
  /** Id of the parent mount (the one this is mounted on). */
  parentId: number;
  /** The mount point, as an absolute path in this process's mount namespace. */
  mountPoint: string;
  /** The directory of the mounted filesystem that appears at the mount point. */
  root: string;
  /** Filesystem type, e.g. `overlay`. */
  fstype: string;
  /** Mount source, e.g. `overlay` or `/dev/vda`. */
  source: string;
  /** Per-mount options, e.g. `rw`, `relatime`. */
  mountOptions: string[];
  /** Per-superblock options, each unescaped, e.g. `lowerdir+=/a,b` arrives as one entry. */
  superOptions: string[];
}

/** Where the kernel publishes this process's mounts. */
const MOUNTINFO_PATH = '/proc/self/mountinfo';

/**
 * Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline,
 * `\134` backslash, `\054` comma).
 *
 * @example
 * ```ts
 * Mountinfo.unescape('/tmp/a\\040b'); // '/tmp/a b'
 * ```
 */
export function unescape(text: string): string {
  return text.replace(/\\([0-3][0-7]{2})/g, (_, octal: string) =>
    String.fromCharCode(parseInt(octal, 8)),
  );
}

function parseLine(line: string): MountEntry | undefined {
  // Fields: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
  const dash = line.indexOf(' - ');
  if (dash < 0) return undefined;
  const left = line.slice(0, dash).split(' ');
  const right = line.slice(dash + 3).split(' ');
  if (left.length < 6 || right.length < 3) return undefined;
  return {
    id: Number(left[0]),
    parentId: Number(left[1]),
    root: unescape(left[3]!),
    mountPoint: unescape(left[4]!),
    mountOptions: left[5]!.split(','),
    fstype: unescape(right[0]!),
    source: unescape(right[1]!),
    // Split before unescaping: an escaped comma (\054) belongs to its value.
    superOptions: right[2]!.split(',').map(unescape),
  };
}

/**
 * Parses the text of `/proc/self/mountinfo`; malformed lines are skipped.
 *
 * @example
 * ```ts
 * const entries = Mountinfo.parse(await readFile('/proc/self/mountinfo', 'utf8'));
 * ```
 */
export function parse(text: string): MountEntry[] {
  return text
    .split('\n')
    .map(parseLine)
    .filter((e): e is MountEntry => e !== undefined);
}

function depth(path: string): number {
  return path === sep ? 0 : path.split(sep).length - 1;
}

/**
 * The entries mounted at `dir` or below it (`dir` as mountinfo spells it, see
 * {@link canonical}), deepest first; mounts stacked on one point come newest
 * first (mountinfo lists them in mount order), so unmounting in this order
 * always succeeds.
 *
 * @example
 * ```ts
 * Mountinfo.below(entries, '/var/cache/day11').map((e) => e.mountPoint);
 * ```
 */
export function below(entries: readonly MountEntry[], dir: string): MountEntry[] {
  const prefix = dir === sep ? sep : dir + sep;
  return entries
    .map((entry, index) => ({ entry, index }))
    .filter(({ entry }) => entry.mountPoint === dir || entry.mountPoint.startsWith(prefix))
    .sort((a, b) => depth(b.entry.mountPoint) - depth(a.entry.mountPoint) || b.index - a.index)
    .map(({ entry }) => entry);
}

/**
 * `dir` as mountinfo spells it: absolute, symlinks resolved when it exists.
 *
 * @example
 * ```ts
 * await Mountinfo.canonical('relative/dir'); // '/home/me/relative/dir'
 * ```
 */
export async function canonical(dir: string): Promise<string> {
  try {
    return await realpath(dir);
  } catch {
    return resolve(dir);
  }
}

/**
 * {@link canonical}, synchronously.
 *
 * @example
 * ```ts
 * Mountinfo.canonicalSync('/var/run'); // '/run'
 * ```
 */
export function canonicalSync(dir: string): string {
  try {
    return realpathSync.native(dir);
  } catch {
    return resolve(dir);
  }
}

/**
 * Reads and parses this process's mountinfo; `[]` where `/proc` is unavailable.
 *
 * @example
 * ```ts
 * const overlays = (await Mountinfo.read()).filter((e) => e.fstype === 'overlay');
 * ```
 */
export async function read(): Promise<MountEntry[]> {
  return parse(await readFile(MOUNTINFO_PATH, 'utf8').catch(() => ''));
}

/**
 * {@link read}, synchronously (for signal handlers and exit hooks).
 *
 * @example
 * ```ts
 * const entries = Mountinfo.readSync();
 * ```
 */
export function readSync(): MountEntry[] {
  return parse(readText());
}

function readText(): string {
  try {
    return readFileSync(MOUNTINFO_PATH, 'utf8');
  } catch {
    return '';
  }
}

/**
 * When `dir`'s own name (free of the characters mountinfo escapes) appears
 * nowhere in the text, nothing can be mounted at or below it: most calls
 * end here, without parsing.
 */
function surelyNone(text: string, dir: string): boolean {
  const name = basename(dir);
  return name !== '' && !/[\s\\]/.test(name) && !text.includes(name);
}

/**
 * The mounts at `dir` or below it, in unmount order (see {@link below}).
 * Without `/proc` nothing can be known, and nothing is reported.
 *
 * @example
 * ```ts
 * for (const m of await Mountinfo.under('/var/cache/day11/.day11-tmp-42-ab-run')) console.log(m.mountPoint);
 * ```
 */
export async function under(dir: string): Promise<MountEntry[]> {
  const [text, root] = await Promise.all([
    readFile(MOUNTINFO_PATH, 'utf8').catch(() => ''),
    canonical(dir),
  ]);
  return surelyNone(text, root) ? [] : below(parse(text), root);
}

/**
 * {@link under}, synchronously (for signal handlers and exit hooks).
 *
 * @example
 * ```ts
 * Mountinfo.underSync(runDir).map((m) => m.mountPoint); // ['/.../merged']
 * ```
 */
export function underSync(dir: string): MountEntry[] {
  const text = readText();
  const root = canonicalSync(dir);
  return surelyNone(text, root) ? [] : below(parse(text), root);
}
