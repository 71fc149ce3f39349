/**
 * `Overlay.mount` + `unmount` of 1, 50 and 500 lower layers with each
 * strategy that can mount that many here, against one fsconfig mount of a
 * single lower (the floor: one overlay superblock set up and torn down), in
 * the same run. Two reference rows time what day11's OCaml did, shelling out
 * to `mount(8)` and `umount(8)` with absolute paths.
 *
 * Every stack has its upper and work directories, like a build mount. The
 * lowers are `{root}/lNNN`, short enough that `classic` fits 50 but not 500;
 * `relative` (entries of 4 bytes) fits 500. Needs root (or sudo for the
 * mount(8)-based strategies); strategies unavailable here are skipped.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Overlay } from '@day11/container';
import { Exec } from '@day11/exec';
import { median, toMarkdown, type BenchRow } from './table.js';

/** Rounds per measurement; the median is reported. */
const ROUNDS = 21;
const DEPTHS = [1, 50, 500] as const;

interface Stack {
  lowers: string[];
  upper: string;
  work: string;
  target: string;
}

async function makeStack(root: string, depth: number): Promise<Stack> {
  const dir = join(root, `s${depth}`);
  const lowers = Array.from({ length: depth }, (_, i) =>
    join(dir, `l${String(i).padStart(3, '0')}`),
  );
  await Promise.all(
    lowers.map(async (lower, i) => {
      await mkdir(lower, { recursive: true });
      await writeFile(join(lower, `f${i}`), '');
    }),
  );
  const [upper, work, target] = ['upper', 'work', 'merged'].map((n) => join(dir, n)) as [
    string,
    string,
    string,
  ];
  await Promise.all([upper, work, target].map((d) => mkdir(d)));
  return { lowers, upper, work, target };
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

interface Contender {
  name: string;
  run: () => Promise<unknown>;
}

/**
 * Times every contender ROUNDS times, round-robin with the order reversed
 * every other round, so drift (writeback, other load) hits all alike; after
 * one warm-up each. Returns medians by name.
 */
async function race(contenders: readonly Contender[]): Promise<Map<string, number>> {
  for (const c of contenders) await c.run();
  const times = new Map<string, number[]>(contenders.map((c) => [c.name, []]));
  for (let round = 0; round < ROUNDS; round++) {
    const order = round % 2 === 0 ? contenders : [...contenders].reverse();
    for (const c of order) times.get(c.name)!.push(await time(c.run));
  }
  return new Map([...times].map(([name, values]) => [name, median(values)]));
}

function mountCycle(stack: Stack, strategy: Overlay.Strategy): () => Promise<void> {
  return async () => {
    const mounted = await Overlay.mount({ ...stack, strategy });
    await mounted.unmount();
  };
}

/** day11's OCaml way: `mount -t overlay` and `umount` as subprocesses, absolute paths. */
function commandCycle(stack: Stack): () => Promise<void> {
  const data = `lowerdir=${stack.lowers.join(':')},upperdir=${stack.upper},workdir=${stack.work}`;
  return async () => {
    await Exec.run('mount', ['-t', 'overlay', 'overlay', '-o', data, stack.target], {
      privileged: true,
    });
    await Exec.run('umount', [stack.target], { privileged: true });
  };
}

async function contenders(root: string): Promise<Contender[]> {
  const out: Contender[] = [];
  for (const depth of DEPTHS) {
    const stack = await makeStack(root, depth);
    // The strategies that can mount this stack here, in the order they are tried.
    const plan = await Overlay.plan(stack);
    for (const fit of plan.fits.filter((f) => f.problem === undefined)) {
      out.push({
        name: `mount+unmount, ${depth} lowers, ${fit.strategy}`,
        run: mountCycle(stack, fit.strategy),
      });
    }
    if (depth <= 50) {
      out.push({
        name: `mount(8)+umount(8) subprocesses, ${depth} lowers`,
        run: commandCycle(stack),
      });
    }
  }
  return out;
}

async function measure(root: string): Promise<BenchRow[]> {
  const probeMs = await time(() => Overlay.capabilities());
  const medians = await race(await contenders(root));
  const baselineName = 'mount+unmount, 1 lowers, fsconfig';
  const baseline = medians.get(baselineName);
  const rows: BenchRow[] = [
    { name: 'Overlay.capabilities() probe (once per process)', value: probeMs },
  ];
  for (const [name, value] of medians) {
    rows.push({
      name,
      value,
      ...(baseline !== undefined && { baselineName: 'fsconfig, 1 lower', baseline }),
    });
  }
  return rows;
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  const root = await mkdtemp(join(tmpdir(), 'day11-bench-mount-'));
  try {
    return await measure(root);
  } finally {
    await Overlay.unmountAll(root, { lazy: true });
    await rm(root, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
