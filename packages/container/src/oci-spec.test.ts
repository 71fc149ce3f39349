import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ContainerCodes, ContainerError } from './errors.js';
import * as OciSpec from './oci-spec.js';

const CAPS = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
];

function mountAt(spec: OciSpec.Spec, destination: string): OciSpec.Mount | undefined {
  return spec.mounts.find((m) => m.destination === destination);
}

function badSpec(fn: () => unknown): ContainerError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ContainerError);
    expect((err as ContainerError).code).toBe(ContainerCodes.BAD_SPEC);
    return err as ContainerError;
  }
  throw new Error('expected a BAD_SPEC error');
}

describe('OciSpec.make defaults (OBuilder / runc spec)', () => {
  const spec = OciSpec.make({ args: ['true'] });

  it('runs args as root in / with PATH, no terminal, hostname builder', () => {
    expect(spec.ociVersion).toBe(OciSpec.OCI_VERSION);
    expect(spec.process).toMatchObject({
      terminal: false,
      user: { uid: 0, gid: 0 },
      args: ['true'],
      env: [`PATH=${OciSpec.DEFAULT_PATH}`],
      cwd: '/',
      noNewPrivileges: false,
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
    });
    expect(spec.process.user.additionalGids).toBeUndefined();
    expect(spec.hostname).toBe('builder');
    expect(spec.root).toEqual({ path: 'rootfs', readonly: false });
  });

  it('grants the 12 capabilities in bounding, effective, inheritable and permitted, none ambient', () => {
    const caps = spec.process.capabilities;
    for (const set of [caps.bounding, caps.effective, caps.inheritable, caps.permitted]) {
      expect(set).toEqual(CAPS);
    }
    expect(caps.ambient).toBeUndefined();
  });

  it('mounts /proc, /dev, /dev/pts, /dev/shm, /dev/mqueue, read-only /sys and /sys/fs/cgroup, and a /tmp tmpfs', () => {
    expect(spec.mounts.map((m) => [m.destination, m.type])).toEqual([
      ['/proc', 'proc'],
      ['/dev', 'tmpfs'],
      ['/dev/pts', 'devpts'],
      ['/dev/shm', 'tmpfs'],
      ['/dev/mqueue', 'mqueue'],
      ['/sys', 'sysfs'],
      ['/sys/fs/cgroup', 'cgroup'],
      ['/tmp', 'tmpfs'],
    ]);
    expect(mountAt(spec, '/sys')?.options).toContain('ro');
    expect(mountAt(spec, '/sys/fs/cgroup')?.options).toContain('ro');
    expect(mountAt(spec, '/tmp')?.options).toEqual(['nosuid', 'nodev', 'mode=1777']);
  });

  it("has runc's and Docker's masked paths, runc's read-only paths, new namespaces incl. network, deny-all devices, no seccomp", () => {
    expect(spec.linux.maskedPaths).toContain('/proc/kcore');
    expect(spec.linux.maskedPaths).toContain('/proc/interrupts');
    expect(spec.linux.maskedPaths).toContain('/sys/devices/virtual/powercap');
    expect(spec.linux.maskedPaths.slice(0, 12)).toEqual(OciSpec.DEFAULT_MASKED_PATHS);
    // Then each CPU's thermal_throttle this machine has (none on most VMs).
    for (const extra of spec.linux.maskedPaths.slice(12)) {
      expect(extra).toMatch(/^\/sys\/devices\/system\/cpu\/cpu\d+\/thermal_throttle$/);
    }
    expect(spec.linux.readonlyPaths).toEqual([
      '/proc/bus',
      '/proc/fs',
      '/proc/irq',
      '/proc/sys',
      '/proc/sysrq-trigger',
    ]);
    expect(spec.linux.namespaces.map((n) => n.type)).toEqual([
      'network',
      'pid',
      'ipc',
      'uts',
      'mount',
    ]);
    expect(spec.linux.resources).toEqual({ devices: [{ allow: false, access: 'rwm' }] });
    expect(spec.linux.seccomp).toBeUndefined();
    expect(spec.linux.cgroupsPath).toBeUndefined();
  });
});

describe('OciSpec.make options', () => {
  it('sets cwd, env (PATH overridable), hostname, uid, gid and additional gids', () => {
    const spec = OciSpec.make({
      args: ['sh', '-c', 'id'],
      cwd: '/home/opam',
      env: { HOME: '/home/opam', PATH: '/bin' },
      hostname: 'b1',
      uid: 1000,
      gid: 1000,
      additionalGids: [5, 27],
      rootfs: '/tmp/day11-merged',
    });
    expect(spec.process.cwd).toBe('/home/opam');
    expect(spec.process.env).toEqual(['PATH=/bin', 'HOME=/home/opam']);
    expect(spec.hostname).toBe('b1');
    expect(spec.process.user).toEqual({ uid: 1000, gid: 1000, additionalGids: [5, 27] });
    expect(spec.root.path).toBe('/tmp/day11-merged');
  });

  it("network 'host' shares the host's network and binds its resolv.conf read-only", () => {
    const spec = OciSpec.make({ args: ['true'], network: 'host' });
    expect(spec.linux.namespaces.map((n) => n.type)).not.toContain('network');
    expect(mountAt(spec, '/etc/resolv.conf')).toEqual({
      destination: '/etc/resolv.conf',
      type: 'bind',
      source: '/etc/resolv.conf',
      options: ['ro', 'rbind', 'rprivate'],
    });
    expect(mountAt(OciSpec.make({ args: ['true'] }), '/etc/resolv.conf')).toBeUndefined();
  });

  it('adds read-only and read-write bind mounts after the standard ones', () => {
    const spec = OciSpec.make({
      args: ['true'],
      mounts: [
        { source: '/var/cache/dl', destination: '/dl', readonly: true },
        { source: '/tmp/day11-out', destination: '/out' },
      ],
    });
    expect(spec.mounts.slice(-2)).toEqual([
      {
        destination: '/dl',
        type: 'bind',
        source: '/var/cache/dl',
        options: ['ro', 'bind', 'nosuid', 'nodev'],
      },
      {
        destination: '/out',
        type: 'bind',
        source: '/tmp/day11-out',
        options: ['bind', 'nosuid', 'nodev'],
      },
    ]);
  });

  it('sets readonlyRoot, noNewPrivileges, and drops /tmp with tmpfsTmp false', () => {
    const spec = OciSpec.make({
      args: ['true'],
      readonlyRoot: true,
      noNewPrivileges: true,
      tmpfsTmp: false,
    });
    expect(spec.root.readonly).toBe(true);
    expect(spec.process.noNewPrivileges).toBe(true);
    expect(mountAt(spec, '/tmp')).toBeUndefined();
  });

  it('sets cpuset, memory (swap capped to the same total) and pids limits', () => {
    const spec = OciSpec.make({
      args: ['true'],
      resources: { cpus: '0-1', mems: '0', memoryBytes: 64 * 2 ** 20, pidsLimit: 20 },
    });
    expect(spec.linux.resources).toEqual({
      devices: [{ allow: false, access: 'rwm' }],
      cpu: { cpus: '0-1', mems: '0' },
      memory: { limit: 64 * 2 ** 20, swap: 64 * 2 ** 20 },
      pids: { limit: 20 },
    });
    expect(
      OciSpec.make({ args: ['true'], resources: { cpus: '0,2' } }).linux.resources?.cpu,
    ).toEqual({
      cpus: '0,2',
    });
  });

  it('fastSync makes the fsync family return 0 via seccomp, for the native and compat architectures', () => {
    const x64 = OciSpec.make({ args: ['true'], fastSync: true, arch: 'x64' });
    expect(x64.linux.seccomp).toEqual({
      defaultAction: 'SCMP_ACT_ALLOW',
      architectures: ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'],
      syscalls: [
        {
          names: ['fsync', 'fdatasync', 'msync', 'sync', 'syncfs', 'sync_file_range'],
          action: 'SCMP_ACT_ERRNO',
          errnoRet: 0,
        },
      ],
    });
    const arm = OciSpec.make({ args: ['true'], fastSync: true, arch: 'arm64' });
    expect(arm.linux.seccomp?.architectures).toEqual(['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM']);
    const other = OciSpec.make({ args: ['true'], fastSync: true, arch: 'riscv64' });
    expect(other.linux.seccomp?.architectures).toBeUndefined();
    expect(OciSpec.make({ args: ['true'], fastSync: true }).linux.seccomp?.architectures).toEqual(
      OciSpec.seccompArchitectures(process.arch).length
        ? OciSpec.seccompArchitectures(process.arch)
        : undefined,
    );
  });
});

describe('OciSpec.make seccomp: the deny list', () => {
  it('refuses the denied calls with EPERM, namespace-making clones too, clone3 with ENOSYS', () => {
    const { seccomp } = OciSpec.make({ args: ['true'], seccomp: true, arch: 'x64' }).linux;
    expect(seccomp?.defaultAction).toBe('SCMP_ACT_ALLOW');
    expect(seccomp?.architectures).toEqual(['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32']);
    const [deny, ...rest] = seccomp!.syscalls;
    expect(deny).toMatchObject({ action: 'SCMP_ACT_ERRNO', errnoRet: 1 });
    for (const name of [
      'keyctl',
      'add_key',
      'bpf',
      'perf_event_open',
      'userfaultfd',
      'mount',
      'unshare',
      'setns',
      'kexec_load',
      'init_module',
      'open_by_handle_at',
      'io_uring_setup',
      'reboot',
      'swapon',
      'clock_settime',
      'pivot_root',
    ]) {
      expect(deny!.names).toContain(name);
    }
    // What builds use stays: ptrace (strace, gdb), personality (linux32), the fsync family.
    for (const name of ['ptrace', 'personality', 'fsync', 'clone', 'chroot']) {
      expect(deny!.names).not.toContain(name);
    }
    const clones = rest.filter((r) => r.names[0] === 'clone');
    expect(clones).toHaveLength(7);
    expect(clones).toContainEqual({
      names: ['clone'],
      action: 'SCMP_ACT_ERRNO',
      errnoRet: 1,
      args: [{ index: 0, value: 0x10000000, valueTwo: 0x10000000, op: 'SCMP_CMP_MASKED_EQ' }],
    });
    expect(rest.at(-1)).toEqual({ names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: 38 });
  });

  it('combines with fastSync in one filter; off by default', () => {
    const both = OciSpec.make({ args: ['true'], seccomp: true, fastSync: true }).linux.seccomp!;
    expect(both.syscalls.at(-1)).toMatchObject({ names: [...OciSpec.SYNC_SYSCALLS], errnoRet: 0 });
    expect(both.syscalls[0]!.names).toEqual(Object.values(OciSpec.DENIED_SYSCALLS).flat());
    expect(OciSpec.make({ args: ['true'] }).linux.seccomp).toBeUndefined();
    expect(OciSpec.make({ args: ['true'], seccomp: false }).linux.seccomp).toBeUndefined();
  });
});

describe('OciSpec.make rejects bad options with BAD_SPEC', () => {
  const cases: [string, OciSpec.MakeOptions, RegExp][] = [
    ['a relative cwd', { args: ['true'], cwd: 'src' }, /cwd: must be an absolute path/],
    [
      'a relative mount destination',
      { args: ['true'], mounts: [{ source: '/x', destination: 'x' }] },
      /mounts\.0\.destination: must be an absolute path/,
    ],
    [
      'a relative mount source',
      { args: ['true'], mounts: [{ source: 'x', destination: '/x' }] },
      /mounts\.0\.source: must be an absolute path/,
    ],
    [
      'a negative pids limit',
      { args: ['true'], resources: { pidsLimit: -1 } },
      /resources\.pidsLimit: must be a positive integer/,
    ],
    [
      'a zero memory limit',
      { args: ['true'], resources: { memoryBytes: 0 } },
      /resources\.memoryBytes: must be a positive number of bytes/,
    ],
    ['a negative uid', { args: ['true'], uid: -1 }, /uid/],
    ['a fractional gid', { args: ['true'], gid: 1.5 }, /gid/],
    ['uid (uid_t)-1', { args: ['true'], uid: 4294967295 }, /uid/],
    ['a bad additional gid', { args: ['true'], additionalGids: [-5] }, /additionalGids\.0/],
    ['no args', { args: [] }, /args: must name the program to run/],
    ['an env name with "="', { args: ['true'], env: { 'A=B': 'c' } }, /env/],
    ['a bad cpu list', { args: ['true'], resources: { cpus: 'all' } }, /resources\.cpus/],
    ['an unknown network', { args: ['true'], network: 'bridge' as OciSpec.Network }, /network/],
    ['a bad hostname', { args: ['true'], hostname: 'a b' }, /hostname/],
  ];
  it.each(cases)('%s', (_name, opts, message) => {
    const err = badSpec(() => OciSpec.make(opts));
    expect(err.message).toMatch(/^Invalid OCI spec option: /);
    expect(err.message).toMatch(message);
  });
});

describe('OciSpec.make remembers what it made from the same options', () => {
  const options = (args: string[]): OciSpec.MakeOptions => ({
    args,
    cwd: '/src',
    env: { HOME: '/root' },
    seccomp: true,
    resources: { pidsLimit: 64 },
  });

  it('gives for new args the spec it gives the first time, as a fresh object', () => {
    const first = OciSpec.make(options(['make', 'all']));
    const second = OciSpec.make(options(['make', 'install']));
    expect(second).toEqual({ ...first, process: { ...first.process, args: ['make', 'install'] } });
    second.process.env.push('MUTATED=1');
    second.linux.maskedPaths.length = 0;
    const third = OciSpec.make(options(['make', 'check']));
    expect(third.process.env).toEqual(first.process.env);
    expect(third.linux.maskedPaths).toEqual(first.linux.maskedPaths);
    const args = ['make', 'dist'];
    const fourth = OciSpec.make(options(args));
    args.push('mutated');
    expect(fourth.process.args).toEqual(['make', 'dist']);
  });

  it('still refuses bad args, and options JSON cannot say all of, after a good make', () => {
    OciSpec.make(options(['true']));
    expect(badSpec(() => OciSpec.make(options([]))).message).toMatch(/args/);
    expect(badSpec(() => OciSpec.make(options(['a\0b']))).message).toMatch(/args\.0/);
    // JSON drops a function member: the text of these options is that of good ones.
    const withFunction = { ...options(['true']), hostname: (() => 'x') as unknown as string };
    expect(badSpec(() => OciSpec.make(withFunction)).message).toMatch(/hostname/);
    const nan = { ...options(['true']), resources: { pidsLimit: NaN } };
    expect(badSpec(() => OciSpec.make(nan)).message).toMatch(/pidsLimit/);
    // A toJSON member makes the text that of good options; the object itself has no pids limit.
    const resources = { toJSON: () => ({ pidsLimit: 64 }) } as OciSpec.Resources;
    expect(OciSpec.make({ ...options(['true']), resources }).linux.resources?.pids).toBeUndefined();
  });

  it('validates a made spec again once it changed', () => {
    const spec = OciSpec.make(options(['true']));
    OciSpec.template(spec); // valid, remembered
    spec.process.cwd = 'relative';
    expect(badSpec(() => OciSpec.template(spec)).message).toMatch(/cwd/);
    expect(badSpec(() => OciSpec.parse(spec)).message).toMatch(/cwd/);
  });
});

describe('OciSpec.parse / parseTemplate', () => {
  it('accept a made spec and keep unknown keys', () => {
    const spec = { ...OciSpec.make({ args: ['true'] }), annotations: { a: 'b' } };
    expect(OciSpec.parse(JSON.parse(JSON.stringify(spec)))).toEqual(spec);
  });

  it('reject a spec without process, or a template with a rootfs, saying to template it', () => {
    const noProcess: Record<string, unknown> = { ...OciSpec.make({ args: ['true'] }) };
    delete noProcess['process'];
    expect(badSpec(() => OciSpec.parse(noProcess)).message).toMatch(/process/);
    const spec = OciSpec.make({ args: ['true'] });
    const err = badSpec(() => OciSpec.parseTemplate(spec));
    expect(err.message).toMatch(/root\.path/);
    expect(err.hint).toMatch(/^This is a spec, not a template: pass OciSpec\.template\(spec\)/);
    const broken = { ...spec, process: { ...spec.process, args: [] } };
    expect(badSpec(() => OciSpec.parseTemplate(broken)).hint).toBeUndefined();
  });
});

describe('OciSpec.template / instantiate', () => {
  const spec = OciSpec.make({
    args: ['sh', '-c', 'make'],
    cwd: '/src',
    env: { A: '1' },
    resources: { pidsLimit: 100 },
    fastSync: true,
    mounts: [{ source: '/host', destination: '/in', readonly: true }],
  });

  it('drops root.path and cgroupsPath, survives JSON, and instantiates back to the spec', () => {
    const withCgroup = { ...spec, linux: { ...spec.linux, cgroupsPath: 'old' } };
    const template = OciSpec.template(withCgroup);
    expect(template.root).toEqual({ readonly: false });
    expect('cgroupsPath' in template.linux).toBe(false);
    expect(withCgroup.root.path).toBe('rootfs'); // the input is not mutated
    const stored = OciSpec.parseTemplate(JSON.parse(JSON.stringify(template)));
    const again = OciSpec.instantiate(stored, { rootfs: '/tmp/day11-m/merged' });
    expect(again).toEqual({ ...spec, root: { path: '/tmp/day11-m/merged', readonly: false } });
  });

  it('instantiates a spec as its template: its rootfs and cgroup are replaced', () => {
    const made = { ...spec, linux: { ...spec.linux, cgroupsPath: 'old' } };
    const viaTemplate = OciSpec.instantiate(OciSpec.template(made), {
      rootfs: '/r',
      cgroupsPath: 'c',
    });
    expect(OciSpec.instantiate(made, { rootfs: '/r', cgroupsPath: 'c' })).toEqual(viaTemplate);
    expect(OciSpec.instantiate(made, { rootfs: '/r' }).linux.cgroupsPath).toBeUndefined();
    expect(made.root.path).toBe('rootfs'); // the input is not mutated
  });

  it('sets a per-run cgroupsPath; one template gives independent specs', () => {
    const template = OciSpec.template(spec);
    const a = OciSpec.instantiate(template, { rootfs: '/a', cgroupsPath: 'day11-1-1-aa' });
    const b = OciSpec.instantiate(template, { rootfs: '/b', cgroupsPath: 'day11-1-2-bb' });
    expect([a.root.path, a.linux.cgroupsPath]).toEqual(['/a', 'day11-1-1-aa']);
    expect([b.root.path, b.linux.cgroupsPath]).toEqual(['/b', 'day11-1-2-bb']);
    a.process.args.push('mutated');
    expect(b.process.args).toEqual(['sh', '-c', 'make']);
    expect(template.root).toEqual({ readonly: false });
  });

  it('validates a template again once it changed, though the same object was valid before', () => {
    const template = OciSpec.template(spec);
    OciSpec.instantiate(template, { rootfs: '/a' }); // valid, remembered
    (template.process as { args: unknown }).args = 'not an array';
    expect(badSpec(() => OciSpec.instantiate(template, { rootfs: '/a' })).message).toMatch(/args/);
    expect(badSpec(() => OciSpec.parseTemplate(template)).message).toMatch(/args/);
  });

  it('hands out copies: changing a parsed template does not change the next one', () => {
    const text = JSON.stringify(OciSpec.template(spec));
    const first = OciSpec.parseTemplate(JSON.parse(text));
    first.process.args.push('mutated');
    first.hostname = 'changed';
    const second = OciSpec.parseTemplate(JSON.parse(text));
    expect(second.process.args).toEqual(['sh', '-c', 'make']);
    expect(second.hostname).toBe(spec.hostname);
  });

  it('rejects an empty rootfs and cgroup paths with . or .. segments', () => {
    const template = OciSpec.template(spec);
    badSpec(() => OciSpec.instantiate(template, { rootfs: '' }));
    for (const cgroupsPath of ['', '/', '../x', 'a/./b']) {
      expect(
        badSpec(() => OciSpec.instantiate(template, { rootfs: '/r', cgroupsPath })).message,
      ).toMatch(/cgroupsPath/);
    }
  });
});

describe('OciSpec.write', () => {
  const dirs: string[] = [];
  afterEach(async () => {
    for (const d of dirs.splice(0)) await rm(d, { recursive: true, force: true });
  });
  async function bundle(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'day11-oci-spec-'));
    dirs.push(dir);
    return dir;
  }

  it('writes config.json (pretty JSON) and leaves no temporary file', async () => {
    const dir = await bundle();
    const spec = OciSpec.make({ args: ['true'] });
    expect(await OciSpec.write(dir, spec)).toBe(join(dir, 'config.json'));
    expect(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8'))).toEqual(spec);
    expect(await readdir(dir)).toEqual(['config.json']);
  });

  it('replaces config.json atomically: concurrent readers only ever see a whole spec', async () => {
    const dir = await bundle();
    await writeFile(join(dir, 'config.json'), JSON.stringify(OciSpec.make({ args: ['old'] })));
    let writing = true;
    const reads: string[] = [];
    const reader = (async () => {
      while (writing) {
        const spec = OciSpec.parse(JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')));
        reads.push(spec.hostname);
      }
    })();
    await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        OciSpec.write(
          dir,
          OciSpec.make({ args: ['true'], hostname: `h${i}`, env: { PAD: 'x'.repeat(5000) } }),
        ),
      ),
    );
    writing = false;
    await reader;
    expect(reads.length).toBeGreaterThan(0);
    expect(await readdir(dir)).toEqual(['config.json']);
  });

  it('refuses an invalid spec (BAD_SPEC) and a missing bundle (BAD_ARGUMENT), writing nothing', async () => {
    const dir = await bundle();
    const bad = { ...OciSpec.make({ args: ['true'] }), mounts: [{ destination: 'rel' }] };
    await expect(OciSpec.write(dir, bad)).rejects.toMatchObject({ code: ContainerCodes.BAD_SPEC });
    expect(await readdir(dir)).toEqual([]);
    await expect(
      OciSpec.write(join(dir, 'missing'), OciSpec.make({ args: ['true'] })),
    ).rejects.toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
      path: join(dir, 'missing', 'config.json'),
    });
    expect(await readdir(dir)).toEqual([]);
  });
});
