/**
 * Errors of `@day11/container`. Every one is a `Day11Error` with a stable code
 * from {@link ContainerCodes}, the path or container involved, and a hint.
 */
import { Day11Error, type CodeOf } from '@day11/exec';
// Shared helpers, re-exported so this package's modules import them from one place.
export { messageOf } from '@day11/exec';

/** A stable code from {@link ContainerCodes}. */
export type ContainerCode = CodeOf<typeof ContainerCodes>;

/**
 * Any error thrown by `@day11/container`: its code says which part failed
 * (mounting, the spec, the runtime), `path` names the mount point, bundle or
 * file.
 *
 * @example
 * ```ts
 * const err = await Overlay.mount({ lowers, target }).catch((e: unknown) => e);
 * if (err instanceof ContainerError) console.error(`${err.code} at ${err.path}: ${err.hint}`);
 * ```
 */
export class ContainerError extends Day11Error<ContainerCode> {}

/** Stable codes of the errors thrown by `@day11/container`. */
export const ContainerCodes = {
  /** More lower layers than any available mount strategy accepts. */
  TOO_MANY_LOWERS: 'CONTAINER_TOO_MANY_LOWERS',
  /** A path cannot be passed to overlayfs (e.g. it contains a character no strategy can escape). */
  BAD_PATH: 'CONTAINER_BAD_PATH',
  /** The overlay mount failed. */
  MOUNT_FAILED: 'CONTAINER_MOUNT_FAILED',
  /** The unmount failed (after retries on EBUSY). */
  UNMOUNT_FAILED: 'CONTAINER_UNMOUNT_FAILED',
  /** An OCI runtime spec option is invalid. */
  BAD_SPEC: 'CONTAINER_BAD_SPEC',
  /** A container id is invalid. */
  BAD_ID: 'CONTAINER_BAD_ID',
  /** The runtime (runc/crun) is missing or failed outside the container's own command. */
  RUNTIME_FAILED: 'CONTAINER_RUNTIME_FAILED',
  /** crun refused this machine's hybrid cgroup layout; the hint gives the fix. */
  CRUN_HYBRID_CGROUPS: 'CONTAINER_CRUN_HYBRID_CGROUPS',
  /** An argument is out of range or malformed. */
  BAD_ARGUMENT: 'CONTAINER_BAD_ARGUMENT',
} as const;
