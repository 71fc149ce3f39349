/**
 * seccomp profiles of the spec: a deny list of the system calls a build
 * never needs and that widen the kernel surface a step can reach (the
 * kernel keyring, modules, mounts and namespaces, eBPF, perf, userfaultfd,
 * io_uring, file handles, the clock, reboot), and OBuilder's `fastSync`
 * (the fsync family made no-ops). Everything else is allowed.
 *
 * Docker's default profile is an allow list that blocks the same calls
 * (and more that fail anyway without CAP_SYS_ADMIN); a deny list says what
 * it blocks in a few lines and never breaks a build that uses a new system
 * call. Most of these calls already fail without their capability; the
 * filter stops the ones that do not need one (keyctl, bpf, perf_event_open,
 * userfaultfd, io_uring, unshare and clone into a user namespace, where a
 * step would hold every capability) and is a second wall for the rest.
 */
/** The syscalls {@link fastSync} turns into no-ops (OBuilder's list). */
export const SYNC_SYSCALLS: readonly string[] = [
  'fsync',
  'fdatasync',
  'msync',
  'sync',
  'syncfs',
  'sync_file_range',
];

/**
 * The system calls the default profile refuses with EPERM, by concern. Names
 * the kernel or libseccomp of a machine does not know are skipped by the
 * runtime.
 */
export const DENIED_SYSCALLS: Readonly<Record<string, readonly string[]>> = {
  /** The kernel keyring is not namespaced: keys of the host and of other steps. */
  keyring: ['add_key', 'keyctl', 'request_key'],
  /** Loading, replacing or querying kernel code. */
  modules: [
    'init_module',
    'finit_module',
    'delete_module',
    'create_module',
    'query_module',
    'get_kernel_syms',
    'kexec_load',
    'kexec_file_load',
  ],
  /** Mounts and namespaces: in a new user namespace a step would hold every capability. */
  namespaces: [
    'mount',
    'umount',
    'umount2',
    'pivot_root',
    'fsopen',
    'fsconfig',
    'fsmount',
    'fspick',
    'move_mount',
    'open_tree',
    'mount_setattr',
    'unshare',
    'setns',
  ],
  /** Kernel tracing and program loading, the usual ways into kernel bugs. */
  tracing: ['bpf', 'perf_event_open', 'lookup_dcookie'],
  /** Exploit primitives a build never needs. */
  memory: ['userfaultfd', 'io_uring_setup', 'io_uring_enter', 'io_uring_register'],
  /** Open any file of the filesystem by its handle, past the container's root. */
  handles: ['open_by_handle_at', 'name_to_handle_at'],
  /** The machine: clock, swap, accounting, quotas, reboot, the kernel log, I/O ports. */
  machine: [
    'reboot',
    'swapon',
    'swapoff',
    'settimeofday',
    'stime',
    'clock_settime',
    'clock_settime64',
    'clock_adjtime',
    'clock_adjtime64',
    'acct',
    'quotactl',
    'quotactl_fd',
    'syslog',
    'vhangup',
    'iopl',
    'ioperm',
    'nfsservctl',
    '_sysctl',
    'uselib',
    'ustat',
    'vm86',
    'vm86old',
  ],
};

/**
 * `clone` flags that make new namespaces (`CLONE_NEWNS`, `CLONE_NEWCGROUP`,
 * `CLONE_NEWUTS`, `CLONE_NEWIPC`, `CLONE_NEWUSER`, `CLONE_NEWPID`,
 * `CLONE_NEWNET`): a `clone` with any of them is refused as `unshare` is.
 * `clone3` passes its flags in memory a filter cannot read: it gets ENOSYS,
 * and the C library falls back to `clone` (as under Docker's profile).
 */
export const CLONE_NAMESPACE_FLAGS: readonly number[] = [
  0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000,
];

const EPERM = 1;
const ENOSYS = 38;

/** seccomp architectures for a Node `process.arch` (native plus its compat ABIs), as OBuilder. */
export function seccompArchitectures(arch: string): string[] {
  if (arch === 'x64') return ['SCMP_ARCH_X86_64', 'SCMP_ARCH_X86', 'SCMP_ARCH_X32'];
  if (arch === 'arm64') return ['SCMP_ARCH_AARCH64', 'SCMP_ARCH_ARM'];
  return [];
}

/** One rule of `linux.seccomp.syscalls`. */
export type SeccompRule = {
  names: string[];
  action: string;
  errnoRet?: number;
  args?: { index: number; value: number; valueTwo: number; op: string }[];
};

/** `linux.seccomp` of a spec. */
export type SeccompProfile = {
  defaultAction: string;
  architectures?: string[];
  syscalls: SeccompRule[];
};

/** Options of {@link profile}. */
export interface ProfileOptions {
  /** Refuse {@link DENIED_SYSCALLS} and namespace-making `clone`s. */
  deny: boolean;
  /** Make {@link SYNC_SYSCALLS} succeed without doing anything. */
  fastSync: boolean;
  /** Node-style CPU architecture. */
  arch: string;
}

/**
 * The profile for `opts`, or `undefined` when neither part is asked for.
 *
 * @example
 * ```ts
 * const seccomp = profile({ deny: true, fastSync: false, arch: process.arch });
 * ```
 */
export function profile(opts: ProfileOptions): SeccompProfile | undefined {
  if (!opts.deny && !opts.fastSync) return undefined;
  const architectures = seccompArchitectures(opts.arch);
  const syscalls: SeccompRule[] = [];
  if (opts.deny) {
    syscalls.push(
      { names: Object.values(DENIED_SYSCALLS).flat(), action: 'SCMP_ACT_ERRNO', errnoRet: EPERM },
      // Rules for one call are alternatives: any namespace flag set is refused.
      ...CLONE_NAMESPACE_FLAGS.map((flag) => ({
        names: ['clone'],
        action: 'SCMP_ACT_ERRNO',
        errnoRet: EPERM,
        args: [{ index: 0, value: flag, valueTwo: flag, op: 'SCMP_CMP_MASKED_EQ' }],
      })),
      { names: ['clone3'], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
    );
  }
  if (opts.fastSync) {
    // ERRNO with errnoRet 0 is "return success"; needs runc >= 1.0.0-rc92.
    syscalls.push({ names: [...SYNC_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: 0 });
  }
  return {
    defaultAction: 'SCMP_ACT_ALLOW',
    ...(architectures.length ? { architectures } : {}),
    syscalls,
  };
}
