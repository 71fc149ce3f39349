/**
 * The runtime call. `crun run true` against `runc run true` on the same
 * busybox-static rootfs, each spawned directly (`spawnSync`); then, per
 * runtime, what day11's calls cost on top of that: the runtime spawned
 * through execa (`Exec.run`, what `Runc.run` used first), through
 * `child_process.spawn` directly (`Exec.runStreamed` with `DAY11_SPAWN=node`,
 * what it used next) and through posix_spawn (`Exec.runStreamed`, now),
 * and the whole `Runc.run` (output streamed, runtime log read on failure,
 * the container deleted unless the runtime did). Variants in seeded
 * shuffled rounds, medians.
 */
import { spawnSync } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { OciSpec, Runc } from '@day11/container';
import { Exec } from '@day11/exec';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = 30;
const RUNTIMES = ['runc', 'crun'] as const;
type Runtime = (typeof RUNTIMES)[number];

async function makeBundle(dir: string): Promise<void> {
  const rootfs = join(dir, 'rootfs');
  for (const d of ['bin', 'etc', 'proc', 'dev', 'sys', 'tmp']) {
    await mkdir(join(rootfs, d), { recursive: true });
  }
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  const { stdout } = await Exec.run('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await symlink('busybox', join(rootfs, 'bin', applet));
  }
  await writeFile(join(rootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(rootfs, 'etc/group'), 'root:x:0:\n');
  await OciSpec.write(dir, OciSpec.make({ args: ['true'], rootfs }));
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

/** One `Runc.run` of the bundle; fails loudly if `true` did not exit 0. */
async function lifecycle(bundle: string, runtime: Runtime): Promise<void> {
  const r = await Runc.run({ bundle, id: Runc.newId('day11-bench'), runtime });
  if (r.exitCode !== 0) throw new Error(`${runtime} run true exited ${r.exitCode}`);
}

let ids = 0;

/** A container id for a bare run, unique in this process. */
export const bareId = (): string => `day11-bench-${process.pid}-${ids++}`;

/**
 * The bare runtime spawned directly: `runc run` alone on a prepared bundle
 * (it deletes a container that exits by itself); milliseconds.
 */
export function bareSync(bundle: string, runtime: 'runc' | 'crun'): number {
  const started = performance.now();
  const r = spawnSync(runtime, ['run', '--bundle', bundle, bareId()], { stdio: 'ignore' });
  const ms = performance.now() - started;
  if (r.status !== 0) throw new Error(`${runtime} run true exited ${r.status ?? r.signal}`);
  return ms;
}

/** The same through execa (`Exec.run`), as `Runc.run` spawned it before. */
function viaExeca(bundle: string, runtime: Runtime): Promise<unknown> {
  return Exec.run(runtime, ['run', '--bundle', bundle, bareId()], { privileged: true });
}

/**
 * The same through `Exec.runStreamed`: posix_spawn, as `Runc.run` spawns it
 * now, or with `spawner: 'node'` Node's `child_process.spawn`, as it did before.
 */
async function viaSpawn(bundle: string, runtime: Runtime, spawner?: 'node'): Promise<unknown> {
  const before = process.env.DAY11_SPAWN;
  if (spawner) process.env.DAY11_SPAWN = spawner;
  else delete process.env.DAY11_SPAWN;
  try {
    return await Exec.runStreamed(runtime, ['run', '--bundle', bundle, bareId()], {
      privileged: true,
      onData: () => undefined,
    });
  } finally {
    if (before === undefined) delete process.env.DAY11_SPAWN;
    else process.env.DAY11_SPAWN = before;
  }
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  // crun 1.8 refuses a hybrid cgroup layout whose cgroup2 still offers a controller.
  await Runc.prepareCrunCgroups();
  const bundle = await mkdtemp(join(tmpdir(), 'day11-bench-runtime-'));
  try {
    await makeBundle(bundle);
    const samples = (): Record<Runtime, number[]> => ({ runc: [], crun: [] });
    const m = {
      bare: samples(),
      execa: samples(),
      node: samples(),
      spawn: samples(),
      full: samples(),
    };
    for (const runtime of RUNTIMES) await lifecycle(bundle, runtime); // warm the page cache
    const variants = {
      bare: async (r: Runtime) => m.bare[r].push(bareSync(bundle, r)),
      execa: async (r: Runtime) => m.execa[r].push(await time(() => viaExeca(bundle, r))),
      node: async (r: Runtime) => m.node[r].push(await time(() => viaSpawn(bundle, r, 'node'))),
      spawn: async (r: Runtime) => m.spawn[r].push(await time(() => viaSpawn(bundle, r))),
      full: async (r: Runtime) => m.full[r].push(await time(() => lifecycle(bundle, r))),
    };
    const random = seeded(20261201);
    for (let i = 0; i < ROUNDS; i++) {
      for (const runtime of shuffled(RUNTIMES, random)) {
        for (const variant of shuffled(Object.values(variants), random)) await variant(runtime);
      }
    }
    const direct = (r: Runtime) => ({
      baselineName: `${r} run true, spawnSync`,
      baseline: median(m.bare[r]),
    });
    return [
      {
        name: `crun run true, busybox rootfs, spawnSync (median of ${ROUNDS})`,
        value: median(m.bare.crun),
        baselineName: 'runc run true, spawnSync',
        baseline: median(m.bare.runc),
      },
      ...RUNTIMES.flatMap((r) => [
        {
          name: `${r} run true through execa (Exec.run, as Runc.run did)`,
          value: median(m.execa[r]),
          ...direct(r),
        },
        {
          name: `${r} run true through child_process.spawn (Exec.runStreamed, DAY11_SPAWN=node, as Runc.run did)`,
          value: median(m.node[r]),
          ...direct(r),
        },
        {
          name: `${r} run true through posix_spawn (Exec.runStreamed, as Runc.run does)`,
          value: median(m.spawn[r]),
          ...direct(r),
        },
        {
          name: `Runc.run with ${r}: run true, output streamed, no delete needed`,
          value: median(m.full[r]),
          ...direct(r),
        },
      ]),
    ];
  } finally {
    await rm(bundle, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
