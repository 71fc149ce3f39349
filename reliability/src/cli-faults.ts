/**
 * Faults of the whole `day11` command (issue 13): SIGTERM, SIGINT or SIGHUP
 * to `day11 build --oci` at a random moment or while its runtime creates a
 * container, and SIGKILL of the whole process group of `day11 build --oci`
 * or `day11 export` at a random moment. After each, what must hold:
 *
 * - a signal: the process dies of it, and at once no mount, container,
 *   cgroup or process of it is left;
 * - then (after any fault) `day11 recover --cache C --oci L`: no temp, lock
 *   or lease in the cache or the layout, every layer complete and the one
 *   its hash names, the layout verifies and unpacks;
 * - and the same command again succeeds, with the plan's layer hashes and,
 *   for the top image, the digest a clean export of those layers gives.
 *
 * Every trial runs (a failure does not stop the series) so a run reports how
 * many trials were clean; the schedule is seeded, trial n of a kind gets the
 * same fault whatever the count.
 */
import { mkdir, readdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { BuildEvent } from '@day11/build';
import { LayerDir, LayerMeta } from '@day11/layer';
import { Layout } from '@day11/oci-export';
import { writeExecutable } from './concurrency.js';
import {
  day11,
  killGroup,
  processesMentioning,
  startDay11,
  waitQuiet,
  type Day11Process,
  type Ended,
} from './fixtures/cli.js';
import {
  cgroupsNamed,
  layoutProblems,
  leftovers,
  mountsUnder,
  runtimeTraces,
  unpackProblem,
} from './fixtures/leftovers.js';
import { makeRng, type Rng } from './fixtures/random.js';
import { Runc } from '@day11/container';

/** The kinds of trial, in the order their seeds are derived. */
export const CLI_FAULTS = ['signal', 'signal-create', 'kill-build', 'kill-export'] as const;
/** A kind of trial. */
export type CliFault = (typeof CLI_FAULTS)[number];

const SIGNALS: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP'];
const RUNTIMES = ['runc', 'crun'] as const;
/** Kill delays reach a little past a clean run, so some land on a process that is done. */
const OVERSHOOT = 1.15;
/** Trials share a layout this many at a time (a fresh one now and then keeps checks cheap). */
const TRIALS_PER_LAYOUT = 4;
/** Seconds the signalling runtime waits after being asked to run, at most. */
const CREATE_DELAY_MAX_S = 0.08;
/** How long processes SIGKILLed by a dying day11 may take to be reaped. */
const REAP_MS = 2000;

/** What the trials of a suite share. */
export interface CliContext {
  root: string;
  /** The one cache every trial of the suite builds into. */
  cache: string;
}

/** One trial's fault and what it saw. */
export interface TrialReport {
  fault: CliFault;
  index: number;
  /** How the fault was dealt (signal, runtime, delay). */
  what: string;
  /** Whether the fault landed before the command had finished by itself. */
  interrupted: boolean;
  problems: string[];
}

/** What a series of trials of one kind saw. */
export interface CliSummary {
  fault: CliFault;
  seed: number;
  trials: number;
  clean: number;
  interrupted: number;
  cleanRunMs: number;
  seconds: number;
  failures: TrialReport[];
}

/**
 * A plan of five steps on busybox: `stable` (the same in every trial, so
 * cached after the first), then a salted chain with a diamond, a big
 * incompressible file (an export compresses for a while) and a deletion
 * (a whiteout in the layer and the image).
 */
export function trialPlan(salt: string): object {
  return {
    base: 'busybox',
    steps: [
      { id: 'stable', run: 'mkdir -p /opt/stable && echo stable > /opt/stable/v' },
      {
        id: 'seed',
        deps: ['stable'],
        run: `mkdir -p /opt/t && echo ${salt} > /opt/t/salt && sleep 0.2`,
      },
      { id: 'big', deps: ['seed'], run: 'head -c 2000000 /dev/urandom > /opt/t/big' },
      { id: 'gone', deps: ['seed'], run: 'rm -r /opt/stable && echo gone > /opt/t/gone' },
      {
        id: 'top',
        deps: ['big', 'gone'],
        run: 'cat /opt/t/salt /opt/t/gone > /opt/t/top',
      },
    ],
  };
}

/** The step ids of {@link trialPlan}, the top one last. */
const STEP_IDS = ['stable', 'seed', 'big', 'gone', 'top'];

/**
 * A runtime for `--runtime` that, the first time it is asked to run a
 * container (`$DAY11_FAULT_ONCE` made), sends `$DAY11_FAULT_SIGNAL` to its
 * parent (day11) after `$DAY11_FAULT_DELAY` seconds, then is
 * `$DAY11_FAULT_RUNTIME`: the signal lands while the container is being created.
 */
export async function signallingRuntime(dir: string): Promise<string> {
  const path = join(dir, 'signalling-runtime');
  const script = [
    '#!/bin/sh',
    '# day11 fault suite: signal day11 while this runtime creates its container.',
    'if [ -n "$DAY11_FAULT_SIGNAL" ]; then',
    '  for arg in "$@"; do',
    '    if [ "$arg" = run ]; then',
    '      if mkdir "$DAY11_FAULT_ONCE" 2>/dev/null; then',
    '        parent=$PPID',
    '        ( sleep "$DAY11_FAULT_DELAY"; kill -s "$DAY11_FAULT_SIGNAL" "$parent" ) &',
    '      fi',
    '      break',
    '    fi',
    '  done',
    'fi',
    'exec "${DAY11_FAULT_RUNTIME:-runc}" "$@"',
    '',
  ].join('\n');
  await writeExecutable(path, script);
  return path;
}

interface Trial {
  fault: CliFault;
  index: number;
  rng: Rng;
  ctx: CliContext;
  cleanMs: number;
  wrapper: string;
}

/**
 * Runs `count` trials of `fault`; resolves with what they saw (never
 * rejects for a trial's problems: the caller asserts `failures` is empty).
 *
 * @example
 * ```ts
 * const summary = await runCliTrials(ctx, 'signal', 10, seedFrom('DAY11_FAULT_SEED'));
 * expect(summary.failures).toEqual([]);
 * ```
 */
export async function runCliTrials(
  ctx: CliContext,
  fault: CliFault,
  count: number,
  seed: number,
): Promise<CliSummary> {
  const started = performance.now();
  const rng = makeRng((seed + 101 * (CLI_FAULTS.indexOf(fault) + 1)) >>> 0);
  const wrapper = await signallingRuntime(ctx.root);
  const cleanMs = await cleanRunMs(ctx, fault);
  const summary: CliSummary = {
    fault,
    seed,
    trials: count,
    clean: 0,
    interrupted: 0,
    cleanRunMs: cleanMs,
    seconds: 0,
    failures: [],
  };
  for (let index = 0; index < count; index++) {
    const trial: Trial = { fault, index, rng, ctx, cleanMs, wrapper };
    const report = await runTrial(trial).catch((err: unknown): TrialReport => ({
      fault,
      index,
      what: 'the trial itself failed',
      interrupted: false,
      problems: [(err as Error).stack ?? String(err)],
    }));
    if (report.interrupted) summary.interrupted++;
    if (report.problems.length === 0) summary.clean++;
    else {
      summary.failures.push(report);
      await scrub(ctx);
    }
  }
  summary.seconds = (performance.now() - started) / 1000;
  return summary;
}

/** Names of the per-trial files: trials never depend on each other's steps (but `stable`). */
function trialFiles(ctx: CliContext, fault: CliFault, index: number) {
  const layout = join(ctx.root, `oci-${fault}-${Math.floor((index + 2) / TRIALS_PER_LAYOUT)}`);
  return { plan: join(ctx.root, 'plans', `${fault}-${index}.json`), layout };
}

async function writePlan(path: string, salt: string): Promise<void> {
  await mkdir(join(path, '..'), { recursive: true });
  await writeFile(path, JSON.stringify(trialPlan(salt)));
}

function buildArgs(ctx: CliContext, plan: string, layout: string, runtime: string): string[] {
  return [
    'build',
    plan,
    '--cache',
    ctx.cache,
    '--oci',
    layout,
    '--jobs',
    '2',
    '--runtime',
    runtime,
  ];
}

/** How long the faulted operation takes when nothing interrupts it (the shorter of two runs). */
async function cleanRunMs(ctx: CliContext, fault: CliFault): Promise<number> {
  let best = Infinity;
  for (const index of [-2, -1]) {
    const { plan, layout } = trialFiles(ctx, fault, index);
    await writePlan(plan, `clean-${fault}-${index}`);
    if (fault === 'kill-export') {
      await mustSucceed(buildArgs(ctx, plan, join(ctx.root, 'oci-scratch'), 'runc'));
      const p = startDay11(exportArgs(ctx, layout, index));
      await mustEnd(p);
      best = Math.min(best, p.elapsed());
    } else {
      const p = startDay11(buildArgs(ctx, plan, layout, 'runc'), { json: true });
      await mustEnd(p);
      best = Math.min(best, p.elapsed());
    }
  }
  return best;
}

function exportArgs(ctx: CliContext, layout: string, index: number): string[] {
  return ['export', '--cache', ctx.cache, '--oci', layout, '--tag', tagOf(index), `top`];
}

/** Each export trial tags its own image (the layout holds several). */
function tagOf(index: number): string {
  return `top.${index + 2}`;
}

async function mustSucceed(args: string[]): Promise<BuildEvent[]> {
  const r = await day11(args, { json: args[0] === 'build' });
  if (r.code !== 0) throw new Error(`day11 ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
  return r.events;
}

async function mustEnd(p: Day11Process): Promise<void> {
  const end = await p.ended;
  if (end.code !== 0)
    throw new Error(`clean run failed (${end.code ?? end.signal}): ${p.stderr()}`);
}

async function runTrial(t: Trial): Promise<TrialReport> {
  const { ctx, fault, index, rng } = t;
  const { plan, layout } = trialFiles(ctx, fault, index);
  const salt = `${fault}-${index}-${rng.int(0, 2 ** 31)}`;
  await writePlan(plan, salt);
  const runtime = rng.pick(RUNTIMES);
  const afterMs = rng.next() * t.cleanMs * OVERSHOOT;
  const signal = rng.pick(SIGNALS);
  const createDelay = rng.next() * CREATE_DELAY_MAX_S;
  let args: string[];
  if (fault === 'kill-export') {
    // The layers of the clean runs, their blobs forgotten: the export compresses again.
    await forgetBlobs(ctx.cache);
    args = exportArgs(ctx, layout, index);
  } else {
    args = buildArgs(ctx, plan, layout, fault === 'signal-create' ? t.wrapper : runtime);
  }
  const what =
    fault === 'signal-create'
      ? `${signal} ${(createDelay * 1000).toFixed(0)} ms after ${runtime} was asked to run`
      : fault === 'signal'
        ? `${signal} after ${afterMs.toFixed(0)} ms (${runtime})`
        : `SIGKILL of the process group after ${afterMs.toFixed(0)} ms (${runtime})`;
  const env =
    fault === 'signal-create'
      ? {
          DAY11_FAULT_SIGNAL: signal.replace(/^SIG/, ''),
          DAY11_FAULT_DELAY: createDelay.toFixed(3),
          DAY11_FAULT_ONCE: join(ctx.root, `once-${index}-${rng.int(0, 2 ** 31)}`),
          DAY11_FAULT_RUNTIME: runtime,
        }
      : undefined;
  const p = startDay11(args, { json: args[0] === 'build', watch: true, ...(env && { env }) });
  let timer: NodeJS.Timeout | undefined;
  if (fault === 'signal') timer = setTimeout(() => process.kill(p.pid, signal), afterMs);
  if (fault === 'kill-build' || fault === 'kill-export')
    timer = setTimeout(() => killGroup(p.pid, 'SIGKILL'), afterMs);
  const end = await p.ended;
  clearTimeout(timer);
  const problems: string[] = [];
  const finished = end.code === 0;
  const interrupted = !finished;
  if (fault === 'signal' || fault === 'signal-create') {
    problems.push(...(await signalProblems(ctx, p, end, signal)));
  } else if (!finished && end.signal !== 'SIGKILL') {
    problems.push(`exited ${end.code ?? end.signal} before the kill: ${p.stderr().trim()}`);
  }
  problems.push(...(await recoverProblems(ctx, p, layout)));
  if (problems.length === 0) problems.push(...(await rerunProblems(ctx, args, p, layout, index)));
  return { fault, index, what, interrupted, problems };
}

/**
 * A signalled day11: it died of the signal (or had finished by itself),
 * and nothing of its runs is left: no mount, container, cgroup or process.
 */
async function signalProblems(
  ctx: CliContext,
  p: Day11Process,
  end: Ended,
  sig: NodeJS.Signals,
): Promise<string[]> {
  const problems: string[] = [];
  if (end.code !== 0 && end.signal !== sig)
    problems.push(`did not die of ${sig}: exit ${end.code ?? end.signal}: ${p.stderr().trim()}`);
  const ids = `day11-run-${p.pid}-`;
  const left = await waitQuiet(p.seen, REAP_MS);
  problems.push(...left.map((l) => `process left running: ${l}`));
  problems.push(...processesMentioning(ids).map((l) => `process naming its container: ${l}`));
  problems.push(...(await cgroupsNamed(ids)).map((c) => `cgroup left: ${c}`));
  problems.push(...(await containersOf(ids)).map((c) => `container left: ${c}`));
  problems.push(...(await mountsUnder(ctx.root)).map((m) => `mount left: ${m}`));
  return problems;
}

/** Containers (listed, or half-created state directories) whose id starts with `prefix`. */
async function containersOf(prefix: string): Promise<string[]> {
  const found: string[] = [];
  for (const runtime of RUNTIMES) {
    const listed = await Runc.list({ runtime }).catch(() => []);
    for (const c of listed) if (c.id.startsWith(prefix)) found.push(`${runtime}:${c.id}`);
  }
  found.push(...(await runtimeTraces([])).filter((t) => t.includes(prefix)));
  return found;
}

/** `day11 recover --cache C --oci L`, then: nothing left anywhere, a sound layout. */
async function recoverProblems(ctx: CliContext, p: Day11Process, layout: string) {
  const problems: string[] = [];
  const r = await day11([
    'recover',
    '--cache',
    ctx.cache,
    ...(OLD_RECOVERY ? [] : ['--oci', layout]),
  ]);
  if (r.code !== 0) problems.push(`day11 recover exited ${r.code}: ${r.stderr.trim()}`);
  // Orphaned runtimes end once recover deleted their containers.
  problems.push(...(await waitQuiet(p.seen, 10_000)).map((l) => `still running: ${l}`));
  const ids = `day11-run-${p.pid}-`;
  problems.push(...(await cgroupsNamed(ids)).map((c) => `cgroup left after recover: ${c}`));
  problems.push(...(await containersOf(ids)).map((c) => `container left after recover: ${c}`));
  problems.push(...(await leftovers({ root: ctx.root, osDir: ctx.cache, layouts: [layout] })));
  problems.push(...(await layoutProblemsIfAny(layout)));
  return problems;
}

/**
 * `DAY11_FAULT_OLD_RECOVERY=1`: recover as before issue 13, with `day11
 * recover --cache C` alone (for the figures of a build whose recover does
 * not know layouts).
 */
const OLD_RECOVERY = process.env['DAY11_FAULT_OLD_RECOVERY'] === '1';

/**
 * `Layout.verify` of a layout that exists: a command killed before its
 * first export leaves none (or only an empty `blobs/sha256/`, which the
 * next export completes).
 */
async function layoutProblemsIfAny(layout: string): Promise<string[]> {
  const names = await readdir(layout).catch(() => [] as string[]);
  if (!names.includes('oci-layout') && !names.includes('index.json')) return [];
  return layoutProblems(layout).catch((e: Error) => [e.message]);
}

/**
 * The same command again: it succeeds, every step's layer is complete and
 * the one its hash names (the hashes the faulted run announced), and the
 * images are sound: every tag unpacks, and the top image's digest is what a
 * clean `day11 export` of the same layers gives.
 */
async function rerunProblems(
  ctx: CliContext,
  args: string[],
  faulted: Day11Process,
  layout: string,
  index: number,
): Promise<string[]> {
  const rerun = await day11(args, { json: args[0] === 'build' });
  if (rerun.code !== 0)
    return [`the re-run exited ${rerun.code ?? rerun.signal}: ${rerun.stderr.trim()}`];
  const problems: string[] = [];
  const isBuild = args[0] === 'build';
  if (isBuild) {
    const announced = hashesOf(faulted.events);
    const now = hashesOf(rerun.events);
    for (const id of STEP_IDS) {
      const hash = now.get(id);
      if (hash === undefined) problems.push(`the re-run did not report step ${id}`);
      else if (announced.has(id) && announced.get(id) !== hash)
        problems.push(
          `step ${id}: layer ${hash}, but the faulted run announced ${announced.get(id)}`,
        );
      else problems.push(...(await layerIsStep(ctx.cache, id, hash)));
    }
  }
  problems.push(...(await leftovers({ root: ctx.root, osDir: ctx.cache, layouts: [layout] })));
  problems.push(...(await layoutProblemsIfAny(layout)));
  // The top image holds every layer; the other images' blobs are checked by Layout.verify.
  const tag = isBuild ? 'top' : tagOf(index);
  const unpacked = await unpackProblem(layout, tag);
  if (unpacked) problems.push(unpacked);
  const got = (await Layout.tags(layout)).find((t) => t.tag === tag)?.digest;
  const scratch = join(ctx.root, 'oci-reference');
  await rm(scratch, { recursive: true, force: true });
  const reference = await day11([
    'export',
    '--cache',
    ctx.cache,
    '--oci',
    scratch,
    '--tag',
    tag,
    'top',
    '--json',
  ]);
  const want =
    reference.code === 0
      ? (JSON.parse(reference.stdout) as { manifestDigest: string }).manifestDigest
      : undefined;
  if (want === undefined) problems.push(`the reference export failed: ${reference.stderr.trim()}`);
  else if (got !== want) problems.push(`${layout}:${tag} is ${got}, a clean export gives ${want}`);
  return problems;
}

function hashesOf(events: readonly BuildEvent[]): Map<string, string> {
  const map = new Map<string, string>();
  for (const e of events) if (e.type === 'step') map.set(e.id, e.hash);
  return map;
}

/** The layer of `hash` is complete, records that hash, and was made by step `id`. */
async function layerIsStep(cache: string, id: string, hash: string): Promise<string[]> {
  const dir = LayerDir.path({ osDir: cache, hash });
  const meta = await LayerMeta.find(dir).catch((err: Error) => err);
  if (meta === undefined) return [`step ${id}: ${dir} is missing`];
  if (meta instanceof Error) return [`step ${id}: ${meta.message}`];
  if (meta.hash !== undefined && meta.hash !== hash)
    return [`step ${id}: ${dir}/layer.json records hash ${String(meta.hash)}`];
  const step = JSON.parse(await readFile(join(dir, 'step.json'), 'utf8').catch(() => '{}')) as {
    id?: string;
  };
  return step.id === id ? [] : [`step ${id}: ${dir}/step.json names ${String(step.id)}`];
}

/**
 * Drops the cached blobs of the cache's layers, so the next export
 * compresses again (a long window for the kill), as a first export does.
 */
async function forgetBlobs(cache: string): Promise<void> {
  for (const name of await readdir(cache)) {
    if (!LayerDir.isLayerName(name)) continue;
    for (const file of ['layer.tar.gz', 'layer.tar.gz.digests'])
      await rm(join(cache, name, file), { force: true });
  }
}

/**
 * After a failed trial, what it left is removed by every means (so the next
 * trial starts clean): recover, the layouts' gc, stray cgroups.
 */
async function scrub(ctx: CliContext): Promise<void> {
  await day11(['recover', '--cache', ctx.cache]).catch(() => undefined);
  for (const name of await readdir(ctx.root)) {
    if (name.startsWith('oci-')) await Layout.gc(join(ctx.root, name)).catch(() => undefined);
  }
  for (const cg of await cgroupsNamed('day11-run-')) {
    const pid = Number(/day11-run-(\d+)-/.exec(cg)?.[1]);
    if (!processAlive(pid)) await rmdir(cg).catch(() => undefined);
  }
  await delay(100);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}
