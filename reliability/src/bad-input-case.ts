/**
 * The shape of one bad-input case and the checks every case shares: a typed
 * error from the library, a one-line error from the CLI.
 */
import { resolve } from 'node:path';
import { expect } from 'vitest';
import { Day11Error, Exec } from '@day11/exec';
import type { World } from './bad-input-world.js';

/** Where a case may put mount points, uppers and other things outside the checksummed world. */
export interface Scratch {
  dir: string;
}

/** One bad input, applied through the library, the CLI, or both. */
export interface Case {
  name: string;
  /**
   * Puts the bad input in place: damages a file of the world, or writes an
   * input into `w.inputs`. Returns what every error must name (a path,
   * usually). Runs before the "before" checksum.
   */
  arrange: (w: World) => Promise<string> | string;
  /** Applies it through the library, with its own assertions (see {@link rejectsTyped}). */
  lib?: (w: World, names: string, scratch: Scratch) => Promise<void>;
  /** Applies it through the `day11` binary: the arguments. */
  cli?: (w: World, names: string) => string[];
  /** The CLI's exit status: 2 for usage errors, 1 (the default) for the rest; 0 when it rightly repairs the damage. */
  exit?: 0 | 1 | 2;
  /**
   * What the world looks like afterwards: `unchanged` (the default), or
   * `pristine` when the operation rightly repairs the damage (a blob the
   * layout lost is put back from the layer's cache).
   */
  after?: 'unchanged' | 'pristine';
}

/** Expects `promise` to reject with a `Day11Error` of `code` whose message contains `names`. */
export async function rejectsTyped(
  promise: Promise<unknown>,
  code: string,
  names: string,
): Promise<Day11Error> {
  const err: unknown = await promise.then(
    (value) => expect.fail(`expected ${code}, got success: ${JSON.stringify(value)}`),
    (e: unknown) => e,
  );
  expect(err, String(err)).toBeInstanceOf(Day11Error);
  const typed = err as Day11Error;
  expect(typed.code, typed.message).toBe(code);
  expect(typed.message).toContain(names);
  return typed;
}

/** Expects `fn` to throw synchronously, as {@link rejectsTyped}. */
export async function throwsTyped(fn: () => unknown, code: string, names: string): Promise<void> {
  await rejectsTyped(
    (async () => {
      await Promise.resolve();
      return fn();
    })(),
    code,
    names,
  );
}

/** The built `day11` binary. */
export const BIN = resolve(import.meta.dirname, '../../packages/cli/dist/bin/day11.js');

/**
 * Runs `day11 ...args` and checks what a user sees of a bad input: exit
 * status `exit`, nothing on stderr but one line beginning `day11` that names
 * `names` and, at most, the hint on the next line (`hint: ...`), with no
 * stack trace and not reported as an unexpected error.
 */
export async function cliRejects(args: readonly string[], names: string, exit = 1): Promise<void> {
  const r = await Exec.run(process.execPath, [BIN, ...args], {
    allowNonZeroExit: true,
    timeoutMs: 60_000,
  });
  const stderr = r.stderr.trim();
  expect(r.exitCode, `stderr: ${stderr}`).toBe(exit);
  const [message, ...hint] = stderr.split('\n');
  expect(message, `stderr: ${stderr}`).toMatch(/^day11/);
  expect(message, `stderr: ${stderr}`).toContain(names);
  expect(hint.length, `stderr: ${stderr}`).toBeLessThanOrEqual(1);
  expect(
    hint.every((line) => line.startsWith('hint: ')),
    `stderr: ${stderr}`,
  ).toBe(true);
  expect(stderr).not.toMatch(/\bat .*:\d+:\d+\)?$|unexpected error/m);
}
