/**
 * The `day11` command as a user runs it, each against the cheapest way to
 * do the same job, every process spawned and timed whole from here:
 *
 * - `day11 --help` and an argument error (`day11 build plan.json --bogus`)
 *   against `node -e ""`: Node's own start, which no Node program beats;
 * - `day11 layers ls` on a 10,000-layer cache against
 *   `sh -c 'node -e "" && cat build-*\/layer.json'`: Node's start plus
 *   reading every layer's record, timed as one shell command;
 * - `day11 layers gc --dry-run` (shrink to half) and `day11 layers du`
 *   against `du -s` of the cache: the floor for knowing real disk usage.
 *
 * The cache is `layer-cache.ts`'s: chains of package layers with their
 * records, sidecars, registry links and small `fs/` trees. Rounds run every
 * variant once (the quick ones three times) in a seeded shuffled order,
 * after one warm-up round; medians.
 */
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Gc } from '@day11/layer';
import { makeLayerCache } from './layer-cache.js';
import { median, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const CLI = join(import.meta.dirname, '../../packages/cli/dist/bin/day11.js');
const LAYERS = 10_000;
const ROUNDS = 11;
/** Samples per round of the variants that take a Node start and little more. */
const QUICK_REPEAT = 3;

interface Variant {
  name: string;
  cmd: string;
  args: string[];
  /** Exit status the variant must end with (an argument error exits 2). */
  status: number;
  quick?: boolean;
}

/** Milliseconds from spawn to exit of one run, output discarded; a wrong exit status throws. */
function timeRun(v: Variant, cwd: string): number {
  const started = performance.now();
  const r = spawnSync(v.cmd, v.args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
  const ms = performance.now() - started;
  if (r.status !== v.status)
    throw new Error(
      `${v.name} exited ${r.status ?? r.signal}, not ${v.status}: ${String(r.stderr)}`,
    );
  return ms;
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const osDir = await mkdtemp(join(tmpdir(), 'day11-bench-cli-'));
  try {
    makeLayerCache(osDir, { layers: LAYERS });
    const { totalBytes } = await Gc.plan({ osDir, keepBytes: Number.MAX_SAFE_INTEGER });
    const keep = String(Math.floor(totalBytes / 2));
    const node = process.execPath;
    const day11 = (...args: string[]): string[] => [CLI, ...args];
    const variants: Variant[] = [
      { name: 'node', cmd: node, args: ['-e', ''], status: 0, quick: true },
      { name: 'help', cmd: node, args: day11('--help'), status: 0, quick: true },
      {
        name: 'argerr',
        cmd: node,
        args: day11('build', 'plan.json', '--bogus'),
        status: 2,
        quick: true,
      },
      { name: 'ls', cmd: node, args: day11('layers', 'ls', '--cache', osDir), status: 0 },
      {
        name: 'node+cat',
        cmd: 'sh',
        args: ['-c', `"$0" -e "" && cat build-*/layer.json > /dev/null`, node],
        status: 0,
      },
      {
        name: 'gc',
        cmd: node,
        args: day11('layers', 'gc', '--dry-run', '--keep-bytes', keep, '--cache', osDir),
        status: 0,
      },
      { name: 'du', cmd: node, args: day11('layers', 'du', '--cache', osDir), status: 0 },
      { name: 'du -s', cmd: 'du', args: ['-s', osDir], status: 0 },
    ];
    const times = new Map<string, number[]>(variants.map((v) => [v.name, []]));
    const random = seeded(17);
    for (const v of variants) timeRun(v, osDir);
    for (let round = 0; round < ROUNDS; round++) {
      const runs = variants.flatMap((v) => Array<Variant>(v.quick ? QUICK_REPEAT : 1).fill(v));
      for (const v of shuffled(runs, random)) times.get(v.name)!.push(timeRun(v, osDir));
    }
    const m = (name: string): number => median(times.get(name)!);
    const layers = `${LAYERS.toLocaleString('en')} layers`;
    return [
      {
        name: 'day11 --help',
        value: m('help'),
        baselineName: 'node -e ""',
        baseline: m('node'),
        target: 1.5,
      },
      {
        name: 'day11 build plan.json --bogus (argument error)',
        value: m('argerr'),
        baselineName: 'node -e ""',
        baseline: m('node'),
        target: 1.5,
      },
      {
        name: `day11 layers ls, ${layers}`,
        value: m('ls'),
        baselineName: 'node -e "" && cat build-*/layer.json',
        baseline: m('node+cat'),
        target: 2,
      },
      {
        name: `day11 layers gc --dry-run (to half), ${layers}`,
        value: m('gc'),
        baselineName: 'du -s',
        baseline: m('du -s'),
        target: 1.5,
      },
      {
        name: `day11 layers du, ${layers}`,
        value: m('du'),
        baselineName: 'du -s',
        baseline: m('du -s'),
      },
    ];
  } finally {
    await rm(osDir, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
