/**
 * `day11` at the scale of a distribution: a generated plan of 160 steps
 * named like Debian packages (`+`, `~`, `.` in ids), a DAG with stacks
 * dozens of layers deep, exported step by step; a plan whose derived tags
 * collide, refused before anything runs; and the live display under a real
 * pseudo-terminal of 20 rows, whose output must stay bounded.
 */
import { readdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { deriveTag } from '@day11/build';
import { Exec } from '@day11/exec';
import { Layout } from '@day11/oci-export';

const BIN = resolve(import.meta.dirname, '../dist/bin/day11.js');
const isRoot = process.getuid?.() === 0;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-scale-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

async function day11(...args: string[]) {
  return Exec.run(process.execPath, [BIN, ...args], { allowNonZeroExit: true, timeoutMs: 600_000 });
}

/** A seeded generator (LCG), so the plan is the same every run. */
function random(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 1103515245 + 12345) % 2 ** 31;
    return s / 2 ** 31;
  };
}

const STEMS = [
  'libstdc++6-',
  'g++-',
  'python3.11-minimal-',
  'pkg+dfsg-',
  'ocaml-base-compiler.5.2.0~rc',
  'libc6-dev-',
  'perl-base-',
  'lib32gcc-s1+',
];

/** `count` steps named like packages; each depends on 1–3 earlier ones and writes its own file. */
function distributionPlan(count: number): { base: string; steps: object[] } {
  const next = random(42);
  const ids = Array.from({ length: count }, (_, i) => `${STEMS[i % STEMS.length]}${i}`);
  const steps = ids.map((id, i) => {
    const deps =
      i === 0
        ? []
        : [
            ...new Set(
              Array.from(
                { length: 1 + Math.floor(next() * 3) },
                () => ids[Math.floor(next() * i)]!,
              ),
            ),
          ];
    // Every 10th package replaces its files' directory, every 7th deletes a file below it.
    const extra =
      i % 10 === 9
        ? ' && rm -rf /usr/share/doc && mkdir -p /usr/share/doc'
        : i % 7 === 6
          ? ' && rm -f /etc/group'
          : '';
    return {
      id,
      deps,
      run: `mkdir -p /var/lib/pkgs /usr/share/doc && echo ${i} > "/var/lib/pkgs/${id}" && ls /var/lib/pkgs | wc -l > "/usr/share/doc/${id}.count"${extra}`,
    };
  });
  return { base: 'busybox', steps };
}

describe('a distribution-sized plan', () => {
  it.skipIf(!isRoot)(
    'builds 160 package-named steps, exports every one, and maps layers to step ids',
    async () => {
      const plan = distributionPlan(160);
      const file = join(work, 'dist.json');
      await writeFile(file, JSON.stringify(plan));
      const cache = join(work, 'cache');
      const layout = join(work, 'oci');
      const r = await day11('build', file, '--cache', cache, '--jobs', '2', '--oci', layout);
      expect(r.stderr).toBe('');
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toMatch(/Summary: 160 built, 0 cached, 0 failed; .* 160 images exported/);
      const ids = (plan.steps as { id: string }[]).map((s) => s.id);
      const tags = (await Layout.tags(layout)).map((t) => t.tag).sort();
      expect(tags).toEqual(ids.map(deriveTag).sort());
      // The deepest image carries its whole stack: every layer it was built on.
      const ls = (await day11('layers', 'ls', '--cache', cache, '--json')).stdout
        .trim()
        .split('\n')
        .map(
          (l) =>
            JSON.parse(l) as {
              name: string;
              step: { id: string } | null;
              meta: { parent_hashes: string[] };
            },
        );
      const steps = ls.filter((l) => l.step !== null);
      expect(steps.map((l) => l.step!.id).sort()).toEqual([...ids].sort());
      const deepest = steps.reduce((a, b) =>
        b.meta.parent_hashes.length > a.meta.parent_hashes.length ? b : a,
      );
      expect(deepest.meta.parent_hashes.length).toBeGreaterThan(40);
      const inspect = await Exec.run('skopeo', [
        'inspect',
        `oci:${layout}:${deriveTag(deepest.step!.id)}`,
      ]);
      expect((JSON.parse(inspect.stdout) as { Layers: string[] }).Layers).toHaveLength(
        deepest.meta.parent_hashes.length + 2,
      );
      // `layers show` takes a step id, package punctuation and all.
      const show = await day11('layers', 'show', 'ocaml-base-compiler.5.2.0~rc4', '--cache', cache);
      expect(show.stdout).toContain('"id": "ocaml-base-compiler.5.2.0~rc4"');
      // A second build finds everything.
      const again = await day11('build', file, '--cache', cache, '--jobs', '2');
      expect(again.stdout).toMatch(/Summary: 0 built, 160 cached, 0 failed/);
    },
    600_000,
  );

  it('refuses a plan whose derived tags collide, before anything runs', async () => {
    const file = join(work, 'collide.json');
    await writeFile(
      file,
      JSON.stringify({
        base: 'busybox',
        steps: [
          { id: 'libfoo++1', run: 'true' },
          { id: 'libfoopp1', run: 'true' },
        ],
      }),
    );
    const cache = join(work, 'collide-cache');
    const r = await day11('build', file, '--cache', cache);
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(
      /steps "libfoo\+\+1" and "libfoopp1" would both be exported as the tag "libfoopp1"/,
    );
    expect(r.stderr).toMatch(/Give one of them its own "tag"/);
    expect(await readdir(cache).catch(() => [])).toEqual([]);
  });
});

describe('the live display', () => {
  it.skipIf(!isRoot)(
    'fits a 20-row terminal during a 200-step build, shows running steps, and writes little',
    async () => {
      const file = join(work, 'wide.json');
      const steps = Array.from({ length: 200 }, (_, i) => ({
        id: `pkg-${i}`,
        ...(i >= 100 && { deps: [`pkg-${i - 100}`] }),
        run: 'sleep 0.05',
      }));
      await writeFile(file, JSON.stringify({ base: 'busybox', steps }));
      const cache = join(work, 'tty-cache');
      const command = `stty rows 20 cols 100; exec ${process.execPath} ${BIN} build ${file} --cache ${cache} --jobs 4`;
      const r = await Exec.run('script', ['-q', '-e', '-c', command, '/dev/null'], {
        allowNonZeroExit: true,
        timeoutMs: 600_000,
        env: { TERM: 'xterm' },
      });
      expect(r.exitCode).toBe(0);
      const bytes = Buffer.byteLength(r.stdout);
      console.log(`live display: ${bytes} bytes written for a 200-step build`);
      expect(r.stdout).toMatch(/running\s+pkg-/);
      expect(r.stdout).toMatch(/Summary: 200 built, 0 cached, 0 failed/);
      // The frame never grows past the terminal: no cursor jump of 19 lines or more.
      const up = new RegExp(`${String.fromCharCode(27)}\\[(\\d+)A`, 'g');
      const jumps = [...r.stdout.matchAll(up)].map((m) => Number(m[1]));
      expect(Math.max(...jumps)).toBeLessThanOrEqual(18);
      expect(bytes).toBeLessThan(200_000);
    },
    600_000,
  );
});
