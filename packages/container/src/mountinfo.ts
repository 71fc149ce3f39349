/**
 * Reading `/proc/self/mountinfo` (proc(5)): which mounts exist at or below a
 * directory, for unmounting in the right order and for recovery sweeps.
 */
import { readFile, realpath } from 'node:fs/promises';
import { resolve, sep } from 'node:path';

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

/** Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash, `\054` comma). */
export function unescapeOctal(text: string): string {
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
    root: unescapeOctal(left[3]!),
    mountPoint: unescapeOctal(left[4]!),
    mountOptions: left[5]!.split(','),
    fstype: unescapeOctal(right[0]!),
    source: unescapeOctal(right[1]!),
    // Split before unescaping: an escaped comma (\054) belongs to its value.
    superOptions: right[2]!.split(',').map(unescapeOctal),
  };
}

/** Parses the text of `/proc/self/mountinfo`; malformed lines are skipped. */
export function parseMountinfo(text: string): MountEntry[] {
  return text
    .split('\n')
    .map(parseLine)
    .filter((e): e is MountEntry => e !== undefined);
}

function depth(path: string): number {
  return path === sep ? 0 : path.split(sep).length - 1;
}

/**
 * The entries mounted at `dir` or below it, deepest first; mounts stacked on
 * one point come newest first (mountinfo lists them in mount order), so
 * unmounting in this order always succeeds.
 */
export function mountsUnder(entries: readonly MountEntry[], dir: string): MountEntry[] {
  const prefix = dir === sep ? sep : dir + sep;
  return entries
    .map((entry, index) => ({ entry, index }))
    .filter(({ entry }) => entry.mountPoint === dir || entry.mountPoint.startsWith(prefix))
    .sort((a, b) => depth(b.entry.mountPoint) - depth(a.entry.mountPoint) || b.index - a.index)
    .map(({ entry }) => entry);
}

/** `dir` as mountinfo spells it: absolute, symlinks resolved when it exists. */
export async function canonicalDir(dir: string): Promise<string> {
  try {
    return await realpath(dir);
  } catch {
    return resolve(dir);
  }
}

/** Reads and parses this process's mountinfo. */
export async function readMountinfo(): Promise<MountEntry[]> {
  return parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8'));
}
