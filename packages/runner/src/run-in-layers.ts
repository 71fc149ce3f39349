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
 * Runs the container of `spec` over an overlay of a stack of layers on
 * `base`, with a fresh upper, and hands the upper to the caller;
 * `Runner.run` describes the steps and what is guaranteed. The stack is
 * `deps` (the layers the command builds on) with every layer they were built
 * on, as recorded; or `buildDirs`, the exact stack, topmost first, which is
 * checked against those records (a list lacking a layer one of them was
 * built on is refused, naming both).
 *
 * @example
 * ```ts
 * import { Commit } from '@day11/layer';
 * import { OciSpec } from '@day11/container';
 * import { runInLayers } from '@day11/runner';
 *
 * const spec = OciSpec.make({ args: ['sh', '-c', 'make install'], cwd: '/src' });
 * const { run, upper, timing, parentHashes } = await runInLayers({ base, deps: [libDir], spec });
 * if (run.exitCode === 0) {
 *   await Commit.commit({ osDir, hash, upper, meta: { exit_status: 0, parent_hashes: parentHashes, timing, ... } });
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
