/**
 * A step that prints a lot: the builder streams a container's output to the
 * step's log (capped at 64 MiB, head and tail kept), so its memory must not
 * grow with the output. Measured in a child process per build, so its peak
 * RSS is the build's alone:
 * - peak RSS of a build whose one step prints 250 MB, against the same
 *   build of a step that prints nothing (target: at most 1.5 times);
 * - the time of that step's build, against the floor of writing those bytes
 *   at all: the same `yes | head` on the host into a file.
 * 3 rounds alternating, medians; each round's steps differ by an env value,
 * so nothing is cached.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createBuilder, parsePlan } from '@day11/build';
import { Exec } from '@day11/exec';
import { median, peakRssKiB, toMarkdown, type BenchRow } from './table.js';

const OUTPUT_BYTES = 250 * 1024 ** 2;
const ROUNDS = 3;
const LINE = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ';
const LOUD = `yes ${LINE} | head -c ${OUTPUT_BYTES}`;

interface Measured {
  rssKiB: number;
  ms: number;
}

/** In a child: warm the base, then build one step running `run`; prints `{ rssKiB, ms }`. */
async function child([osDir, run, round]: string[]): Promise<void> {
  const builder = createBuilder({ osDir: osDir! });
  try {
    await builder.build(parsePlan({ base: 'busybox', steps: [{ id: 'warm', run: 'true' }] }, 'w'));
    const plan = parsePlan(
      { base: 'busybox', steps: [{ id: 'step', run: run!, env: { ROUND: round! } }] },
      'bench',
    );
    const started = performance.now();
    const { ok } = await builder.build(plan);
    const ms = performance.now() - started;
    if (!ok) throw new Error(`the step ${JSON.stringify(run)} failed`);
    console.log(JSON.stringify({ rssKiB: peakRssKiB(), ms }));
  } finally {
    await builder.close();
  }
}

async function build(osDir: string, run: string, round: number): Promise<Measured> {
  const self = new URL(import.meta.url).pathname;
  const { stdout } = await Exec.run('node', [self, '--child', osDir, run, String(round)]);
  return JSON.parse(stdout.trim()) as Measured;
}

async function floor(work: string): Promise<number> {
  const started = performance.now();
  await Exec.run('sh', ['-c', `${LOUD} > ${join(work, 'floor.out')}`]);
  const ms = performance.now() - started;
  await rm(join(work, 'floor.out'));
  return ms;
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-output-'));
  try {
    const osDir = join(work, 'cache');
    const loud: Measured[] = [];
    const quiet: Measured[] = [];
    const floors: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 ? ['quiet', 'loud'] : ['loud', 'quiet'];
      for (const which of order) {
        if (which === 'loud') loud.push(await build(osDir, LOUD, round));
        else quiet.push(await build(osDir, 'true', round));
      }
      floors.push(await floor(work));
    }
    const mb = (kib: number): number => (kib * 1024) / 1e6;
    return [
      {
        name: 'peak RSS, build of a step printing 250 MB (log capped at 64 MiB)',
        value: mb(median(loud.map((m) => m.rssKiB))),
        baselineName: 'the same build of a step printing nothing',
        baseline: mb(median(quiet.map((m) => m.rssKiB))),
        target: 1.5,
        unit: 'MB',
      },
      {
        name: 'build of a step printing 250 MB',
        value: median(loud.map((m) => m.ms)),
        baselineName: 'yes | head -c 250M > file, on the host',
        baseline: median(floors),
      },
    ];
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--child') {
  await child(process.argv.slice(3));
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
