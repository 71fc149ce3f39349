/**
 * Container ids: valid ones, fresh ones that carry this process's pid, and
 * the ids this process is running now (which a sweep must not touch).
 */
import { randomHex } from '@day11/exec';
import { ContainerCodes, ContainerError } from './errors.js';

/** Valid container ids: what runc accepts, at most 128 characters. */
export const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

let counter = 0;
/** Ids of the containers this process is running now (never swept). */
export const active = new Set<string>();
/**
 * Ids made by {@link newId} and not run yet. No stale container can have
 * one (the pid is ours, the counter never repeats, plus 24 random bits), so
 * {@link run} skips its delete-before for them: one runtime process less.
 */
export const fresh = new Set<string>();
/** Bound on {@link fresh}, for callers that make ids they never run. */
const FRESH_MAX = 10_000;

/**
 * A container id unique to this process and call: `<prefix>-<pid>-<n>-<random>`.
 * The pid lets {@link sweep} find containers whose owner died.
 *
 * @example
 * ```ts
 * Runc.newId(); // 'day11-4242-1-9f3a0c'
 * Runc.newId('build'); // 'build-4242-2-77e01b'
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_ID` when the prefix would make an invalid id.
 */
export function newId(prefix = 'day11'): string {
  counter += 1;
  const id = assertId(`${prefix}-${process.pid}-${counter}-${randomHex(3)}`);
  if (fresh.size >= FRESH_MAX) fresh.clear(); // forgetting only costs a delete
  fresh.add(id);
  return id;
}

/**
 * Returns `id` when it is a valid container id (see {@link ID_PATTERN}).
 *
 * @example
 * ```ts
 * Runc.assertId('day11-1-2-abc'); // ok
 * Runc.assertId('../etc'); // throws CONTAINER_BAD_ID
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_ID`.
 */
export function assertId(id: string): string {
  if (!ID_PATTERN.test(id)) {
    throw new ContainerError(ContainerCodes.BAD_ID, `Invalid container id ${JSON.stringify(id)}`, {
      hint: 'Use letters, digits, "_", "." and "-", starting with a letter or digit, at most 128 characters (Runc.newId() makes one)',
    });
  }
  return id;
}
