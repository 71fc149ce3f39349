/** Compression slots; the semaphore and bounded map live in `@day11/exec`. */
import { availableParallelism } from 'node:os';
import { Semaphore } from '@day11/exec';
import { OciExportCodes, OciExportError } from './errors.js';

export { Semaphore, mapLimit } from '@day11/exec';

/**
 * The compression slots for `concurrency` cores: one more than the cores, so
 * a queued chunk is ready whenever a core finishes one (the main thread,
 * busy walking the tree, would otherwise leave that core idle until it looks).
 *
 * @example
 * ```ts
 * compressionSlots(2).size; // 3
 * ```
 */
export function compressionSlots(concurrency: number | undefined): Semaphore {
  return new Semaphore(concurrencyOf(concurrency) + 1);
}

/**
 * Validates a `concurrency` option; the default is the number of cores.
 *
 * @example
 * ```ts
 * concurrencyOf(undefined); // os.availableParallelism()
 * ```
 */
export function concurrencyOf(value: number | undefined): number {
  if (value === undefined) return availableParallelism();
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new OciExportError(OciExportCodes.BAD_ARGUMENT, `Invalid concurrency ${value}`, {
      hint: 'Pass a positive integer (the default is the number of cores)',
    });
  }
  return value;
}
