/**
 * `createBuilder`: the DAG builder (OBuilder's BUILDER). A builder is made
 * from a cache directory and a sandbox; `build(plan)` brings every step's
 * layer into the cache — found there, fetched from a source, or run — and
 * reports each step as a typed event.
 *
 * For each step, once its dependencies are settled:
 * 1. a dependency failed: the step is not run; when every such failure is a
 *    recorded verdict, an empty layer with `failed_dep` records it too, else
 *    nothing is recorded (it will be tried again next time);
 * 2. its layer is in the cache (full hash checked): a hit;
 * 3. else, under the layer's lock and after a re-check (another process may
 *    have made it meanwhile): fetched from a source that has it, or run in the
 *    sandbox and committed with its exit status and log, then published;
 * 4. an ok step's image is exported into the layout as soon as it is ready.
 * An interrupted step (timeout, abort) and any failure of the machine are
 * never recorded, and neither is anything downstream of them.
 */
import { utimesSync } from 'node:fs';
import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { Runc } from '@day11/container';
import type { OciExportCodes } from '@day11/oci-export';
import { isDay11Error, mapLimit, messageOf, Semaphore, TempName } from '@day11/exec';
import {
  CacheDir,
  Commit,
  Gc,
  InUse,
  LastUsed,
  LayerCodes,
  LayerDir,
  LayerMeta,
  LayerSymlinks,
  Lock,
  type Base,
  type LayerMetaRecord,
} from '@day11/layer';
import { resolveBase, type ImageResolver } from './base.js';
import { BuildCodes, BuildError } from './errors.js';
import { now, type BuildEvent, type StepEvent, type SummaryEvent } from './events.js';
import { PlanGraph } from './graph.js';
import { FreeSpaceWatch, outOfSpace } from './disk.js';
import { imageOfStep } from './image.js';
import { argvOf, userOf, type Plan, type Step } from './plan.js';
import { runnerSandbox, type Sandbox, type StepProcess } from './sandbox.js';
import type { LayerPublisher, LayerSource } from './seam.js';
import { addStats, zeroStats, type CacheStats } from './stats.js';

/**
 * Options of {@link createBuilder}.
 *
 * @example
 * ```ts
 * const options: BuilderOptions = { osDir: '/var/cache/day11', jobs: 4, runtime: 'crun', layout: '/srv/oci' };
 * ```
 */
export interface BuilderOptions {
  /** The layer cache directory (created when missing). */
  osDir: string;
  /** The runtime of the default sandbox: `runc` (default), `crun`, or a path. */
  runtime?: Runc.Runtime | undefined;
  /** Runs the steps (default: containers through `@day11/runner`). The builder closes it. */
  sandbox?: Sandbox | undefined;
  /**
   * Steps run at once (default 1): containers running at once. With the
   * default sandbox, as many more steps are prepared (stack leased, overlay
   * mounted) or finished meanwhile, so the next container starts as soon as
   * one ends.
   */
  jobs?: number | undefined;
  /** Layers fetched from sources at once (default 4). */
  fetchJobs?: number | undefined;
  /** Export one image per ok step into this OCI image layout, tagged with the step's tag. */
  layout?: string | undefined;
  /**
   * With `layout`: at most this many layers per image (`DOCKER_MAX_LAYERS`
   * of `@day11/oci-export` is Docker's 125). A deeper stack keeps its layers
   * most shared in the layout as blobs of their own and merges contiguous
   * runs of the others; the image unpacks the same.
   */
  maxLayers?: number | undefined;
  /** With `layout`: gzip level 0–9 of the layer blobs (default 6). */
  gzipLevel?: number | undefined;
  /** Stop a step after this long: it is not recorded. */
  timeoutMs?: number | undefined;
  /**
   * Most bytes of a step's output kept in its `layer.log` (default
   * `Runc.DEFAULT_LOG_CAP` of `@day11/container`, 64 MiB; `Infinity`: all of
   * it). Past it the log keeps the first and the last half, with a marker
   * saying how much was left out; the output is streamed either way, and the
   * step's result is its exit status alone.
   */
  logCap?: number | undefined;
  /** Run again the steps whose recorded outcome is a failure, instead of reusing it. */
  retryFailed?: boolean | undefined;
  /** Asked, before building, for the layers not in the cache (see {@link LayerSource}). */
  sources?: readonly LayerSource[] | undefined;
  /** Given every layer this builder commits (see {@link LayerPublisher}). */
  publishers?: readonly LayerPublisher[] | undefined;
  /** Pulls bases named `docker://…` or `oci:…` (e.g. from `@day11/registry`). */
  resolveImage?: ImageResolver | undefined;
}

/** Options of {@link Builder.build}. */
export interface BuildOptions {
  /** Aborting stops the build: running steps are stopped (not recorded), queued ones not started. */
  signal?: AbortSignal | undefined;
  /** Called with every event, in order. A listener that throws is ignored. */
  onEvent?: ((event: BuildEvent) => void) | undefined;
}

/** The outcome of one step. */
export interface StepOutcome {
  id: string;
  /** The full layer hash. */
  hash: string;
  /** The layer directory. */
  dir: string;
  /** `done`: built now; `cached`: found; `fetched`: from a source; `failed`; `skipped`: a dependency failed. */
  status: 'cached' | 'fetched' | 'done' | 'failed' | 'skipped';
  /** For `failed`/`skipped`: whether the outcome is recorded in the cache. */
  recorded: boolean;
  /** The step's exit status when it ran (now or when recorded). */
  exitCode?: number | undefined;
  /** For `failed`/`skipped`: the step whose failure this is (the step itself when it failed). */
  failedDep?: string | undefined;
  /** Why it failed when it did not exit non-zero. */
  reason?: string | undefined;
}

/** What {@link Builder.build} did. */
export interface BuildResult {
  /** True when every step is ok (built, cached or fetched) and every export was written. */
  ok: boolean;
  base: Base;
  /** One outcome per step, in the plan's (topological) order. */
  steps: StepOutcome[];
  summary: SummaryEvent;
}

/**
 * A builder over one cache.
 *
 * @example
 * ```ts
 * const builder = createBuilder({ osDir: '/var/cache/day11', jobs: 4 });
 * try {
 *   const { ok, summary } = await builder.build(await loadPlan('plan.json'));
 *   console.log(ok, summary.built, builder.stats());
 * } finally {
 *   await builder.close();
 * }
 * ```
 */
export interface Builder {
  /** The cache directory. */
  readonly osDir: string;
  /** Builds every step of `plan`. Resolves even when steps fail: see `ok` and the outcomes. */
  build(plan: Plan, options?: BuildOptions): Promise<BuildResult>;
  /** Cache hits and misses of this builder's builds so far (the cache's totals: `readStats`). */
  stats(): CacheStats;
  /** Releases the sandbox. Idempotent; `build` afterwards rejects. */
  close(): Promise<void>;
}

/**
 * Makes a builder over cache `osDir`.
 *
 * @example
 * ```ts
 * import { createBuilder, parsePlan } from '@day11/build';
 *
 * const builder = createBuilder({ osDir: '/var/cache/day11', jobs: 2 });
 * const plan = parsePlan({ base: 'busybox', steps: [{ id: 'hi', run: 'echo hi > /hi' }] }, 'inline');
 * const { ok } = await builder.build(plan, { onEvent: (e) => console.log(JSON.stringify(e)) });
 * await builder.close();
 * ```
 * @throws {BuildError} `BUILD_BAD_ARGUMENT` for malformed options.
 */
export function createBuilder(options: BuilderOptions): Builder {
  const o = checkOptions(options);
  const sandbox = options.sandbox ?? runnerSandbox({ osDir: o.osDir, runtime: options.runtime });
  const totals = zeroStats();
  let closed = false;
  return {
    osDir: o.osDir,
    async build(plan, buildOptions = {}) {
      if (closed) {
        throw new BuildError(BuildCodes.CLOSED, 'This builder was closed', {
          hint: 'Make a new one with createBuilder',
        });
      }
      const run = new BuildRun(o, sandbox, plan, buildOptions);
      try {
        return await run.execute();
      } finally {
        for (const key of Object.keys(totals) as (keyof CacheStats)[]) {
          totals[key] += run.counters[key];
        }
      }
    },
    stats: () => ({ ...totals }),
    async close() {
      if (closed) return;
      closed = true;
      await sandbox.close();
    },
  };
}

export type { LayerPublisher, LayerSource } from './seam.js';

/** Options after validation. */
interface Checked {
  osDir: string;
  jobs: number;
  fetchJobs: number;
  layout: string | undefined;
  maxLayers: number | undefined;
  gzipLevel: number | undefined;
  timeoutMs: number | undefined;
  logCap: number | undefined;
  retryFailed: boolean;
  sources: readonly LayerSource[];
  publishers: readonly LayerPublisher[];
  resolveImage: ImageResolver | undefined;
}

function checkOptions(options: BuilderOptions): Checked {
  const positive = (name: string, value: number | undefined, def: number): number => {
    if (value === undefined) return def;
    if (!Number.isSafeInteger(value) || value < 1) {
      throw new BuildError(
        BuildCodes.BAD_ARGUMENT,
        `Invalid builder option ${name}: ${value} is not a positive integer`,
        { hint: `Pass a whole number of at least 1 (default ${def})` },
      );
    }
    return value;
  };
  if (typeof options?.osDir !== 'string' || options.osDir === '') {
    throw new BuildError(BuildCodes.BAD_ARGUMENT, 'Invalid builder option osDir: not a path', {
      hint: 'Pass the layer cache directory, e.g. /var/cache/day11',
    });
  }
  if (
    options.gzipLevel !== undefined &&
    !(Number.isInteger(options.gzipLevel) && options.gzipLevel >= 0 && options.gzipLevel <= 9)
  ) {
    throw new BuildError(
      BuildCodes.BAD_ARGUMENT,
      `Invalid builder option gzipLevel: ${options.gzipLevel}`,
      { hint: 'Pass a whole number from 0 (store) to 9 (smallest); the default is 6' },
    );
  }
  if (
    options.maxLayers !== undefined &&
    !(Number.isSafeInteger(options.maxLayers) && options.maxLayers >= 2)
  ) {
    throw new BuildError(
      BuildCodes.BAD_ARGUMENT,
      `Invalid builder option maxLayers: ${options.maxLayers}`,
      {
        hint: 'Pass a whole number of layers of at least 2 (Docker runs at most 125), or leave it out',
      },
    );
  }
  if (options.timeoutMs !== undefined && !(options.timeoutMs > 0)) {
    throw new BuildError(
      BuildCodes.BAD_ARGUMENT,
      `Invalid builder option timeoutMs: ${options.timeoutMs}`,
      { hint: 'Pass a positive number of milliseconds, or leave it out' },
    );
  }
  const cap = options.logCap;
  if (
    cap !== undefined &&
    !(cap === Infinity || (Number.isSafeInteger(cap) && cap >= Runc.MIN_LOG_CAP))
  ) {
    throw new BuildError(BuildCodes.BAD_ARGUMENT, `Invalid builder option logCap: ${cap}`, {
      hint: `Pass a whole number of bytes of at least ${Runc.MIN_LOG_CAP}, or Infinity to keep all output`,
    });
  }
  return {
    osDir: options.osDir,
    jobs: positive('jobs', options.jobs, 1),
    fetchJobs: positive('fetchJobs', options.fetchJobs, 4),
    layout: options.layout,
    maxLayers: options.maxLayers,
    gzipLevel: options.gzipLevel,
    timeoutMs: options.timeoutMs,
    logCap: cap,
    retryFailed: options.retryFailed === true,
    sources: options.sources ?? [],
    publishers: options.publishers ?? [],
    resolveImage: options.resolveImage,
  };
}

/** How many steps are checked against the cache at once (a file read each). */
const CHECK_CONCURRENCY = 32;
/** How many steps take their layer's lock before a slot is free for them. */
const LOCK_AHEAD = 32;
/** Lines of a failed step's log shown in its event. */
const LOG_TAIL_LINES = 8;

const isOk = (o: StepOutcome): boolean =>
  o.status === 'done' || o.status === 'cached' || o.status === 'fetched';

/** One call of `build`: its state, from the plan to the summary. */
class BuildRun {
  readonly counters = zeroStats();
  private readonly outcomes = new Map<string, StepOutcome>();
  private readonly runSlots: Semaphore;
  /** How many containers run at once, for a sandbox that takes the slot. */
  private readonly containerSlots: Semaphore | undefined;
  private readonly fetchSlots: Semaphore;
  private readonly lockSlots = new Semaphore(LOCK_AHEAD);
  private readonly remote = new Map<string, LayerSource>();
  private readonly background = new Set<Promise<void>>();
  /** One layer blob compressed ahead at a time (it uses every core). */
  private readonly blobSlot = new Semaphore(1);
  /** Leases on the layers this build made or found for its exports, by directory: see {@link pin}. */
  private readonly pins = new Map<string, InUse.Lease>();
  private exportChain: Promise<void> = Promise.resolve();
  /** Steps whose export is queued: a layer made again (collected meanwhile) is not exported twice. */
  private readonly exportQueued = new Set<string>();
  private readonly exported: string[] = [];
  private readonly exportFailures: { tag: string; reason: string }[] = [];
  private bytes = 0;
  private graph!: PlanGraph;
  /** Layer names and directories by step id (asked for several times per step). */
  private readonly layers = new Map<string, { name: string; dir: string }>();
  private base!: Base;
  private readonly signal: AbortSignal | undefined;

  constructor(
    private readonly o: Checked,
    private readonly sandbox: Sandbox,
    private readonly plan: Plan,
    private readonly options: BuildOptions,
  ) {
    // A sandbox that takes the container slot is given `jobs` more steps to
    // prepare and commit while `jobs` containers run: on two CPUs the
    // builder's own work per step (mount, unmount, commit) would otherwise
    // leave a CPU idle while a step waits for it.
    const gated = sandbox.takesContainerSlot === true;
    this.runSlots = new Semaphore(gated ? o.jobs * 2 : o.jobs);
    this.containerSlots = gated ? new Semaphore(o.jobs) : undefined;
    this.fetchSlots = new Semaphore(o.fetchJobs);
    this.signal = options.signal;
  }

  async execute(): Promise<BuildResult> {
    const started = performance.now();
    await CacheDir.ensure(this.o.osDir);
    const baseLease = await this.leaseBase();
    try {
      return await this.buildOn(started);
    } finally {
      await baseLease.release();
      for (const pin of this.pins.values()) {
        try {
          pin.releaseSync();
        } catch {
          // Counts for nothing once this process is gone (Recover.sweep removes it):
          // not a reason to fail a build that is done, nor to keep the other leases.
        }
      }
      this.pins.clear();
    }
  }

  /**
   * With a layout, leases the layer `dir` until the build ends (unless it
   * already is): a layer whose image will be exported stays until then,
   * whatever a concurrent GC does (an export once found one gone five times
   * running). False when the layer is not there (collected since it was
   * seen). Safe under the layer's own lock: the lease is then decided at once
   * (the lock is reentrant). Without a layout nothing is leased: a run leases
   * its lowers itself, and makes a collected one again first. A lease costs
   * two new inodes, which a cached step otherwise does not make.
   */
  private async pin(dir: string): Promise<boolean> {
    if (this.o.layout === undefined || this.pins.has(dir)) return true;
    try {
      const lease = await InUse.acquire({ osDir: this.o.osDir, dirs: [dir], touch: false });
      this.pins.set(dir, lease);
      return true;
    } catch (err) {
      // Not leased (a full disk, a lock held too long): the export still
      // leases the stack itself, and makes a collected layer again.
      return !collected(err);
    }
  }

  /**
   * Resolves the base and leases it for the whole build: a concurrent GC
   * may not collect it between steps (nothing rebuilds a base). Collected
   * between its import and the lease, it is resolved (imported) again.
   */
  private async leaseBase(): Promise<InUse.Lease> {
    for (let attempt = 1; ; attempt++) {
      this.base = await resolveBase({
        source: this.plan.base,
        osDir: this.o.osDir,
        resolveImage: this.o.resolveImage,
        signal: this.signal,
      });
      try {
        return await InUse.acquire({ osDir: this.o.osDir, dirs: [this.base.dir] });
      } catch (err) {
        if (!collected(err) || attempt >= RESTORE_ATTEMPTS) throw err;
      }
    }
  }

  private async buildOn(started: number): Promise<BuildResult> {
    this.emit({ type: 'base', image: this.base.image, layer: LayerDir.name(this.base.hash) });
    this.graph = new PlanGraph(this.plan, this.base.hash);
    this.emit({ type: 'plan', file: this.plan.file, steps: this.plan.steps.length });
    for (const step of this.plan.steps) this.report(step, 'queued');
    await this.lookup();
    await this.schedule();
    await this.drainBackground();
    await addStats(this.o.osDir, this.counters);
    const summary: SummaryEvent = {
      ...this.summary((performance.now() - started) / 1000),
      time: now(),
    };
    this.emit(summary);
    const steps = this.plan.steps.map((s) => this.outcomes.get(s.id)!);
    const ok = steps.every(isOk) && this.exportFailures.length === 0;
    return { ok, base: this.base, steps, summary };
  }

  /**
   * Waits for the exports and background jobs, including those queued while
   * waiting (an export that finds a layer collected makes it again, which
   * publishes it): nothing of the build may still run once it returned.
   */
  private async drainBackground(): Promise<void> {
    for (;;) {
      const chain = this.exportChain;
      await chain;
      await Promise.all(this.background);
      if (chain === this.exportChain && this.background.size === 0) return;
    }
  }

  // ------------------------------------------------------------ events

  private emit(event: DistributiveOmit<BuildEvent, 'time'>): void {
    try {
      this.options.onEvent?.({ ...event, time: now() });
    } catch {
      // A listener's bug must not break the build (or leave it half-done).
    }
  }

  private report(
    step: Step,
    status: StepEvent['status'],
    extra: Partial<Omit<StepEvent, 'type' | 'id' | 'status' | 'time'>> = {},
  ): void {
    this.emit({
      type: 'step',
      id: step.id,
      status,
      layer: this.nameOf(step.id),
      hash: this.graph.hash(step.id),
      seconds: 0,
      ...extra,
    });
  }

  private dirOf(id: string): string {
    return this.layerOf(id).dir;
  }

  /** The layer's directory name (`build-…`) of step `id`. */
  private nameOf(id: string): string {
    return this.layerOf(id).name;
  }

  private layerOf(id: string): { name: string; dir: string } {
    let layer = this.layers.get(id);
    if (layer === undefined) {
      const name = LayerDir.name(this.graph.hash(id));
      layer = { name, dir: join(this.o.osDir, name) };
      this.layers.set(id, layer);
    }
    return layer;
  }

  // ------------------------------------------------------------ sources

  /** Asks each source once for the layers not in the cache, targets first. */
  private async lookup(): Promise<void> {
    if (this.o.sources.length === 0) return;
    const missing: string[] = [];
    const steps = [...this.plan.steps].reverse();
    const present = await mapLimit(steps, CHECK_CONCURRENCY, (s) => layerPresent(this.dirOf(s.id)));
    for (const [i, step] of steps.entries())
      if (!present[i]) missing.push(this.graph.hash(step.id));
    for (const source of this.o.sources) {
      const asked = missing.filter((h) => !this.remote.has(h));
      if (asked.length === 0) break;
      const started = performance.now();
      try {
        const found = await source.lookup(asked, { ...(this.signal && { signal: this.signal }) });
        for (const hash of asked) if (found.has(hash)) this.remote.set(hash, source);
        this.emit({
          type: 'lookup',
          source: source.name,
          asked: asked.length,
          found: asked.filter((h) => found.has(h)).length,
          seconds: (performance.now() - started) / 1000,
        });
      } catch (err) {
        this.emit({
          type: 'lookup',
          source: source.name,
          asked: asked.length,
          found: 0,
          seconds: (performance.now() - started) / 1000,
          reason: messageOf(err),
        });
      }
    }
  }

  // ------------------------------------------------------------ scheduling

  /**
   * Settles every step, each once its deps are settled: cache checks run
   * many at once, runs `jobs` at once, fetches `fetchJobs` at once. Linear
   * in the plan's size.
   */
  private schedule(): Promise<void> {
    const steps = this.plan.steps;
    const waiting = new Map(steps.map((s) => [s.id, s.deps.length]));
    const ready = steps.filter((s) => s.deps.length === 0);
    let next = 0;
    let checking = 0;
    let settled = 0;
    return new Promise<void>((resolve) => {
      // A shard may hold no step at all.
      if (steps.length === 0) return resolve();
      // A step can settle without awaiting anything (once the build is
      // aborted, every waiting step does) and so call back into pump from
      // inside it: the nested call only asks for another round, or 10,000
      // such steps would nest 10,000 calls deep.
      let pumping = false;
      let again = false;
      const pump = (): void => {
        if (pumping) {
          again = true;
          return;
        }
        pumping = true;
        try {
          do {
            again = false;
            fill();
          } while (again);
        } finally {
          pumping = false;
        }
      };
      const fill = (): void => {
        while (checking < CHECK_CONCURRENCY && next < ready.length) {
          // With shared sources, workers that take ready steps in different
          // orders build different layers at first and then fetch each
          // other's (see lateLookup), instead of building the same ones in
          // lockstep. Alone, plan order is as good as any.
          if (this.o.sources.length > 0) {
            const pick = next + Math.floor(Math.random() * (ready.length - next));
            [ready[next], ready[pick]] = [ready[pick]!, ready[next]!];
          }
          const step = ready[next++]!;
          checking++;
          void this.settle(step, () => {
            checking--;
            pump();
          }).then((outcome) => {
            this.outcomes.set(step.id, outcome);
            settled++;
            for (const dependent of this.graph.dependents(step.id)) {
              const left = waiting.get(dependent.id)! - 1;
              waiting.set(dependent.id, left);
              if (left === 0) ready.push(dependent);
            }
            if (settled === steps.length) resolve();
            else pump();
          });
        }
        // Let the array of started steps go as it grows (10,000 steps).
        if (next > 1024 && next === ready.length) {
          ready.length = 0;
          next = 0;
        }
      };
      pump();
    });
  }

  /**
   * One step to its outcome; never rejects. `checked` is called once the
   * quick part (deps and cache) is done, so waiting for a slot does not hold
   * up the cache checks of other steps.
   */
  private async settle(step: Step, checked: () => void): Promise<StepOutcome> {
    let released = false;
    const release = (): void => {
      if (released) return;
      released = true;
      checked();
    };
    try {
      const failing = step.deps.map((d) => this.outcomes.get(d)!).filter((o) => !isOk(o));
      if (failing.length > 0) return await this.dependencyFailed(step, failing);
      if (this.signal?.aborted) return this.notStarted(step, 'aborted before it started');
      // Most lookups so far missed (a cold build): this one likely will too.
      const meta = this.findMeta(step, this.counters.misses > this.counters.hits);
      const found = meta && this.reusable(meta) ? await this.hit(step, meta) : undefined;
      if (found) return found;
      release();
      const claimed = await this.awaitClaim(step);
      const outcome = await this.makeRetrying(step);
      // A layer built here ends its claim when published; otherwise give it up now.
      const published =
        outcome.recorded && outcome.status !== 'cached' && outcome.status !== 'fetched';
      if (claimed && !published) await this.unclaim(claimed, step);
      return outcome;
    } catch (err) {
      return this.failedUnrecorded(step, err);
    } finally {
      release();
    }
  }

  /** The step's layer.json, checked to be this step's layer (the full hash). */
  private findMeta(step: Step, likelyMissing = false): LayerMetaRecord | undefined {
    const dir = this.dirOf(step.id);
    // Synchronous: one small read, where a thread-pool readFile is four round trips.
    const meta = LayerMeta.findSync(dir, { likelyMissing });
    if (meta !== undefined) Commit.assertSameHash(meta, this.graph.hash(step.id), dir);
    return meta;
  }

  /**
   * Whether a recorded layer can stand for this step now that every one of
   * its deps is ok: a success always; its own failure unless retrying; a
   * `failed_dep` record never (the dependency it blamed is ok now).
   */
  private reusable(meta: LayerMetaRecord): boolean {
    if (meta.failed_dep !== null) return false;
    return meta.exit_status === 0 || !this.o.retryFailed;
  }

  private async hit(step: Step, meta: LayerMetaRecord): Promise<StepOutcome | undefined> {
    const dir = this.dirOf(step.id);
    // Collected between the check and the touch (a GC that planned before the
    // touch skips a layer used since) or the lease: not a hit after all.
    if (!(await this.pin(dir)) || !(await markUsed(dir))) return undefined;
    // A process killed between a commit and its link leaves the layer without it.
    await this.register(step);
    this.counters.hits++;
    const outcome = this.recordedOutcome(step, meta, 'cached');
    if (isOk(outcome)) {
      this.report(step, 'cached');
      this.queueExport(step);
    } else {
      this.report(step, 'failed', {
        exitCode: meta.exit_status,
        reason: `exit ${meta.exit_status}, recorded`,
        recorded: true,
        ...(await this.logTail(dir)),
      });
    }
    return outcome;
  }

  private recordedOutcome(
    step: Step,
    meta: LayerMetaRecord,
    okStatus: 'cached' | 'fetched' | 'done',
  ): StepOutcome {
    const base = { id: step.id, hash: this.graph.hash(step.id), dir: this.dirOf(step.id) };
    if (meta.failed_dep !== null) {
      return { ...base, status: 'skipped', recorded: true, failedDep: meta.failed_dep };
    }
    if (meta.exit_status === 0) return { ...base, status: okStatus, recorded: true, exitCode: 0 };
    return {
      ...base,
      status: 'failed',
      recorded: true,
      exitCode: meta.exit_status,
      failedDep: step.id,
    };
  }

  /**
   * Fetches or runs the step; when a layer of its stack was collected in the
   * meantime (a concurrent GC), brings it back and tries again.
   */
  private async makeRetrying(step: Step): Promise<StepOutcome> {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.make(step);
      } catch (err) {
        if (!collected(err) || attempt >= RESTORE_ATTEMPTS) throw err;
        await this.restoreStack(step);
      }
    }
  }

  /** Makes again the layers of `step`'s stack (and with `self`, its own) that are gone, bottom first. */
  private async restoreStack(step: Step, self = false): Promise<void> {
    const layers = this.graph.stack(step.id).reverse();
    if (self) layers.push(step);
    for (const below of layers) {
      if (await layerPresent(this.dirOf(below.id))) continue;
      const outcome = await this.make(below);
      if (!isOk(outcome)) {
        throw new BuildError(
          BuildCodes.BAD_ARGUMENT,
          `The layer of ${JSON.stringify(below.id)} was collected during the build and could not be made again`,
          { hint: 'Run the build again' },
        );
      }
    }
  }

  /**
   * Under the layer's lock: re-check, then fetch or run in a slot. The lock
   * is taken before the slot (by at most {@link LOCK_AHEAD} steps waiting for
   * one), and a run gives its slot back as soon as the container is done: a
   * slot is held by a container alone, while other steps take their locks and
   * commit their layers. A step whose lock another build holds (another
   * worker on this cache, making the same layer) waits for it without its
   * place among the {@link LOCK_AHEAD}: the steps after it take the locks the
   * other build has not, so two builds of one plan share the work.
   */
  private async make(step: Step): Promise<StepOutcome> {
    const hash = this.graph.hash(step.id);
    const source = this.remote.get(hash);
    const admitted = await this.lockSlots.acquire();
    let release: (() => void) | undefined;
    try {
      return await Lock.withLayer(
        {
          osDir: this.o.osDir,
          hash,
          timeoutMs: Infinity,
          ...(this.signal && { signal: this.signal }),
          onWait: admitted,
        },
        async () => {
          // Another process may have made it while we waited for the lock
          // (seldom: it was missing a moment ago). Under the lock no GC can
          // take it before the touch.
          const meta = this.findMeta(step, true);
          const found = meta && this.reusable(meta) ? await this.hit(step, meta) : undefined;
          if (found) return found;
          if (this.signal?.aborted) return this.notStarted(step, 'aborted before it started');
          this.counters.misses++;
          if (meta) await Gc.removeLayer({ osDir: this.o.osDir, hash });
          const from = source ?? (await this.lateLookup(hash));
          release = await (from ? this.fetchSlots : this.runSlots).acquire();
          admitted();
          // Aborted while it waited for the slot (a running step's slot frees as it is stopped).
          if (this.signal?.aborted) return this.notStarted(step, 'aborted before it started');
          if (from) {
            const fetched = await this.fetch(step, from);
            if (fetched && isOk(fetched)) await this.pin(fetched.dir);
            if (fetched) return fetched;
            release();
            release = await this.runSlots.acquire();
            if (this.signal?.aborted) return this.notStarted(step, 'aborted before it started');
          }
          const outcome = await this.run(step, release);
          // Still under the lock: no GC can have taken the layer since its commit.
          if (isOk(outcome)) await this.pin(outcome.dir);
          return outcome;
        },
      );
    } finally {
      admitted();
      release?.();
    }
  }

  /**
   * With a publisher that takes claims (and sources to find the layer in):
   * claims the step for this build, or, while another worker holds the
   * claim, waits for its layer, asking the sources again with a growing
   * pause (up to 5 s), until it is there (fetched then) or the claim is ours
   * after all (expired or given up: built here). A failing claim lets the
   * step run. Waiting holds no run slot. Returns the publisher holding our
   * claim, if any.
   */
  private async awaitClaim(step: Step): Promise<LayerPublisher | undefined> {
    const hash = this.graph.hash(step.id);
    const claimer = this.o.publishers.find((p) => p.claim !== undefined);
    if (!claimer || this.o.sources.length === 0 || this.remote.has(hash)) return undefined;
    const opts = { ...(this.signal && { signal: this.signal }) };
    let pauseMs = 250;
    let waiting = false;
    for (;;) {
      if (this.signal?.aborted) return undefined;
      const mine = await claimer.claim!(hash, opts).catch(() => true);
      if (mine) return claimer;
      if (!waiting) {
        waiting = true;
        this.report(step, 'waiting', { source: claimer.name });
      }
      await delay(pauseMs, undefined, opts).catch(() => undefined);
      pauseMs = Math.min(pauseMs * 2, 5000);
      const source = await this.lateLookup(hash);
      if (source) {
        this.remote.set(hash, source);
        return undefined;
      }
    }
  }

  private async unclaim(claimer: LayerPublisher, step: Step): Promise<void> {
    const opts = { ...(this.signal && { signal: this.signal }) };
    await claimer.unclaim?.(this.graph.hash(step.id), opts).catch(() => undefined);
  }

  /**
   * Asks the sources again for a layer about to be run: another worker
   * sharing them may have published it since the build's lookup. One small
   * request per step run, which saves a duplicate build whenever workers
   * are out of step; a source that fails here is simply not used.
   */
  private async lateLookup(hash: string): Promise<LayerSource | undefined> {
    for (const source of this.o.sources) {
      const found = await source
        .lookup([hash], { ...(this.signal && { signal: this.signal }) })
        .catch(() => undefined);
      if (found?.has(hash)) return source;
    }
    return undefined;
  }

  /** Fetches the layer from `source`; undefined when it turns out not to have it. */
  private async fetch(step: Step, source: LayerSource): Promise<StepOutcome | undefined> {
    const started = performance.now();
    this.report(step, 'fetching', { source: source.name });
    const got = await source.fetch(this.graph.hash(step.id), {
      osDir: this.o.osDir,
      ...(this.signal && { signal: this.signal }),
    });
    if (!got) return undefined;
    const meta = this.findMeta(step);
    if (meta === undefined || !this.reusable(meta)) {
      // A recorded failure the caller wants retried: run it here.
      if (meta) await Gc.removeLayer({ osDir: this.o.osDir, hash: this.graph.hash(step.id) });
      return undefined;
    }
    this.counters.fetched++;
    await this.register(step);
    const outcome = this.recordedOutcome(step, meta, 'fetched');
    const seconds = (performance.now() - started) / 1000;
    if (isOk(outcome)) {
      this.report(step, 'fetched', { seconds, source: source.name });
      this.queueExport(step);
    } else {
      this.report(step, outcome.status, {
        seconds,
        recorded: true,
        source: source.name,
        ...(outcome.exitCode !== undefined && { exitCode: outcome.exitCode }),
        ...(outcome.failedDep !== undefined && { failedDep: outcome.failedDep }),
      });
    }
    return outcome;
  }

  /**
   * Runs the step in the sandbox and commits what it wrote, whatever its
   * exit status; `done` is called when the container is.
   */
  private async run(step: Step, done: () => void): Promise<StepOutcome> {
    const hash = this.graph.hash(step.id);
    const dir = this.dirOf(step.id);
    let started = performance.now();
    const seconds = (): number => (performance.now() - started) / 1000;
    // A step prepared ahead runs (and is timed) from when its container may start.
    const running = (): void => {
      started = performance.now();
      this.report(step, 'running');
    };
    if (this.containerSlots === undefined) running();
    const stack = this.graph.stack(step.id);
    const logFile = TempName.inside(this.o.osDir, 'log');
    let logMoved = false;
    const space = new FreeSpaceWatch(this.o.osDir);
    try {
      const result = await this.sandbox
        .run({
          base: this.base,
          lowers: stack.map((s) => this.dirOf(s.id)),
          process: processOf(step),
          logFile,
          logCap: this.o.logCap,
          signal: this.signal,
          timeoutMs: this.o.timeoutMs,
          ...(this.containerSlots && {
            containerSlot: async () => {
              const release = await this.containerSlots!.acquire();
              running();
              return release;
            },
          }),
        })
        .finally(() => {
          space.stop();
          done();
        });
      if (result.status === 'interrupted') {
        const reason = result.reason === 'timeout' ? 'timed out' : 'aborted';
        this.report(step, 'failed', { seconds: seconds(), reason, recorded: false });
        return this.unrecorded(step, reason);
      }
      // A step that failed because the disk filled up did not fail by itself:
      // nothing is recorded, and what it wrote goes at once.
      const noSpace =
        result.exitCode === 0
          ? undefined
          : await outOfSpace({ dir: this.o.osDir, logFile, watch: space });
      if (noSpace !== undefined) {
        await rm(result.upper, { recursive: true, force: true });
        const reason = `exit ${result.exitCode}, not recorded: ${noSpace}`;
        this.report(step, 'failed', { seconds: seconds(), reason, recorded: false });
        return this.unrecorded(step, reason);
      }
      this.counters.built++;
      let committed;
      try {
        committed = await Commit.commit({
          osDir: this.o.osDir,
          hash,
          upper: result.upper,
          meta: {
            exit_status: result.exitCode,
            parent_hashes: stack.map((s) => this.graph.hash(s.id)),
            ...userOf(step),
            base_hash: this.base.hash,
            timing: result.timing,
            failed_dep: null,
          },
          // The log is the layer's now: renamed in, not copied.
          log: { file: logFile, move: true },
          sidecars: { 'step.json': stepRecord(step, this.plan) },
        });
      } catch (err) {
        // Commit puts the upper back when it fails: nothing of the attempt may stay.
        await rm(result.upper, { recursive: true, force: true }).catch(() => undefined);
        throw err;
      }
      logMoved = committed.committed;
      await this.register(step, committed.committed);
      // Another process's commit of this layer won the race: read what it recorded.
      const meta = committed.meta ?? (await LayerMeta.load(dir));
      this.bytes += meta.disk_usage;
      this.publish(step);
      const outcome = this.recordedOutcome(step, meta, 'done');
      if (isOk(outcome)) {
        this.report(step, 'done', { seconds: seconds(), exitCode: 0 });
        this.queueExport(step);
      } else {
        this.report(step, 'failed', {
          seconds: seconds(),
          exitCode: result.exitCode,
          recorded: true,
          ...(await this.logTail(dir)),
        });
      }
      return outcome;
    } finally {
      if (!logMoved) await rm(logFile, { force: true });
    }
  }

  /**
   * Links the step's layer under `packages/{id}/`, where `day11` finds a layer
   * by step id; `likelyNew` for a layer this process just made.
   */
  private async register(step: Step, likelyNew = false): Promise<void> {
    await LayerSymlinks.ensure({
      packagesDir: join(this.o.osDir, 'packages'),
      id: step.id,
      layerName: this.nameOf(step.id),
      likelyNew,
    });
  }

  /**
   * A dependency failed: record that (an empty layer with `failed_dep`) only
   * when every failing dependency's outcome is itself recorded.
   */
  private async dependencyFailed(step: Step, failing: StepOutcome[]): Promise<StepOutcome> {
    const first = failing[0]!;
    const failedDep = first.failedDep ?? first.id;
    const base = { id: step.id, hash: this.graph.hash(step.id), dir: this.dirOf(step.id) };
    const unrecorded: StepOutcome = { ...base, status: 'skipped', recorded: false, failedDep };
    if (!failing.every((o) => o.recorded)) {
      this.report(step, 'skipped', { failedDep, recorded: false });
      return unrecorded;
    }
    const existing = this.findMeta(step);
    if (existing?.failed_dep != null) {
      await LastUsed.touch(base.dir);
      this.report(step, 'skipped', { failedDep: existing.failed_dep, recorded: true });
      return { ...base, status: 'skipped', recorded: true, failedDep: existing.failed_dep };
    }
    // A layer recorded for this step while its dependency was ok is left alone.
    if (existing !== undefined) {
      this.report(step, 'skipped', { failedDep, recorded: false });
      return unrecorded;
    }
    const { committed } = await this.recordSkip(step, failedDep);
    this.report(step, 'skipped', { failedDep, recorded: committed });
    return { ...unrecorded, recorded: committed };
  }

  /** Commits the empty `failed_dep` layer (under the layer's lock, by Commit). */
  private async recordSkip(step: Step, failedDep: string): Promise<{ committed: boolean }> {
    const upper = TempName.inside(this.o.osDir, 'skip');
    await mkdir(upper, { mode: 0o755 });
    const { committed } = await Commit.commit({
      osDir: this.o.osDir,
      hash: this.graph.hash(step.id),
      upper,
      meta: {
        exit_status: -1,
        parent_hashes: this.graph.stack(step.id).map((s) => this.graph.hash(s.id)),
        ...userOf(step),
        base_hash: this.base.hash,
        timing: [],
        failed_dep: failedDep,
      },
      log: `not run: dependency ${failedDep} failed\n`,
      sidecars: { 'step.json': stepRecord(step, this.plan) },
    });
    // Someone else's record of this layer is as good as ours.
    return { committed: committed || (await layerPresent(this.dirOf(step.id))) };
  }

  private notStarted(step: Step, reason: string): StepOutcome {
    this.report(step, 'failed', { reason, recorded: false });
    return this.unrecorded(step, reason);
  }

  private failedUnrecorded(step: Step, err: unknown): StepOutcome {
    const reason = messageOf(err);
    this.report(step, 'failed', { reason, recorded: false });
    return this.unrecorded(step, reason);
  }

  private unrecorded(step: Step, reason: string): StepOutcome {
    return {
      id: step.id,
      hash: this.graph.hash(step.id),
      dir: this.dirOf(step.id),
      status: 'failed',
      recorded: false,
      failedDep: step.id,
      reason,
    };
  }

  private async logTail(dir: string): Promise<{ log?: string; logTail?: string[] }> {
    const log = join(dir, 'layer.log');
    const tail = await readTail(log, LOG_TAIL_LINES);
    return tail === undefined ? {} : { log, logTail: tail };
  }

  // ------------------------------------------------------------ after a step

  /** Hands a committed layer to every publisher, in the background. */
  private publish(step: Step): void {
    const hash = this.graph.hash(step.id);
    for (const publisher of this.o.publishers) {
      const job = publisher
        .publish({ hash, osDir: this.o.osDir }, { ...(this.signal && { signal: this.signal }) })
        .then(
          () =>
            this.emit({
              type: 'publish',
              id: step.id,
              hash,
              publisher: publisher.name,
              status: 'done',
            }),
          (err: unknown) =>
            this.emit({
              type: 'publish',
              id: step.id,
              hash,
              publisher: publisher.name,
              status: 'failed',
              reason: messageOf(err),
            }),
        )
        .finally(() => this.background.delete(job));
      this.background.add(job);
    }
  }

  /** Exports the step's image once it is ok, one export at a time, while the build goes on. */
  private queueExport(step: Step): void {
    const layout = this.o.layout;
    if (layout === undefined || this.exportQueued.has(step.id)) return;
    this.exportQueued.add(step.id);
    this.prepareBlob(step);
    this.exportChain = this.exportChain.then(() => this.exportStep(step, layout));
  }

  /**
   * Compresses the step's layer blob now, beside the steps still running, so
   * that the image exports (one at a time) find it cached. A failure here is
   * not reported: the export that needs the blob makes it again and reports.
   */
  private prepareBlob(step: Step): void {
    const dir = this.dirOf(step.id);
    const options = { gzipLevel: this.o.gzipLevel, signal: this.signal };
    const job: Promise<void> = this.blobSlot
      .use(async () => (await ociExport()).LayerBlob.ensure(dir, options))
      .then(
        () => undefined,
        () => undefined,
      )
      .finally(() => this.background.delete(job));
    this.background.add(job);
  }

  private async exportStep(step: Step, layout: string): Promise<void> {
    const started = performance.now();
    const seconds = (): number => (performance.now() - started) / 1000;
    const stack = [...this.graph.stack(step.id).reverse(), step];
    const exportOnce = async () =>
      (await ociExport()).exportImage({
        layout,
        tag: step.tag,
        base: this.base,
        layers: stack.map((s) => this.dirOf(s.id)),
        createdBy: stack.map((s) => imageOfStep(s).createdBy),
        config: { ...imageOfStep(step).config, Cmd: ['/bin/sh'] },
        ...(this.o.maxLayers !== undefined && { maxLayers: this.o.maxLayers }),
        ...(this.o.gzipLevel !== undefined && { gzipLevel: this.o.gzipLevel }),
        ...(this.signal && { signal: this.signal }),
      });
    try {
      if (this.signal?.aborted) throw new Error('aborted before it started');
      let result;
      for (let attempt = 1; result === undefined; attempt++) {
        try {
          result = await exportOnce();
        } catch (err) {
          // A layer of the image was collected since it was made or found: make it again.
          if (!collected(err) || attempt >= RESTORE_ATTEMPTS) throw err;
          await this.restoreStack(step, true);
        }
      }
      this.exported.push(step.tag);
      this.emit({
        type: 'export',
        id: step.id,
        tag: step.tag,
        layout,
        status: 'done',
        digest: result.manifestDigest,
        layers: result.layers.length,
        seconds: seconds(),
      });
    } catch (err) {
      const reason = messageOf(err);
      this.exportFailures.push({ tag: step.tag, reason });
      this.emit({
        type: 'export',
        id: step.id,
        tag: step.tag,
        layout,
        status: 'failed',
        seconds: seconds(),
        reason,
      });
    }
  }

  private summary(seconds: number): Omit<SummaryEvent, 'time'> {
    const count = (status: StepOutcome['status']): number => {
      let n = 0;
      for (const o of this.outcomes.values()) if (o.status === status) n++;
      return n;
    };
    return {
      type: 'summary',
      built: count('done'),
      cached: count('cached'),
      fetched: count('fetched'),
      failed: count('failed'),
      skipped: count('skipped'),
      bytes: this.bytes,
      seconds,
      exported: [...this.exported],
      exportFailures: [...this.exportFailures],
    };
  }
}

/** `Omit` over each member of a union. */
type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

/** The process a step runs. */
function processOf(step: Step): StepProcess {
  return {
    argv: argvOf(step),
    env: step.env,
    cwd: step.cwd,
    ...userOf(step),
    network: step.network,
    resources: step.resources,
    security: step.security,
  };
}

/** The `step.json` sidecar: the step as written, and the plan it came from. */
function stepRecord(step: Step, plan: Plan): Record<string, unknown> {
  return { ...step, plan: plan.file };
}

/** Tries of a step, or of an export, whose layers a concurrent GC keeps collecting. */
const RESTORE_ATTEMPTS = 5;

/** Whether `err` says a layer is not in the cache (any more): a concurrent GC took it. */
function collected(err: unknown): boolean {
  return (
    isDay11Error(err, LayerCodes.NOT_FOUND) ||
    isDay11Error(err, LayerCodes.META_MISSING) ||
    isDay11Error(err, LAYER_NOT_IN_EXPORT)
  );
}

/**
 * `@day11/oci-export`, loaded by the first export: a build without a layout
 * (most cached builds) does not pay for loading it.
 */
const ociExport = () => import('@day11/oci-export');
/** `OciExportCodes.LAYER_NOT_FOUND`, known before the module is loaded (the type keeps them equal). */
const LAYER_NOT_IN_EXPORT: (typeof OciExportCodes)['LAYER_NOT_FOUND'] = 'OCI_LAYER_NOT_FOUND';

async function layerPresent(dir: string): Promise<boolean> {
  try {
    return (await LayerMeta.find(dir)) !== undefined;
  } catch {
    return false;
  }
}

/**
 * Marks a found layer used now; false when it is gone (collected since it was
 * found). One synchronous `utimes` of its `last_used` (a cached step's whole
 * cost is a few such calls, each a fraction of a thread-pool round trip),
 * which only a layer that is still there has; else `LastUsed.touch` makes
 * the mark when the layer lacks one.
 */
async function markUsed(dir: string): Promise<boolean> {
  try {
    const now = new Date();
    utimesSync(LastUsed.file(dir), now, now);
    return true;
  } catch {
    await LastUsed.touch(dir);
    return layerPresent(dir);
  }
}

/** The last `lines` lines of a file (reading at most its last 8 KiB), or undefined. */
async function readTail(file: string, lines: number): Promise<string[] | undefined> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch {
    return undefined;
  }
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, 8192);
    const buf = Buffer.alloc(length);
    await handle.read(buf, 0, length, size - length);
    const text = buf.toString('utf8').replace(/\n$/, '');
    return text === '' ? [] : text.split('\n').slice(-lines);
  } finally {
    await handle.close();
  }
}
