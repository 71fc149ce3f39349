/**
 * Concurrency (issue 7): many `day11 build` processes on overlapping plans in
 * one cache, exporting into one layout. The plans, a runtime wrapper that
 * counts container runs, and the processes' JSON event streams.
 */
import { chmod, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BuildEvent, StepEvent, SummaryEvent } from '@day11/build';
import { day11 } from './fixtures/cli.js';

export { CLI } from './fixtures/cli.js';

/** One step of a plan file. */
export interface PlanStep {
  id: string;
  deps?: string[];
  run: string;
}

/** Seconds each step sleeps, so that processes reach a shared step while it is being built. */
const STEP_SECONDS = 0.3;

function step(id: string, deps: string[], write: string): PlanStep {
  return { id, deps, run: `mkdir -p /opt/out && ${write} && sleep ${STEP_SECONDS}` };
}

/**
 * The plan of process `p`: a chain `shared-a` → `shared-b` → `shared-c` that
 * every process has, a step `pair-<p/2>` shared with one neighbour, and two
 * steps of its own. Same ids and commands give the same layer hashes, so the
 * shared steps are one layer each, wanted by several processes at once.
 *
 * @example
 * ```ts
 * overlappingPlan(3).steps.map((s) => s.id); // shared-a, shared-b, shared-c, pair-1, own-3-x, own-3-y
 * ```
 */
export function overlappingPlan(p: number): { base: 'busybox'; steps: PlanStep[] } {
  const pair = `pair-${Math.floor(p / 2)}`;
  return {
    base: 'busybox',
    steps: [
      step('shared-a', [], 'echo a > /opt/out/a'),
      step('shared-b', ['shared-a'], 'cat /opt/out/a > /opt/out/b'),
      step('shared-c', ['shared-b'], 'echo c > /opt/out/c'),
      step(pair, ['shared-a'], `echo ${pair} > /opt/out/${pair}`),
      step(`own-${p}-x`, ['shared-c'], `echo ${p} > /opt/out/own-x`),
      step(`own-${p}-y`, [`own-${p}-x`, pair], `cat /opt/out/own-x /opt/out/${pair} > /opt/out/y`),
    ],
  };
}

/**
 * Writes a runtime for `--runtime`: a shell script that appends one line to
 * `counter` for each container it runs (`run` among its arguments; the runner
 * also calls `delete`, `kill`, `state` and `--version`), then execs runc.
 */
export async function countingRuntime(dir: string, counter: string): Promise<string> {
  const path = join(dir, 'counting-runc');
  const script = [
    '#!/bin/sh',
    '# Counts container runs for the concurrency suite, then is runc.',
    'for arg in "$@"; do',
    `  if [ "$arg" = run ]; then echo "$*" >> '${counter}'; break; fi`,
    'done',
    'exec runc "$@"',
    '',
  ].join('\n');
  await writeExecutable(path, script);
  return path;
}

/**
 * Writes `text` to `path` and makes it executable (a script for `--runtime`).
 *
 * @example
 * ```ts
 * await writeExecutable(join(dir, 'runtime'), '#!/bin/sh\nexec runc "$@"\n');
 * ```
 */
export async function writeExecutable(path: string, text: string): Promise<void> {
  await writeFile(path, text);
  await chmod(path, 0o755);
}

/** Lines of the counter file: one per container run. */
export async function countedRuns(counter: string): Promise<string[]> {
  const text = await readFile(counter, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean);
}

/** How one `day11 build` process ended, with its parsed events. */
export interface BuildProcess {
  code: number | null;
  events: BuildEvent[];
  stderr: string;
}

/**
 * Runs `day11 ...args` with `--json`; resolves when it exits.
 *
 * @example
 * ```ts
 * const r = await day11Json(['build', plan, '--cache', cache]);
 * ```
 */
export async function day11Json(
  args: readonly string[],
  timeoutMs = 300_000,
): Promise<BuildProcess> {
  const r = await day11(args, { json: true, timeoutMs });
  return { code: r.code, events: r.events, stderr: r.stderr };
}

/** The final status event of every step of a process. */
export function finalSteps(events: readonly BuildEvent[]): StepEvent[] {
  const last = new Map<string, StepEvent>();
  for (const e of events) if (e.type === 'step') last.set(e.id, e);
  return [...last.values()];
}

/** The process's summary event, if it got that far. */
export function summaryOf(events: readonly BuildEvent[]): SummaryEvent | undefined {
  return events.find((e): e is SummaryEvent => e.type === 'summary');
}
