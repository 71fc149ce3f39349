/**
 * Fault injection (issue 7): `Commit.commit`, `runInLayers` + commit and
 * `exportImage`, each in a child process SIGKILLed at a random moment, then
 * recovered and checked (see ./faults.ts). DAY11_FAULT_TRIALS trials in all,
 * shared out between the three operations (default 20; `pnpm test:faults`
 * runs 100), DAY11_FAULT_SEED to replay a schedule. The workers run from
 * `dist/`: `pnpm build` first.
 */
import { access, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Runc } from '@day11/container';
import { recover } from '@day11/runner';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OPS, runTrials, WORKER, type FaultContext } from './faults.js';
import { busyboxBase, syntheticLayer, tempRoot } from './fixtures/layers.js';
import { containersUnder, procMounts } from './fixtures/leftovers.js';
import { seedFrom } from './fixtures/random.js';

const TRIALS = Number(process.env['DAY11_FAULT_TRIALS'] ?? 20);
const SEED = seedFrom('DAY11_FAULT_SEED');
/** Trials of operation `i`: the total shared out, the first operations taking the remainder. */
const trialsOf = (i: number): number =>
  Math.floor(TRIALS / OPS.length) + (i < TRIALS % OPS.length ? 1 : 0);
/**
 * Generous: a trial takes one to three seconds; a kill while an export holds
 * the layout lock adds up to its stale time (10 s) to the recovery's Layout.gc.
 */
const timeoutOf = (trials: number): number => 120_000 + trials * 20_000;

let ctx: FaultContext;

beforeAll(async () => {
  if (!Number.isSafeInteger(TRIALS) || TRIALS < 1)
    throw new Error(`DAY11_FAULT_TRIALS must be a positive integer, got ${TRIALS}`);
  await access(WORKER).catch(() => {
    throw new Error(`${WORKER} is missing: run \`pnpm build\` before the integration tests`);
  });
  await Runc.prepareCrunCgroups().catch(() => undefined);
  const root = await tempRoot('faults');
  const osDir = join(root, 'cache');
  const base = await busyboxBase(osDir);
  const dep = await syntheticLayer({
    osDir,
    base,
    seed: 1,
    shape: { files: 20, bigBytes: 100_000 },
  });
  ctx = { root, osDir, base, dep };
  console.log(`fault injection: seed ${SEED}, ${TRIALS} trials`);
});

afterAll(async () => {
  if (!ctx) return;
  // Whatever a failed trial left must not outlive the suite.
  await recover({ osDir: ctx.osDir }).catch(() => undefined);
  await rm(ctx.root, { recursive: true, force: true });
});

describe('SIGKILL at a random moment, then recovery', () => {
  for (const [i, op] of OPS.entries()) {
    it(
      `${op}: ${trialsOf(i)} trials leave nothing partial, mounted, running, temporary or locked`,
      async () => {
        const summary = await runTrials(ctx, op, trialsOf(i), SEED);
        console.log(`fault injection ${JSON.stringify(summary)}`);
        expect(summary.trials).toBe(trialsOf(i));
      },
      timeoutOf(trialsOf(i)),
    );
  }

  it('leaves no mount and no container of the suite behind', async () => {
    expect(await procMounts(ctx.root)).toEqual([]);
    expect(await containersUnder(ctx.root)).toEqual([]);
  });
});
