/**
 * `@day11/cli`: the `day11` command. Its building blocks are exported for
 * programs that want `day11 build` without a subprocess.
 *
 * @example
 * ```ts
 * import { build, loadPlan, makeReporter } from '@day11/cli';
 * const plan = await loadPlan('plan.json');
 * const { summary } = await build({ plan, osDir: '/var/cache/day11', jobs: 4, reporter: makeReporter({ json: true }) });
 * ```
 */
export { build, type BuildOptions, type BuildResult, type StepOutcome } from './build.js';
export {
  loadPlan,
  parsePlan,
  stepHashes,
  closure,
  PlanSchema,
  type Plan,
  type Step,
  type BaseSource,
} from './plan.js';
export {
  makeReporter,
  type BuildEvent,
  type Reporter,
  type StepEvent,
  type SummaryEvent,
} from './progress.js';
export { CliCodes, CliError, type CliCode } from './errors.js';
