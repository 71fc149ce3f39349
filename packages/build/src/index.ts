/**
 * `@day11/build`: the DAG builder as a library. A plan (a base and steps
 * with dependencies) becomes layers in a cache: found, fetched from a
 * source, or run in a sandbox and committed; each ok step can be exported
 * as an OCI image as soon as it is ready.
 *
 * @example
 * ```ts
 * import { createBuilder, loadPlan } from '@day11/build';
 *
 * const builder = createBuilder({ osDir: '/var/cache/day11', jobs: 4, layout: '/srv/oci' });
 * try {
 *   const { ok, summary } = await builder.build(await loadPlan('plan.json'), {
 *     onEvent: (event) => console.log(JSON.stringify(event)),
 *   });
 *   console.log(ok, summary, builder.stats());
 * } finally {
 *   await builder.close();
 * }
 * ```
 */
export {
  createBuilder,
  type Builder,
  type BuilderOptions,
  type BuildOptions,
  type BuildResult,
  type StepOutcome,
} from './builder.js';
export type { LayerPublisher, LayerSource } from './seam.js';
export {
  loadPlan,
  parsePlan,
  argvOf,
  userOf,
  planSchema,
  type Plan,
  type Step,
  type StepInput,
  type BaseSource,
} from './plan.js';
export { PlanGraph, stepKey } from './graph.js';
export { targetsOf, restrictTo, shardOf } from './shard.js';
export { imageOfStep, type StepImage, type StepLike } from './image.js';
export { deriveTag, isValidTag, MAX_TAG_LENGTH } from './tags.js';
export { DEFAULT_PIDS, type Resources } from './resources.js';
export { DEFAULT_SECURITY, type Security } from './security.js';
export { MAX_ARG_STRLEN, MAX_ARGS_TOTAL } from './limits.js';
export { resolveBase, describeBase, type ImageResolver, type ResolveBaseOptions } from './base.js';
export { busyboxImageName, makeBusyboxRootfs, BUSYBOX } from './busybox.js';
export {
  runnerSandbox,
  type Sandbox,
  type SandboxResult,
  type SandboxRunOptions,
  type StepProcess,
  type RunnerSandboxOptions,
} from './sandbox.js';
export { readStats, STATS_FILE, type CacheStats, type StoredStats } from './stats.js';
export type {
  BuildEvent,
  BaseEvent,
  PlanEvent,
  StepEvent,
  StepStatus,
  ExportEvent,
  PublishEvent,
  LookupEvent,
  SummaryEvent,
} from './events.js';
export { BuildCodes, BuildError, type BuildCode } from './errors.js';
