/**
 * Errors of `@day11/build`. Errors of the packages it composes (`LayerError`,
 * `ContainerError`, `RunnerError`, `OciExportError`) pass through unchanged.
 */
import { Day11Error, type Day11ErrorOptions } from '@day11/exec';

/** Stable codes of the errors thrown by `@day11/build`. */
export const BuildCodes = {
  /** The plan cannot be read, is not JSON, or breaks a rule (cycle, unknown dep, tag collision, ...). */
  BAD_PLAN: 'BUILD_BAD_PLAN',
  /** An option of `createBuilder` or `build` is malformed. */
  BAD_ARGUMENT: 'BUILD_BAD_ARGUMENT',
  /** The plan's base cannot be found or imported. */
  BAD_BASE: 'BUILD_BAD_BASE',
  /** A cached layer's recorded full hash differs from the one wanted: two hashes share a directory name. */
  HASH_COLLISION: 'BUILD_HASH_COLLISION',
  /** Something this machine lacks for the base (busybox-static). */
  MISSING_REQUIREMENT: 'BUILD_MISSING_REQUIREMENT',
  /** The builder was used after `close()`. */
  CLOSED: 'BUILD_CLOSED',
} as const;

/** A stable code from {@link BuildCodes}. */
export type BuildCode = (typeof BuildCodes)[keyof typeof BuildCodes];

/**
 * Any error thrown by `@day11/build` itself.
 *
 * @example
 * ```ts
 * try { await loadPlan('plan.json'); }
 * catch (err) { if (err instanceof BuildError && err.code === BuildCodes.BAD_PLAN) console.error(err.message); }
 * ```
 */
export class BuildError extends Day11Error {
  override name = 'BuildError';
  declare readonly code: BuildCode;

  constructor(code: BuildCode, message: string, options: Day11ErrorOptions = {}) {
    super(code, message, options);
  }
}
