/**
 * Overlayfs mounts of layer stacks up to the kernel's 500 lower layers, with
 * no copying, and their unmounting and recovery. By concern:
 * `overlay-capabilities.ts` (what this machine offers), `overlay-plan.ts`
 * (which strategy, how many lowers fit), `overlay-mount.ts`,
 * `overlay-unmount.ts`; option strings in `overlay-options.ts`.
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
import type { Mountinfo } from '@day11/exec';

/** One mount, as `/proc/self/mountinfo` lists it (`Mountinfo.MountEntry` of `@day11/exec`). */
export type MountEntry = Mountinfo.MountEntry;
export { DEFAULT_FEATURES, OVL_MAX_STACK } from './overlay-options.js';
export * from './overlay-capabilities.js';
export {
  TooManyLowersError,
  fit,
  plan,
  strategyFor,
  type FitOptions,
  type FitProblem,
  type MountOptions,
  type MountPlan,
  type StrategyFit,
} from './overlay-plan.js';
export { mount, type OverlayMount } from './overlay-mount.js';
export {
  listMounts,
  unmount,
  unmountAll,
  unmountSync,
  type UnmountOptions,
} from './overlay-unmount.js';
