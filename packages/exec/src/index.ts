/**
 * `@day11/exec`: subprocess execution, the few syscalls Node lacks, and the
 * platform facts every day11 package shares (is a process alive, mountinfo,
 * temporary names, atomic writes), each implemented once.
 *
 * @example
 * ```ts
 * import { Atomic, Exec, Mountinfo, Proc, Sys, TempName } from '@day11/exec';
 * const { stdout } = await Exec.run('uname', ['-r']);
 * Sys.mknod('/tmp/x/.wh', Sys.S_IFCHR, 0, 0); // an overlayfs whiteout
 * await Atomic.writeFile('/tmp/x/config.json', '{}');
 * const mounted = await Mountinfo.under('/tmp/x');
 * const pid = TempName.ownerPid('.day11-tmp-4242-9f3a0c1d-run'); // 4242
 * if (pid !== undefined && (await Proc.ownerGone(pid, Date.now()))) console.log('leftover');
 * ```
 */
export * as Exec from './exec.js';
export * as Sys from './sys.js';
export * as Proc from './proc.js';
export * as Mountinfo from './mountinfo.js';
export * as TempName from './temp-name.js';
export * as Atomic from './atomic.js';
export { randomHex } from './random.js';
export { Semaphore, mapLimit } from './concurrency.js';
export { BufferPool } from './buffer-pool.js';
export { SmallFiles } from './small-files.js';
export { workerFile } from './worker-file.js';
export * as OverlayMarks from './overlay-marks.js';
export * as ExitHooks from './exit-hooks.js';
export * as Libdeflate from './libdeflate.js';
export type {
  OutputStream,
  RunOptions,
  RunResult,
  RunStreamedOptions,
  RunSyncOptions,
} from './exec.js';
export {
  CommandError,
  Day11Error,
  ExecCodes,
  ExecError,
  SysError,
  describeError,
  errnoCode,
  hintOf,
  isDay11Error,
  messageOf,
  type CodeOf,
  type CommandErrorDetails,
  type Day11ErrorOptions,
  type ExecCode,
} from './errors.js';
