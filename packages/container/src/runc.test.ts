import { spawn } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Exec } from '@day11/exec';
import { afterEach, describe, expect, it } from 'vitest';
import { ContainerCodes, ContainerError } from './errors.js';
import * as Runc from './runc.js';

describe('Runc.newId', () => {
  it('makes valid ids <prefix>-<pid>-<n>-<random>, unique within the process', () => {
    const ids = Array.from({ length: 1000 }, () => Runc.newId());
    expect(new Set(ids).size).toBe(1000);
    for (const id of ids) {
      expect(id).toMatch(Runc.ID_PATTERN);
      expect(id).toMatch(new RegExp(`^day11-${process.pid}-\\d+-[0-9a-f]{6}$`));
    }
    expect(Runc.newId('build.x')).toMatch(new RegExp(`^build\\.x-${process.pid}-`));
  });

  it('refuses a prefix that makes an invalid id', () => {
    for (const prefix of ['', '-x', 'a/b', 'x'.repeat(120)]) {
      expect(() => Runc.newId(prefix)).toThrow(
        expect.objectContaining({ code: ContainerCodes.BAD_ID }) as Error,
      );
    }
  });
});

describe('Runc.stateDir', () => {
  it("knows runc's and crun's state directories, and no other runtime's", () => {
    expect(Runc.stateDir('day11-1-2-abc')).toBe('/run/runc/day11-1-2-abc');
    expect(Runc.stateDir('day11-1-2-abc', { runtime: 'crun' })).toBe('/run/crun/day11-1-2-abc');
    expect(Runc.stateDir('day11-1-2-abc', { runtime: '/opt/bin/runc' })).toBeUndefined();
    expect(() => Runc.stateDir('../x')).toThrow(
      expect.objectContaining({ code: ContainerCodes.BAD_ID }) as Error,
    );
  });
});

describe('Runc.assertId', () => {
  it.each(['a', 'day11-1-2-abc', 'A_b.c-9', 'x'.repeat(128)])('accepts %s', (id) => {
    expect(Runc.assertId(id)).toBe(id);
  });

  it.each(['', '-a', '.a', '_a', 'a/b', '../x', 'a b', 'a\nb', 'é', 'x'.repeat(129)])(
    'refuses %j with BAD_ID',
    (id) => {
      const err = (() => {
        try {
          Runc.assertId(id);
        } catch (e) {
          return e;
        }
      })();
      expect(err).toBeInstanceOf(ContainerError);
      expect(err).toMatchObject({ code: ContainerCodes.BAD_ID });
    },
  );

  it('guards run, state and delete before any runtime runs', async () => {
    const runtime = '/nonexistent/runtime';
    const bad = { code: ContainerCodes.BAD_ID };
    await expect(Runc.run({ bundle: '/tmp', id: '../x', runtime })).rejects.toMatchObject(bad);
    await expect(Runc.state('a b', { runtime })).rejects.toMatchObject(bad);
    await expect(Runc.delete('', { runtime })).rejects.toMatchObject(bad);
  });
});

// A fake runtime (a shell script with runc's command line) exercises the
// error mapping, the output plumbing and the kill sequence without root or
// containers. Runtime commands are privileged, so these run only as root.
describe.skipIf(!Exec.isRoot())('Runc with a fake runtime', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });

  interface Fake {
    dir: string;
    runtime: string;
    calls: () => Promise<string[]>;
  }

  /** Each body is the sh code of one subcommand; `$log` is the --log file, "$@" the rest. */
  async function fake(bodies: Partial<Record<string, string>>): Promise<Fake> {
    const dir = await mkdtemp(join(tmpdir(), 'day11-fake-runtime-'));
    dirs.push(dir);
    const runtime = join(dir, 'fake-runc');
    const cases = Object.entries({ delete: 'exit 0', ...bodies })
      .map(([cmd, body]) => `  ${cmd}) ${body} ;;`)
      .join('\n');
    const script = `#!/bin/sh
echo "$*" >> ${dir}/calls
log=/dev/null
if [ "$1" = --log ]; then log=$2; shift 4; fi
cmd=$1; shift
case "$cmd" in
${cases}
  *) echo "unexpected $cmd" >&2; exit 99 ;;
esac
`;
    await writeFile(runtime, script);
    await chmod(runtime, 0o755);
    const calls = async () =>
      (await readFile(join(dir, 'calls'), 'utf8').catch(() => '')).split('\n').filter(Boolean);
    return { dir, runtime, calls };
  }

  it('deletes a stale container first, runs in the foreground, streams and logs output, deletes after', async () => {
    const f = await fake({ run: 'echo out; echo err >&2; printf "no newline"; exit 5' });
    const logFile = join(f.dir, 'build.log');
    await writeFile(logFile, 'heading\n');
    const lines: string[] = [];
    const id = 'day11-given-1';
    const r = await Runc.run({
      bundle: '/b',
      id,
      runtime: f.runtime,
      logFile,
      onOutput: (line, stream) => lines.push(`${stream}:${line}`),
    });
    expect(r).toMatchObject({ exitCode: 5, signal: undefined, timedOut: false, aborted: false });
    expect(lines.sort()).toEqual(['stderr:err', 'stdout:no newline', 'stdout:out']);
    expect((await readFile(logFile, 'utf8')).split('\n').sort()).toEqual(
      ['', 'err', 'heading', 'no newline', 'out'].sort(),
    );
    const calls = await f.calls();
    expect(calls[0]).toBe(`delete --force ${id}`);
    expect(calls[1]).toMatch(new RegExp(`^--log \\S+ --log-format json run --bundle /b ${id}$`));
    expect(calls[2]).toBe(`delete --force ${id}`);
  });

  it('skips the stale delete for an id fresh from newId, once', async () => {
    const f = await fake({ run: 'exit 0' });
    const id = Runc.newId();
    await Runc.run({ bundle: '/b', id, runtime: f.runtime });
    await Runc.run({ bundle: '/b', id, runtime: f.runtime });
    const calls = (await f.calls()).map((c) => c.replace(/^--log \S+ --log-format json /, ''));
    expect(calls).toEqual([
      `run --bundle /b ${id}`,
      `delete --force ${id}`, // another runtime than runc/crun: deleted after, always
      `delete --force ${id}`, // run again: no longer fresh
      `run --bundle /b ${id}`,
      `delete --force ${id}`,
    ]);
  });

  it('refuses a log file it cannot open (BAD_ARGUMENT) without running anything', async () => {
    const f = await fake({ run: 'exit 0' });
    const logFile = join(f.dir, 'missing-dir', 'build.log');
    await expect(
      Runc.run({ bundle: '/b', id: Runc.newId(), runtime: f.runtime, logFile }),
    ).rejects.toMatchObject({ code: ContainerCodes.BAD_ARGUMENT, path: logFile });
    expect((await f.calls()).some((c) => c.includes(' run '))).toBe(false);
  });

  it('passes stdin, and reports 128+n as the signal', async () => {
    const f = await fake({ run: 'cat; exit 137' });
    const lines: string[] = [];
    const r = await Runc.run({
      bundle: '/b',
      id: Runc.newId(),
      runtime: f.runtime,
      stdin: 'from stdin\n',
      onOutput: (l) => lines.push(l),
    });
    expect(lines).toEqual(['from stdin']);
    expect(r).toMatchObject({ exitCode: 137, signal: 'SIGKILL' });
  });

  it("turns a runtime's logged error into RUNTIME_FAILED with its message, and still deletes", async () => {
    const f = await fake({
      run: `echo '{"level":"error","msg":"runc run failed: unable to start container process: exec: \\"nope\\": not found"}' > $log; echo 'runc run failed' >&2; exit 1`,
    });
    const err = await Runc.run({ bundle: '/b', id: 'day11-t-1', runtime: f.runtime }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: ContainerCodes.RUNTIME_FAILED, path: '/b' });
    expect((err as Error).message).toMatch(/could not start container day11-t-1.*exec: "nope"/);
    expect((await f.calls()).at(-1)).toBe('delete --force day11-t-1');
  });

  it("turns crun's hybrid-cgroups refusal into CRUN_HYBRID_CGROUPS with the fix", async () => {
    const msg = 'cgroups in hybrid mode not supported, drop all controllers from cgroupv2';
    const f = await fake({
      run: `echo '{"msg":"${msg}","level":"error"}' > $log; echo '${msg}' >&2; exit 1`,
    });
    const err = await Runc.run({ bundle: '/b', id: Runc.newId(), runtime: f.runtime }).catch(
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: ContainerCodes.CRUN_HYBRID_CGROUPS });
    expect((err as ContainerError).hint).toMatch(
      /mount -t cgroup -o \w+ cgroup \/sys\/fs\/cgroup\/\w+/,
    );
    expect((err as ContainerError).hint).toMatch(/Runc\.prepareCrunCgroups\(\)/);
  });

  it('is RUNTIME_FAILED with an install hint when the runtime does not exist', async () => {
    const err = await Runc.run({
      bundle: '/b',
      id: Runc.newId(),
      runtime: '/nonexistent/crun',
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ContainerCodes.RUNTIME_FAILED });
    expect((err as ContainerError).hint).toMatch(/apt-get install/);
  });

  it('on abort sends TERM, then KILL --all after the grace period, and reports aborted', async () => {
    // The "container" ignores TERM (as a PID 1 does) and dies on KILL.
    const f = await fake({
      run: `sleep 1000 & echo $! > $(dirname $0)/pid; wait $!; exit $?`,
      kill: `[ "$1" = --all ] && shift; [ "$2" = KILL ] && kill -9 $(cat $(dirname $0)/pid); exit 0`,
    });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 300);
    const id = Runc.newId();
    const r = await Runc.run({
      bundle: '/b',
      id,
      runtime: f.runtime,
      signal: ac.signal,
      killGraceMs: 400,
    });
    expect(r).toMatchObject({ exitCode: 137, signal: 'SIGKILL', aborted: true, timedOut: false });
    expect(r.durationMs).toBeGreaterThan(650);
    expect(r.durationMs).toBeLessThan(3000);
    const calls = await f.calls();
    expect(calls).toContain(`kill ${id} TERM`);
    expect(calls).toContain(`kill --all ${id} KILL`);
    expect(calls.indexOf(`kill ${id} TERM`)).toBeLessThan(calls.indexOf(`kill --all ${id} KILL`));
    expect(calls.at(-1)).toBe(`delete --force ${id}`);
  });

  it('falls back to plain KILL when --all is refused, on timeout', async () => {
    const f = await fake({
      run: `sleep 1000 & echo $! > $(dirname $0)/pid; wait $!; exit $?`,
      kill: `[ "$1" = --all ] && exit 1; [ "$2" = KILL ] && kill -9 $(cat $(dirname $0)/pid); exit 0`,
    });
    const id = Runc.newId();
    const r = await Runc.run({
      bundle: '/b',
      id,
      runtime: f.runtime,
      timeoutMs: 200,
      killGraceMs: 200,
    });
    expect(r).toMatchObject({ exitCode: 137, timedOut: true, aborted: false });
    expect(await f.calls()).toContain(`kill ${id} KILL`);
  });

  it('does not start a container when the signal is already aborted', async () => {
    const f = await fake({ run: 'exit 0' });
    const r = await Runc.run({
      bundle: '/b',
      id: Runc.newId(),
      runtime: f.runtime,
      signal: AbortSignal.abort(),
    });
    expect(r).toMatchObject({ exitCode: null, aborted: true });
    expect((await f.calls()).some((c) => c.includes(' run '))).toBe(false);
  });

  it("lists containers, reading runc's null and crun's empty array as none", async () => {
    expect(await Runc.list({ runtime: (await fake({ list: 'echo null' })).runtime })).toEqual([]);
    expect(
      await Runc.list({ runtime: (await fake({ list: 'printf "[\\n\\n]\\n"' })).runtime }),
    ).toEqual([]);
    const one =
      '[{"id":"a","pid":7,"status":"running","bundle":"/b","created":"t","owner":"root"}]';
    expect(await Runc.list({ runtime: (await fake({ list: `echo '${one}'` })).runtime })).toEqual([
      { id: 'a', pid: 7, status: 'running', bundle: '/b', created: 't' },
    ]);
  });

  it('state is undefined for a missing container; delete ignores one; other failures are RUNTIME_FAILED', async () => {
    const missing = await fake({
      state: 'echo \'level=error msg="container does not exist"\' >&2; exit 1',
      delete: "echo 'container does not exist' >&2; exit 1",
    });
    expect(await Runc.state('x', { runtime: missing.runtime })).toBeUndefined();
    await Runc.delete('x', { runtime: missing.runtime });
    const broken = await fake({ delete: "echo 'permission denied' >&2; exit 1", list: 'exit 2' });
    await expect(Runc.delete('x', { runtime: broken.runtime })).rejects.toMatchObject({
      code: ContainerCodes.RUNTIME_FAILED,
      message: expect.stringMatching(/permission denied/) as string,
    });
    await expect(Runc.list({ runtime: broken.runtime })).rejects.toMatchObject({
      code: ContainerCodes.RUNTIME_FAILED,
    });
  });

  it('sweep deletes the containers of dead owners and ours not running, not those of live processes', async () => {
    const dead = 2 ** 22 + 1; // above pid_max's maximum: never a live process
    const now = new Date().toISOString();
    const ids = [
      `day11-${dead}-1-aaaaaa`,
      `day11-1-1-bbbbbb`,
      `day11-${process.pid}-9-cccccc`,
      'other',
      `day11-1-2-dddddd`,
    ];
    // The last was created years before pid 1 started: its owner's pid was reused.
    const created = [now, now, now, now, '2000-01-01T00:00:00Z'];
    const json = JSON.stringify(
      ids.map((id, i) => ({ id, pid: 1, status: 'running', created: created[i] })),
    );
    const f = await fake({ list: `echo '${json}'` });
    expect(await Runc.sweep({ runtime: f.runtime })).toEqual([ids[0], ids[2], ids[4]]);
    const deletes = (await f.calls()).filter((c) => c.startsWith('delete'));
    expect(deletes).toEqual([ids[0], ids[2], ids[4]].map((id) => `delete --force ${id}`));
  });

  it('sweep spawns nothing when no state directory of runc names a container of the prefix', async () => {
    const f = await fake({ list: 'echo []' });
    await symlink(f.runtime, join(f.dir, 'runc'));
    const path = process.env.PATH;
    process.env.PATH = `${f.dir}:${path ?? ''}`;
    try {
      // No entry of /run/runc starts with this prefix: `list` has nothing to show.
      const prefix = `day11-none${process.pid}`;
      expect(await Runc.sweep({ runtime: 'runc', prefix, cgroups: false })).toEqual([]);
      expect(await f.calls()).toEqual([]);
      // A runtime whose state directory is not known is asked.
      expect(await Runc.sweep({ runtime: f.runtime, prefix, cgroups: false })).toEqual([]);
      expect(await f.calls()).toEqual(['list --format json']);
    } finally {
      process.env.PATH = path;
    }
  });

  it('killAndDeleteSync kills what names the id, deletes it, and never throws', async () => {
    const f = await fake({});
    const id = Runc.newId();
    const child = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 1e6)', id], {
      stdio: 'ignore',
    });
    const exited = new Promise((resolve) => child.once('exit', (_code, signal) => resolve(signal)));
    await new Promise((resolve) => child.once('spawn', resolve));
    Runc.killAndDeleteSync({ runtime: f.runtime, id });
    expect(await exited).toBe('SIGKILL');
    expect(await f.calls()).toEqual([`delete --force ${id}`]);
    Runc.killAndDeleteSync({ runtime: '/nonexistent/runc', id });
    Runc.killAndDeleteSync({ runtime: f.runtime, id: '../bad id' });
    expect(await f.calls()).toHaveLength(1);
  });

  it('a missing runtime gets one install hint, kept apart from the message', async () => {
    const err = await Runc.list({ runtime: 'day11-no-such-runtime' }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: ContainerCodes.RUNTIME_FAILED });
    const { message, hint } = err as ContainerError;
    expect(message).toMatch(/day11-no-such-runtime/);
    expect(message).not.toMatch(/apt-get|install/i);
    expect(hint).toMatch(/apt-get install -y runc/);
  });
});

describe('Runc.prepareCrunCgroups', () => {
  it('does nothing without a cgroup2 hierarchy offering controllers (idempotent)', async () => {
    const root = await mkdtemp(join(tmpdir(), 'day11-cgroot-'));
    try {
      expect(await Runc.prepareCrunCgroups({ cgroupRoot: root })).toEqual([]);
      await Exec.run('mkdir', ['-p', join(root, 'unified')]);
      await writeFile(join(root, 'unified', 'cgroup.controllers'), '\n');
      expect(await Runc.prepareCrunCgroups({ cgroupRoot: root })).toEqual([]);
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
