/**
 * `/etc/hosts` for the container, written into the upper as a plain file
 * before the overlay is mounted. day11 found that bind-mounting a hosts
 * file races runc's copy-up of `/etc`; a file in the upper has no race and
 * is what the build saw, so it is also what the layer records.
 */
import {
  chmodSync,
  chownSync,
  lstatSync,
  mkdirSync,
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

/**
 * Writes `upper/etc/hosts` unless the upper already has one (the caller's
 * `prepUpper` wrote its own). When the upper has no `etc/` yet, it is made
 * with the mode, owner and times of the topmost lower's `/etc`, as an
 * overlay copy-up would, so the layer does not record a changed `/etc`.
 * When `/etc` in the stack is not a directory (a symlink, say), nothing is
 * written: replacing it would change the tree. Returns whether it wrote.
 * Synchronous: a handful of syscalls, each cheaper than a thread-pool hop.
 *
 * @example
 * ```ts
 * writeHosts({ upper, lowers: [depFs, baseFs], hostname: 'builder' });
 * ```
 */
export function writeHosts(opts: WriteHostsOptions): boolean {
  const etc = join(opts.upper, 'etc');
  const hosts = join(etc, 'hosts');
  if (lstatOrUndefined(hosts) !== undefined) return false;
  const upperEtc = lstatOrUndefined(etc);
  if (upperEtc !== undefined && !upperEtc.isDirectory()) return false;
  const lstatEtc = opts.lstatLowerEtc ?? ((lower: string) => lstatOrUndefined(join(lower, 'etc')));
  const lowerEtc = upperEtc ? undefined : topmostEtc(opts.lowers, lstatEtc);
  if (lowerEtc === 'not-a-directory') return false;
  if (!upperEtc) mkdirSync(etc, { mode: lowerEtc?.mode ?? 0o755 });
  writeFileSync(hosts, hostsContent(opts.hostname), { mode: 0o644 });
  if (lowerEtc) {
    // After the file is in: creating it changed the directory's times. chmod
    // after chown (which may clear set-id bits), and past the umask.
    chownLike(etc, lowerEtc);
    chmodSync(etc, lowerEtc.mode);
    utimesSync(etc, lowerEtc.atimeMs / 1000, lowerEtc.mtimeMs / 1000);
  }
  return true;
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
