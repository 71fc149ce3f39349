/**
 * `crun run true` against `runc run true` on the same busybox-static rootfs,
 * rounds alternating so both see the same machine state. Measured twice: the
 * bare runtime command, and `Runc.run` (stale delete + run + delete).
 */
import { copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { OciSpec, Runc } from '@day11/container';
import { Exec } from '@day11/exec';
import { median, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = 10;
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

/** The bare runtime: `runc run` alone (it deletes a container that exits by itself). */
function bare(bundle: string, runtime: Runtime): Promise<unknown> {
  return Exec.run(runtime, ['run', '--bundle', bundle, Runc.newId('day11-bench')], {
    privileged: true,
  });
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  // crun 1.8 refuses a hybrid cgroup layout whose cgroup2 still offers a controller.
  await Runc.prepareCrunCgroups();
  const bundle = await mkdtemp(join(tmpdir(), 'day11-bench-runtime-'));
  try {
    await makeBundle(bundle);
    const bareMs: Record<Runtime, number[]> = { runc: [], crun: [] };
    const fullMs: Record<Runtime, number[]> = { runc: [], crun: [] };
    for (const runtime of RUNTIMES) await lifecycle(bundle, runtime); // warm the page cache
    for (let i = 0; i < ROUNDS; i++) {
      // Alternate which goes first, so neither always follows the other.
      for (const runtime of i % 2 ? [...RUNTIMES].reverse() : RUNTIMES) {
        bareMs[runtime].push(await time(() => bare(bundle, runtime)));
        fullMs[runtime].push(await time(() => lifecycle(bundle, runtime)));
      }
    }
    return [
      {
        name: `crun run true, busybox rootfs (median of ${ROUNDS})`,
        value: median(bareMs.crun),
        baselineName: 'runc run true',
        baseline: median(bareMs.runc),
      },
      {
        name: `Runc.run with crun: delete + run true + delete (median of ${ROUNDS})`,
        value: median(fullMs.crun),
        baselineName: 'Runc.run with runc',
        baseline: median(fullMs.runc),
      },
    ];
  } finally {
    await rm(bundle, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
