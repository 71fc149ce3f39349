/**
 * Run a container with runc or crun, and clean up whatever happens. By
 * concern: ids (`runc-ids.ts`), the runtime as a command (`runc-command.ts`),
 * running (`runc-run.ts`), state/list/delete/sweep (`runc-admin.ts`) and
 * cgroups (`runc-cgroups.ts`).
 *
 * {@link run} deletes a stale container of the same id, runs `runc run` in the
 * foreground, streams the container's output, stops it on abort or timeout
 * with `runc kill` (TERM, then KILL), and always deletes it. The container's
 * command exiting non-zero (or being killed) is a result; a runtime that could
 * not start the container is a {@link ContainerError}.
 *
 * @example
 * ```ts
 * import { OciSpec, Runc } from '@day11/container';
 * const id = Runc.newId();
 * await OciSpec.write(bundle, OciSpec.instantiate(template, { rootfs, cgroupsPath: id }));
 * const r = await Runc.run({ bundle, id, runtime: 'crun', timeoutMs: 3_600_000, logFile });
 * if (r.exitCode !== 0) console.log('build failed', r);
 * ```
 */
export { ID_PATTERN, assertId, newId } from './runc-ids.js';
export { stateDir, type Runtime, type RuntimeOptions } from './runc-command.js';
export { DEFAULT_KILL_GRACE_MS, run, type RunOptions, type RunResult } from './runc-run.js';
export { DEFAULT_LOG_CAP, MIN_LOG_CAP } from './output-log.js';
export {
  killAndDeleteSync,
  list,
  remove as delete,
  state,
  sweep,
  sweepCgroups,
  type ContainerState,
  type KillAndDeleteOptions,
  type SweepOptions,
} from './runc-admin.js';
export { prepareCrunCgroups, type PrepareCgroupsOptions } from './runc-cgroups.js';
