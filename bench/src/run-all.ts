/**
 * Runs every benchmark suite, one after the other (they would disturb each
 * other in parallel on a 2-core machine), prints one table, and writes
 * `BENCHMARKS.md` at the repository root: the table, the machine, what each
 * suite measures, and how to reproduce it.
 *
 * `node bench/dist/run-all.js [suite...]`: with suite names, only those run
 * and the table is printed; `BENCHMARKS.md` is written by full runs, or with
 * `--write` by a run of some suites, which replaces their rows and notes and
 * keeps the other suites' (and says so under Machine).
 */
import { readFile, writeFile } from 'node:fs/promises';
import { arch, cpus, loadavg, release, tmpdir, totalmem } from 'node:os';
import { resolve } from 'node:path';
import { Exec } from '@day11/exec';
import { mergeInto } from './benchmarks-md.js';
import { metOf, toMarkdown, type BenchRow, type SuiteRows } from './table.js';

interface Suite {
  load: () => Promise<{ run: () => Promise<BenchRow[]> }>;
  /** What the suite measures and against what, for BENCHMARKS.md. */
  note: string;
}

const SUITES: Record<string, Suite> = {
  merge: {
    load: () => import('./merge.js'),
    note: "`Stack.merge` (the hardlink merge of layers too deep for one mount) of one 20,000-file layer against `cp -al` of the same tree, and of four overlapping 5,000-file layers against day11's `cp -a -n --link` per layer. `sync` before every run, 9 rounds alternating who goes first, medians; `cp` is timed through `Exec.run`, process start included, as day11 pays it.",
  },
  mount: {
    load: () => import('./mount.js'),
    note: "`Overlay.mount` + `unmount` of 1, 50 and 500 lower layers (with upper and work, as a build mounts them) with every strategy that can mount that many here, against one fsconfig mount of a single lower: the cost of one overlay superblock. Reference rows time what day11's OCaml did, `mount(8)` + `umount(8)` subprocesses. 21 rounds round-robin, medians.",
  },
  scan: {
    load: () => import('./scan.js'),
    note: "`Scan.layers` over the cli suite's 10,000-layer cache (each `layer.json` parsed and validated, `last_used` stat'ed, every layer's sidecars asked for, so each directory is listed) and `Scan.each` as `layers ls` scans (`step.json` read with each layer, no directory listed) against `cat build-*/layer.json`: the same records read, nothing parsed. 7 rounds in a seeded shuffled order, medians.",
  },
  gc: {
    load: () => import('./gc.js'),
    note: "`Gc.plan` shrinking the cli suite's 10,000-layer cache (chains on a shared core, so a layer others stand on waits for them; small `fs/` trees, one file hardlinked into every layer) to half its size: real disk usage of every inode, hardlinks once, LRU order, what kept layers stand on kept, shared inodes attributed. Against `du -s` of the same cache (the floor for knowing real usage) and against `Scan.layers` (the metadata half of a plan). 7 rounds in a seeded shuffled order, medians.",
  },
  cli: {
    load: () => import('./cli.js'),
    note: 'The `day11` command as users run it, each process spawned and timed whole: `day11 --help` and an argument error (`day11 build plan.json --bogus`) against `node -e ""` (Node\'s own start: each command loads its libraries only when it runs); `day11 layers ls` against `node -e "" && cat build-*/layer.json` timed as one shell command (Node\'s start plus reading every record); `day11 layers gc --dry-run` (shrinking to half) and `day11 layers du` against `du -s`. The cache (`layer-cache.ts`): 10,000 layers in chains of 40 on a shared core (transitive `parent_hashes`, so the graph matters), each with `layer.json`, `step.json`, `layer.log`, `last_used` (a few never used), a registry link under `packages/`, and a small `fs/` tree (four files, one hardlinked into every layer; eight more in one layer of ten); 1% recorded failures and their skipped dependents. 11 rounds after a warm-up, every variant once per round (the three quick ones three times) in a seeded shuffled order, medians.',
  },
  runtime: {
    load: () => import('./runtime.js'),
    note: 'The runtime call. `crun run true` against `runc run true` on the same busybox-static bundle, both spawned directly (`spawnSync`); per runtime, the same run spawned through execa (`Exec.run`, how `Runc.run` called the runtime before) through `child_process.spawn` (`Exec.runStreamed` with `DAY11_SPAWN=node`, how it did until posix_spawn) and through posix_spawn (`Exec.runStreamed`, how it does now: a vfork, no copy of the memory of the caller; own session, output streamed, group kill on abort, timeout and exit), and the whole `Runc.run`, each against the direct `spawnSync`. 30 rounds, variants in a seeded shuffled order, medians.',
  },
  runner: {
    load: () => import('./runner.js'),
    note: "`runInLayers` of `true` over a 50-layer stack (49 committed layers on a busybox-static base: leases, an fsconfig overlay of 50 lowers mounted volatile, `/etc/hosts`, the run, the unmount, the upper moved out for a commit) against `runc run true` (or crun) on an already prepared plain rootfs spawned directly: `spawnSync`, and a shell loop of 5 runs timed as a whole. Warm: leases and scratch directories kept between runs (`lingerMs` long enough that the shuffled variants between two warm runs never outlast it), as a builder's consecutive steps share them; cold (`lingerMs: 0`): every run leases its 50 layers (one record written, hard-linked into each layer), reads their records and makes its directories anew, then lets them go. The floor rows do only what no layered run can skip (upper and `/etc/hosts`, a volatile mount, `config.json`, run, unmount, move the upper) with none of the bookkeeping; other rows compare with a bare run on the very same stack mounted beforehand. The phase breakdown (`timing` of each run) is printed to stderr. `podman run --rm` and `buildah run` of `true` on the same 50-layer image (exported by day11, copied by `skopeo` into a private containers-storage) against warm runs with the same runtime: 8 rounds. 40 rounds, every variant once per round in a seeded shuffled order (a container starts faster right after another, so a fixed order favours the second), medians.",
  },
  builder: {
    load: () => import('./builder.js'),
    note: "The whole `day11 build` command (process start to exit) of a 1,000-step random DAG of `true`-like steps (each step on up to three earlier ones, stacks of at most 16 layers), crun, `--jobs 2`, against its floor: `crun run true` spawned directly (`spawnSync`) on a prepared rootfs, median of 20 samples per round, × 1,000 steps ÷ 2 jobs (the target's floor), and the measured one: two shell loops of 100 `crun run true` side by side, timed as a whole, per run × 1,000 (two containers starting at once take about twice as long each here, so ÷ 2 is not reached even by the runtime alone), and the layered floor: the same 1,000 stacks (each step's depth, over 16 one-file lower directories and the rootfs) mounted (mount(2), volatile), `crun run true` forked, unmounted and the upper renamed aside, by two Perl processes making the system calls directly (`bench/layered-floor.pl`): what any builder that gives each step an overlay must do, without the builder's own work (leases, `/etc/hosts`, commit records and fsyncs, events); then the same plan again, fully cached, twice (after a `sync`, untimed: the build's writeback is its own, and 6 s: right after a build of a thousand containers the kernel is still busy with what they left, and the command of 20d6ca3 took 0.51–0.65 s there where it took 0.46–0.51 s on a quiet machine). The builder's own cost per step (plan validation, hashing, scheduling, cache checks, layer locks, commits with their fsyncs, symlinks, events) with the builder tests' fake sandbox (no container) at 1,000 (5 rounds) and 10,000 steps (3 rounds), `jobs: 2`, first in the suite, after a `sync` and 62 s (a no-journal ext4, as here, passes over every inode freed in the last 60 s — 5 minutes while its inode table block is dirty, which an allocation beside it makes it again — on each allocation: the ~7 inodes each container of the crun builds freed must not be paid for here; after them, the rounds took 1.9–2.2 ms per step 6 s after a sync, 1.07–1.34 ms 60 s later), each round's cache kept to the end for the same reason: wall and CPU time of all threads per step, and the fully cached 1,000-step `build()` in-process. Also the time from spawning `day11 build` of a 10,000-step DAG to its first step running, and to validate, order and hash a 10,000-step chain. Plans are salted per round, so nothing of an earlier round is cached; the command and its floor alternate in seeded shuffled rounds (3, `DAY11_BENCH_BUILDER_ROUNDS`); medians.",
  },
  output: {
    load: () => import('./output.js'),
    note: "A step printing 250 MB, built in a child process per build (its peak RSS, `VmHWM`, is the build's alone; `maxRSS` would count the bench process the child was forked from): the builder streams the container's output to the step's `layer.log`, capped at 64 MiB (head and tail kept), never gathering it in memory. Peak RSS against the same build of a step printing nothing; the build's time against the floor of producing and writing those bytes at all (`yes | head -c 250M > file` on the host). 3 rounds alternating, medians; the step differs by an env value each round, so nothing is cached.",
  },
  export: {
    load: () => import('./export.js'),
    note: "`exportImage` with every blob cache emptied (cold) of five layers copied from this machine's `/usr` (headers, Python, Perl, helper binaries; ~300 MB) against the tools a user would pick instead: per layer, GNU `tar -c --numeric-owner | pigz -6 -p N` with the same N threads; `skopeo copy containers-storage: oci:` of the same image (imported into podman's storage first; Go's parallel gzip), at level 6 and, with `gzipLevel: 4`, at level 4 (day11 gzips with libdeflate where `libdeflate0` is installed, one gzip member per 1 MiB chunk; the bytes of both images' blobs are reported, as what the time bought); and day10's `tar | gzip -n -6` per layer for the record. The same against pigz for one layer of ~24k small files (`/usr/share/man`). Warm re-export (every blob cached) into a fresh layout against the cold export. Peak RSS (`VmHWM`, the child's own) of a child process exporting a layer holding one 2 GiB incompressible file against a 150 MB limit. 5 rounds, every variant once per round in a seeded shuffled order (7 warm), medians; all reads from the page cache, so this measures CPU, not the disk.",
  },
  import: {
    load: () => import('./import.js'),
    note: "`Import.fromTarball` of a ~300 MB tarball of ~33k entries from this machine's `/usr` (man pages, headers, helper binaries) into a fresh cache, plain and gzipped, against GNU `tar -xf` (`-xzf`) of the same tarball into an empty directory; `podman import` of it as a reference. 5 rounds, every variant once per round in a seeded shuffled order, medians.",
  },
  squash: {
    load: () => import('./squash.js'),
    note: "Sharing kept under a layer budget (`exportImage` with `maxLayers: 60`), on real exports of layers of incompressible bytes (sizes log-uniform, 1 KiB to 512 KiB): two 140-layer images sharing their first 100 layers; a seeded family of 20 DAG-shaped images (each a package's closure in install order, 126 to 177 layers); a re-export after one package in the middle third of a stack changed (it and its dependents rebuilt). The value plan (a dynamic programme keeping the layers most images have × their size, merging contiguous runs of the rest) is valued by the layout (images exported in turn) or by sibling stacks, against the suffix squash of docker-squash & co (keep the lowest 59, merge the rest) and a flatten that keeps the base. Rows marked *more is better* invert the ratio's sense. Bytes, not time: deterministic, one round.",
  },
  registry: {
    load: () => import('./registry.js'),
    note: "`@day11/registry` against Debian's docker-registry on loopback. Publish and pull of a five-layer stack copied from `/usr` (blobs already cached, as after a build) against `skopeo copy` of the same image from the same blobs (`oci:` → `docker://` and back), each variant on a fresh registry per round so nothing is known there and skopeo's blob cache cannot mount; the pull also extracts and commits, so a reference row adds `umoci raw unpack` to skopeo. Lookup of a 1,000-step plan (50 chains of 20 really published layers) cold and warm, in requests and time, against one HEAD per step; the no-op republish of those 1,000 layers by a fresh cache object against the 2 s target. Peak RSS (`VmHWM`, each child's own) of child processes pulling and publishing a layer holding one 2 GiB incompressible file. 5 rounds after a warm-up (5 for lookups), variants in a seeded shuffled order, medians.",
  },
};

const BENCHMARKS_MD = resolve(import.meta.dirname, '../../BENCHMARKS.md');

/** First line of `cmd --version`, or why there is none. */
async function version(cmd: string): Promise<string> {
  try {
    return (await Exec.run(cmd, ['--version'])).stdout.split('\n')[0]!.trim();
  } catch {
    return `${cmd}: not installed`;
  }
}

async function tmpFilesystem(): Promise<string> {
  const r = await Exec.run('findmnt', ['-n', '-o', 'FSTYPE', '-T', tmpdir()]).catch(
    () => undefined,
  );
  return r ? `${tmpdir()} on ${r.stdout.trim()}` : tmpdir();
}

/** The machine, as Markdown list items; `load` is the load average before and after the run. */
async function describeMachine(started: Date, load: [number[], number[]]): Promise<string> {
  const avg = (l: number[]): string => l.map((x) => x.toFixed(2)).join(', ');
  const model = cpus()[0]?.model.trim() ?? 'unknown CPU';
  return [
    `- CPU: ${cpus().length} × ${model} (${arch()})`,
    `- Memory: ${(totalmem() / 2 ** 30).toFixed(1)} GiB`,
    `- Kernel: Linux ${release()}`,
    `- Node: ${process.version}`,
    `- Runtimes: ${await version('runc')}; ${await version('crun')}`,
    `- Temporary directories (where every suite works): ${await tmpFilesystem()}`,
    `- Date: ${started.toISOString().replace(/\.\d+Z$/, 'Z')}`,
    `- Load average (1, 5, 15 min) before the run: ${avg(load[0])}; after it: ${avg(load[1])}`,
  ].join('\n');
}

interface Outcome {
  groups: SuiteRows[];
  failures: { suite: string; message: string }[];
  seconds: Map<string, number>;
}

async function runSuites(names: readonly string[]): Promise<Outcome> {
  const out: Outcome = { groups: [], failures: [], seconds: new Map() };
  for (const suite of names) {
    process.stderr.write(`bench: ${suite}...\n`);
    const started = performance.now();
    try {
      out.groups.push({ suite, rows: await (await SUITES[suite]!.load()).run() });
    } catch (err) {
      // One suite that cannot run here (no runtime, no root) must not hide the others.
      const message = err instanceof Error ? err.message : String(err);
      process.stderr.write(`bench: ${suite} failed: ${message}\n`);
      out.failures.push({ suite, message: message.split('\n')[0]! });
    }
    out.seconds.set(suite, (performance.now() - started) / 1000);
  }
  return out;
}

function summary(groups: readonly SuiteRows[]): string {
  const targeted = groups.flatMap((g) => g.rows).filter((r) => metOf(r) !== undefined);
  const met = targeted.filter((r) => metOf(r)).length;
  return `${met} of ${targeted.length} targets met.`;
}

function notes(outcome: Outcome): string {
  return Object.entries(SUITES)
    .filter(([name]) => outcome.seconds.has(name))
    .map(([name, s]) => `- **${name}** (${outcome.seconds.get(name)!.toFixed(0)} s): ${s.note}`)
    .join('\n');
}

const REPRODUCE = `\`\`\`sh
bash .ci/setup                          # once: runc, crun, busybox-static, ... and the workspace
pnpm bench                              # build, run every suite, rewrite BENCHMARKS.md (needs root; several minutes)
node bench/dist/run-all.js mount gc     # after \`pnpm build\`: only these suites; prints the table, leaves this file alone
node bench/dist/run-all.js --write squash  # only this suite, its rows and notes replaced in this file
node bench/dist/gc.js                   # one suite on its own
\`\`\`

The suites (${Object.keys(SUITES).join(', ')}) run one after the other,
never in parallel. Each measures its baseline in the same process, rounds
alternating, so slow drift hits both sides alike; still, other load on the
machine shows in the figures (see the load average above): run it on an
otherwise idle machine.`;

function render(outcome: Outcome, machine: string): string {
  const failed = outcome.failures.length
    ? `\n\nSuites that failed on this machine:\n\n${outcome.failures.map((f) => `- **${f.suite}**: ${f.message}`).join('\n')}`
    : '';
  return `# Benchmarks

Written by \`pnpm bench\` (\`bench/src/run-all.ts\`); do not edit by hand.

Every figure is compared with a baseline measured in the same run, on the
same machine, on the same data. **ratio** = value ÷ baseline value: lower is
better. Where issue 7 sets a target ratio, the last column says whether this
run met it. ${summary(outcome.groups)}

## Results

${toMarkdown(outcome.groups)}${failed}

## Machine

${machine}

## What each suite measures

${notes(outcome)}

## How to reproduce

${REPRODUCE}
`;
}

function chosenSuites(args: readonly string[]): string[] {
  const unknown = args.filter((a) => !(a in SUITES));
  if (unknown.length > 0) {
    console.error(
      `run-all: unknown suite ${unknown.join(', ')}; the suites are ${Object.keys(SUITES).join(', ')}`,
    );
    process.exit(2);
  }
  return args.length > 0 ? [...args] : Object.keys(SUITES);
}

const args = process.argv.slice(2);
const write = args.includes('--write');
const names = chosenSuites(args.filter((a) => a !== '--write'));
const started = new Date();
const loadBefore = loadavg();
const outcome = await runSuites(names);
const machine = await describeMachine(started, [loadBefore, loadavg()]);
const markdown = render(outcome, machine);
console.log(markdown);
if (names.length === Object.keys(SUITES).length) {
  await writeFile(BENCHMARKS_MD, markdown);
  process.stderr.write(`bench: wrote ${BENCHMARKS_MD}\n`);
} else if (write && outcome.failures.length === 0) {
  const previous = await readFile(BENCHMARKS_MD, 'utf8');
  await writeFile(
    BENCHMARKS_MD,
    mergeInto({ previous, fresh: markdown, run: names, order: Object.keys(SUITES), machine }),
  );
  process.stderr.write(`bench: updated ${names.join(', ')} in ${BENCHMARKS_MD}\n`);
}
if (outcome.failures.length > 0) process.exitCode = 1;
