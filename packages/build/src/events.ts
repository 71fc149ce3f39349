/**
 * What a build reports while it runs: a typed, discriminated union of
 * events, each with a timestamp. The CLI's live table, its plain lines and
 * its `--json` output are renderings of these; a program can log, count or
 * forward them.
 */

/** Where a step is. */
export type StepStatus =
  | 'queued'
  | 'running'
  | 'fetching'
  /** Another worker claimed the step (see `LayerPublisher.claim`): its layer is awaited. */
  | 'waiting'
  | 'cached'
  | 'fetched'
  | 'done'
  | 'failed'
  | 'skipped';

/** Fields every event has. */
export interface EventCommon {
  /** When it happened, ISO-8601 UTC with milliseconds. */
  time: string;
}

/** The base layer is ready. */
export interface BaseEvent extends EventCommon {
  type: 'base';
  /** The base's image name (`busybox-static:…`, `debian:12`, ...). */
  image: string;
  /** Its layer directory name, `build-xxxxxxxxxxxx`. */
  layer: string;
}

/** The plan is validated and hashed; steps are about to be scheduled. */
export interface PlanEvent extends EventCommon {
  type: 'plan';
  /** The plan file (or label). */
  file: string;
  steps: number;
}

/**
 * A step changed status. `failed` and `skipped` say with `recorded` whether
 * the outcome was committed to the cache (a verdict: the step's own exit
 * status, or a dependency's recorded failure) or not (interrupted, an
 * error of the machine: it will be tried again next time).
 */
export interface StepEvent extends EventCommon {
  type: 'step';
  id: string;
  status: StepStatus;
  /** The layer directory name, `build-xxxxxxxxxxxx`. */
  layer: string;
  /** The full layer hash. */
  hash: string;
  /** Seconds the step ran (or was fetched); 0 otherwise. */
  seconds: number;
  /** The step's exit status, when it ran (or its cached failure did). */
  exitCode?: number;
  /** For `skipped` (and cached dependents' failures): the id of the step whose failure this is. */
  failedDep?: string;
  /** Why it failed, when it did not simply exit non-zero (timeout, abort, an error). */
  reason?: string;
  /** For `failed`/`skipped`: whether the outcome is in the cache. */
  recorded?: boolean;
  /** For `failed`: the layer's log, and its last lines. */
  log?: string;
  logTail?: string[];
  /** For `fetched`/`fetching`: the source's name; for `waiting`: the publisher holding the claim. */
  source?: string;
}

/** A step's image was exported (pipelined: as soon as the step was done). */
export interface ExportEvent extends EventCommon {
  type: 'export';
  id: string;
  tag: string;
  layout: string;
  status: 'done' | 'failed';
  /** The manifest digest, when done. */
  digest?: string;
  /** Layers in the image (after any squash), when done. */
  layers?: number;
  seconds: number;
  reason?: string;
}

/** A layer was published (or publishing it failed; the build goes on). */
export interface PublishEvent extends EventCommon {
  type: 'publish';
  id: string;
  hash: string;
  publisher: string;
  status: 'done' | 'failed';
  reason?: string;
}

/** A source was asked which layers it has. */
export interface LookupEvent extends EventCommon {
  type: 'lookup';
  source: string;
  asked: number;
  found: number;
  seconds: number;
  /** When the source failed: the build goes on without it. */
  reason?: string;
}

/** The end of a build. */
export interface SummaryEvent extends EventCommon {
  type: 'summary';
  built: number;
  cached: number;
  fetched: number;
  failed: number;
  skipped: number;
  /** Disk usage of the layers built in this run. */
  bytes: number;
  seconds: number;
  /** Tags exported (when a layout was given). */
  exported: string[];
  /** Exports that failed: tag and reason. Every other tag of an ok step is in `exported`. */
  exportFailures: { tag: string; reason: string }[];
}

/** Every event a build emits. */
export type BuildEvent =
  BaseEvent | PlanEvent | StepEvent | ExportEvent | PublishEvent | LookupEvent | SummaryEvent;

/** The current time as events carry it. */
export function now(): string {
  return new Date().toISOString();
}
