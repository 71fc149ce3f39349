/**
 * `@day11/exec`: subprocess execution and the few syscalls Node lacks.
 *
 * @example
 * ```ts
 * import { Exec, Sys } from '@day11/exec';
 * const { stdout } = await Exec.run('uname', ['-r']);
 * Sys.mknod('/tmp/x/.wh', Sys.S_IFCHR, 0, 0); // an overlayfs whiteout
 * ```
 */
export * as Exec from './exec.js';
export * as Sys from './sys.js';
export { randomHex } from './random.js';
export { Semaphore, mapLimit } from './concurrency.js';
export type { OutputStream, RunOptions, RunResult, RunSyncOptions } from './exec.js';
export {
  CommandError,
  Day11Error,
  ExecCodes,
  SysError,
  isDay11Error,
  messageOf,
  errnoCode,
  type CommandErrorDetails,
  type Day11ErrorOptions,
} from './errors.js';
