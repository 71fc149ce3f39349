/**
 * `/etc/hosts` for the container, written into the upper as a plain file
 * before the overlay is mounted. day11 found that bind-mounting a hosts
 * file races runc's copy-up of `/etc`; a file in the upper has no race.
 * After the run it is taken out again unless the command changed it, so a
 * layer records only what its step wrote (a step that writes nothing makes
 * an empty layer, and images do not carry a copy per layer).
 */
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmdirSync,
  unlinkSync,
  utimesSync,
  writeFileSync,
  type Stats,
} from 'node:fs';
import { join } from 'node:path';
import { Exec } from '@day11/exec';
import { errnoCode } from './errors.js';

/**
 * The hosts file for `hostname`: loopback for `localhost` and the hostname.
 *
 * @example
 * ```ts
 * hostsContent('builder'); // '127.0.0.1 localhost builder\n'
 * ```
 */
export function hostsContent(hostname: string): string {
  const names = ['localhost', ...(hostname && hostname !== 'localhost' ? [hostname] : [])];
  return `127.0.0.1 ${names.join(' ')}\n`;
}

/** Options of {@link writeHosts}. */
export interface WriteHostsOptions {
  /** The overlay upper (not mounted yet). */
  upper: string;
  /** The lower directories, topmost first, as they will be mounted. */
  lowers: readonly string[];
  /** The container's hostname. */
  hostname: string;
  /**
   * Reads `{lower}/etc` (default: `lstat`, `undefined` when missing). A
   * caller that knows a lower cannot change may answer from memory.
   */
  lstatLowerEtc?: (lower: string) => Stats | undefined;
}

/** What {@link writeHosts} wrote, so {@link removeHosts} can tell whether the run changed it. */
export interface WrittenHosts {
  /** The file, as it was right after writing. */
  ino: number;
  size: number;
  mtimeMs: number;
  content: string;
  /** `upper/etc` was made for it (the stack's `/etc` was not in the upper yet). */
  madeEtc: boolean;
}

/**
 * Writes `upper/etc/hosts` unless the upper already has one (the caller's
 * `prepUpper` wrote its own). When the upper has no `etc/` yet, it is made
 * with the mode, owner and times of the topmost lower's `/etc`, as an
 * overlay copy-up would, so the layer does not record a changed `/etc`.
 * When `/etc` in the stack is not a directory (a symlink, say), nothing is
 * written: replacing it would change the tree. Returns what it wrote, or
 * undefined. Synchronous: a handful of syscalls, each cheaper than a
 * thread-pool hop.
 *
 * @example
 * ```ts
 * const written = writeHosts({ upper, lowers: [depFs, baseFs], hostname: 'builder' });
 * ```
 */
export function writeHosts(opts: WriteHostsOptions): WrittenHosts | undefined {
  const etc = join(opts.upper, 'etc');
  const hosts = join(etc, 'hosts');
  if (lstatOrUndefined(hosts) !== undefined) return undefined;
  const upperEtc = lstatOrUndefined(etc);
  if (upperEtc !== undefined && !upperEtc.isDirectory()) return undefined;
  const lstatEtc = opts.lstatLowerEtc ?? ((lower: string) => lstatOrUndefined(join(lower, 'etc')));
  const lowerEtc = upperEtc ? undefined : topmostEtc(opts.lowers, lstatEtc);
  if (lowerEtc === 'not-a-directory') return undefined;
  if (!upperEtc) mkdirSync(etc, { mode: lowerEtc?.mode ?? 0o755 });
  const content = hostsContent(opts.hostname);
  writeFileSync(hosts, content, { mode: 0o644 });
  const st = lstatSync(hosts);
  if (lowerEtc) {
    // After the file is in: creating it changed the directory's times. chmod
    // after chown (which may clear set-id bits), and past the umask.
    chownLike(etc, lowerEtc);
    chmodSync(etc, lowerEtc.mode);
    utimesSync(etc, lowerEtc.atimeMs / 1000, lowerEtc.mtimeMs / 1000);
  }
  return { ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, content, madeEtc: !upperEtc };
}

/**
 * Takes the hosts file {@link writeHosts} put in `upper` back out, when the
 * run left it exactly as written (same inode, size, time, content, one
 * link); then `upper/etc` too, if it was made for it and nothing else is in
 * it. What the command did to `/etc/hosts` (edited, replaced, linked,
 * deleted) stays, since that is the step's own change. Returns whether it
 * removed the file. Never throws.
 *
 * @example
 * ```ts
 * removeHosts(upper, written); // after the overlay is unmounted
 * ```
 */
export function removeHosts(upper: string, written: WrittenHosts): boolean {
  const etc = join(upper, 'etc');
  const hosts = join(etc, 'hosts');
  try {
    const st = lstatSync(hosts, { throwIfNoEntry: false });
    if (!st?.isFile() || st.ino !== written.ino || st.size !== written.size) return false;
    if (st.mtimeMs !== written.mtimeMs || st.nlink !== 1) return false;
    if (readFileSync(hosts, 'utf8') !== written.content) return false;
    const etcBefore = lstatSync(etc);
    unlinkSync(hosts);
    if (written.madeEtc && readdirSync(etc).length === 0) {
      // Removing etc/ changes the root's times, which may be the step's own
      // (a reproducible step sets them): they are put back.
      const rootBefore = lstatSync(upper);
      rmdirSync(etc);
      utimesSync(upper, rootBefore.atimeMs / 1000, rootBefore.mtimeMs / 1000);
    }
    // Unlinking changed the directory's times: the step's other changes keep theirs.
    else utimesSync(etc, etcBefore.atimeMs / 1000, etcBefore.mtimeMs / 1000);
    return true;
  } catch {
    return false;
  }
}

interface EtcAttributes {
  mode: number;
  uid: number;
  gid: number;
  atimeMs: number;
  mtimeMs: number;
}

/**
 * The attributes of `/etc` as the overlay will show it: the topmost lower
 * that has an entry named `etc` decides (a whiteout means no `/etc` at all).
 */
function topmostEtc(
  lowers: readonly string[],
  lstatEtc: (lower: string) => Stats | undefined,
): EtcAttributes | 'not-a-directory' | undefined {
  for (const lower of lowers) {
    const st = lstatEtc(lower);
    if (st === undefined) continue;
    if (st.isCharacterDevice() && st.rdev === 0) return undefined; // whiteout
    if (!st.isDirectory()) return 'not-a-directory';
    const { uid, gid, atimeMs, mtimeMs } = st;
    return { mode: st.mode & 0o7777, uid, gid, atimeMs, mtimeMs };
  }
  return undefined;
}

/**
 * Gives `path` the owner of `like`, when it differs. Only root may give a
 * file away; otherwise (runs without root go through sudo for the mount and
 * the runtime) the owner stays ours rather than failing the run.
 *
 * @example
 * ```ts
 * chownLike(join(upper, 'etc'), lstatSync(join(lower, 'etc')));
 * ```
 */
export function chownLike(path: string, like: { uid: number; gid: number }): void {
  const st = lstatSync(path);
  if (st.uid === like.uid && st.gid === like.gid) return;
  try {
    chownSync(path, like.uid, like.gid);
  } catch (err) {
    if (errnoCode(err) !== 'EPERM' || Exec.isRoot()) throw err;
  }
}

/**
 * `lstat`, or `undefined` when nothing is there.
 *
 * @example
 * ```ts
 * lstatOrUndefined('/no/such/file'); // undefined
 * ```
 */
export function lstatOrUndefined(path: string): Stats | undefined {
  try {
    // No exception for a missing entry: most lowers have no /etc, and a
    // thrown error costs more than the lstat itself.
    return lstatSync(path, { throwIfNoEntry: false });
  } catch (err) {
    if (errnoCode(err) === 'ENOENT' || errnoCode(err) === 'ENOTDIR') return undefined;
    throw err;
  }
}
