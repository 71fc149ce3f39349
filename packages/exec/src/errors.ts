/**
 * The error base class of every day11 package, and the errors of this one.
 *
 * Every error a day11 library throws is a {@link Day11Error}: it has a stable
 * `code` to switch on, the `path` or command it concerns, a `hint` that says
 * what to do, and the underlying `cause`.
 */

/** Options shared by every {@link Day11Error}. */
export interface Day11ErrorOptions {
  /** The file or directory the operation was working on. */
  path?: string | undefined;
  /** What the user can do about it, one sentence. Default: the hint of `cause`, if it has one. */
  hint?: string | undefined;
  /** The lower-level error. */
  cause?: unknown;
}

/**
 * The union of the values of a package's code table.
 *
 * @example
 * ```ts
 * export const LayerCodes = { BAD_HASH: 'LAYER_BAD_HASH' } as const;
 * export type LayerCode = CodeOf<typeof LayerCodes>; // 'LAYER_BAD_HASH'
 * ```
 */
export type CodeOf<Codes extends Readonly<Record<string, string>>> = Codes[keyof Codes];

/**
 * Base class of all day11 errors; `C` is the union of the codes a package
 * throws, and `name` is the subclass's, so each package's error class is one
 * line: `class LayerError extends Day11Error<LayerCode> {}`.
 *
 * `message` says what failed; `hint` (what to do about it) is kept apart, so
 * wrapping an error never piles hints into messages. A wrapper without a hint
 * of its own keeps its cause's.
 *
 * @example
 * ```ts
 * throw new Day11Error('MY_CODE', `Cannot read ${path}`, { path, cause, hint: 'Check permissions' });
 * ```
 */
export class Day11Error<C extends string = string> extends Error {
  /** Stable machine-readable code, e.g. `LAYER_META_CORRUPT`. */
  readonly code: C;
  /** The file or directory involved, when there is one. */
  readonly path: string | undefined;
  /** What to do about it. */
  readonly hint: string | undefined;

  constructor(code: C, message: string, options: Day11ErrorOptions = {}) {
    super(message, { cause: options.cause });
    // The subclass's own name (`LayerError`, ...), so subclasses need not set it.
    this.name = new.target.name;
    this.code = code;
    this.path = options.path;
    this.hint = options.hint ?? hintOf(options.cause);
  }
}

/** The hint an error carries, if it is a {@link Day11Error} with one. */
export function hintOf(err: unknown): string | undefined {
  return err instanceof Day11Error ? err.hint : undefined;
}

/**
 * How an error reads to a person: its message, then its hint on a line of its own.
 *
 * @example
 * ```ts
 * console.error(`day11: ${describeError(err)}`);
 * ```
 */
export function describeError(err: unknown): string {
  const hint = hintOf(err);
  return hint === undefined ? messageOf(err) : `${messageOf(err)}\n${hint}`;
}

/** `err.message` for an unknown thrown value. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** The errno code (`ENOENT`, ...) of a Node fs error, if any. */
export function errnoCode(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}

/**
 * True when `err` is a {@link Day11Error}, optionally with the given code.
 *
 * @example
 * ```ts
 * if (isDay11Error(err, ExecCodes.TIMED_OUT)) retry();
 * ```
 */
export function isDay11Error<C extends string = string>(
  err: unknown,
  code?: C,
): err is Day11Error<C> {
  return err instanceof Day11Error && (code === undefined || err.code === code);
}

/** Details recorded on a failed subprocess. */
export interface CommandErrorDetails {
  command: string;
  args: readonly string[];
  exitCode: number | undefined;
  signal: string | undefined;
  stderrTail: string;
  timedOut: boolean;
  aborted: boolean;
  cause?: unknown;
  hint?: string | undefined;
}

/** A subprocess failed: non-zero exit, a signal, a timeout, an abort, or it could not start. */
export class CommandError extends Day11Error<ExecCode> {
  readonly command: string;
  readonly args: readonly string[];
  readonly exitCode: number | undefined;
  readonly signal: string | undefined;
  /** The last lines of standard error (at most 4 KiB). */
  readonly stderrTail: string;
  readonly timedOut: boolean;
  readonly aborted: boolean;

  constructor(code: ExecCode, details: CommandErrorDetails) {
    super(code, describeFailure(details), { cause: details.cause, hint: details.hint });
    this.command = details.command;
    this.args = details.args;
    this.exitCode = details.exitCode;
    this.signal = details.signal;
    this.stderrTail = details.stderrTail;
    this.timedOut = details.timedOut;
    this.aborted = details.aborted;
  }
}

function describeFailure(d: CommandErrorDetails): string {
  const line = [d.command, ...d.args].join(' ');
  const how = d.timedOut
    ? 'timed out'
    : d.aborted
      ? 'was aborted'
      : d.signal
        ? `was killed by ${d.signal}`
        : d.exitCode === undefined
          ? 'could not be started'
          : `exited with code ${d.exitCode}`;
  const tail = d.stderrTail.trim() ? `: ${d.stderrTail.trim()}` : '';
  return `Command \`${line}\` ${how}${tail}`;
}

/** Codes of the errors thrown by `@day11/exec`. */
export const ExecCodes = {
  /** The command exited non-zero or died. */
  COMMAND_FAILED: 'EXEC_COMMAND_FAILED',
  /** The command does not exist or could not be spawned. */
  COMMAND_NOT_FOUND: 'EXEC_COMMAND_NOT_FOUND',
  /** The command ran past `timeoutMs`. */
  TIMED_OUT: 'EXEC_TIMED_OUT',
  /** The `signal` passed to the call was aborted. */
  ABORTED: 'EXEC_ABORTED',
  /** A privileged step was needed, we are not root, and `sudo -n` refused or is not installed. */
  NO_PRIVILEGE: 'EXEC_NO_PRIVILEGE',
  /** A system call failed; `errno` says why. */
  SYSCALL_FAILED: 'SYS_CALL_FAILED',
  /** The native binding for a system call could not be loaded on this platform. */
  SYSCALL_UNAVAILABLE: 'SYS_UNAVAILABLE',
  /** An atomic write (temporary file, fsync, rename) failed. */
  WRITE_FAILED: 'EXEC_WRITE_FAILED',
} as const;

/** A stable code from {@link ExecCodes}. */
export type ExecCode = CodeOf<typeof ExecCodes>;

/** A system call made through {@link Sys} failed. */
export class SysError extends Day11Error<ExecCode> {
  /** The call, e.g. `mknod` or `fsconfig`. */
  readonly syscall: string;
  /** Symbolic errno, e.g. `EPERM`, when the kernel returned one. */
  readonly errno: string | undefined;

  constructor(
    syscall: string,
    errno: string | undefined,
    message: string,
    options: Day11ErrorOptions = {},
  ) {
    super(
      errno === undefined ? ExecCodes.SYSCALL_UNAVAILABLE : ExecCodes.SYSCALL_FAILED,
      message,
      options,
    );
    this.syscall = syscall;
    this.errno = errno;
  }
}

/**
 * An error of `@day11/exec` that is neither a command's nor a system call's
 * (e.g. `EXEC_WRITE_FAILED` from {@link Atomic}).
 *
 * @example
 * ```ts
 * if (err instanceof ExecError && err.code === ExecCodes.WRITE_FAILED) console.error(err.path);
 * ```
 */
export class ExecError extends Day11Error<ExecCode> {}
