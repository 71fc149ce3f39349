/**
 * runc and crun for real, as root, on a busybox-static rootfs: a plain
 * directory and an overlay mounted here (Overlay is tested on its own).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import {
  copyFile,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rm,
  rmdir,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Exec, Sys } from '@day11/exec';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContainerCodes } from './errors.js';
import * as OciSpec from './oci-spec.js';
import * as Runc from './runc.js';
import { CLONE_NEWUSER, NR, SIGCHLD, syscallProbe } from './syscall-probe.test-utils.js';

const RUNTIMES = ['runc', 'crun'] as const;
let work: string;
let rootfs: string;

/** A minimal rootfs: busybox-static and its applets, passwd/group, mount points. */
async function makeBusyboxRootfs(dir: string): Promise<void> {
  for (const d of ['bin', 'etc', 'proc', 'dev', 'sys', 'tmp', 'root']) {
    await mkdir(join(dir, d), { recursive: true });
  }
  await copyFile('/bin/busybox', join(dir, 'bin/busybox'));
  const { stdout } = await Exec.run('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await symlink('busybox', join(dir, 'bin', applet));
  }
  await writeFile(
    join(dir, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n',
  );
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
}

interface Ran extends Runc.RunResult {
  stdout: string;
  stderr: string;
}

let bundles = 0;
/** Writes a bundle for `opts` over `root` and runs it; collects the output by stream. */
async function runIn(
  root: string,
  opts: OciSpec.MakeOptions,
  run: Omit<Runc.RunOptions, 'bundle' | 'id'> = {},
): Promise<Ran> {
  const bundle = join(work, `bundle-${++bundles}`);
  await mkdir(bundle);
  const id = Runc.newId();
  const template = OciSpec.template(OciSpec.make(opts));
  await OciSpec.write(bundle, OciSpec.instantiate(template, { rootfs: root, cgroupsPath: id }));
  const out = { stdout: '', stderr: '' };
  const r = await Runc.run({
    bundle,
    id,
    ...run,
    onOutput: (line, stream) => {
      out[stream] += `${line}\n`;
      run.onOutput?.(line, stream);
    },
  });
  return { ...r, ...out };
}

/** Mounts an overlay of `lower` at a fresh merged dir; returns its dirs and an unmount. */
async function overlay(lower: string) {
  const dir = await mkdtemp(join(work, 'ovl-'));
  const [upper, workdir, merged] = ['upper', 'work', 'merged'].map((d) => join(dir, d)) as [
    string,
    string,
    string,
  ];
  for (const d of [upper, workdir, merged]) await mkdir(d);
  Sys.mountWithFsconfig({
    fstype: 'overlay',
    target: merged,
    options: [
      ['lowerdir+', lower],
      ['upperdir', upper],
      ['workdir', workdir],
    ],
  });
  return { upper, merged, unmount: () => Sys.umount(merged) };
}

/** Containers this test process made (other test files may run their own meanwhile). */
async function ourContainers(runtime: string): Promise<string[]> {
  return (await Runc.list({ runtime }))
    .map((c) => c.id)
    .filter((id) => id.includes(`-${process.pid}-`));
}

async function leftovers(): Promise<{
  runc: string[];
  crun: string[];
  mounts: number;
  cgroups: string[];
}> {
  // Only what this test process made: other test files may be running
  // containers and mounts of their own at the same moment.
  const ours = (name: string): boolean => name.includes(`-${process.pid}-`);
  const ids = async (runtime: string) =>
    (await Runc.list({ runtime })).map((c) => c.id).filter(ours);
  const mounts = (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    .filter((l) => l.includes(work));
  const { stdout } = await Exec.run('find', [
    '/sys/fs/cgroup',
    '-maxdepth',
    '4',
    '-name',
    'day11-*',
  ]);
  return {
    runc: await ids('runc'),
    crun: await ids('crun'),
    mounts: mounts.length,
    cgroups: stdout.split('\n').filter((path) => path && ours(path)),
  };
}

beforeAll(async () => {
  // crun 1.8 refuses a hybrid layout whose cgroup2 still offers hugetlb.
  await Runc.prepareCrunCgroups();
  work = await mkdtemp(join(tmpdir(), 'day11-runc-it-'));
  rootfs = join(work, 'rootfs');
  await makeBusyboxRootfs(rootfs);
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe.each(RUNTIMES)('%s', (runtime) => {
  it('runs a command on a directory rootfs: exit code, stdout, stderr, log file', async () => {
    const logFile = join(work, `${runtime}.log`);
    const r = await runIn(
      rootfs,
      { args: ['sh', '-c', 'echo "out $(hostname) $(id -u)"; echo err >&2; exit 7'] },
      { runtime, logFile },
    );
    expect(r).toMatchObject({ exitCode: 7, signal: undefined, timedOut: false, aborted: false });
    expect(r.stdout).toBe('out builder 0\n');
    expect(r.stderr).toBe('err\n');
    expect((await readFile(logFile, 'utf8')).split('\n').sort()).toEqual([
      '',
      'err',
      'out builder 0',
    ]);
  });

  it('runs on an overlay rootfs: writes land in the upper, deletions become 0/0 whiteouts', async () => {
    const o = await overlay(rootfs);
    try {
      const r = await runIn(
        o.merged,
        {
          args: ['sh', '-c', 'echo built > /root/new && rm /etc/group && cat /etc/passwd | wc -l'],
          env: { HOME: '/root' },
          cwd: '/root',
        },
        { runtime },
      );
      expect(r).toMatchObject({ exitCode: 0, stdout: '2\n' });
    } finally {
      o.unmount();
    }
    expect(await readFile(join(o.upper, 'root/new'), 'utf8')).toBe('built\n');
    const whiteout = await lstat(join(o.upper, 'etc/group'));
    expect(whiteout.isCharacterDevice()).toBe(true);
    expect(whiteout.rdev).toBe(0);
    expect(existsSync(join(rootfs, 'etc/group'))).toBe(true);
    expect(await readdir(o.upper)).toEqual(expect.arrayContaining(['root', 'etc']));
  });

  it('a timeout kills `sleep 1000` on an overlay within a second or two; no container, no mount left', async () => {
    const o = await overlay(rootfs);
    let r;
    try {
      r = await runIn(o.merged, { args: ['sleep', '1000'] }, { runtime, timeoutMs: 300 });
    } finally {
      o.unmount(); // EBUSY here would mean a container process still uses it
    }
    expect(r).toMatchObject({ timedOut: true, aborted: false, exitCode: 137, signal: 'SIGKILL' });
    expect(r.durationMs).toBeLessThan(2500);
    expect(await ourContainers(runtime)).toEqual([]);
    expect(await readFile('/proc/mounts', 'utf8')).not.toContain(o.merged);
  });

  it('an AbortSignal kills `sleep 1000` and its parent shell within a second or two, no container left', async () => {
    const ac = new AbortController();
    const r = await runIn(
      rootfs,
      { args: ['sh', '-c', 'sleep 1000 & echo ready; wait'] },
      // Abort once the container is surely up: it said so.
      { runtime, signal: ac.signal, onOutput: (line) => line === 'ready' && ac.abort() },
    );
    expect(r).toMatchObject({ aborted: true, timedOut: false, exitCode: 137, signal: 'SIGKILL' });
    expect(r.durationMs).toBeLessThan(2500);
    expect(await ourContainers(runtime)).toEqual([]);
  });

  it('reports a runtime that cannot start the container as RUNTIME_FAILED', async () => {
    await expect(runIn(rootfs, { args: ['/no/such/program'] }, { runtime })).rejects.toMatchObject({
      code: ContainerCodes.RUNTIME_FAILED,
      message: expect.stringMatching(/no\/such\/program/) as string,
    });
    expect(await ourContainers(runtime)).toEqual([]);
  });

  it('leaves no state behind when the runtime deletes the container itself', async () => {
    const r = await runIn(rootfs, { args: ['true'] }, { runtime });
    expect(r.exitCode).toBe(0);
    expect(await ourContainers(runtime)).toEqual([]);
    // What Runc.run relied on to skip its own delete: the state directory is gone.
    const dirs = await readdir(runtime === 'runc' ? '/run/runc' : '/run/crun').catch(() => []);
    expect(dirs.filter((d) => d.startsWith(`day11-${process.pid}-`))).toEqual([]);
  });

  it('writes the runtime log where runtimeLog says, and still reads errors from it', async () => {
    const runtimeLog = join(work, `${runtime}-runtime.log`);
    await expect(
      runIn(rootfs, { args: ['/no/such/program'] }, { runtime, runtimeLog }),
    ).rejects.toMatchObject({ code: ContainerCodes.RUNTIME_FAILED });
    expect(await readFile(runtimeLog, 'utf8')).toMatch(/no\/such\/program/);
    const ok = await runIn(rootfs, { args: ['true'] }, { runtime, runtimeLog });
    expect(ok.exitCode).toBe(0);
    expect(existsSync(runtimeLog)).toBe(true); // the caller's file: kept
  });

  it('streams output far past the log cap: exit 0, every line told, the log is head + marker + tail', async () => {
    const logFile = join(work, `${runtime}-capped.log`);
    let lines = 0;
    let last = '';
    const r = await runIn(
      rootfs,
      { args: ['seq', '1', '1000000'] }, // 6,888,896 bytes
      {
        runtime,
        logFile,
        logCap: 2 ** 20,
        onOutput: (line, stream) => {
          if (stream !== 'stdout') return;
          lines++;
          last = line;
        },
      },
    );
    expect(r).toMatchObject({ exitCode: 0, timedOut: false });
    expect([lines, last]).toEqual([1_000_000, '1000000']);
    const text = await readFile(logFile, 'utf8');
    expect(text.length).toBeLessThan(2 ** 20 + 200);
    const [head, marker, tail] = text.split(/(\[day11: \d+ bytes of output left out here;.*\]\n)/);
    const all = Array.from({ length: 1_000_000 }, (_, i) => `${i + 1}\n`).join('');
    const half = 2 ** 19;
    // The head is the first half, cut inside a line: the marker gets a line of its own.
    expect(head).toBe(`${all.slice(0, half)}${all[half - 1] === '\n' ? '' : '\n'}`);
    expect(marker).toMatch(/the last 524288 bytes \(log cap 1048576 bytes\)/);
    // The tail is the end of the output, from the first whole line of its last half.
    expect(tail!.length).toBeLessThanOrEqual(half);
    expect(tail).toBe(all.slice(all.length - tail!.length));
    expect(all[all.length - tail!.length - 1]).toBe('\n');
    const omitted = Number(/\[day11: (\d+) bytes/.exec(marker!)![1]);
    expect(half + omitted + tail!.length).toBe(all.length);
  });

  it('pidsLimit stops a fork bomb that runs fine without it', async () => {
    const bomb = 'for i in $(seq 1 200); do sleep 1 & done; wait; echo done';
    const limited = await runIn(
      rootfs,
      { args: ['sh', '-c', bomb], resources: { pidsLimit: 20 } },
      { runtime, timeoutMs: 30_000 },
    );
    // busybox sh gives up (exit 2) at the first fork the pids cgroup refuses.
    expect(limited).toMatchObject({ exitCode: 2, stdout: '' });
    expect(limited.stderr).toMatch(/can't fork: Resource temporarily unavailable/);
    const free = await runIn(rootfs, { args: ['sh', '-c', bomb] }, { runtime, timeoutMs: 30_000 });
    expect(free).toMatchObject({ exitCode: 0, stdout: 'done\n', stderr: '' });
  });

  it('memoryBytes stops a memory hog: OOM-killed, 137 / SIGKILL', async () => {
    const r = await runIn(
      rootfs,
      {
        // The shell itself holds 512 MiB read from a pipe.
        args: ['sh', '-c', 'x=$(head -c 536870912 /dev/zero | tr "\\0" a); echo survived ${#x}'],
        resources: { memoryBytes: 32 * 2 ** 20 },
      },
      { runtime, timeoutMs: 60_000 },
    );
    expect(r).toMatchObject({ exitCode: 137, signal: 'SIGKILL', timedOut: false });
    expect(r.stdout).not.toMatch(/survived/);
  });

  it("network 'none' sees only lo; 'host' sees the host's interfaces and resolv.conf", async () => {
    const none = await runIn(rootfs, { args: ['ls', '/sys/class/net'] }, { runtime });
    expect(none.stdout.split(/\s+/).filter(Boolean)).toEqual(['lo']);
    const hostIfaces = (await readdir('/sys/class/net')).sort();
    const host = await runIn(
      rootfs,
      { args: ['ls', '/sys/class/net'], network: 'host' },
      { runtime },
    );
    expect(host.stdout.split(/\s+/).filter(Boolean).sort()).toEqual(hostIfaces);
  });

  it('fastSync installs the seccomp filter and sync still succeeds (errnoRet 0)', async () => {
    const r = await runIn(
      rootfs,
      {
        args: ['sh', '-c', 'grep Seccomp: /proc/self/status; sync && sync -f / && echo synced'],
        fastSync: true,
      },
      { runtime },
    );
    expect(r.stdout).toMatch(/Seccomp:\s+2\nsynced\n/);
    expect(r.exitCode).toBe(0);
  });

  it.skipIf(process.arch !== 'x64')(
    'seccomp: the deny list refuses each call with EPERM (clone3: ENOSYS); without it they run',
    async () => {
      // Each probe exits with the errno of its one system call (0: it worked).
      const probes: [string, Buffer, number, number][] = [
        // name, probe, exit without the filter, exit with it
        ['keyctl', syscallProbe(NR.keyctl, 0, -3, 1), 0, 1], // the session keyring's id
        ['userfaultfd', syscallProbe(NR.userfaultfd, 1), 0, 1], // UFFD_USER_MODE_ONLY
        ['io_uring', syscallProbe(NR.io_uring_setup, 1, 0), 14, 1], // EFAULT: no params given
        ['unshare', syscallProbe(NR.unshare, CLONE_NEWUSER), 0, 1],
        ['clone-userns', syscallProbe(NR.clone, CLONE_NEWUSER | SIGCHLD), 0, 1],
        ['clone3', syscallProbe(NR.clone3, 0, 0), 22, 38], // EINVAL (size 0) / ENOSYS
        ['clone', syscallProbe(NR.clone, SIGCHLD), 0, 0], // a plain fork is fine
        ['fsync', syscallProbe(NR.fsync, 1), 22, 22], // EINVAL on a pipe: untouched
      ];
      await mkdir(join(rootfs, 'probes'), { recursive: true });
      for (const [name, elf] of probes) {
        await writeFile(join(rootfs, 'probes', name), elf, { mode: 0o755 });
      }
      const script = probes.map(([name]) => `/probes/${name}; echo ${name}=$?`).join('; ');
      const exits = (out: string) =>
        Object.fromEntries(
          out
            .trim()
            .split('\n')
            .map((l) => l.split('=') as [string, string]),
        );
      const open = await runIn(rootfs, { args: ['sh', '-c', script] }, { runtime });
      const closed = await runIn(
        rootfs,
        { args: ['sh', '-c', script], seccomp: true },
        { runtime },
      );
      expect(exits(open.stdout)).toEqual(
        Object.fromEntries(probes.map(([name, , off]) => [name, String(off)])),
      );
      expect(exits(closed.stdout)).toEqual(
        Object.fromEntries(probes.map(([name, , , on]) => [name, String(on)])),
      );
      // With fastSync too: both parts in one filter.
      const both = await runIn(
        rootfs,
        {
          args: ['sh', '-c', '/probes/unshare; echo $?; sync && echo synced'],
          seccomp: true,
          fastSync: true,
        },
        { runtime },
      );
      expect(both.stdout).toBe('1\nsynced\n');
    },
  );

  it("masks what Docker masks: /proc/interrupts reads empty, powercap's sysfs is hidden", async () => {
    const r = await runIn(
      rootfs,
      {
        args: [
          'sh',
          '-c',
          'wc -c < /proc/interrupts; ls /sys/devices/virtual/powercap 2>/dev/null | wc -l',
        ],
      },
      { runtime },
    );
    expect(r.stdout).toBe('0\n0\n');
    expect((await readFile('/proc/interrupts')).length).toBeGreaterThan(0); // the host's is not
  });

  it('runs as a non-root uid with a read-only root and no new privileges', async () => {
    const r = await runIn(
      rootfs,
      {
        args: ['sh', '-c', 'id -u; id -g; grep NoNewPrivs /proc/self/status; touch /x || echo ro'],
        uid: 65534,
        gid: 65534,
        readonlyRoot: true,
        noNewPrivileges: true,
      },
      { runtime },
    );
    expect(r.stdout).toMatch(/^65534\n65534\nNoNewPrivs:\s+1\nro\n$/);
  });
});

describe('Runc.sweep', () => {
  it("deletes a container whose owner died, and leaves others' alone", async () => {
    const bundle = join(work, 'bundle-sweep');
    await mkdir(bundle);
    await OciSpec.write(bundle, OciSpec.make({ args: ['sleep', '1000'], rootfs }));
    const orphan = `day11-${2 ** 22 + 1}-1-deadbe`;
    // Detached, with stdio away from us, as a killed day11 process would leave it.
    await Exec.run('sh', [
      '-c',
      `runc run -d --bundle ${bundle} ${orphan} </dev/null >/dev/null 2>&1`,
    ]);
    expect((await Runc.state(orphan))?.status).toBe('running');
    expect(await Runc.sweep()).toEqual([orphan]);
    expect(await Runc.state(orphan)).toBeUndefined();
  });

  for (const runtime of RUNTIMES) {
    it(`${runtime}: deletes a container its killed runtime left half-created, and its cgroup`, async () => {
      // What a SIGKILL of the runtime during create leaves (seen in the fault
      // suite): a state directory without state, which `list` does not show,
      // and a cgroup that nothing records.
      const id = `day11-${2 ** 22 + 2}-1-${runtime === 'runc' ? 'aaaaaa' : 'bbbbbb'}`;
      const state = Runc.stateDir(id, { runtime })!;
      await mkdir(state, { recursive: true });
      if (runtime === 'runc') Sys.mknod(join(state, 'exec.fifo'), Sys.S_IFIFO | 0o622);
      else await writeFile(join(state, 'config.json'), '{}');
      const cgroup = join('/sys/fs/cgroup', existsSync('/sys/fs/cgroup/pids') ? 'pids' : '', id);
      await mkdir(cgroup);
      try {
        expect((await Runc.list({ runtime })).map((c) => c.id)).not.toContain(id);
        expect(await Runc.sweep({ runtime })).toEqual([id]);
        expect(existsSync(state)).toBe(false);
        expect(existsSync(cgroup)).toBe(false);
      } finally {
        await rm(state, { recursive: true, force: true });
        await rmdir(cgroup).catch(() => undefined);
      }
    });
  }
});

describe('cgroups a killed runtime left', () => {
  /** A v1 cgroup `name` below `parent` of the pids hierarchy, with a process in it. */
  async function cgroupWithProcess(parent: string, name: string) {
    const dir = join('/sys/fs/cgroup/pids', parent, name);
    await mkdir(dir, { recursive: true });
    const sleeper = spawn('sleep', ['1000'], { stdio: 'ignore' });
    await writeFile(join(dir, 'cgroup.procs'), String(sleeper.pid));
    const gone = new Promise<string | null>((resolve) =>
      sleeper.once('exit', (_, sig) => resolve(sig)),
    );
    return { dir, gone };
  }

  it.skipIf(!existsSync('/sys/fs/cgroup/pids/cgroup.procs'))(
    "Runc.sweep finds them by name anywhere, kills what is in them and removes them; a live owner's stay",
    async () => {
      // No state anywhere, as after a signal during create: only the name says whose it is.
      const orphan = await cgroupWithProcess('day11-test-parent', `day11-${2 ** 22 + 3}-1-cccccc`);
      const live = join('/sys/fs/cgroup/pids', `day11-1-1-dddddd`); // pid 1 runs
      await mkdir(live);
      try {
        expect(await Runc.sweep({ runtime: 'runc' })).toContain(`day11-${2 ** 22 + 3}-1-cccccc`);
        expect(await orphan.gone).toBe('SIGKILL');
        expect(existsSync(orphan.dir)).toBe(false);
        expect(existsSync(live)).toBe(true);
      } finally {
        await rmdir(orphan.dir).catch(() => undefined);
        await rmdir(join('/sys/fs/cgroup/pids', 'day11-test-parent')).catch(() => undefined);
        await rmdir(live).catch(() => undefined);
      }
    },
  );

  it.skipIf(!existsSync('/sys/fs/cgroup/pids/cgroup.procs'))(
    "killAndDeleteSync removes the container's cgroups with what is left in them",
    async () => {
      const id = Runc.newId('day11-test');
      const left = await cgroupWithProcess('', id);
      Runc.killAndDeleteSync({ id });
      expect(await left.gone).toBe('SIGKILL');
      expect(existsSync(left.dir)).toBe(false);
    },
  );
});

describe('afterwards', () => {
  it('no container, no day11 mount and no container cgroup is left', async () => {
    expect(await leftovers()).toEqual({ runc: [], crun: [], mounts: 0, cgroups: [] });
  });

  it('prepareCrunCgroups is idempotent', async () => {
    expect(await Runc.prepareCrunCgroups()).toEqual([]);
  });
});
