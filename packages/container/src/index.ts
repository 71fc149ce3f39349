/**
 * `@day11/container`: overlayfs stacks, the OCI runtime spec, and runc/crun.
 * Depends on `@day11/exec` only; it knows nothing about layer caches.
 */
export * as Overlay from './overlay.js';
export * as OciSpec from './oci-spec.js';
export * as Runc from './runc.js';
export { ContainerCodes, ContainerError, type ContainerCode } from './errors.js';
