/**
 * The part of the OCI runtime spec (`config.json`) that day11 emits, as a zod
 * schema, with defaults matching OBuilder's runc sandbox and runc's own
 * `runc spec` (masked and read-only paths).
 *
 * day11 writes a {@link Template} per layer (a spec without `root.path`) and
 * fills in the rootfs at run time with {@link instantiate}.
 *
 * @example
 * ```ts
 * import { OciSpec } from '@day11/container';
 * const template = OciSpec.template(
 *   OciSpec.make({ args: ['sh', '-c', 'make install'], cwd: '/src', resources: { pidsLimit: 512 } }),
 * );
 * const spec = OciSpec.instantiate(template, { rootfs: '/tmp/day11-x/merged', cgroupsPath: id });
 * await OciSpec.write('/tmp/day11-x', spec); // bundle/config.json, atomically
 * ```
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { Atomic } from '@day11/exec';
import { z } from 'zod';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';
import * as Seccomp from './seccomp.js';
import { jsonOf, plainJsonOf, ValidTexts } from './valid-texts.js';
import {
  specSchemas,
  type Mount,
  type Spec,
  type SpecResources,
  type Template,
  type ValidOptions,
} from './oci-spec-schema.js';

// ---------------------------------------------------------------- defaults

/** The OCI runtime spec version written to `ociVersion` (what runc 1.1 and crun 1.8 accept). */
export const OCI_VERSION = '1.0.2-dev';

/** `PATH` given to the process unless `env` sets one. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Default hostname (OBuilder's). */
export const DEFAULT_HOSTNAME = 'builder';

/**
 * The 12 capabilities OBuilder grants: Docker's defaults minus NET_RAW and
 * NET_BIND_SERVICE (builds need neither, and may share the host's network).
 */
export const DEFAULT_CAPABILITIES: readonly string[] = [
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

/**
 * Masked paths: hidden from the container (a bind of /dev/null or an empty
 * tmpfs): `runc spec`'s, plus what Docker masks since: `/proc/interrupts`
 * and `/sys/devices/virtual/powercap` (power readings leak what other
 * processes compute, CVE-2020-8694). Docker also masks each CPU's
 * `thermal_throttle` directory: {@link maskedPaths} adds those this machine has.
 */
export const DEFAULT_MASKED_PATHS: readonly string[] = [
  '/proc/acpi',
  '/proc/asound',
  '/proc/interrupts',
  '/proc/kcore',
  '/proc/keys',
  '/proc/latency_stats',
  '/proc/timer_list',
  '/proc/timer_stats',
  '/proc/sched_debug',
  '/proc/scsi',
  '/sys/firmware',
  '/sys/devices/virtual/powercap',
];

/** `runc spec`'s read-only paths. */
export const DEFAULT_READONLY_PATHS: readonly string[] = [
  '/proc/bus',
  '/proc/fs',
  '/proc/irq',
  '/proc/sys',
  '/proc/sysrq-trigger',
];

export { DENIED_SYSCALLS, SYNC_SYSCALLS, seccompArchitectures } from './seccomp.js';

// ---------------------------------------------------------------- schema

// The schemas live in their own module, made on first use.
export type { Mount, Spec, Template } from './oci-spec-schema.js';

const noNul = (s: string): boolean => !s.includes('\0');

// ---------------------------------------------------------------- options

/** `none`: own network namespace with loopback only. `host`: the host's network and resolv.conf. */
export type Network = 'none' | 'host';

/** A host directory or file bind-mounted into the container. */
export interface BindMount {
  /** Absolute path on the host. */
  source: string;
  /** Absolute path in the container. */
  destination: string;
  /** Mount read-only (default false). */
  readonly?: boolean;
}

/** cgroup limits of the container. */
export interface Resources {
  /** cpuset CPUs the container may use, e.g. `"0-3"` or `"0,2"`. */
  cpus?: string;
  /** cpuset memory nodes, e.g. `"0"`. */
  mems?: string;
  /** Memory limit in bytes; swap is capped to the same total, so the limit is real. */
  memoryBytes?: number;
  /** CPU time in CPUs, e.g. 1.5: a CFS quota per 100 ms period (not a cpuset). */
  cpuLimit?: number;
  /** Maximum number of processes (and threads) in the container. */
  pidsLimit?: number;
}

/** Options of {@link make}. Only `args` is required. */
export interface MakeOptions {
  /** The program and its arguments; `args[0]` is looked up on the container's PATH. */
  args: readonly string[];
  /** Absolute working directory in the container (default `/`). */
  cwd?: string;
  /** Environment; `PATH` defaults to {@link DEFAULT_PATH} unless set here. */
  env?: Readonly<Record<string, string>>;
  /** Default {@link DEFAULT_HOSTNAME}. */
  hostname?: string;
  /** Default 0. */
  uid?: number;
  /** Default 0. */
  gid?: number;
  additionalGids?: readonly number[];
  /** Default `none`. */
  network?: Network;
  /** Extra bind mounts, after the standard ones. */
  mounts?: readonly BindMount[];
  /** Mount the rootfs read-only (default false: builds write to it). */
  readonlyRoot?: boolean;
  /** Set `no_new_privs`: setuid binaries and file capabilities stop working (default false). */
  noNewPrivileges?: boolean;
  /**
   * Refuse the system calls of `DENIED_SYSCALLS` (EPERM) and `clone` into
   * new namespaces, with a seccomp filter (default false). Combines with
   * `fastSync`.
   */
  seccomp?: boolean;
  resources?: Resources;
  /**
   * Make fsync, fdatasync, msync, sync, syncfs and sync_file_range succeed
   * without doing anything (seccomp), as OBuilder's `--fast-sync`: a build
   * interrupted by a crash is thrown away anyway. Default false.
   */
  fastSync?: boolean;
  /** Mount a fresh tmpfs on /tmp, so scratch files stay out of the layer (default true). */
  tmpfsTmp?: boolean;
  /** `root.path`, resolved against the bundle when relative (default `rootfs`). */
  rootfs?: string;
  /** Node-style CPU architecture picking seccomp's architectures (default `process.arch`). */
  arch?: string;
}

// ---------------------------------------------------------------- make

/**
 * Builds a spec from options, with OBuilder's defaults: the 12 capabilities in
 * the bounding, effective, inheritable and permitted sets, /proc, /dev, /dev/pts,
 * /dev/shm, /dev/mqueue, read-only /sys and /sys/fs/cgroup, a /tmp tmpfs,
 * runc's masked and read-only paths, RLIMIT_NOFILE 1024, no terminal.
 *
 * @example
 * ```ts
 * const spec = OciSpec.make({
 *   args: ['sh', '-c', 'make'],
 *   cwd: '/src',
 *   env: { HOME: '/root' },
 *   network: 'host',
 *   mounts: [{ source: '/var/cache/dl', destination: '/dl', readonly: true }],
 *   resources: { memoryBytes: 4 * 2 ** 30, pidsLimit: 1024 },
 *   fastSync: true,
 * });
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_SPEC` naming the bad option.
 */
export function make(opts: MakeOptions): Spec {
  const key = plainJsonOf({ ...opts, args: undefined });
  const made = key === undefined ? undefined : madeFrom.get(key);
  if (made !== undefined && validArgs(opts.args)) {
    const spec = JSON.parse(made) as Spec;
    spec.process.args = [...opts.args];
    validSpecs.add(jsonOf(spec));
    return spec;
  }
  const spec = makeValid(opts); // remembered by parse
  if (key !== undefined) {
    if (madeFrom.size >= MADE_FROM_MAX) madeFrom.clear();
    madeFrom.set(key, JSON.stringify({ ...spec, process: { ...spec.process, args: [] } }));
  }
  return spec;
}

/**
 * The specs made from options that differ only in `args` (by the JSON text of
 * the rest): a builder makes one per step from the same few option sets, and
 * the spec depends on `args` only where it copies them.
 */
const madeFrom = new Map<string, string>();
const MADE_FROM_MAX = 64;

/** `args` as `OptionsSchema` takes them; anything else goes through it for its message. */
function validArgs(args: unknown): args is readonly string[] {
  return (
    Array.isArray(args) &&
    args.length > 0 &&
    args.every((a) => typeof a === 'string' && !a.includes('\0'))
  );
}

function makeValid(opts: MakeOptions): Spec {
  const o = validateOptions(opts);
  const caps = [...DEFAULT_CAPABILITIES];
  const spec: Spec = {
    ociVersion: OCI_VERSION,
    process: {
      terminal: false,
      user: {
        uid: o.uid ?? 0,
        gid: o.gid ?? 0,
        ...(o.additionalGids?.length ? { additionalGids: o.additionalGids } : {}),
      },
      args: o.args,
      env: envList(o.env),
      cwd: o.cwd ?? '/',
      // OBuilder's sets. Ambient stays empty: for a non-root user it would
      // keep capabilities across execve, which a build never needs.
      capabilities: { bounding: caps, effective: caps, inheritable: caps, permitted: caps },
      rlimits: [{ type: 'RLIMIT_NOFILE', hard: 1024, soft: 1024 }],
      noNewPrivileges: o.noNewPrivileges ?? false,
    },
    root: { path: o.rootfs ?? 'rootfs', readonly: o.readonlyRoot ?? false },
    hostname: o.hostname ?? DEFAULT_HOSTNAME,
    mounts: [
      ...standardMounts(o.tmpfsTmp ?? true),
      ...networkMounts(o.network ?? 'none'),
      ...(o.mounts ?? []).map(bindMount),
    ],
    linux: {
      namespaces: namespaces(o.network ?? 'none'),
      maskedPaths: maskedPaths(),
      readonlyPaths: [...DEFAULT_READONLY_PATHS],
      resources: resources(o.resources),
      ...seccompOf(o),
    },
  };
  return parse(spec);
}

function validateOptions(opts: MakeOptions): ValidOptions {
  const parsed = specSchemas().OptionsSchema.safeParse(opts);
  if (!parsed.success) throw badSpec('Invalid OCI spec option', parsed.error);
  return parsed.data;
}

function envList(env: Readonly<Record<string, string>> | undefined): string[] {
  const all = { PATH: DEFAULT_PATH, ...env };
  return Object.entries(all).map(([k, v]) => `${k}=${v}`);
}

function mount(destination: string, type: string, source: string, options: string[]): Mount {
  return { destination, type, source, options };
}

function standardMounts(tmpfsTmp: boolean): Mount[] {
  const nosuidNoexecNodev = ['nosuid', 'noexec', 'nodev'];
  return [
    mount('/proc', 'proc', 'proc', nosuidNoexecNodev),
    mount('/dev', 'tmpfs', 'tmpfs', ['nosuid', 'strictatime', 'mode=755', 'size=65536k']),
    mount('/dev/pts', 'devpts', 'devpts', [
      'nosuid',
      'noexec',
      'newinstance',
      'ptmxmode=0666',
      'mode=0620',
      'gid=5', // tty
    ]),
    mount('/dev/shm', 'tmpfs', 'shm', [...nosuidNoexecNodev, 'mode=1777', 'size=65536k']),
    mount('/dev/mqueue', 'mqueue', 'mqueue', nosuidNoexecNodev),
    // A fresh sysfs as Docker and OBuilder mount it (runc's default is the same).
    mount('/sys', 'sysfs', 'sysfs', [...nosuidNoexecNodev, 'ro']),
    mount('/sys/fs/cgroup', 'cgroup', 'cgroup', [...nosuidNoexecNodev, 'relatime', 'ro']),
    ...(tmpfsTmp ? [mount('/tmp', 'tmpfs', 'tmpfs', ['nosuid', 'nodev', 'mode=1777'])] : []),
  ];
}

function networkMounts(network: Network): Mount[] {
  // With the host's network the host's resolver config is needed too; read-only
  // so a build cannot change the host's DNS.
  return network === 'host'
    ? [mount('/etc/resolv.conf', 'bind', '/etc/resolv.conf', ['ro', 'rbind', 'rprivate'])]
    : [];
}

function bindMount(m: BindMount): Mount {
  const options = ['bind', 'nosuid', 'nodev'];
  return mount(m.destination, 'bind', m.source, m.readonly ? ['ro', ...options] : options);
}

function namespaces(network: Network): { type: string }[] {
  const types = network === 'none' ? ['network'] : [];
  return [...types, 'pid', 'ipc', 'uts', 'mount'].map((type) => ({ type }));
}

/** The CFS period of {@link Resources.cpuLimit}: the kernel's default, 100 ms. */
const CPU_PERIOD_US = 100_000;

function resources(r: Resources | undefined): NonNullable<SpecResources> {
  const cpu = r?.cpus !== undefined || r?.mems !== undefined || r?.cpuLimit !== undefined;
  return {
    // Deny every device; runc and crun then allow the standard ones (null, zero, tty, ...).
    devices: [{ allow: false, access: 'rwm' }],
    ...(r?.memoryBytes !== undefined && {
      // OCI `swap` is memory+swap: equal to the limit means no swap on top.
      memory: { limit: r.memoryBytes, swap: r.memoryBytes },
    }),
    ...(cpu && {
      cpu: {
        ...(r.cpus !== undefined && { cpus: r.cpus }),
        ...(r.mems !== undefined && { mems: r.mems }),
        ...(r.cpuLimit !== undefined && {
          quota: Math.max(1000, Math.round(r.cpuLimit * CPU_PERIOD_US)),
          period: CPU_PERIOD_US,
        }),
      },
    }),
    ...(r?.pidsLimit !== undefined && { pids: { limit: r.pidsLimit } }),
  };
}

function seccompOf(o: ValidOptions): Pick<Spec['linux'], 'seccomp'> {
  const seccomp = Seccomp.profile({
    deny: o.seccomp ?? false,
    fastSync: o.fastSync ?? false,
    arch: o.arch ?? process.arch,
  });
  return seccomp ? { seccomp } : {};
}

let cpuMasks: string[] | undefined;

/**
 * {@link DEFAULT_MASKED_PATHS} and the `thermal_throttle` directory of each
 * CPU of this machine that has one (read once per process).
 *
 * @example
 * ```ts
 * OciSpec.maskedPaths(); // [...DEFAULT_MASKED_PATHS, '/sys/devices/system/cpu/cpu0/thermal_throttle', ...]
 * ```
 */
export function maskedPaths(): string[] {
  cpuMasks ??= thermalThrottleDirs();
  return [...DEFAULT_MASKED_PATHS, ...cpuMasks];
}

function thermalThrottleDirs(): string[] {
  const cpus = '/sys/devices/system/cpu';
  try {
    return readdirSync(cpus)
      .filter((name) => /^cpu\d+$/.test(name))
      .map((name) => join(cpus, name, 'thermal_throttle'))
      .filter((dir) => existsSync(dir));
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------- parse, template, write

/**
 * Validates a spec (e.g. read back from JSON).
 *
 * @example
 * ```ts
 * const spec = OciSpec.parse(JSON.parse(await readFile('config.json', 'utf8')));
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_SPEC`.
 */
export function parse(value: unknown): Spec {
  const text = jsonOf(value);
  // The text is what a runtime reads; parsing it back is also the cheapest deep copy.
  if (validSpecs.has(text)) return JSON.parse(text) as Spec;
  const parsed = specSchemas().Schema.safeParse(value);
  if (!parsed.success) throw badSpec('Invalid OCI runtime spec', parsed.error);
  if (text === undefined) return parsed.data;
  validSpecs.add(text);
  return JSON.parse(text) as Spec;
}

/** Specs and templates validated before, by their JSON text. */
const validSpecs = new ValidTexts();
const validTemplates = new ValidTexts();

/**
 * Validates a template (e.g. read back from a layer's JSON).
 *
 * @example
 * ```ts
 * const template = OciSpec.parseTemplate(JSON.parse(text));
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_SPEC`.
 */
export function parseTemplate(value: unknown): Template {
  return validTemplate(value);
}

/** A validated copy of the template (a fresh object: the caller may change it). */
function validTemplate(value: unknown): Template {
  const text = jsonOf(value);
  if (validTemplates.has(text)) return JSON.parse(text) as Template;
  const parsed = specSchemas().TemplateSchema.safeParse(value);
  if (!parsed.success) {
    const err = badSpec('Invalid OCI spec template', parsed.error);
    if (!parsed.error.issues.every(isRunPart)) throw err;
    throw new ContainerError(ContainerCodes.BAD_SPEC, err.message, {
      cause: parsed.error,
      hint: 'This is a spec, not a template: pass OciSpec.template(spec), which drops its rootfs (root.path) and cgroupsPath',
    });
  }
  if (text === undefined) return parsed.data;
  validTemplates.add(text);
  return JSON.parse(text) as Template;
}

/** An issue about the per-run parts a template leaves out: the value is a spec. */
function isRunPart(issue: z.core.$ZodIssue): boolean {
  const path = issue.path.join('.');
  return path === 'root.path' || path === 'linux.cgroupsPath';
}

/** A spec's per-run parts dropped, so it can be instantiated like its template. */
function withoutRunParts(value: Template | Spec): Template | Spec {
  if (value?.root?.path === undefined && value?.linux?.cgroupsPath === undefined) return value;
  const { path: _path, ...root } = value.root;
  const { cgroupsPath: _cgroupsPath, ...linux } = value.linux;
  return { ...value, root, linux };
}

/**
 * A spec without its per-run parts (`root.path`, `linux.cgroupsPath`): what a
 * layer stores, to be filled by {@link instantiate}. A deep copy; `JSON.stringify`
 * it to store it.
 *
 * @example
 * ```ts
 * await writeFile('spec.json', JSON.stringify(OciSpec.template(OciSpec.make({ args: ['true'] }))));
 * ```
 */
export function template(spec: Spec): Template {
  const copy: Spec = parse(spec); // a fresh object
  const root: Record<string, unknown> = copy.root;
  const linux: Record<string, unknown> = copy.linux;
  delete root['path'];
  delete linux['cgroupsPath'];
  // A valid spec without its per-run parts is a valid template.
  validTemplates.add(jsonOf(copy));
  return copy as unknown as Template;
}

/** Options of {@link instantiate}. */
export interface InstantiateOptions {
  /** The container's root filesystem, e.g. the merged overlay directory. */
  rootfs: string;
  /**
   * The container's cgroup, relative to the runtime's own cgroup unless
   * absolute. Pass the container id (e.g. `Runc.newId()`) so each run has its
   * own; when omitted, runc and crun derive it from the container id.
   */
  cgroupsPath?: string;
}

/**
 * Fills a template with a rootfs (and optionally a cgroup) for one run. A
 * spec (from {@link make}) is taken as its {@link template}: its own rootfs
 * and cgroup are replaced.
 *
 * @example
 * ```ts
 * const id = Runc.newId();
 * const spec = OciSpec.instantiate(template, { rootfs: merged, cgroupsPath: id });
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_SPEC` for an empty rootfs or a bad cgroup path.
 */
export function instantiate(tpl: Template | Spec, opts: InstantiateOptions): Spec {
  const base = validTemplate(withoutRunParts(tpl));
  if (!opts.rootfs || !noNul(opts.rootfs)) {
    throw new ContainerError(ContainerCodes.BAD_SPEC, 'The rootfs of an OCI spec must be a path', {
      hint: 'Pass the container root directory, e.g. the merged overlay directory',
    });
  }
  const cgroupsPath = opts.cgroupsPath;
  if (cgroupsPath !== undefined) checkCgroupsPath(cgroupsPath);
  // A valid template with a valid rootfs and cgroup is a valid spec: no second validation.
  return {
    ...base,
    root: { ...base.root, path: opts.rootfs },
    linux: { ...base.linux, ...(cgroupsPath !== undefined && { cgroupsPath }) },
  };
}

function checkCgroupsPath(path: string): void {
  const parts = path.split('/').filter(Boolean);
  if (!parts.length || parts.some((p) => p === '..' || p === '.') || !noNul(path)) {
    throw new ContainerError(
      ContainerCodes.BAD_SPEC,
      `Invalid cgroupsPath ${JSON.stringify(path)}: it must name a cgroup without "." or ".." segments`,
      { hint: 'Use the container id, e.g. Runc.newId()' },
    );
  }
}

/**
 * Writes `config.json` into a bundle directory atomically (`Atomic.writeFile`
 * of `@day11/exec`: temporary file, fsync, rename, fsync of the directory), so
 * a runtime never reads a torn file. Returns its path.
 *
 * @example
 * ```ts
 * await OciSpec.write('/tmp/day11-bundle', spec); // '/tmp/day11-bundle/config.json'
 * ```
 * @throws {ContainerError} `CONTAINER_BAD_SPEC` for an invalid spec,
 *   `CONTAINER_BAD_ARGUMENT` when the file cannot be written.
 */
export async function write(bundleDir: string, spec: Spec): Promise<string> {
  const text = `${JSON.stringify(parse(spec), null, 2)}\n`;
  const target = join(bundleDir, 'config.json');
  try {
    await Atomic.writeFile(target, text);
  } catch (cause) {
    throw new ContainerError(ContainerCodes.BAD_ARGUMENT, messageOf(cause), {
      path: target,
      cause,
      hint: 'Check that the bundle directory exists and is writable',
    });
  }
  return target;
}

function badSpec(what: string, error: z.ZodError): ContainerError {
  const problems = error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  return new ContainerError(ContainerCodes.BAD_SPEC, `${what}: ${problems.join('; ')}`, {
    cause: error,
  });
}
