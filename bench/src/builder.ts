/**
 * The builder's own cost per step, as plans grow: 100, 1,000 and 10,000
 * independent steps, and a chain of 1,000, built with a sandbox that runs
 * nothing (it hands back an empty upper at once), so what is measured is
 * validation, hashing, scheduling, the cache check, the layer lock, the
 * commit (with its fsyncs) and the events — everything but the container.
 * The baselines: the container run itself (`crun run true` and `runc run
 * true` spawned directly on a prepared rootfs), which a real step adds on
 * top. Also the time from `build()` to the first step starting, and the
 * time to validate and hash a 10,000-step chain; and for the whole command,
 * process start to the first step running of `day11 build` with 10,000
 * steps. Each size in its own fresh cache; medians of the rounds.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createBuilder, parsePlan, PlanGraph, type Sandbox } from '@day11/build';
import { OciSpec } from '@day11/container';
import { Exec, randomHex, TempName } from '@day11/exec';
import { median, toMarkdown, type BenchRow } from './table.js';

/** Runs nothing: an empty upper in the cache and an empty log (as a runtime opens it), exit 0. */
function nullSandbox(osDir: string): Sandbox {
  return {
    async run({ logFile }) {
      const upper = TempName.inside(osDir, 'upper');
      await mkdir(upper);
      await writeFile(logFile, '');
      return { status: 'exited', exitCode: 0, upper, timing: [] };
    },
    async close() {},
  };
}

async function rootfs(dir: string): Promise<void> {
  for (const d of ['bin', 'etc', 'proc', 'dev', 'sys', 'tmp'])
    await mkdir(join(dir, d), { recursive: true });
  await chmod(join(dir, 'tmp'), 0o1777);
  await copyFile('/bin/busybox', join(dir, 'bin/busybox'));
  await symlink('busybox', join(dir, 'bin/true'));
  await symlink('busybox', join(dir, 'bin/sh'));
}

interface Measured {
  totalMs: number;
  firstStepMs: number;
}

/** Builds `steps` with the null sandbox in a fresh cache; time in total and to the first step. */
async function buildOnce(work: string, steps: object[]): Promise<Measured> {
  const osDir = join(work, `cache-${randomHex(4)}`);
  const base = join(work, 'rootfs');
  const plan = parsePlan({ base: { dir: base }, steps }, 'bench');
  // The base import is the same for every size: done before the clock starts.
  const warm = createBuilder({ osDir, sandbox: nullSandbox(osDir) });
  await warm.build(parsePlan({ base: { dir: base }, steps: [{ id: 'warm', run: 'true' }] }, 'w'));
  await warm.close();
  const builder = createBuilder({ osDir, sandbox: nullSandbox(osDir), jobs: 4 });
  const started = performance.now();
  let firstStepMs = NaN;
  const result = await builder.build(plan, {
    onEvent: (e) => {
      if (Number.isNaN(firstStepMs) && e.type === 'step' && e.status === 'running') {
        firstStepMs = performance.now() - started;
      }
    },
  });
  const totalMs = performance.now() - started;
  await builder.close();
  if (!result.ok) throw new Error('bench build failed');
  await rm(osDir, { recursive: true, force: true });
  return { totalMs, firstStepMs };
}

const independent = (n: number): object[] =>
  Array.from({ length: n }, (_, i) => ({ id: `pkg-${i}`, run: 'true' }));
const chain = (n: number): object[] =>
  Array.from({ length: n }, (_, i) => ({
    id: `pkg-${i}`,
    run: 'true',
    ...(i > 0 && { deps: [`pkg-${i - 1}`] }),
  }));

/** The built CLI. */
const CLI = join(import.meta.dirname, '../../packages/cli/dist/main.js');

/**
 * `day11 build` of `steps` on busybox in `osDir` (the base already
 * imported): milliseconds from spawning the process to its first step
 * running; then SIGTERM, and `day11 recover` for what the kill left.
 */
async function cliFirstStep(work: string, osDir: string, steps: object[]): Promise<number> {
  const plan = join(work, `plan-${randomHex(4)}.json`);
  await writeFile(plan, JSON.stringify({ base: 'busybox', steps }));
  const started = performance.now();
  const child = spawn(process.execPath, [CLI, 'build', plan, '--cache', osDir, '--json'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const ms = await new Promise<number>((resolve, reject) => {
    let buffered = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      buffered += chunk;
      if (/"status":"running"/.test(buffered)) {
        resolve(performance.now() - started);
        child.kill('SIGTERM');
      }
      buffered = buffered.slice(-200);
    });
    child.once('close', () => reject(new Error('day11 build ended before a step ran')));
  });
  await new Promise((resolve) =>
    child.exitCode === null ? child.once('close', resolve) : resolve(0),
  );
  spawnSync(process.execPath, [CLI, 'recover', '--cache', osDir], { stdio: 'ignore' });
  return ms;
}

/** `steps` with commands of their own for round `r`: nothing of an earlier round is cached. */
function salted(steps: readonly object[], r: number): object[] {
  return steps.map((s) => ({ ...s, run: `true ${r}` }));
}

/** `runtime run true` on a prepared bundle, spawned directly, median of `rounds`. */
async function bareRun(work: string, runtime: string, rounds: number): Promise<number> {
  const bundle = join(work, `bundle-${runtime}`);
  await mkdir(bundle, { recursive: true });
  const spec = OciSpec.instantiate(OciSpec.template(OciSpec.make({ args: ['true'] })), {
    rootfs: join(work, 'rootfs'),
  });
  await writeFile(join(bundle, 'config.json'), JSON.stringify(spec));
  const times: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t = performance.now();
    const r = spawnSync(runtime, ['run', '--bundle', bundle, `bench-${randomHex(4)}`], {
      stdio: 'ignore',
    });
    times.push(performance.now() - t);
    if (r.status !== 0) throw new Error(`${runtime} run failed`);
  }
  return median(times);
}

export async function run(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-builder-'));
  try {
    await rootfs(join(work, 'rootfs'));
    const rows: BenchRow[] = [];
    const crun = await bareRun(work, 'crun', 20);
    const runc = await bareRun(work, 'runc', 20);
    const sizes: [string, object[], number][] = [
      ['100 independent steps', independent(100), 5],
      ['1,000 independent steps', independent(1000), 2],
      ['10,000 independent steps', independent(10_000), 1],
      ['a chain of 1,000 steps', chain(1000), 1],
    ];
    for (const [label, steps, rounds] of sizes) {
      const runs: Measured[] = [];
      for (let r = 0; r < rounds; r++) runs.push(await buildOnce(work, steps));
      const perStep = median(runs.map((m) => m.totalMs / steps.length));
      rows.push({
        name: `builder's own cost per step, ${label} (jobs 4, nothing run)`,
        value: perStep,
        baselineName: 'crun run true, spawned directly',
        baseline: crun,
      });
      rows.push({
        name: `builder's own cost per step, ${label}`,
        value: perStep,
        baselineName: 'runc run true, spawned directly',
        baseline: runc,
      });
      rows.push({
        name: `time to the first step, ${label}`,
        value: median(runs.map((m) => m.firstStepMs)),
      });
    }
    // The command as a user runs it, process start included (the base imported beforehand).
    const osDir = join(work, 'cli-cache');
    await cliFirstStep(work, osDir, [{ id: 'warm', run: 'true' }]);
    for (const [label, steps] of [
      ['10,000 independent steps', independent(10_000)],
      ['a chain of 10,000 steps', chain(10_000)],
    ] as const) {
      const times: number[] = [];
      for (let r = 0; r < 3; r++) times.push(await cliFirstStep(work, osDir, salted(steps, r)));
      rows.push({
        name: `\`day11 build\` of ${label}: process start to the first step running`,
        value: median(times),
      });
    }
    const t = performance.now();
    const plan = parsePlan({ base: 'busybox', steps: chain(10_000).reverse() }, 'chain');
    const graph = new PlanGraph(plan, 'b'.repeat(64));
    graph.stack('pkg-9999');
    rows.push({
      name: 'validate, order and hash a 10,000-step chain (and its deepest stack)',
      value: performance.now() - t,
    });
    return rows;
  } finally {
    await rm(work, { recursive: true, force: true });
    await Exec.run('runc', ['list', '-q']).catch(() => undefined);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
