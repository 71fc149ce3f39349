/**
 * Fault injection: one day11 operation per child process, SIGKILLed at a
 * random moment, then recovery, then checks that nothing partial, mounted,
 * running, temporary or locked is left, and that the operation, run again,
 * succeeds. The kill delay is drawn (seeded) over the duration of a clean
 * run of the same operation, measured first.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { LayerDir, LayerMeta, type Base } from '@day11/layer';
import { LayerBlob, Layout } from '@day11/oci-export';
import { recover } from '@day11/runner';
import type { TreeShape } from './fixtures/data.js';
import { MARKER } from './fixtures/data.js';
import type { WorkerJob, WorkerResult } from './fixtures/fault-worker.js';
import { freshHash, syntheticLayer, type SyntheticLayer } from './fixtures/layers.js';
import { layoutProblems, leftovers, runtimeTraces, unpackProblem } from './fixtures/leftovers.js';
import { runWorker, type Kill, type KillMode, type WorkerOutcome } from './fixtures/processes.js';
import { makeRng, type Rng } from './fixtures/random.js';

/** The operations a fault trial interrupts. */
export type Op = 'commit' | 'run' | 'export';

/** The worker script, from `dist/` (run `pnpm build` first). */
export const WORKER = fileURLToPath(new URL('../dist/fixtures/fault-worker.js', import.meta.url));

/** What the trials share: one cache (and its base and a dependency layer) under `root`. */
export interface FaultContext {
  root: string;
  osDir: string;
  base: Base;
  /** A layer the `run` trials stack on, so their leases are exercised too. */
  dep: SyntheticLayer;
}

/** What a series of trials of one operation saw. */
export interface FaultSummary {
  op: Op;
  seed: number;
  trials: number;
  /** Trials whose kill landed before the operation had finished. */
  killed: number;
  /** Clean-run duration the kill delays were drawn over. */
  cleanMs: number;
  byMode: Record<KillMode, number>;
  /** Longest recovery, and longest re-run after recovery. */
  maxRecoverMs: number;
  maxRerunMs: number;
  seconds: number;
}

/** Trials are independent (fresh hashes and tags); exports rotate layouts to keep verify cheap. */
const TRIALS_PER_LAYOUT = 5;
/** Synthetic trees: big enough that commit measures and export compresses for a while. */
const COMMIT_SHAPE: TreeShape = { files: 150, bigBytes: 500_000 };
const EXPORT_SHAPE: TreeShape = { files: 100, bigBytes: 2_000_000 };
/** Kill delays reach a little past a clean run, so some trials kill a process that is done. */
const OVERSHOOT = 1.15;

const RUN_SCRIPT = [
  'mkdir -p /opt/out',
  `cp /${MARKER} /opt/out/dep-marker`,
  'seq 1 20000 > /opt/out/seq',
  'rm /opt/big',
  'echo ok > /opt/out/ok',
].join(' && ');

interface Scenario {
  /** The job of trial `index` (fresh names: trials never depend on each other). */
  job(index: number, rng: Rng): Promise<WorkerJob>;
  /** Checks after a successful re-run. */
  verify(job: WorkerJob, result: WorkerResult): Promise<string[]>;
}

/** The operations, in the order their seeds are derived. */
export const OPS: readonly Op[] = ['commit', 'run', 'export'];

/**
 * Runs `count` trials of `op`; resolves with a summary, or rejects at the
 * first trial that leaves a problem, saying how to replay its schedule. The
 * kill schedule of `op` depends on `seed` and `op` only, so trial n of an
 * operation gets the same kill whatever the count.
 *
 * @example
 * ```ts
 * const summary = await runTrials(ctx, 'commit', 20, seedFrom('DAY11_FAULT_SEED'));
 * ```
 */
export async function runTrials(
  ctx: FaultContext,
  op: Op,
  count: number,
  seed: number,
): Promise<FaultSummary> {
  const started = performance.now();
  const rng = makeRng((seed + OPS.indexOf(op)) >>> 0);
  const scenario = scenarios(ctx)[op];
  const checker = new LayoutChecker();
  const cleanMs = await measure(ctx, scenario, checker);
  const summary: FaultSummary = {
    op,
    seed,
    trials: count,
    killed: 0,
    cleanMs,
    byMode: { process: 0, tree: 0 },
    maxRecoverMs: 0,
    maxRerunMs: 0,
    seconds: 0,
  };
  for (let index = 0; index < count; index++) {
    const kill: Kill = { afterMs: rng.next() * cleanMs * OVERSHOOT, mode: rng.pick(MODES) };
    const job = await scenario.job(index, rng);
    const where = `DAY11_FAULT_SEED=${seed} ${op} trial ${index}, kill after ${kill.afterMs.toFixed(1)} ms (${kill.mode})`;
    const trial = await runTrial({ ctx, scenario, checker, job, kill }).catch((err: unknown) => {
      throw new Error(`${where}: ${(err as Error).message}`, { cause: err });
    });
    if (trial.problems.length > 0) {
      const when = trial.killed ? 'killed mid-operation' : 'the operation had finished';
      throw new Error(`${where}, ${when}:\n  ${trial.problems.join('\n  ')}`);
    }
    record(summary, trial, kill);
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

function record(summary: FaultSummary, trial: TrialResult, kill: Kill): void {
  summary.killed += trial.killed ? 1 : 0;
  summary.byMode[kill.mode]++;
  summary.maxRecoverMs = Math.max(summary.maxRecoverMs, trial.recoverMs);
  summary.maxRerunMs = Math.max(summary.maxRerunMs, trial.rerunMs);
}

const MODES: readonly KillMode[] = ['process', 'tree'];

/**
 * Clean runs first: the first warms the caches (page cache, the base's blob,
 * the runtime), so the second, shorter, bounds the kill delays.
 */
async function measure(ctx: FaultContext, scenario: Scenario, checker: LayoutChecker) {
  let ms = Infinity;
  for (const index of [-2, -1]) {
    const job = await scenario.job(index, makeRng(-index));
    const out = await worker(job);
    const problems = [
      ...workerProblems(out, 'clean run'),
      ...(await afterRun(ctx, scenario, checker, job, out)),
    ];
    if (problems.length > 0) throw new Error(`clean run of ${job.op}:\n  ${problems.join('\n  ')}`);
    ms = Math.min(ms, out.ms ?? Infinity);
  }
  return Math.max(ms, 5);
}

interface TrialResult {
  problems: string[];
  killed: boolean;
  recoverMs: number;
  rerunMs: number;
}

/** Every worker this process started: their containers' traces must all be gone. */
const workerPids = new Set<number>();

async function worker(job: WorkerJob, kill?: Kill): Promise<WorkerOutcome> {
  const out = await runWorker(WORKER, JSON.stringify(job), kill);
  workerPids.add(out.pid);
  return out;
}

async function runTrial(t: {
  ctx: FaultContext;
  scenario: Scenario;
  checker: LayoutChecker;
  job: WorkerJob;
  kill: Kill;
}): Promise<TrialResult> {
  const { ctx, scenario, checker, job } = t;
  const first = await worker(job, t.kill);
  // Killed after `done`, the operation had finished: only the exit was cut short.
  const killed = first.killed && first.done === undefined;
  const problems = first.killed ? [] : workerProblems(first, 'the run before the kill');
  const recoverStart = performance.now();
  problems.push(...(await recoverAll(ctx, job)));
  const recoverMs = performance.now() - recoverStart;
  problems.push(...(await stateProblems(ctx, checker, job)));
  if (problems.length > 0) return { problems, killed, recoverMs, rerunMs: 0 };
  // Recovery done: the same operation, run again, must simply work.
  const rerun = await worker(job);
  problems.push(...workerProblems(rerun, 'the re-run after recovery'));
  if (problems.length === 0) problems.push(...(await afterRun(ctx, scenario, checker, job, rerun)));
  return { problems, killed, recoverMs, rerunMs: rerun.ms ?? 0 };
}

function workerProblems(out: WorkerOutcome, what: string): string[] {
  if (out.code === 0 && out.done !== undefined) return [];
  return [`${what} failed (exit ${out.code ?? out.signal}): ${out.stderr.trim() || 'no output'}`];
}

/**
 * What must hold whenever no worker runs: nothing partial, mounted, running,
 * temporary or locked in the cache and the layout, no trace of a container,
 * and a layout that verifies and unpacks.
 */
async function stateProblems(
  ctx: FaultContext,
  checker: LayoutChecker,
  job: WorkerJob,
): Promise<string[]> {
  const layouts = layoutsOf(job);
  return [
    ...(await leftovers({ root: ctx.root, osDir: ctx.osDir, layouts })),
    ...(await runtimeTraces(workerPids)).map((t) => `runtime leftover: ${t}`),
    ...(await checker.check(layouts)),
  ];
}

/** What a clean run must leave: nothing but its result, which must be right. */
async function afterRun(
  ctx: FaultContext,
  scenario: Scenario,
  checker: LayoutChecker,
  job: WorkerJob,
  out: WorkerOutcome,
): Promise<string[]> {
  return [
    ...(await stateProblems(ctx, checker, job)),
    ...(await scenario.verify(job, out.done as WorkerResult)),
  ];
}

/**
 * The recovery a user runs after a crash: `recover` of `@day11/runner`
 * (containers, mounts, temp dirs, then `Recover.sweep`: locks, leases), and
 * for a layout `Layout.recover` (temp files, a stale lock, an index a kill
 * kept from being written) then `Layout.gc`.
 */
async function recoverAll(ctx: FaultContext, job: WorkerJob): Promise<string[]> {
  const report = await recover({ osDir: ctx.osDir });
  const problems = [
    ...report.left.map((p) => `recover left ${p} (still mounted)`),
    ...report.cache.mounted.map((p) => `Recover.sweep found ${p} mounted`),
    ...report.cache.incompleteLayers.map((p) => `incomplete layer ${p}`),
  ];
  for (const layout of layoutsOf(job)) {
    // As `day11 recover` does: even a layout whose `oci-layout` a kill kept
    // from being written may hold temporary files (that one's, for a start).
    await Layout.recover(layout);
    if (existsSync(join(layout, 'oci-layout'))) await Layout.gc(layout);
  }
  return problems;
}

function layoutsOf(job: WorkerJob): string[] {
  return job.op === 'export' ? [job.layout] : [];
}

/**
 * `Layout.verify` on every check, and `umoci unpack` of every tag once per
 * manifest digest (unpacking every tag after every trial would be quadratic).
 */
class LayoutChecker {
  private readonly unpacked = new Set<string>();

  async check(layouts: readonly string[]): Promise<string[]> {
    const problems: string[] = [];
    for (const layout of layouts) {
      if (!existsSync(join(layout, 'oci-layout'))) continue; // never made: nothing to check
      problems.push(...(await layoutProblems(layout)));
      for (const { tag, digest } of await Layout.tags(layout)) {
        const key = `${layout}:${tag}@${digest}`;
        if (this.unpacked.has(key)) continue;
        const problem = await unpackProblem(layout, tag);
        if (problem) problems.push(problem);
        else this.unpacked.add(key);
      }
    }
    return problems;
  }
}

function scenarios(ctx: FaultContext): Record<Op, Scenario> {
  return { commit: commitScenario(ctx), run: runScenario(ctx), export: exportScenario(ctx) };
}

/** The layer `hash` exists, complete, and its `fs/` holds `expect` at `path`. */
async function layerHolds(ctx: FaultContext, hash: string, path: string, expect: string) {
  const dir = LayerDir.path({ osDir: ctx.osDir, hash });
  const meta = await LayerMeta.find(dir).catch((err: unknown) => err as Error);
  if (meta === undefined) return [`layer ${hash} is missing after the re-run`];
  if (meta instanceof Error) return [`layer ${hash}: ${meta.message}`];
  const text = await readFile(join(dir, 'fs', path), 'utf8').catch(() => undefined);
  return text === expect ? [] : [`${dir}/fs/${path} holds ${JSON.stringify(text)}`];
}

function commitScenario(ctx: FaultContext): Scenario {
  return {
    job: async (index, rng) => ({
      op: 'commit',
      osDir: ctx.osDir,
      hash: freshHash(`commit-${index}`),
      base: ctx.base,
      seed: rng.int(0, 2 ** 31),
      shape: COMMIT_SHAPE,
    }),
    verify: async (job) => {
      if (job.op !== 'commit') return [];
      return layerHolds(ctx, job.hash, MARKER, job.hash);
    },
  };
}

function runScenario(ctx: FaultContext): Scenario {
  return {
    job: async (index, rng) => ({
      op: 'run',
      osDir: ctx.osDir,
      hash: freshHash(`run-${index}`),
      base: ctx.base,
      deps: [ctx.dep.dir],
      script: RUN_SCRIPT,
      runtime: rng.pick(['runc', 'crun'] as const),
    }),
    verify: async (job) => {
      if (job.op !== 'run') return [];
      return [
        ...(await layerHolds(ctx, job.hash, 'opt/out/ok', 'ok\n')),
        ...(await layerHolds(ctx, job.hash, 'opt/out/dep-marker', ctx.dep.hash)),
      ];
    },
  };
}

function exportScenario(ctx: FaultContext): Scenario {
  return {
    job: async (index, rng) => {
      const layers: string[] = [];
      for (let n = 0; n < 2; n++) {
        const seed = rng.int(0, 2 ** 31);
        layers.push((await syntheticLayer({ ...ctx, seed, shape: EXPORT_SHAPE })).dir);
      }
      const tag = `trial.${index + 2}`;
      const layout = join(ctx.root, `oci-${Math.floor((index + 2) / TRIALS_PER_LAYOUT)}`);
      return { op: 'export', layout, tag, base: ctx.base, layers };
    },
    verify: async (job, result) => {
      if (job.op !== 'export') return [];
      const tagged = (await Layout.tags(job.layout)).find((t) => t.tag === job.tag);
      if (!tagged || tagged.digest !== result.manifestDigest)
        return [`${job.layout}:${job.tag} is ${tagged?.digest}, not ${result.manifestDigest}`];
      return imageIsStack(job.layout, tagged.digest, [job.base.dir, ...job.layers]);
    },
  };
}

/**
 * The image's layers are exactly the blobs cached in `dirs`, in order (the
 * LayoutChecker has unpacked it; this says it is the stack that was asked for).
 */
async function imageIsStack(layout: string, digest: string, dirs: string[]): Promise<string[]> {
  const manifest = JSON.parse(await readFile(Layout.blobPath(layout, digest), 'utf8')) as {
    layers: { digest: string }[];
  };
  const expected: (string | undefined)[] = [];
  for (const dir of dirs) expected.push((await LayerBlob.find(dir))?.digest);
  const actual = manifest.layers.map((l) => l.digest);
  return JSON.stringify(actual) === JSON.stringify(expected)
    ? []
    : [`${layout}@${digest} has layers ${actual.join(' ')}, not ${expected.join(' ')}`];
}
