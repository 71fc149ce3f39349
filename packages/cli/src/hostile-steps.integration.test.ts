/**
 * Steps that misbehave, through the built `day11` binary: a step printing
 * 250 MB, a fork bomb, a memory hog, arguments past the kernel's limits.
 * Each must leave the build (and the machine) in order: the step's result
 * is its own exit status, and the `day11` process stays small.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_PIDS } from '@day11/build';
import { Exec } from '@day11/exec';

const BIN = resolve(import.meta.dirname, '../dist/bin/day11.js');
const isRoot = process.getuid?.() === 0;
let work: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-hostile-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

interface Ran {
  exitCode: number | null;
  stdout: string;
  stderr: string;
  /** The `day11` process's peak resident set (VmHWM), KiB. */
  peakKiB: number;
  pid: number;
}

/** Runs `day11 ...args`, sampling its peak RSS (VmHWM only grows: the last sample is the peak). */
function day11(...args: string[]): Promise<Ran> {
  return new Promise((done, fail) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let peakKiB = 0;
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const sample = (): void => {
      try {
        const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${child.pid}/status`, 'utf8'));
        if (m) peakKiB = Math.max(peakKiB, Number(m[1]));
      } catch {
        // exited
      }
    };
    const timer = setInterval(sample, 50);
    child.on('error', fail);
    child.on('exit', () => sample());
    child.on('close', (exitCode) => {
      clearInterval(timer);
      done({ exitCode, stdout, stderr, peakKiB, pid: child.pid! });
    });
  });
}

async function plan(name: string, body: object): Promise<string> {
  const file = join(work, `${name}.json`);
  await writeFile(file, JSON.stringify(body));
  return file;
}

interface StepEvent {
  type: string;
  id?: string;
  status?: string;
  exitCode?: number;
  reason?: string;
  recorded?: boolean;
  layer?: string;
}

function events(stdout: string): StepEvent[] {
  return stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as StepEvent);
}

function final(stdout: string, id: string): StepEvent {
  return events(stdout)
    .filter((e) => e.type === 'step' && e.id === id)
    .at(-1)!;
}

/** Where runc and crun put a relative `cgroupsPath`: v1's pids hierarchy, v2's root, this process's cgroup. */
function cgroupRoots(): string[] {
  const own = readFileSync('/proc/self/cgroup', 'utf8').match(/^0::(\/.*)$/m)?.[1];
  return ['/sys/fs/cgroup/pids', '/sys/fs/cgroup', ...(own ? [join('/sys/fs/cgroup', own)] : [])];
}

/**
 * The process counts (`pids.current`) of the containers' cgroups whose name
 * starts with `prefix`: the containers' own count, which other tests running
 * beside this one do not change (a count of every process on the host does).
 */
async function containerPids(prefix: string): Promise<number[]> {
  const counts: number[] = [];
  for (const root of cgroupRoots()) {
    const names = await readdir(root).catch(() => [] as string[]);
    for (const name of names.filter((n) => n.startsWith(prefix))) {
      const text = await readFile(join(root, name, 'pids.current'), 'utf8').catch(() => '');
      if (/^\d+\s*$/.test(text)) counts.push(Number(text));
    }
  }
  return counts;
}

/** The processes whose command line names `word` (e.g. a runtime still running a container id). */
async function processesNaming(word: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of (await readdir('/proc')).filter((d) => /^\d+$/.test(d))) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes(word)) found.push(`${pid}: ${cmdline.replaceAll('\0', ' ')}`);
  }
  return found;
}

describe('a step printing 250 MB', () => {
  it.skipIf(!isRoot)(
    'succeeds with its own exit status; its log keeps head + marker + tail within the cap; day11 stays small',
    async () => {
      const cache = join(work, 'huge-cache');
      const line = '0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ\n'; // 63 bytes
      const file = await plan('huge', {
        base: 'busybox',
        steps: [
          {
            id: 'huge',
            run: `yes ${line.trim()} | head -c 262144000; echo; echo the-end; echo to-stderr >&2`,
          },
        ],
      });
      const r = await day11('build', file, '--cache', cache, '--json');
      expect(r.stderr).toBe('');
      expect(final(r.stdout, 'huge')).toMatchObject({ status: 'done', exitCode: 0 });
      expect(r.exitCode).toBe(0);
      const layer = final(r.stdout, 'huge').layer!;
      const log = join(cache, layer, 'layer.log');
      const cap = 64 * 2 ** 20; // the default
      expect((await stat(log)).size).toBeLessThan(cap + 1024);
      const handle = await readFile(log);
      expect(handle.subarray(0, line.length * 2).toString()).toBe(line + line);
      const text = handle.toString('latin1');
      const marker =
        /\n\[day11: (\d+) bytes of output left out here; .*\(log cap 67108864 bytes\)\]\n/.exec(
          text,
        );
      expect(marker).not.toBeNull();
      expect(Number(marker![1])).toBeGreaterThan(262_144_000 - cap);
      expect(text).toMatch(/\nthe-end\n/);
      expect(text.endsWith('\n')).toBe(true);
      // stderr is its own pipe: its last line may overtake stdout's last pipe-full.
      expect(text.slice(-(1 << 20))).toContain('to-stderr');
      // Before: 815 MiB, the output gathered in memory (and cut at 100 MB, exit 1).
      expect(r.peakKiB).toBeGreaterThan(0);
      expect(r.peakKiB).toBeLessThan(250 * 1024);
    },
    300_000,
  );

  it.skipIf(!isRoot)(
    '--log-cap sets the cap, and none keeps everything',
    async () => {
      const cache = join(work, 'cap-cache');
      const file = await plan('seq', {
        base: 'busybox',
        steps: [{ id: 'seq', run: 'seq 1 200000' }], // 1,288,895 bytes
      });
      const capped = await day11('build', file, '--cache', cache, '--json', '--log-cap', '64K');
      expect(capped.exitCode).toBe(0);
      const layer = final(capped.stdout, 'seq').layer!;
      const text = await readFile(join(cache, layer, 'layer.log'), 'utf8');
      expect(text.length).toBeLessThan(65536 + 200);
      expect(text).toMatch(/^1\n2\n3\n/);
      expect(text).toMatch(/\(log cap 65536 bytes\)\]\n/);
      expect(text.endsWith('199999\n200000\n')).toBe(true);

      const whole = await day11(
        'build',
        file,
        '--cache',
        join(work, 'cap-cache-2'),
        '--json',
        '--log-cap',
        'none',
      );
      expect(whole.exitCode).toBe(0);
      const all = await readFile(join(work, 'cap-cache-2', layer, 'layer.log'), 'utf8');
      expect(all.length).toBe(1_288_895);

      const bad = await day11('build', file, '--cache', cache, '--log-cap', '100');
      expect(bad.exitCode).toBe(2);
      expect(bad.stderr).toMatch(/^day11 build: --log-cap must be at least 8192 bytes/);
    },
    120_000,
  );
});

describe('arguments past the kernel limits', () => {
  it('a 200 KB env value or run string: one line naming the plan and the step, exit 1, nothing run', async () => {
    const big = 'v'.repeat(200 * 1024);
    for (const [name, step] of [
      ['env', { id: 'big-env', run: 'true', env: { BIG: big } }],
      ['run', { id: 'big-run', run: `echo ${big}` }],
    ] as const) {
      const cache = join(work, `args-${name}`);
      const file = await plan(`args-${name}`, { base: 'busybox', steps: [step] });
      const r = await day11('build', file, '--cache', cache);
      expect(r.exitCode).toBe(1);
      const [message, hint, ...rest] = r.stderr.trim().split('\n');
      expect(message).toContain(file);
      expect(message).toContain(`step "${step.id}"`);
      expect(message).toMatch(
        /past the kernel's limit of 131071 for one argument \(MAX_ARG_STRLEN\)/,
      );
      expect(hint).toMatch(/^hint: Pass large data as a file/);
      expect(rest).toEqual([]);
      expect(r.stdout).toBe('');
      // Nothing ran: not even the cache was made.
      await expect(stat(cache)).rejects.toMatchObject({ code: 'ENOENT' });
    }
  });
});

describe('hardening against the step itself', () => {
  it.skipIf(!isRoot)(
    'steps run with the seccomp deny list and no_new_privs; security: false turns each off',
    async () => {
      const cache = join(work, 'security-cache');
      // unshare(CLONE_NEWUSER) needs no capability: only the filter stops it.
      const probe =
        'grep -E "^(Seccomp|NoNewPrivs):" /proc/self/status | tr -d "\\t" > /status; ' +
        '{ unshare -U true && echo userns-ok || echo userns-refused; } > /userns 2>&1; ' +
        'wc -c < /proc/interrupts > /interrupts';
      const file = await plan('security', {
        base: 'busybox',
        steps: [
          { id: 'hardened', run: probe },
          { id: 'open', run: probe, security: { seccomp: false, noNewPrivileges: false } },
          { id: 'setuid-ok', run: probe, security: { noNewPrivileges: false } },
        ],
      });
      const r = await day11('build', file, '--cache', cache, '--json');
      expect(r.exitCode).toBe(0);
      const read = (id: string, name: string): Promise<string> =>
        readFile(join(cache, final(r.stdout, id).layer!, 'fs', name), 'utf8');
      expect(await read('hardened', 'status')).toBe('NoNewPrivs:1\nSeccomp:2\n');
      expect(await read('hardened', 'userns')).toMatch(
        /Operation not permitted\nuserns-refused\n$/,
      );
      expect(await read('open', 'status')).toBe('NoNewPrivs:0\nSeccomp:0\n');
      expect(await read('open', 'userns')).toBe('userns-ok\n');
      expect(await read('setuid-ok', 'status')).toBe('NoNewPrivs:0\nSeccomp:2\n');
      // Masked as Docker masks it, whatever the security settings.
      expect(await read('hardened', 'interrupts')).toBe('0\n');
      expect(await read('open', 'interrupts')).toBe('0\n');
    },
    120_000,
  );
});

describe('process and memory limits', () => {
  it.skipIf(!isRoot)(
    `a step runs in a pids cgroup limited to ${DEFAULT_PIDS} by default; plan-wide and per-step pids set it`,
    async () => {
      const cache = join(work, 'pids-cache');
      // cgroup v1 (this machine's hybrid layout) or v2: the container sees its own cgroup there.
      const run = 'cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max';
      const file = await plan('pids', {
        base: 'busybox',
        steps: [
          { id: 'default', run: `{ ${run}; } > /pids.max` },
          { id: 'own', run: `{ ${run}; } > /pids.max`, resources: { pids: 300 } },
        ],
      });
      const planWide = await plan('pids-plan', {
        base: 'busybox',
        resources: { pids: 200 },
        steps: [{ id: 'plan-wide', run: `{ ${run}; } > /pids.max` }],
      });
      const r = await day11('build', file, '--cache', cache, '--json');
      expect(r.exitCode).toBe(0);
      const r2 = await day11('build', planWide, '--cache', cache, '--json');
      expect(r2.exitCode).toBe(0);
      const max = (out: string, id: string): Promise<string> =>
        readFile(join(cache, final(out, id).layer!, 'fs/pids.max'), 'utf8');
      expect(await max(r.stdout, 'default')).toBe(`${DEFAULT_PIDS}\n`);
      expect(await max(r.stdout, 'own')).toBe('300\n');
      expect(await max(r2.stdout, 'plan-wide')).toBe('200\n');
    },
    120_000,
  );

  it.skipIf(!isRoot)(
    'a real fork bomb stays under the default limit and is stopped by --timeout, leaving nothing',
    async () => {
      const file = await plan('bomb', {
        base: 'busybox',
        steps: [{ id: 'bomb', run: 'b() { b | b & }; b; sleep 30' }],
      });
      let peak = 0;
      const sampler = setInterval(() => {
        void containerPids('day11-run-').then((n) => (peak = Math.max(peak, ...n)));
      }, 100);
      let r;
      try {
        r = await day11(
          'build',
          file,
          '--cache',
          join(work, 'bomb-cache'),
          '--json',
          '--timeout',
          '5',
        );
      } finally {
        clearInterval(sampler);
      }
      expect(final(r.stdout, 'bomb')).toMatchObject({
        status: 'failed',
        reason: 'timed out',
        recorded: false,
      });
      expect(r.exitCode).toBe(1);
      expect(peak).toBeGreaterThan(500); // the bomb did go off
      expect(peak).toBeLessThanOrEqual(DEFAULT_PIDS);
      // Nothing of the run is left: no cgroup of its containers, no process naming one.
      expect(await containerPids(`day11-run-${r.pid}-`)).toEqual([]);
      expect(await processesNaming(`day11-run-${r.pid}-`)).toEqual([]);
      const { stdout } = await Exec.run('runc', ['list', '-q']);
      expect(stdout.split('\n').filter((id) => id.startsWith(`day11-run-${r.pid}-`))).toEqual([]);
    },
    120_000,
  );

  it.skipIf(!isRoot)(
    'a plan-wide memory limit OOM-kills a hog (137, recorded); a step may raise it',
    async () => {
      const cache = join(work, 'mem-cache');
      const hog = 'x=$(head -c 268435456 /dev/zero | tr "\\0" a); echo survived ${#x}';
      const file = await plan('mem', {
        base: 'busybox',
        resources: { memory: '32M' },
        steps: [
          { id: 'hog', run: hog },
          { id: 'roomy', run: hog, resources: { memory: '2G' } },
        ],
      });
      const r = await day11('build', file, '--cache', cache, '--json');
      expect(final(r.stdout, 'hog')).toMatchObject({
        status: 'failed',
        exitCode: 137,
        recorded: true,
      });
      expect(final(r.stdout, 'roomy')).toMatchObject({ status: 'done', exitCode: 0 });
      expect(r.exitCode).toBe(1);
    },
    180_000,
  );
});
