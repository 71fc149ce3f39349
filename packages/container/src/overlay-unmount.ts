/**
 * Taking overlays (and any other mount) down: retried while busy, detached
 * lazily on request, and synchronously for a dying process.
 */
import { resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Exec, Mountinfo, Sys, SysError } from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';

/** Options of {@link unmount}. */
export interface UnmountOptions {
  /** Further attempts while the mount is busy (EBUSY), with doubling delays from 20 ms. Default 5. */
  retries?: number;
  /** When still busy after the retries, detach it lazily (MNT_DETACH) instead of failing. */
  lazy?: boolean;
}

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
export async function listMounts(underDir: string): Promise<Mountinfo.MountEntry[]> {
  return Mountinfo.under(underDir);
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

/**
 * Unmounts `target` synchronously, for a process that is about to die (a
 * signal handler, an `exit` hook): plainly, then detached (MNT_DETACH) when
 * busy; through `umount -l` (sudo when not root) where the system call is
 * refused or unavailable. Never throws: what stays mounted is for a
 * recovery sweep ({@link unmountAll}) to take down later.
 *
 * @example
 * ```ts
 * ExitHooks.add(() => Overlay.unmountSync('/var/cache/day11/.day11-tmp-42-ab-run/merged'));
 * ```
 */
export function unmountSync(target: string): void {
  try {
    Sys.umount(target);
    return;
  } catch (err) {
    const errno = err instanceof SysError ? err.errno : undefined;
    if (errno === 'EINVAL' || errno === 'ENOENT') return; // not mounted
    if (errno === 'EBUSY') {
      try {
        Sys.umount(target, Sys.MNT_DETACH);
        return;
      } catch {
        // Fall through to the command.
      }
    }
  }
  try {
    Exec.runSync('umount', ['-l', target], {
      privileged: true,
      allowNonZeroExit: true,
      timeoutMs: 10_000,
    });
  } catch {
    // Nothing more can be done in a dying process.
  }
}
