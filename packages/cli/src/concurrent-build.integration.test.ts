/**
 * Processes building the same plan in one cache at once: a step is run by one
 * of them, and the others wait for its layer and find it cached (a per-layer
 * lock, then a re-check). Runs the built binary: `pnpm build` first.
 */
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Exec } from '@day11/exec';

const BIN = resolve(import.meta.dirname, '../dist/bin/day11.js');
const PROCESSES = 3;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-cli-race-'));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** A runtime that logs each container run (`run` among its arguments), then is runc. */
async function countingRuntime(log: string): Promise<string> {
  const path = join(work, 'counting-runc');
  const body = `for a in "$@"; do [ "$a" = run ] && { echo "$*" >> '${log}'; break; }; done`;
  await writeFile(path, `#!/bin/sh\n${body}\nexec runc "$@"\n`);
  await chmod(path, 0o755);
  return path;
}

describe('day11 build, several processes, one plan', () => {
  it('runs each step once; the other processes find it cached', async () => {
    const plan = join(work, 'plan.json');
    await writeFile(
      plan,
      JSON.stringify({
        base: 'busybox',
        steps: [
          // Long enough that every process reaches the step while it runs.
          { id: 'slow', run: 'sleep 0.5 && echo slow > /slow' },
          { id: 'next', deps: ['slow'], run: 'cat /slow > /next' },
        ],
      }),
    );
    const log = join(work, 'runs.log');
    const runtime = await countingRuntime(log);
    const cache = join(work, 'cache');
    const args = [BIN, 'build', plan, '--cache', cache, '--runtime', runtime, '--json'];
    const results = await Promise.all(
      Array.from({ length: PROCESSES }, () =>
        Exec.run(process.execPath, args, { allowNonZeroExit: true, timeoutMs: 120_000 }),
      ),
    );
    const summaries = results.map((r) => {
      expect(r.exitCode, r.stderr).toBe(0);
      const lines = r.stdout.trim().split('\n');
      return JSON.parse(lines.at(-1)!) as { built: number; cached: number };
    });
    expect(summaries.reduce((n, s) => n + s.built, 0)).toBe(2);
    expect(summaries.reduce((n, s) => n + s.cached, 0)).toBe(2 * PROCESSES - 2);
    expect((await readFile(log, 'utf8')).trim().split('\n')).toHaveLength(2);
  });
});
