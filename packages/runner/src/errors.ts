/**
 * Errors of `@day11/runner`. Every one is a `Day11Error` with a stable code
 * from {@link RunnerCodes}, the path involved, and a hint. Errors of the
 * packages it builds on (`LayerError`, `ContainerError`, `CommandError`)
 * pass through unchanged: their codes already say what failed.
 */
import { Day11Error, type CodeOf } from '@day11/exec';
// Shared helpers, re-exported so this package's modules import them from one place.
export { messageOf, errnoCode } from '@day11/exec';

/**
 * A stable code from {@link RunnerCodes}.
 *
 * @example
 * ```ts
 * const code: RunnerCode = RunnerCodes.ABORTED;
 * ```
 */
export type RunnerCode = CodeOf<typeof RunnerCodes>;

/**
 * Any error thrown by `@day11/runner` itself.
 *
 * @example
 * ```ts
 * try {
 *   await runInLayers({ base, buildDirs, spec });
 * } catch (err) {
 *   if (err instanceof RunnerError && err.code === RunnerCodes.PREP_UPPER_FAILED) console.error(err.cause);
 * }
 * ```
 */
export class RunnerError extends Day11Error<RunnerCode> {}

/**
 * Stable codes of the errors thrown by `@day11/runner`.
 *
 * @example
 * ```ts
 * if (isDay11Error(err, RunnerCodes.INTERRUPTED)) process.exitCode = 130;
 * ```
 */
export const RunnerCodes = {
  /** An option of `runInLayers` or `recover` is missing or malformed. */
  BAD_ARGUMENT: 'RUNNER_BAD_ARGUMENT',
  /** The caller's `prepUpper` callback threw; `cause` is its error. */
  PREP_UPPER_FAILED: 'RUNNER_PREP_UPPER_FAILED',
  /** The `signal` was aborted before the container started. */
  ABORTED: 'RUNNER_ABORTED',
  /** SIGINT/SIGTERM/SIGHUP arrived during the run; everything was cleaned up synchronously. */
  INTERRUPTED: 'RUNNER_INTERRUPTED',
  /** The run's temporary files could not be set up or removed, or a mount stayed. */
  CLEANUP_FAILED: 'RUNNER_CLEANUP_FAILED',
  /** The runner was closed (`run` after `close`, or a run that `close` stopped). */
  CLOSED: 'RUNNER_CLOSED',
} as const;
