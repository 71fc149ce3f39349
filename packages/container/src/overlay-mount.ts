/**
 * Mounting an overlay with the strategy the plan chose: fsconfig through
 * `Sys`, classic `mount(2)`, or `mount(8)` with relative lowers.
 */
import { constants } from 'node:fs';
import { mkdtemp, open, rmdir, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CommandError, Exec, ExecCodes, Mountinfo, Sys, SysError, isDay11Error } from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';
import { capabilities, type Strategy } from './overlay-capabilities.js';
import {
  FSCONFIG_STRING_MAX,
  byteLength,
  classicOptions,
  escapeFsconfigUpper,
} from './overlay-options.js';
import {
  DATA_LOWER_PREFIX,
  choose,
  prepare,
  relativeParts,
  type MountOptions,
  type Prepared,
} from './overlay-plan.js';
import { unmount, type UnmountOptions } from './overlay-unmount.js';

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
  const dir = await Mountinfo.canonical(target);
  return (await Mountinfo.read()).filter((e) => e.mountPoint === dir).length;
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
