/**
 * `day11 build`: runs a plan's steps as layers. Cached steps are skipped (and
 * marked used); the rest run in parallel up to `jobs`, each after its deps; a
 * failing step is committed with its exit status and log, and its dependents
 * are committed as empty layers with `failed_dep` and not run (so the failure
 * is cached like a success, keyed by the same hashes).
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { OciSpec, type Runc } from '@day11/container';
import { randomHex } from '@day11/exec';
import {
  Commit,
  LastUsed,
  LayerDir,
  LayerMeta,
  LayerSymlinks,
  Lock,
  type Base,
  type LayerMetaRecord,
} from '@day11/layer';
import { exportImage } from '@day11/oci-export';
import { runInLayers } from '@day11/runner';
import { resolveBase } from './base.js';
import { argvOf, closure, stepHashes, userOf, type Plan, type Step } from './plan.js';
import type { Reporter, StepEvent, SummaryEvent } from './progress.js';

/** Options of {@link build}. */
export interface BuildOptions {
  plan: Plan;
  /** The layer cache directory. */
  osDir: string;
  /** Steps run at once (default 1). */
  jobs?: number;
  runtime?: Runc.Runtime;
  /** Export one image per successful step into this OCI layout, tagged by step id. */
  oci?: string;
  /** With `oci`: at most this many layers per image (`exportImage`'s `maxLayers`). */
  maxLayers?: number;
  reporter: Reporter;
  signal?: AbortSignal;
  /** Per-step timeout. */
  timeoutMs?: number;
}

/** The outcome of one step. */
export interface StepOutcome {
  step: Step;
  hash: string;
  dir: string;
  status: 'cached' | 'done' | 'failed' | 'skipped';
  /** For `failed`/`skipped`: the id of the step whose failure this is. */
  failedDep?: string;
}

/** What {@link build} did. */
export interface BuildResult {
  base: Base;
  outcomes: Map<string, StepOutcome>;
  summary: SummaryEvent;
}

/** Builds every step of the plan. Resolves even when steps fail: see `summary.failed`. */
export async function build(opts: BuildOptions): Promise<BuildResult> {
  const started = performance.now();
  await mkdir(opts.osDir, { recursive: true });
  const base = await resolveBase(opts.plan.base, opts.osDir);
  const hashes = stepHashes(opts.plan, base.hash);
  const state = new BuildState(opts, base, hashes);
  for (const step of opts.plan.steps) state.report(step, 'queued');
  await state.runAll(opts.jobs ?? 1);
  if (opts.oci) await exportAll(opts, state, base);
  const summary = await state.summary((performance.now() - started) / 1000);
  opts.reporter.emit(summary);
  return { base, outcomes: state.outcomes, summary };
}

class BuildState {
  readonly outcomes = new Map<string, StepOutcome>();
  private readonly running = new Set<string>();
  private builtBytes = 0;

  constructor(
    private readonly opts: BuildOptions,
    private readonly base: Base,
    private readonly hashes: Map<string, string>,
  ) {}

  dirOf(step: Step): string {
    return LayerDir.path({ osDir: this.opts.osDir, hash: this.hashes.get(step.id)! });
  }

  report(step: Step, status: StepEvent['status'], extra: Partial<StepEvent> = {}): void {
    const layer = LayerDir.name(this.hashes.get(step.id)!);
    this.opts.reporter.emit({ type: 'step', id: step.id, status, layer, seconds: 0, ...extra });
  }

  /** Runs steps as their deps settle, at most `jobs` at once. */
  async runAll(jobs: number): Promise<void> {
    const pending = [...this.opts.plan.steps];
    const active = new Map<string, Promise<void>>();
    while (pending.length > 0 || active.size > 0) {
      for (const step of [...pending]) {
        if (active.size >= jobs) break;
        if (!step.deps.every((d) => this.outcomes.has(d))) continue;
        pending.splice(pending.indexOf(step), 1);
        const done = this.settle(step).finally(() => active.delete(step.id));
        active.set(step.id, done);
      }
      if (active.size > 0) await Promise.race(active.values());
    }
  }

  private async settle(step: Step): Promise<void> {
    const dir = this.dirOf(step);
    const hash = this.hashes.get(step.id)!;
    const meta = await LayerMeta.find(dir);
    if (meta) return this.cached(step, hash, dir, meta);
    // Another process may be building this very layer: wait for it and find
    // it cached, rather than build it twice (a per-layer lock, then a re-check).
    const lock = { osDir: this.opts.osDir, hash, timeoutMs: Infinity, signal: this.opts.signal };
    try {
      await Lock.withLayer(lock, () => this.settleLocked(step, hash, dir));
    } catch (err) {
      // Waiting was aborted, or the lock was lost: unless the step got an outcome, it failed.
      if (this.outcomes.has(step.id)) return;
      this.outcomes.set(step.id, { step, hash, dir, status: 'failed', failedDep: step.id });
      this.report(step, 'failed', { reason: (err as Error).message });
    }
  }

  /** {@link settle} under the layer's lock. */
  private async settleLocked(step: Step, hash: string, dir: string): Promise<void> {
    const meta = await LayerMeta.find(dir);
    if (meta) return this.cached(step, hash, dir, meta);
    const failedDep = step.deps
      .map((d) => this.outcomes.get(d)!)
      .find((o) => o.status === 'failed' || o.status === 'skipped');
    if (this.opts.signal?.aborted) {
      this.outcomes.set(step.id, { step, hash, dir, status: 'failed', failedDep: step.id });
      this.report(step, 'failed', { reason: 'aborted before it started' });
      return;
    }
    if (failedDep) return this.skip(step, hash, dir, failedDep.failedDep ?? failedDep.step.id);
    await this.run(step, hash, dir);
  }

  private async cached(
    step: Step,
    hash: string,
    dir: string,
    meta: LayerMetaRecord,
  ): Promise<void> {
    await LastUsed.touch(dir);
    const ok = meta.exit_status === 0 && meta.failed_dep === null;
    const failedDep = meta.failed_dep ?? (ok ? undefined : step.id);
    this.outcomes.set(step.id, {
      step,
      hash,
      dir,
      status: ok ? 'cached' : meta.failed_dep ? 'skipped' : 'failed',
      ...(failedDep !== undefined && { failedDep }),
    });
    if (ok) this.report(step, 'cached');
    else if (meta.failed_dep) this.report(step, 'skipped', { failedDep: meta.failed_dep });
    else
      this.report(step, 'failed', {
        exitCode: meta.exit_status,
        reason: `exit ${meta.exit_status}, cached`,
      });
  }

  /** Records a step whose dependency failed: an empty layer with `failed_dep`, never run. */
  private async skip(step: Step, hash: string, dir: string, failedDep: string): Promise<void> {
    const upper = await mkdtemp(join(this.opts.osDir, `.day11-tmp-${process.pid}-skip-`));
    await Commit.commit({
      osDir: this.opts.osDir,
      hash,
      upper,
      meta: { ...this.metaBase(step), exit_status: -1, timing: [], failed_dep: failedDep },
      log: `not run: dependency ${failedDep} failed\n`,
      sidecars: { 'step.json': { ...step } },
    });
    this.outcomes.set(step.id, { step, hash, dir, status: 'skipped', failedDep });
    this.report(step, 'skipped', { failedDep });
  }

  private metaBase(
    step: Step,
  ): Omit<LayerMetaRecord, 'exit_status' | 'timing' | 'failed_dep' | 'created_at' | 'disk_usage'> {
    return {
      parent_hashes: closure(step, this.opts.plan).map((d) => this.hashes.get(d.id)!),
      ...userOf(step),
      base_hash: this.base.hash,
    };
  }

  private async run(step: Step, hash: string, dir: string): Promise<void> {
    const started = performance.now();
    this.report(step, 'running');
    const logFile = join(this.opts.osDir, `.day11-tmp-${process.pid}-${randomHex(4)}-log`);
    try {
      const { uid, gid } = userOf(step);
      const spec = OciSpec.template(
        OciSpec.make({
          args: argvOf(step),
          env: step.env,
          cwd: step.cwd,
          uid,
          gid,
          network: step.network,
        }),
      );
      const result = await runInLayers({
        base: this.base,
        buildDirs: closure(step, this.opts.plan).map((d) => this.dirOf(d)),
        spec,
        logFile,
        ...(this.opts.runtime !== undefined && { runtime: this.opts.runtime }),
        ...(this.opts.signal !== undefined && { signal: this.opts.signal }),
        ...(this.opts.timeoutMs !== undefined && { timeoutMs: this.opts.timeoutMs }),
      });
      const seconds = (performance.now() - started) / 1000;
      const { run } = result;
      if (run.aborted || run.timedOut) {
        // An interrupted step proves nothing about the step: never cache it.
        await rm(result.upper, { recursive: true, force: true });
        this.outcomes.set(step.id, { step, hash, dir, status: 'failed', failedDep: step.id });
        this.report(step, 'failed', { seconds, reason: run.timedOut ? 'timed out' : 'aborted' });
        return;
      }
      const exitStatus = run.exitCode ?? 128 + 9;
      await Commit.commit({
        osDir: this.opts.osDir,
        hash,
        upper: result.upper,
        meta: {
          ...this.metaBase(step),
          exit_status: exitStatus,
          timing: result.timing,
          failed_dep: null,
        },
        log: { file: logFile },
        sidecars: { 'step.json': { ...step } },
      });
      await LayerSymlinks.ensure({
        packagesDir: join(this.opts.osDir, 'packages'),
        id: step.id,
        layerName: LayerDir.name(hash),
      });
      const ok = exitStatus === 0;
      this.builtBytes += (await LayerMeta.load(dir)).disk_usage;
      this.outcomes.set(step.id, {
        step,
        hash,
        dir,
        status: ok ? 'done' : 'failed',
        ...(!ok && { failedDep: step.id }),
      });
      this.report(step, ok ? 'done' : 'failed', { seconds, exitCode: exitStatus });
    } catch (err) {
      this.outcomes.set(step.id, { step, hash, dir, status: 'failed', failedDep: step.id });
      this.report(step, 'failed', {
        seconds: (performance.now() - started) / 1000,
        reason: (err as Error).message,
      });
    } finally {
      await rm(logFile, { force: true });
    }
  }

  async summary(seconds: number): Promise<SummaryEvent> {
    const count = (status: StepOutcome['status']): number =>
      [...this.outcomes.values()].filter((o) => o.status === status).length;
    return {
      type: 'summary',
      built: count('done'),
      cached: count('cached'),
      failed: count('failed'),
      skipped: count('skipped'),
      bytes: this.builtBytes,
      seconds,
    };
  }

  isOk(step: Step): boolean {
    const status = this.outcomes.get(step.id)?.status;
    return status === 'done' || status === 'cached';
  }
}

async function exportAll(opts: BuildOptions, state: BuildState, base: Base): Promise<void> {
  const ok = opts.plan.steps.filter((s) => state.isOk(s));
  for (const step of ok) {
    const layers = [...closure(step, opts.plan).reverse(), step].map((s) => state.dirOf(s));
    const result = await exportImage({
      layout: opts.oci!,
      tag: step.id,
      base,
      layers,
      config: {
        Env: Object.entries(step.env).map(([k, v]) => `${k}=${v}`),
        Cmd: ['/bin/sh'],
        WorkingDir: step.cwd,
      },
      ...(opts.signal !== undefined && { signal: opts.signal }),
      ...(opts.maxLayers !== undefined && { maxLayers: opts.maxLayers }),
    });
    opts.reporter.emit({
      type: 'note',
      message: `  exported ${step.id} → ${opts.oci}:${step.id} (${result.layers.length} layers, ${result.manifestDigest.slice(0, 19)})`,
    });
  }
}
