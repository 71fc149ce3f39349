/**
 * The main job, until the `day11` CLI lands: builds a small DAG of layers on a
 * busybox base, each step a shell command run over an overlayfs stack of its
 * dependencies, commits the uppers as layers, flattens the top image with
 * Stack.merge, and reports the cache. A second run finds every step cached.
 *
 *   node examples/dist/demo.js [--cache DIR]
 *
 * Steps run with chroot on an overlay mounted through the new mount API; the
 * runc/crun runner (`@day11/runner`) will replace that.
 */
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Exec, Sys } from '@day11/exec';
import {
  Commit,
  Gc,
  Hash,
  Import,
  InUse,
  LayerDir,
  LayerMeta,
  Recover,
  Scan,
  Stack,
  type Base,
} from '@day11/layer';
import { makeBusyboxRootfs } from './busybox-rootfs.js';

interface Step {
  id: string;
  deps: string[];
  run: string;
}

/** A diamond: base → hello, base → tools, hello + tools → app → check. */
const PLAN: Step[] = [
  {
    id: 'hello',
    deps: [],
    run: 'mkdir -p /opt/hello && echo "hello from a layer" > /opt/hello/greeting.txt',
  },
  {
    id: 'tools',
    deps: [],
    run: 'mkdir -p /opt/tools && echo "#!/bin/sh" > /opt/tools/tool && rm /etc/issue',
  },
  {
    id: 'app',
    deps: ['hello', 'tools'],
    // Replacing a directory makes it opaque; the lower greeting.txt must vanish.
    run: 'rm -rf /opt/hello && mkdir /opt/hello && echo replaced > /opt/hello/new.txt && ls /opt/tools > /opt/app.txt',
  },
  {
    id: 'check',
    deps: ['app'],
    run: 'test ! -e /etc/issue && test ! -e /opt/hello/greeting.txt && cat /opt/hello/new.txt /opt/app.txt > /opt/check.txt',
  },
];

interface Built {
  hash: string;
  dir: string;
  cached: boolean;
  seconds: number;
}

function parseArgs(argv: string[]): { cache: string } {
  const i = argv.indexOf('--cache');
  return { cache: i >= 0 && argv[i + 1] ? argv[i + 1]! : join(tmpdir(), 'day11-demo-cache') };
}

async function importBase(osDir: string): Promise<Base> {
  const found = await Import.find({ osDir, image: 'busybox-static' });
  if (found) return found;
  const work = await mkdtemp(join(tmpdir(), 'day11-demo-rootfs-'));
  try {
    await makeBusyboxRootfs(join(work, 'rootfs'));
    return await Import.fromDirectory({
      osDir,
      dir: join(work, 'rootfs'),
      image: 'busybox-static',
    });
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/**
 * Every transitive dependency of a step, topmost first: PLAN lists steps after
 * their dependencies, so reverse plan order puts every layer above the layers
 * it was built on, as the overlay stack needs.
 */
function closure(step: Step, byId: Map<string, Step>): Step[] {
  const seen = new Set<Step>();
  const visit = (s: Step): void => {
    for (const id of s.deps) {
      const dep = byId.get(id)!;
      if (!seen.has(dep)) {
        seen.add(dep);
        visit(dep);
      }
    }
  };
  visit(step);
  return [...seen].sort((a, b) => PLAN.indexOf(b) - PLAN.indexOf(a));
}

async function runStep(opts: { osDir: string; base: Base; step: Step; lowers: string[] }): Promise<{
  upper: string;
  log: string;
  exitCode: number;
  work: string;
}> {
  const work = await mkdtemp(join(opts.osDir, '.day11-tmp-demo-'));
  for (const d of ['upper', 'work', 'merged']) await mkdir(join(work, d));
  const merged = join(work, 'merged');
  Sys.mountWithFsconfig({
    fstype: 'overlay',
    target: merged,
    options: [
      ...[...opts.lowers, join(opts.base.dir, 'fs')].map((l) => ['lowerdir+', l] as const),
      ['upperdir', join(work, 'upper')],
      ['workdir', join(work, 'work')],
      ['redirect_dir', 'off'],
      ['metacopy', 'off'],
    ],
  });
  try {
    const r = await Exec.run('chroot', [merged, '/bin/sh', '-c', opts.step.run], {
      allowNonZeroExit: true,
    });
    return { upper: join(work, 'upper'), log: r.stdout + r.stderr, exitCode: r.exitCode, work };
  } finally {
    Sys.umount(merged);
  }
}

async function build(osDir: string, base: Base): Promise<Map<string, Built>> {
  const byId = new Map(PLAN.map((s) => [s.id, s]));
  const built = new Map<string, Built>();
  for (const step of PLAN) {
    const deps = closure(step, byId).map((d) => built.get(d.id)!);
    const hash = Hash.layerHash({
      baseHash: base.hash,
      depHashes: deps.map((d) => d.hash),
      pkg: JSON.stringify(step),
    });
    const dir = LayerDir.path({ osDir, hash });
    const started = performance.now();
    if (await LayerMeta.find(dir)) {
      built.set(step.id, { hash, dir, cached: true, seconds: 0 });
      console.log(`  ${step.id.padEnd(6)} cached   ${LayerDir.name(hash)}`);
      continue;
    }
    const lease = await InUse.acquire({ osDir, dirs: [base.dir, ...deps.map((d) => d.dir)] });
    try {
      const lowers = deps.map((d) => join(d.dir, 'fs'));
      const result = await runStep({ osDir, base, step, lowers });
      const seconds = (performance.now() - started) / 1000;
      await Commit.commit({
        osDir,
        hash,
        upper: result.upper,
        meta: {
          exit_status: result.exitCode,
          parent_hashes: deps.map((d) => d.hash),
          uid: 0,
          gid: 0,
          base_hash: base.hash,
          timing: [['run', seconds]],
          failed_dep: null,
        },
        log: result.log,
        sidecars: { 'step.json': { ...step } },
      });
      await rm(result.work, { recursive: true, force: true });
      if (result.exitCode !== 0)
        throw new Error(`step ${step.id} failed with exit ${result.exitCode}: ${result.log}`);
      built.set(step.id, { hash, dir, cached: false, seconds });
      console.log(
        `  ${step.id.padEnd(6)} built    ${LayerDir.name(hash)}  ${seconds.toFixed(2)} s`,
      );
    } finally {
      await lease.release();
    }
  }
  return built;
}

/** Flattens the top step's stack into one directory and checks what the build saw. */
async function flatten(top: Step, built: Map<string, Built>): Promise<void> {
  const byId = new Map(PLAN.map((s) => [s.id, s]));
  const target = await mkdtemp(join(tmpdir(), 'day11-demo-merged-'));
  try {
    const layerDirs = [top, ...closure(top, byId)].map((s) => built.get(s.id)!.dir);
    await rm(target, { recursive: true });
    await Stack.merge({ layerDirs, target });
    const check = await readFile(join(target, 'opt/check.txt'), 'utf8');
    const hello = await readdir(join(target, 'opt/hello'));
    console.log(`\nStack.merge of ${layerDirs.length} layers: /opt/hello = [${hello.join(', ')}]`);
    console.log(`/opt/check.txt:\n${check.replace(/^/gm, '  ')}`);
  } finally {
    await rm(target, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const { cache } = parseArgs(process.argv.slice(2));
  if (!Exec.isRoot()) throw new Error('the demo mounts overlayfs: run it as root');
  await mkdir(cache, { recursive: true });
  await Recover.sweep(cache);
  const started = performance.now();
  console.log(`day11 demo: cache ${cache}\n`);
  const base = await importBase(cache);
  console.log(`  base   ready    ${LayerDir.name(base.hash)}  (busybox-static)`);
  const built = await build(cache, base);
  await flatten(PLAN.at(-1)!, built);
  const layers = await Scan.layers(cache);
  const month = 30 * 24 * 3600 * 1000;
  const plan = await Gc.plan({ osDir: cache, before: Date.now() - month });
  const cached = [...built.values()].filter((b) => b.cached).length;
  console.log(
    `Summary: ${built.size} steps, ${built.size - cached} built, ${cached} cached; ` +
      `${layers.length} layers using ${(plan.totalBytes / 1024).toFixed(0)} KiB ` +
      `(GC of layers unused for 30 days would delete ${plan.deletions.length}); ` +
      `${((performance.now() - started) / 1000).toFixed(2)} s`,
  );
  if (cached === built.size) console.log('Every step was a cache hit.');
}

main().catch((err: unknown) => {
  console.error(`day11 demo failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exitCode = 1;
});
