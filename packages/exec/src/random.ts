/**
 * Random tags for temporary names and ids. Names are made on every step
 * (run directories, container ids, leases, temp files); one `randomBytes`
 * call each costs tens of microseconds once the CPU caches are cold after a
 * container ran, so bytes are drawn from a pool refilled 4 KiB at a time.
 */
import { randomFillSync } from 'node:crypto';

const pool = Buffer.alloc(4096);
let used = pool.length;

/**
 * `bytes` cryptographically random bytes as lowercase hex (`2 * bytes` characters).
 *
 * @example
 * ```ts
 * randomHex(4); // '9f3a0c1e'
 * ```
 */
export function randomHex(bytes: number): string {
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > pool.length) {
    throw new RangeError(`randomHex takes 1 to ${pool.length} bytes, got ${bytes}`);
  }
  if (used + bytes > pool.length) {
    randomFillSync(pool);
    used = 0;
  }
  const hex = pool.toString('hex', used, used + bytes);
  used += bytes;
  return hex;
}
