/**
 * `@day11/runner`: a command in a runc/crun container over an overlayfs stack
 * of layers, with guaranteed cleanup. The one place where `@day11/layer` and
 * `@day11/container` meet.
 *
 * @example
 * ```ts
 * import { OciSpec } from '@day11/container';
 * import { Commit, Import } from '@day11/layer';
 * import { createRunner, recover } from '@day11/runner';
 *
 * await recover({ osDir }); // what a killed process left
 * const base = await Import.fromDirectory({ osDir, dir: '/srv/rootfs', image: 'rootfs:1' });
 * const spec = OciSpec.template(OciSpec.make({ args: ['sh', '-c', 'echo hi > /hello'] }));
 * const runner = createRunner({ osDir });
 * try {
 *   const { run, upper, timing } = await runner.run({ base, buildDirs: [], spec });
 *   if (run.exitCode === 0) await Commit.commit({ osDir, hash, upper, meta: { ...meta, timing } });
 * } finally {
 *   await runner.close();
 * }
 * ```
 */
export { createRunner, type Runner, type RunnerOptions, type RunOptions } from './runner.js';
export { runInLayers, releaseIdle, DEFAULT_LINGER_MS } from './run-in-layers.js';
export {
  CONTAINER_PREFIX,
  type PrepUpperContext,
  type RunInLayersOptions,
  type RunInLayersResult,
} from './run.js';
export { recover, type RecoverOptions, type RecoverReport } from './recover.js';
export { hostsContent } from './hosts.js';
export { PHASES, type Phase, type PhaseTiming } from './timing.js';
export { RunnerCodes, RunnerError, type RunnerCode } from './errors.js';
