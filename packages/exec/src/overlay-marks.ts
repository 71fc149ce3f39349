/**
 * How overlayfs and OCI image layers mark what an upper layer removes — one
 * definition for every package that reads or writes them (merges, exports,
 * pulls, squashes).
 *
 * - overlayfs: a deleted path is a whiteout, a character device 0/0; a
 *   directory that hides everything below it carries an "opaque" xattr,
 *   `trusted.overlay.opaque` (root's mounts) or `user.overlay.opaque`
 *   (`userxattr` mounts), with the value `y`.
 * - OCI layers: a deleted path `d/name` is an empty file `d/.wh.name`, an
 *   opaque directory `d` holds an empty file `d/.wh..wh..opq`.
 */

/** The opaque xattr of mounts made by root. */
export const OPAQUE_XATTR = 'trusted.overlay.opaque';
/** The opaque xattr of `userxattr` mounts. */
export const USER_OPAQUE_XATTR = 'user.overlay.opaque';
/** Both opaque xattrs, the one root's mounts use first. */
export const OPAQUE_XATTRS = [OPAQUE_XATTR, USER_OPAQUE_XATTR] as const;
/** Value of an opaque xattr that makes the directory opaque. */
export const OPAQUE_VALUE = 'y';
/** Prefix of an OCI whiteout file. */
export const OCI_WHITEOUT_PREFIX = '.wh.';
/** Name of the OCI file that makes its directory opaque. */
export const OCI_OPAQUE_MARKER = '.wh..wh..opq';

/**
 * Whether `st` is an overlayfs whiteout (a character device 0/0).
 *
 * @example
 * ```ts
 * if (OverlayMarks.isWhiteout(lstatSync(path))) console.log(`${path} is deleted in this layer`);
 * ```
 */
export function isWhiteout(st: { isCharacterDevice(): boolean; rdev: number }): boolean {
  return st.isCharacterDevice() && st.rdev === 0;
}

/**
 * Overlayfs's own bookkeeping on an upper directory's entries: where a copy
 * came from (`origin`, a file handle of this machine's lower), whether a
 * directory may hold such copies (`impure`), the upper's identity (`uuid`),
 * and hardlink and index records (`nlink`, `upper`). They describe the mount
 * a layer was made in, not what the step wrote: a layer pulled from a
 * registry has none of them, a built one does.
 */
const BOOKKEEPING = new Set(['origin', 'impure', 'uuid', 'nlink', 'upper']);

/**
 * Whether the xattr `name` is overlayfs bookkeeping (see above) under the
 * `trusted.overlay.` or `user.overlay.` prefix.
 *
 * @example
 * ```ts
 * OverlayMarks.isBookkeepingXattr('trusted.overlay.origin'); // true
 * OverlayMarks.isBookkeepingXattr('trusted.overlay.opaque'); // false: it hides the layers below
 * ```
 */
export function isBookkeepingXattr(name: string): boolean {
  const m = /^(?:trusted|user)\.overlay\.(.+)$/.exec(name);
  return m !== null && BOOKKEEPING.has(m[1]!);
}
