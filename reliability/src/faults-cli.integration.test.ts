/**
 * Faults of the whole `day11` command (issue 13), see ./cli-faults.ts:
 * signals to `day11 build --oci` (at random moments, and while the runtime
 * creates a container) and SIGKILL of the process group of `day11 build
 * --oci` and of `day11 export`, each followed by `day11 recover` and the same
 * command again. DAY11_FAULT_TRIALS trials in all, shared out between the
 * kinds (default 8; `pnpm test:faults` runs 100), DAY11_FAULT_SEED to replay.
 * Runs the built CLI: `pnpm build` first.
 */
import { spawn } from 'node:child_process';
import { access, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as delay } from 'node:timers/promises';
import { Runc } from '@day11/container';
import { TempName } from '@day11/exec';
import { Layout } from '@day11/oci-export';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLI_FAULTS, runCliTrials, trialPlan, type CliContext } from './cli-faults.js';
import { CLI, day11, killGroup, startDay11 } from './fixtures/cli.js';
import { tempRoot } from './fixtures/layers.js';
import {
  containersUnder,
  layoutLeftovers,
  layoutProblems,
  procMounts,
} from './fixtures/leftovers.js';
import { seedFrom } from './fixtures/random.js';

const LOCK_HOLDER = fileURLToPath(new URL('../dist/fixtures/lock-holder.js', import.meta.url));
const TRIALS = Number(process.env['DAY11_FAULT_TRIALS'] ?? 8);
const SEED = seedFrom('DAY11_FAULT_SEED');
const trialsOf = (i: number): number =>
  Math.floor(TRIALS / CLI_FAULTS.length) + (i < TRIALS % CLI_FAULTS.length ? 1 : 0);
/** A trial takes 5 to 15 seconds on a loaded 2-core machine. */
const timeoutOf = (trials: number): number => 120_000 + trials * 40_000;

let ctx: CliContext;

beforeAll(async () => {
  if (!Number.isSafeInteger(TRIALS) || TRIALS < 1)
    throw new Error(`DAY11_FAULT_TRIALS must be a positive integer, got ${TRIALS}`);
  await access(CLI).catch(() => {
    throw new Error(`${CLI} is missing: run \`pnpm build\` before the integration tests`);
  });
  await Runc.prepareCrunCgroups().catch(() => undefined);
  const root = await tempRoot('cli-faults');
  ctx = { root, cache: join(root, 'cache') };
  console.log(`day11 command faults: seed ${SEED}, ${TRIALS} trials`);
});

afterAll(async () => {
  if (!ctx) return;
  await day11(['recover', '--cache', ctx.cache]).catch(() => undefined);
  await rm(ctx.root, { recursive: true, force: true });
});

describe('signals and SIGKILL of the whole day11 command, then day11 recover', () => {
  for (const [i, fault] of CLI_FAULTS.entries()) {
    it.skipIf(trialsOf(i) === 0)(
      `${fault}: ${trialsOf(i)} trials leave nothing behind, and the command then succeeds`,
      async () => {
        const summary = await runCliTrials(ctx, fault, trialsOf(i), SEED);
        const { failures, ...counts } = summary;
        console.log(`day11 command faults ${JSON.stringify(counts)}`);
        const lines = failures.map(
          (f) =>
            `DAY11_FAULT_SEED=${SEED} ${f.fault} trial ${f.index} (${f.what}${f.interrupted ? '' : ', had finished'}):\n    ${f.problems.join('\n    ')}`,
        );
        expect(lines, `${summary.clean} of ${summary.trials} trials clean`).toEqual([]);
      },
      timeoutOf(trialsOf(i)),
    );
  }

  it('SIGKILL of an export waiting for the layout lock and of the exporter holding it: day11 recover leaves nothing', async () => {
    const plan = join(ctx.root, 'lock-plan.json');
    const layout = join(ctx.root, 'oci-lock');
    await writeFile(plan, JSON.stringify(trialPlan('lock')));
    const built = await day11(['build', plan, '--cache', ctx.cache]);
    expect(built.code, built.stderr).toBe(0);
    await Layout.init(layout);
    const holder = spawn(process.execPath, [LOCK_HOLDER, layout], {
      stdio: ['ignore', 'pipe', 'inherit'],
      detached: true,
    });
    await new Promise<void>((resolve) => holder.stdout.once('data', () => resolve()));
    const args = ['export', '--cache', ctx.cache, '--oci', layout, '--tag', 'top', 'top'];
    const waiting = startDay11(args);
    // Its layer blobs are in (the base and five layers): it now waits for the lock.
    const blobs = async () =>
      (await readdir(join(layout, 'blobs/sha256'))).filter((n) => !TempName.is(n)).length;
    while ((await blobs()) < 6) await delay(20);
    await delay(300);
    killGroup(waiting.pid, 'SIGKILL');
    killGroup(holder.pid!, 'SIGKILL');
    expect((await waiting.ended).signal).toBe('SIGKILL');
    // No --oci: the cache remembers the layouts it exported into.
    const recovered = await day11(['recover', '--cache', ctx.cache]);
    expect(recovered.code, recovered.stderr).toBe(0);
    expect(await layoutLeftovers(layout)).toEqual([]);
    const again = await day11(args);
    expect(again.code, again.stderr).toBe(0);
    expect(await layoutProblems(layout)).toEqual([]);
    expect(await layoutLeftovers(layout)).toEqual([]);
  });

  it('leaves no mount and no container of the suite behind', async () => {
    expect(await procMounts(ctx.root)).toEqual([]);
    expect(await containersUnder(ctx.root)).toEqual([]);
  });
});
