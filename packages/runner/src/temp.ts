/**
 * Names of a run's temporary entries.
 *
 * A run works in `{tmpDir}/.day11-tmp-<pid>-<hex>-run/` and hands its upper
 * over as `{tmpDir}/.day11-tmp-<pid>-<hex>-upper`: `TempName`s of
 * `@day11/exec`, so `Recover.sweep` of the cache also recognises them (it
 * never removes one with a mount inside), and {@link ../recover.ts} finds a
 * dead process's runs by the pid in the name.
 */
import { join } from 'node:path';
import { randomHex, TempName } from '@day11/exec';

/** The two paths of one run in `tmpDir`, sharing one random tag. */
export interface RunPaths {
  /** `{tmpDir}/.day11-tmp-<pid>-<hex>-run`: upper/, work/, merged/, config.json. */
  runDir: string;
  /** `{tmpDir}/.day11-tmp-<pid>-<hex>-upper`: where the upper goes when handed over. */
  handover: string;
}

/**
 * Fresh paths for a run of this process in `tmpDir`.
 *
 * @example
 * ```ts
 * runPaths('/var/cache/day11'); // { runDir: '/var/cache/day11/.day11-tmp-4242-9f3a0c1d-run', handover: '...-upper' }
 * ```
 */
export function runPaths(tmpDir: string): RunPaths {
  const tag = randomHex(4);
  return {
    runDir: join(tmpDir, TempName.make('run', tag)),
    handover: join(tmpDir, TempName.make('upper', tag)),
  };
}
