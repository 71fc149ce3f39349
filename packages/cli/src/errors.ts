/**
 * Errors of the `day11` command. Library errors (`Day11Error`) pass through
 * unchanged; these cover what only the CLI knows: bad arguments and bad plans.
 */
// The errors alone, not the whole package: every command's errors go through here.
import { Day11Error, isDay11Error, messageOf, type CodeOf } from '@day11/exec/errors';

/** A stable code from {@link CliCodes}. */
export type CliCode = CodeOf<typeof CliCodes>;

/** An error the `day11` command reports as one line, its hint on the next, and a non-zero exit. */
export class CliError extends Day11Error<CliCode> {}

/** Exit status for an error: 2 for usage errors, 1 for everything else. */
export function exitCodeOf(err: unknown): number {
  return err instanceof CliError && err.code === CliCodes.USAGE ? 2 : 1;
}

/**
 * What the `day11` command prints for an error: `day11: <message>`, then
 * `hint: <hint>` on a line of its own when there is one. An error that is
 * not a `Day11Error` was not foreseen: it says so and points to `--debug`.
 *
 * @example
 * ```ts
 * console.error(formatError(err)); // "day11: Cannot read plan.json: ...\nhint: Fix the plan file; ..."
 * ```
 */
export function formatError(err: unknown): string {
  const message = oneLine(messageOf(err));
  if (!isDay11Error(err)) {
    return `day11: unexpected error: ${message} (run again with --debug for the stack trace)`;
  }
  const first = message.startsWith('day11') ? message : `day11: ${message}`;
  return err.hint === undefined ? first : `${first}\nhint: ${oneLine(err.hint)}`;
}

/**
 * `text` with control characters escaped (`\n`, `\x1b`, ...), so that a
 * message quoting hostile input (a file of binary garbage, a name with a
 * newline) stays one line and cannot drive the terminal.
 */
function oneLine(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\x00-\x08\x0a-\x1f\x7f]/g, (c) => {
    if (c === '\n') return '\\n';
    if (c === '\r') return '\\r';
    return `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`;
  });
}

/** Stable codes of the errors thrown by `@day11/cli`. */
export const CliCodes = {
  /** Unknown command or option, or a missing or malformed argument. */
  USAGE: 'CLI_USAGE',
  /** The plan file cannot be read, is not JSON, or breaks a rule (cycle, unknown dep, ...). */
  BAD_PLAN: 'CLI_BAD_PLAN',
  /** The cache directory is unusable. */
  BAD_CACHE: 'CLI_BAD_CACHE',
  /** A layer named on the command line does not exist (or is ambiguous). */
  NO_SUCH_LAYER: 'CLI_NO_SUCH_LAYER',
  /** Something this machine lacks: root, a runtime, a kernel feature, a tool. */
  MISSING_REQUIREMENT: 'CLI_MISSING_REQUIREMENT',
  /** A build finished with failed steps. */
  BUILD_FAILED: 'CLI_BUILD_FAILED',
  /** The demo's own checks failed. */
  DEMO_FAILED: 'CLI_DEMO_FAILED',
} as const;
