/**
 * `runInLayers` of `true` over a 50-layer stack (49 dependency layers on a
 * busybox-static base) against a bare `runc run` of `true` on an
 * already-prepared rootfs (the same busybox tree as a plain directory), in
 * the same script, rounds alternating; the same with crun.
 *
 * runInLayers does everything a build step needs that the bare run does not:
 * leases on the 50 layers, an overlay of 50 lowers through the new mount
 * API, /etc/hosts in the upper, the unmount, and the upper moved out for a
 * commit. With the default lingerMs, back-to-back runs share the leases and
 * reuse the scratch directory, as a builder's consecutive steps do; a third
 * row measures the cold path (lingerMs 0) against the same runc baseline.
 *
 * Each round runs every variant once per runtime, in a shuffled order (the
 * seed is fixed): a container start is faster right after another one (the
 * kernel's cgroup lock skips a grace period), so a fixed order would favour
 * whichever variant comes second. A "floor" variant does only what no
 * layered run can skip — make the upper and its /etc/hosts, mount the 50
 * lowers, write config.json, run, unmount, move the upper — with none of
 * runInLayers's safety (leases, checks, cleanup on failure): how close
 * runInLayers comes to it is how much its bookkeeping costs.
 */
import { chmod, copyFile, mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { OciSpec, Overlay, Runc } from '@day11/container';
import { Exec, TempName } from '@day11/exec';
import { Commit, Hash, Import, type Base } from '@day11/layer';
import { PHASES, recover, runInLayers } from '@day11/runner';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = 60;
const STACK = 50;
const RUNTIMES = ['runc', 'crun'] as const;
type Runtime = (typeof RUNTIMES)[number];

async function makeBusyboxRootfs(dir: string): Promise<void> {
  for (const d of ['bin', 'etc', 'proc', 'dev', 'sys', 'tmp', 'root']) {
    await mkdir(join(dir, d), { recursive: true });
  }
  await chmod(join(dir, 'tmp'), 0o1777);
  await copyFile('/bin/busybox', join(dir, 'bin/busybox'));
  const { stdout } = await Exec.run('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await symlink('busybox', join(dir, 'bin', applet));
  }
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\n');
}

/** `count` committed layers of one small file each, topmost first. */
async function makeLayers(osDir: string, base: Base, count: number): Promise<string[]> {
  const dirs: string[] = [];
  for (let n = 0; n < count; n++) {
    const upper = TempName.inside(osDir, `bench-${n}`);
    await mkdir(join(upper, 'layers'), { recursive: true });
    await writeFile(join(upper, 'layers', String(n)), `layer ${n}\n`);
    const { dir } = await Commit.commit({
      osDir,
      hash: Hash.ofStrings(['bench-runner', String(n)]),
      upper,
      meta: {
        exit_status: 0,
        parent_hashes: [],
        uid: 0,
        gid: 0,
        base_hash: base.hash,
        timing: [],
        failed_dep: null,
      },
    });
    dirs.unshift(dir);
  }
  return dirs;
}

function layerFs(dirs: readonly string[]): string[] {
  return dirs.map((d) => join(d, 'fs'));
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/** The baseline: `runc run` alone on a prepared bundle (it deletes a container that exits by itself). */
function bare(bundle: string, runtime: Runtime): Promise<unknown> {
  return Exec.run(runtime, ['run', '--bundle', bundle, Runc.newId('day11-bench')], {
    privileged: true,
  });
}

interface Setup {
  osDir: string;
  base: Base;
  deps: string[];
  bundle: string;
  /** A bundle whose rootfs is the same 50-layer stack, mounted once beforehand. */
  stackBundle: string;
  stackMount: Overlay.OverlayMount;
  spec: OciSpec.Template;
  /** The floor variant's directory (work/, merged/) and its config.json text. */
  floor: { dir: string; config: string };
}

async function setUp(work: string): Promise<Setup> {
  const rootfs = join(work, 'rootfs');
  await makeBusyboxRootfs(rootfs);
  const osDir = join(work, 'cache');
  const base = await Import.fromDirectory({ osDir, dir: rootfs, image: 'bench-busybox' });
  const deps = await makeLayers(osDir, base, STACK - 1);
  const bundle = join(work, 'bundle');
  await mkdir(bundle);
  await OciSpec.write(bundle, OciSpec.make({ args: ['true'], rootfs }));
  const spec = OciSpec.template(OciSpec.make({ args: ['true'] }));
  const stack = join(work, 'stack');
  for (const d of ['upper', 'work', 'merged', 'bundle'])
    await mkdir(join(stack, d), { recursive: true });
  const stackMount = await Overlay.mount({
    lowers: [...layerFs(deps), join(base.dir, 'fs')],
    upper: join(stack, 'upper'),
    work: join(stack, 'work'),
    target: join(stack, 'merged'),
  });
  const stackBundle = join(stack, 'bundle');
  await OciSpec.write(stackBundle, OciSpec.make({ args: ['true'], rootfs: join(stack, 'merged') }));
  const floorDir = join(work, 'floor');
  for (const d of ['work', 'merged']) await mkdir(join(floorDir, d), { recursive: true });
  const floorSpec = OciSpec.make({ args: ['true'], rootfs: join(floorDir, 'merged') });
  const floor = { dir: floorDir, config: JSON.stringify(floorSpec) };
  return { osDir, base, deps, bundle, stackBundle, stackMount, spec, floor };
}

/** The floor: the few steps every layered run of `true` must take, and nothing else. */
async function floor(s: Setup, runtime: Runtime): Promise<number> {
  const { dir } = s.floor;
  const upper = join(dir, 'upper');
  const started = performance.now();
  await mkdir(join(upper, 'etc'), { recursive: true });
  await writeFile(join(upper, 'etc', 'hosts'), '127.0.0.1 localhost\n');
  const mounted = await Overlay.mount({
    lowers: [...layerFs(s.deps), join(s.base.dir, 'fs')],
    upper,
    work: join(dir, 'work'),
    target: join(dir, 'merged'),
  });
  await writeFile(join(dir, 'config.json'), s.floor.config);
  await bare(dir, runtime);
  await mounted.unmount();
  await rename(upper, join(dir, 'taken'));
  const ms = performance.now() - started;
  await rm(join(dir, 'taken'), { recursive: true, force: true });
  return ms;
}

/** One runInLayers of `true`; the upper is thrown away (outside the timing). */
async function layered(
  s: Setup,
  runtime: Runtime,
  phases: Map<string, number[]>,
  lingerMs?: number,
): Promise<number> {
  const started = performance.now();
  const { run, upper, timing } = await runInLayers({
    base: s.base,
    buildDirs: s.deps,
    spec: s.spec,
    runtime,
    ...(lingerMs !== undefined && { lingerMs }),
  });
  const ms = performance.now() - started;
  if (run.exitCode !== 0)
    throw new Error(`runInLayers with ${runtime}: true exited ${run.exitCode}`);
  for (const [phase, seconds] of timing) phases.get(phase)?.push(seconds * 1000);
  await rm(upper, { recursive: true, force: true });
  return ms;
}

/** Runs the benchmark; returns its rows (and prints the phase breakdown to stderr). */
export async function run(): Promise<BenchRow[]> {
  await Runc.prepareCrunCgroups();
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-runner-'));
  try {
    const s = await setUp(work);
    const bareMs: Record<Runtime, number[]> = { runc: [], crun: [] };
    const stackMs: Record<Runtime, number[]> = { runc: [], crun: [] };
    const layeredMs: Record<Runtime, number[]> = { runc: [], crun: [] };
    const floorMs: Record<Runtime, number[]> = { runc: [], crun: [] };
    const cold = { bare: [] as number[], layered: [] as number[] };
    const phases = Object.fromEntries(
      RUNTIMES.map((r) => [r, new Map(PHASES.map((p) => [p as string, [] as number[]]))]),
    ) as Record<Runtime, Map<string, number[]>>;
    for (const runtime of RUNTIMES) {
      await bare(s.bundle, runtime); // warm the page cache
      await layered(s, runtime, new Map());
    }
    const random = seeded(20261124);
    const variants = {
      bare: async (r: Runtime) => bareMs[r].push(await time(() => bare(s.bundle, r))),
      stack: async (r: Runtime) => stackMs[r].push(await time(() => bare(s.stackBundle, r))),
      floor: async (r: Runtime) => floorMs[r].push(await floor(s, r)),
      layered: async (r: Runtime) => layeredMs[r].push(await layered(s, r, phases[r])),
    };
    for (let i = 0; i < ROUNDS; i++) {
      for (const runtime of shuffled(RUNTIMES, random)) {
        for (const variant of shuffled(Object.values(variants), random)) await variant(runtime);
      }
    }
    // Apart, so that it does not release the leases of the rounds above:
    // every run leases its 50 layers and makes its directories anew.
    for (let i = 0; i < ROUNDS; i++) {
      cold.bare.push(await time(() => bare(s.bundle, 'runc')));
      cold.layered.push(await layered(s, 'runc', new Map(), 0));
    }
    for (const runtime of RUNTIMES) {
      const breakdown = [...phases[runtime]]
        .map(([p, ms]) => `${p} ${median(ms).toFixed(2)}`)
        .join(', ');
      process.stderr.write(`runInLayers phases with ${runtime} (median ms): ${breakdown}\n`);
    }
    await s.stackMount.unmount();
    await recover({ osDir: s.osDir });
    return [
      ...RUNTIMES.map((runtime) => ({
        name: `runInLayers(true), ${STACK}-layer stack, ${runtime} (median of ${ROUNDS})`,
        value: median(layeredMs[runtime]),
        baselineName: `${runtime} run true, prepared rootfs`,
        baseline: median(bareMs[runtime]),
        target: 1.2,
      })),
      ...RUNTIMES.map((runtime) => ({
        name: `floor: upper + /etc/hosts, mount ${STACK} lowers, ${runtime} run true, unmount, move the upper`,
        value: median(floorMs[runtime]),
        baselineName: `${runtime} run true, prepared rootfs`,
        baseline: median(bareMs[runtime]),
      })),
      // The same runs against a bare run on the very same stack, mounted once
      // beforehand: what runInLayers itself adds (leases, dirs, mount, unmount),
      // without what any 50-layer overlay costs the runtime.
      ...RUNTIMES.map((runtime) => ({
        name: `runInLayers(true), ${STACK}-layer stack, ${runtime}`,
        value: median(layeredMs[runtime]),
        baselineName: `${runtime} run true on that stack, mounted beforehand`,
        baseline: median(stackMs[runtime]),
      })),
      {
        name: `runInLayers(true), ${STACK}-layer stack, runc, lingerMs 0: cold leases, new dirs (median of ${ROUNDS})`,
        value: median(cold.layered),
        baselineName: 'runc run true, prepared rootfs',
        baseline: median(cold.bare),
      },
    ];
  } finally {
    await Exec.run('rm', ['-rf', work]);
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
