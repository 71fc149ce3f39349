/**
 * `runInLayers` of `true` over a 50-layer stack (49 dependency layers on a
 * busybox-static base) against the runtime itself: `runc run` (or `crun
 * run`) of `true` on an already prepared plain rootfs (the same busybox tree
 * as a directory), spawned directly — `spawnSync`, and a shell loop of runs
 * timed as a whole — never through a wrapper of ours.
 *
 * runInLayers does everything a build step needs that the bare run does not:
 * leases on the 50 layers, an overlay of 50 lowers through the new mount
 * API, /etc/hosts in the upper, the unmount, and the upper moved out for a
 * commit. Warm (the default lingerMs): back-to-back runs share the leases and
 * reuse the scratch directory, as a builder's consecutive steps do. Cold
 * (`lingerMs: 0`): every run leases its 50 layers and makes its directories
 * anew, and lets them go after.
 *
 * Each round runs every variant once per runtime, in a shuffled order (the
 * seed is fixed): a container start is faster right after another one (the
 * kernel's cgroup lock skips a grace period), so a fixed order would favour
 * whichever variant comes second. A "floor" variant does only what no
 * layered run can skip — make the upper and its /etc/hosts, mount the 50
 * lowers (volatile, as runInLayers does), write config.json, run, unmount,
 * move the upper — with none of runInLayers's safety (leases, checks,
 * cleanup on failure): how close runInLayers comes to it is how much its
 * bookkeeping costs.
 *
 * What users would run instead: `podman run --rm` and `buildah run` of
 * `true` on the same 50-layer stack, exported by day11 and copied into a
 * private containers-storage with skopeo; fewer rounds (each takes hundreds
 * of milliseconds), alternated with runInLayers.
 */
import { spawnSync } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { OciSpec, Overlay, Runc } from '@day11/container';
import { Exec, TempName } from '@day11/exec';
import { Commit, Hash, Import, type Base } from '@day11/layer';
import { exportImage } from '@day11/oci-export';
import { PHASES, recover, releaseIdle, runInLayers } from '@day11/runner';
import { bareId, bareSync } from './runtime.js';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = 40;
/** Runs per shell loop: the loop is timed as a whole and divided. */
const LOOP = 5;
/** Rounds of podman run / buildah run (each costs hundreds of milliseconds). */
const ENGINE_ROUNDS = 8;
const STACK = 50;
/**
 * The warm runs' lingerMs: long enough that the shuffled variants between
 * two of them (seconds on a loaded machine) never outlast it, as the steps
 * of one build never outlast their runner's.
 */
const WARM_LINGER_MS = 600_000;
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

/** The baseline: `runc run` alone on a prepared bundle, spawned directly (`spawnSync`). */
const bare = bareSync;

/** The other baseline: {@link LOOP} runs in one shell loop, timed as a whole, per run. */
function loop(bundle: string, runtime: Runtime): number {
  const script = `i=0; while [ $i -lt ${LOOP} ]; do ${runtime} run --bundle "$1" "$2-$i" || exit 1; i=$((i+1)); done`;
  const started = performance.now();
  const r = spawnSync('sh', ['-c', script, 'sh', bundle, bareId()], { stdio: 'ignore' });
  const ms = performance.now() - started;
  if (r.status !== 0) throw new Error(`a shell loop of ${runtime} run true exited ${r.status}`);
  return ms / LOOP;
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
  await mkdir(join(floorDir, 'merged'), { recursive: true });
  const floorSpec = OciSpec.make({ args: ['true'], rootfs: join(floorDir, 'merged') });
  const floor = { dir: floorDir, config: JSON.stringify(floorSpec) };
  return { osDir, base, deps, bundle, stackBundle, stackMount, spec, floor };
}

/** The floor: the few steps every layered run of `true` must take, and nothing else. */
async function floor(s: Setup, runtime: Runtime): Promise<number> {
  const { dir } = s.floor;
  const upper = join(dir, 'upper');
  const work = join(dir, 'work');
  const started = performance.now();
  await mkdir(join(upper, 'etc'), { recursive: true });
  await mkdir(work);
  await writeFile(join(upper, 'etc', 'hosts'), '127.0.0.1 localhost\n');
  const mounted = await Overlay.mount({
    lowers: [...layerFs(s.deps), join(s.base.dir, 'fs')],
    upper,
    work,
    target: join(dir, 'merged'),
    options: { volatile: true },
  });
  await writeFile(join(dir, 'config.json'), s.floor.config);
  bare(dir, runtime);
  await mounted.unmount();
  await rename(upper, join(dir, 'taken'));
  const ms = performance.now() - started;
  await rm(join(dir, 'taken'), { recursive: true, force: true });
  await rm(work, { recursive: true, force: true });
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

function phaseTable(): Map<string, number[]> {
  return new Map(PHASES.map((p) => [p as string, [] as number[]]));
}

function breakdown(label: string, phases: Map<string, number[]>): void {
  const text = [...phases].map(([p, ms]) => `${p} ${median(ms).toFixed(2)}`).join(', ');
  process.stderr.write(`runInLayers phases, ${label} (median ms): ${text}\n`);
}

type Samples = Record<Runtime, number[]>;
const samples = (): Samples => ({ runc: [], crun: [] });

/** Runs the benchmark; returns its rows (and prints the phase breakdown to stderr). */
export async function run(): Promise<BenchRow[]> {
  await Runc.prepareCrunCgroups();
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-runner-'));
  try {
    const s = await setUp(work);
    const m = {
      bare: samples(),
      loop: samples(),
      stack: samples(),
      floor: samples(),
      warm: samples(),
      cold: samples(),
    };
    const phases = {
      warm: { runc: phaseTable(), crun: phaseTable() },
      cold: { runc: phaseTable(), crun: phaseTable() },
    };
    for (const runtime of RUNTIMES) {
      bare(s.bundle, runtime); // warm the page cache
      await layered(s, runtime, new Map(), WARM_LINGER_MS);
    }
    const random = seeded(20261124);
    // The warm and the cold runs use different shared runners (lingerMs is
    // part of their key): a cold run leases and releases its own leases only.
    const variants = {
      bare: async (r: Runtime) => m.bare[r].push(bare(s.bundle, r)),
      loop: async (r: Runtime) => m.loop[r].push(loop(s.bundle, r)),
      stack: async (r: Runtime) => m.stack[r].push(bare(s.stackBundle, r)),
      floor: async (r: Runtime) => m.floor[r].push(await floor(s, r)),
      warm: async (r: Runtime) =>
        m.warm[r].push(await layered(s, r, phases.warm[r], WARM_LINGER_MS)),
      cold: async (r: Runtime) => m.cold[r].push(await layered(s, r, phases.cold[r], 0)),
    };
    for (let i = 0; i < ROUNDS; i++) {
      for (const runtime of shuffled(RUNTIMES, random)) {
        for (const variant of shuffled(Object.values(variants), random)) await variant(runtime);
      }
    }
    for (const runtime of RUNTIMES) {
      breakdown(`warm, ${runtime}`, phases.warm[runtime]);
      breakdown(`cold (lingerMs 0), ${runtime}`, phases.cold[runtime]);
    }
    const engineRows = await engines(s, work, random).catch((err: unknown) => {
      process.stderr.write(`podman/buildah rows skipped: ${String(err)}\n`);
      return [];
    });
    await releaseIdle();
    await s.stackMount.unmount();
    await recover({ osDir: s.osDir });
    const baseline = (r: Runtime) => ({
      baselineName: `${r} run true, prepared rootfs, spawnSync`,
      baseline: median(m.bare[r]),
    });
    return [
      ...RUNTIMES.map((r) => ({
        name: `${r} run true, prepared rootfs: shell loop of ${LOOP} timed as a whole, per run (median of ${ROUNDS})`,
        value: median(m.loop[r]),
        ...baseline(r),
      })),
      ...RUNTIMES.map((r) => ({
        name: `runInLayers(true), ${STACK}-layer stack, ${r}, warm (leases and dirs kept, as a builder's steps; median of ${ROUNDS})`,
        value: median(m.warm[r]),
        ...baseline(r),
        target: 1.25,
      })),
      ...RUNTIMES.map((r) => ({
        name: `runInLayers(true), ${STACK}-layer stack, ${r}, cold (lingerMs 0: leases and dirs anew; median of ${ROUNDS})`,
        value: median(m.cold[r]),
        ...baseline(r),
        target: 1.5,
      })),
      ...RUNTIMES.map((r) => ({
        name: `floor: upper + /etc/hosts, mount ${STACK} lowers, ${r} run true, unmount, move the upper`,
        value: median(m.floor[r]),
        ...baseline(r),
      })),
      // What runInLayers itself adds (leases, dirs, mount, unmount) over a
      // bare run on the very same stack, without what any 50-layer overlay
      // costs the runtime.
      ...RUNTIMES.map((r) => ({
        name: `runInLayers(true), ${STACK}-layer stack, ${r}, warm`,
        value: median(m.warm[r]),
        baselineName: `${r} run true on that stack, mounted beforehand, spawnSync`,
        baseline: median(m.stack[r]),
      })),
      ...engineRows,
    ];
  } finally {
    await Overlay.unmountAll(work, { lazy: true }).catch(() => undefined);
    await Exec.run('rm', ['-rf', work]);
  }
}

/**
 * `podman run --rm` and `buildah run` of `true` on the same 50-layer stack
 * (exported by day11, copied by skopeo into a private containers-storage),
 * each against a warm runInLayers with the same runtime, alternated.
 */
async function engines(s: Setup, work: string, random: () => number): Promise<BenchRow[]> {
  const layout = join(work, 'oci');
  await exportImage({
    layout,
    tag: 'stack',
    base: s.base,
    layers: [...s.deps].reverse(),
    gzipLevel: 1,
  });
  const storage = ['--root', join(work, 'storage'), '--runroot', join(work, 'storage-run')];
  const store = `containers-storage:[overlay@${storage[1]}+${storage[3]}]`;
  const image = 'localhost/day11-bench-stack:latest';
  await Exec.run('skopeo', ['copy', '--quiet', `oci:${layout}:stack`, `${store}${image}`]);
  const podmanArgs = [...storage, '--storage-driver', 'overlay', '--cgroup-manager', 'cgroupfs'];
  const buildahArgs = [...storage, '--storage-driver', 'overlay'];
  const ctr = (
    await Exec.run('buildah', [...buildahArgs, 'from', '--pull-never', image])
  ).stdout.trim();
  const timed = (cmd: string, args: string[]): number => {
    const started = performance.now();
    const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8' });
    const ms = performance.now() - started;
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr}`);
    return ms;
  };
  const podman = (r: Runtime) =>
    timed('podman', [
      ...podmanArgs,
      '--runtime',
      r,
      '--events-backend',
      'file',
      'run',
      '--rm',
      '--network',
      'none',
      // podman's default limits may be above the hard limits it runs under.
      '--ulimit',
      'nofile=1024:1024',
      '--ulimit',
      'nproc=1024:1024',
      image,
      'true',
    ]);
  const buildah = (r: Runtime) =>
    timed('buildah', [
      ...buildahArgs,
      'run',
      '--runtime',
      r,
      '--network',
      'none',
      ctr,
      '--',
      'true',
    ]);
  const m = { podman: samples(), buildah: samples(), warm: samples() };
  const variants = {
    podman: async (r: Runtime) => m.podman[r].push(podman(r)),
    buildah: async (r: Runtime) => m.buildah[r].push(buildah(r)),
    warm: async (r: Runtime) => m.warm[r].push(await layered(s, r, new Map(), WARM_LINGER_MS)),
  };
  try {
    // The first runs set things up.
    for (const r of RUNTIMES) {
      podman(r);
      buildah(r);
    }
    for (let i = 0; i < ENGINE_ROUNDS; i++) {
      for (const runtime of shuffled(RUNTIMES, random)) {
        for (const variant of shuffled(Object.values(variants), random)) await variant(runtime);
      }
    }
  } finally {
    await Exec.run('buildah', [...buildahArgs, 'rm', ctr]).catch(() => undefined);
  }
  return RUNTIMES.flatMap((r) => [
    {
      name: `runInLayers(true), ${STACK}-layer stack, ${r}, warm (median of ${ENGINE_ROUNDS})`,
      value: median(m.warm[r]),
      baselineName: `podman run --rm true, the same ${STACK}-layer image, ${r}`,
      baseline: median(m.podman[r]),
    },
    {
      name: `runInLayers(true), ${STACK}-layer stack, ${r}, warm (median of ${ENGINE_ROUNDS})`,
      value: median(m.warm[r]),
      baselineName: `buildah run true, a container of the same ${STACK}-layer image, ${r}`,
      baseline: median(m.buildah[r]),
    },
  ]);
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
