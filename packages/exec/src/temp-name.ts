/**
 * Names of day11's temporary entries: `.day11-tmp-<pid>-<hex>-<what>`.
 *
 * Everything day11 writes is first made under such a name and renamed into
 * place, so a process killed halfway leaves only names of this form. The
 * pid in the name is how recovery (`Recover.sweep` of `@day11/layer`,
 * `recover` of `@day11/runner`, `Layout.gc` of `@day11/oci-export`) tells a
 * dead process's leftovers from a live one's work ({@link Proc.ownerGone}).
 * This module is the one place that makes and reads these names.
 */
import { basename, dirname, join } from 'node:path';
import { randomHex } from './random.js';

/** Prefix of every day11 temporary entry. */
export const PREFIX = '.day11-tmp-';

/** The one pattern recovery matches: the prefix, then the owner's pid (group 1). */
export const PATTERN = /^\.day11-tmp-(\d+)-/;

/**
 * A fresh temporary name (not a path) for `what`, owned by this process.
 * Names made with the same `tag` differ only by `what`.
 *
 * @example
 * ```ts
 * TempName.make('run'); // '.day11-tmp-4242-9f3a0c1d-run'
 * const tag = randomHex(4);
 * [TempName.make('run', tag), TempName.make('upper', tag)]; // one run's two entries
 * ```
 */
export function make(what: string, tag: string = randomHex(4)): string {
  return `${PREFIX}${process.pid}-${tag}-${what}`;
}

/**
 * A fresh temporary path in `dir` for `what`.
 *
 * @example
 * ```ts
 * TempName.inside('/var/cache/day11', 'busybox'); // '/var/cache/day11/.day11-tmp-4242-1a2b3c4d-busybox'
 * ```
 */
export function inside(dir: string, what: string): string {
  return join(dir, make(what));
}

/**
 * A fresh temporary path beside `target`, for an entry that will be renamed
 * to it (same directory, so the rename is atomic).
 *
 * @example
 * ```ts
 * TempName.beside('/oci/index.json'); // '/oci/.day11-tmp-4242-1a2b3c4d-index.json'
 * ```
 */
export function beside(target: string): string {
  return inside(dirname(target), basename(target));
}

/**
 * True when `name` (a file name, not a path) is a day11 temporary name.
 *
 * @example
 * ```ts
 * TempName.is('.day11-tmp-nopid'); // true: still ours, even without an owner
 * TempName.is('build-0123456789ab'); // false
 * ```
 */
export function is(name: string): boolean {
  return name.startsWith(PREFIX);
}

/**
 * The owner's pid in a temporary name, or `undefined` for any other name
 * (or one whose pid is not a positive integer).
 *
 * @example
 * ```ts
 * TempName.ownerPid('.day11-tmp-4242-9f3a0c1d-run'); // 4242
 * TempName.ownerPid('build-0123456789ab'); // undefined
 * ```
 */
export function ownerPid(name: string): number | undefined {
  const pid = Number(PATTERN.exec(name)?.[1]);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}
