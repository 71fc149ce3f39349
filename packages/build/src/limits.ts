/**
 * The kernel's limits on what `execve` takes, checked when a plan is read:
 * a step past them would "run" and fail with E2BIG (argument list too long),
 * and that failure would be cached as the step's verdict. It is bad input.
 */

/** `MAX_ARG_STRLEN`: one argument or `NAME=value` string, its NUL included (32 pages). */
export const MAX_ARG_STRLEN = 32 * 4096;
/**
 * `ARG_MAX` as Linux computes it by default (a quarter of an 8 MiB stack),
 * less room for what the runtime adds to the environment.
 */
export const MAX_ARGS_TOTAL = 2 * 2 ** 20 - 64 * 2 ** 10;
/** Bytes of one pointer in argv/envp. */
const POINTER = 8;

/**
 * Calls `fail` naming the step when one of its arguments or environment
 * strings, or all of them together, would exceed what `execve` accepts.
 *
 * @example
 * ```ts
 * checkArgumentSizes(step, argvOf(step), (why) => { throw new Error(why); });
 * ```
 */
export function checkArgumentSizes(
  step: { id: string; env: Readonly<Record<string, string>> },
  argv: readonly string[],
  fail: (why: string, hint?: string) => never,
): void {
  const strings = [
    ...argv.map((s, i) => ({ what: i === 0 ? 'its command' : `argument ${i}`, s })),
    ...Object.entries(step.env).map(([k, v]) => ({ what: `env ${k}`, s: `${k}=${v}` })),
  ];
  let total = 0;
  for (const { what, s } of strings) {
    const bytes = Buffer.byteLength(s) + 1;
    total += bytes + POINTER;
    if (bytes > MAX_ARG_STRLEN) {
      fail(
        `step ${JSON.stringify(step.id)}: ${what} is ${bytes - 1} bytes, past the kernel's limit of ${MAX_ARG_STRLEN - 1} for one argument (MAX_ARG_STRLEN)`,
        'Pass large data as a file in a dependency layer (or a bind mount), not on the command line or in the environment',
      );
    }
  }
  if (total > MAX_ARGS_TOTAL) {
    fail(
      `step ${JSON.stringify(step.id)}: its arguments and environment take ${total} bytes, past the ${MAX_ARGS_TOTAL} that execve accepts (ARG_MAX)`,
      'Pass large data as a file in a dependency layer, not on the command line or in the environment',
    );
  }
}
