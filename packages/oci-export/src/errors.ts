/**
 * Errors of `@day11/oci-export`. Every one is a `Day11Error` with a stable
 * code from {@link OciExportCodes}, the file involved, and a hint saying what
 * to do about it.
 */
import { Day11Error, type CodeOf, messageOf } from '@day11/exec/errors';
// Shared helpers, re-exported so this package's modules import them from one place.
export { messageOf, errnoCode } from '@day11/exec/errors';

/** A stable code from {@link OciExportCodes}. */
export type OciExportCode = CodeOf<typeof OciExportCodes>;

/**
 * Any error thrown by `@day11/oci-export` (lock errors of `@day11/layer` and
 * aborts pass through unchanged).
 *
 * @example
 * ```ts
 * try {
 *   await exportImage({ layout, tag: 'bad tag!', base, layers });
 * } catch (err) {
 *   if (err instanceof OciExportError && err.code === OciExportCodes.BAD_TAG) console.error(err.hint);
 * }
 * ```
 */
export class OciExportError extends Day11Error<OciExportCode> {}

/**
 * Wraps a failed filesystem call; a day11 error or an abort passes through unchanged.
 *
 * @example
 * ```ts
 * throw fsError(OciExportCodes.READ_FAILED, 'Cannot read', path, err, 'Check permissions');
 * ```
 */
export function fsError(
  code: OciExportCode,
  what: string,
  path: string,
  cause: unknown,
  hint: string,
): unknown {
  if (cause instanceof Day11Error) return cause;
  if ((cause as { name?: unknown } | null)?.name === 'AbortError') return cause;
  return new OciExportError(code, `${what} ${path}: ${messageOf(cause)}`, { path, cause, hint });
}

/** Stable codes of the errors thrown by `@day11/oci-export`. */
export const OciExportCodes = {
  /** A tag does not match the OCI `org.opencontainers.image.ref.name` grammar. */
  BAD_TAG: 'OCI_BAD_TAG',
  /** An option is out of range or malformed. */
  BAD_ARGUMENT: 'OCI_BAD_ARGUMENT',
  /** A layer directory (or its `fs/`) does not exist. */
  LAYER_NOT_FOUND: 'OCI_LAYER_NOT_FOUND',
  /** A layer was written by an overlay with `redirect_dir` or `metacopy` on. */
  UNSUPPORTED_UPPER: 'OCI_UNSUPPORTED_UPPER',
  /** A file name or symlink target is not valid UTF-8 (PAX and OCI need UTF-8). */
  BAD_FILENAME: 'OCI_BAD_FILENAME',
  /** A file changed size while it was being archived (layers must be immutable). */
  LAYER_CHANGED: 'OCI_LAYER_CHANGED',
  /** `index.json` is not valid JSON or not an OCI image index. */
  INDEX_CORRUPT: 'OCI_INDEX_CORRUPT',
  /** `oci-layout` is missing from a non-empty layout, or names an unknown version. */
  LAYOUT_INVALID: 'OCI_LAYOUT_INVALID',
  /** A blob an index or manifest references does not exist. */
  BLOB_MISSING: 'OCI_BLOB_MISSING',
  /** A blob's content does not match its digest, or a manifest/config does not parse. */
  BLOB_CORRUPT: 'OCI_BLOB_CORRUPT',
  /** Reading a layer or a layout failed. */
  READ_FAILED: 'OCI_READ_FAILED',
  /** Writing a blob, the cache, or `index.json` failed. */
  WRITE_FAILED: 'OCI_WRITE_FAILED',
} as const;
