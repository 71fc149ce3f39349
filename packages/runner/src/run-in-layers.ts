/**
 * `runInLayers`: one run, without a runner to manage — the one-shot
 * convenience over {@link createRunner}. Consecutive calls of a process
 * share a runner (its leases and spare directories) until none has run for
 * `lingerMs`, so a loop of calls costs what a runner's runs cost.
 */
import { dirname, resolve } from 'node:path';
import { withShared } from './guard.js';
import {
  check,
  DEFAULT_LINGER_MS,
  type RunInLayersOptions,
  type RunInLayersResult,
} from './run.js';
import { createRunner, type Runner } from './runner.js';

/**
 * Runs the container of `spec` over an overlay of `buildDirs` (topmost
 * first) on `base`, with a fresh upper, and hands the upper to the caller;
 * `Runner.run` describes the steps and what is guaranteed. `buildDirs` must
 * be the whole stack the command should see: every layer it was built on.
 *
 * @example
 * ```ts
 * import { Commit } from '@day11/layer';
 * import { OciSpec } from '@day11/container';
 * import { runInLayers } from '@day11/runner';
 *
 * const spec = OciSpec.template(OciSpec.make({ args: ['sh', '-c', 'make install'], cwd: '/src' }));
 * const { run, upper, timing } = await runInLayers({ base, buildDirs: [depB.dir, depA.dir], spec });
 * if (run.exitCode === 0) {
 *   await Commit.commit({ osDir, hash, upper, meta: { exit_status: 0, timing, ... } });
 * } else {
 *   await rm(upper, { recursive: true, force: true });
 * }
 * ```
 * @throws as `Runner.run`.
 */
export async function runInLayers(opts: RunInLayersOptions): Promise<RunInLayersResult> {
  const o = check(opts);
  const { lingerMs: _lingerMs, ...options } = opts;
  const osDir = dirname(resolve(o.base.dir));
  const key = `${osDir}\0${o.tmpDir}\0${o.runtime}\0${o.lingerMs}`;
  const make = (): Runner => createRunner({ osDir, tmpDir: o.tmpDir, runtime: o.runtime });
  return withShared(key, o.lingerMs, make, (runner) => runner.run(options));
}

/**
 * Ends the lingering of `runInLayers` now: closes the runners its calls
 * share once their runs are done, so their leases are released and spare
 * directories removed (e.g. before `Gc.prune` in the same process).
 *
 * @example
 * ```ts
 * await releaseIdle();
 * await Gc.prune({ osDir, keepBytes: 50e9 }); // the layers just used are collectable again
 * ```
 */
export { releaseShared as releaseIdle } from './guard.js';

export { DEFAULT_LINGER_MS };
