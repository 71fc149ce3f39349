/**
 * `@day11/cli`: the `day11` command. It composes the libraries and renders
 * their events; programs that want a builder use `@day11/build` directly.
 *
 * @example
 * ```ts
 * import { createBuilder, loadPlan } from '@day11/build';
 * import { makeReporter } from '@day11/cli';
 * const reporter = makeReporter({ json: false });
 * const builder = createBuilder({ osDir: '/var/cache/day11', jobs: 4 });
 * await builder.build(await loadPlan('plan.json'), { onEvent: (e) => reporter.emit(e) });
 * reporter.close();
 * await builder.close();
 * ```
 */
export {
  makeReporter,
  formatSummary,
  formatBytes,
  type NoteEvent,
  type ReportEvent,
  type Reporter,
  type OutputStream,
} from './progress.js';
export { CliCodes, CliError, type CliCode } from './errors.js';
