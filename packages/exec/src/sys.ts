/**
 * The Linux system calls Node has no API for: extended attributes, `mknod`,
 * and mounting (classic `mount(2)` and the new fsopen/fsconfig API).
 *
 * With `libdeflate.ts`, the only module in day11 that touches FFI. Bindings load lazily, so
 * importing it on a platform without them costs nothing; a call then fails
 * with a {@link SysError} whose code is `SYS_UNAVAILABLE`.
 */
import { constants as osConstants } from 'node:os';
import { createRequire } from 'node:module';
import type * as KoffiModule from 'koffi';
import { SysError } from './errors.js';

const require = createRequire(import.meta.url);

// ---------------------------------------------------------------- xattrs

interface XattrBinding {
  getAttribute(path: string, name: string): Promise<Buffer | null>;
  getAttributeSync(path: string, name: string): Buffer | null;
  listAttributes(path: string): Promise<string[]>;
  listAttributesSync(path: string): string[];
  setAttribute(path: string, name: string, value: Buffer | string): Promise<void>;
  setAttributeSync(path: string, name: string, value: Uint8Array | string): void;
  removeAttribute(path: string, name: string): Promise<void>;
}

let xattrBinding: XattrBinding | undefined;

function xattr(): XattrBinding {
  if (!xattrBinding) {
    try {
      xattrBinding = require('@napi-rs/xattr') as XattrBinding;
    } catch (cause) {
      throw new SysError('xattr', undefined, 'Extended attributes are unavailable', {
        cause,
        hint: 'Install @napi-rs/xattr for this platform (it ships prebuilt binaries for Linux)',
      });
    }
  }
  return xattrBinding;
}

function xattrError(op: string, path: string, name: string | undefined, cause: unknown): SysError {
  const code = errnoOf(cause);
  const what = name ? `${op} xattr ${name} of ${path}` : `${op} xattrs of ${path}`;
  return new SysError(op, code ?? 'EIO', `Cannot ${what}: ${messageOf(cause)}`, {
    path,
    cause,
    hint:
      code === 'EPERM' && name?.startsWith('trusted.')
        ? 'trusted.* attributes need root (CAP_SYS_ADMIN)'
        : code === 'ENOTSUP' || code === 'EOPNOTSUPP'
          ? 'The filesystem does not support this attribute namespace'
          : undefined,
  });
}

const NO_ATTR = new Set(['ENODATA', 'ENOATTR']);

/** Reads one extended attribute without following symlinks; `undefined` when absent. */
export async function getXattr(path: string, name: string): Promise<Buffer | undefined> {
  try {
    return (await xattr().getAttribute(path, name)) ?? undefined;
  } catch (cause) {
    if (NO_ATTR.has(errnoOf(cause) ?? '')) return undefined;
    throw xattrError('getxattr', path, name, cause);
  }
}

/** Synchronous {@link getXattr}, for hot loops where a thread-pool hop costs more than the call. */
export function getXattrSync(path: string, name: string): Buffer | undefined {
  try {
    return xattr().getAttributeSync(path, name) ?? undefined;
  } catch (cause) {
    if (NO_ATTR.has(errnoOf(cause) ?? '')) return undefined;
    throw xattrError('getxattr', path, name, cause);
  }
}

/** Lists the names of a path's extended attributes, without following symlinks. */
export async function listXattrs(path: string): Promise<string[]> {
  try {
    return await xattr().listAttributes(path);
  } catch (cause) {
    throw xattrError('listxattr', path, undefined, cause);
  }
}

/** Synchronous {@link listXattrs}. */
export function listXattrsSync(path: string): string[] {
  try {
    return xattr().listAttributesSync(path);
  } catch (cause) {
    throw xattrError('listxattr', path, undefined, cause);
  }
}

/** Sets one extended attribute, without following symlinks. */
export async function setXattr(path: string, name: string, value: Buffer | string): Promise<void> {
  try {
    await xattr().setAttribute(path, name, value);
  } catch (cause) {
    throw xattrError('setxattr', path, name, cause);
  }
}

/** Synchronous {@link setXattr}. */
export function setXattrSync(path: string, name: string, value: Buffer | string): void {
  try {
    xattr().setAttributeSync(path, name, value);
  } catch (cause) {
    throw xattrError('setxattr', path, name, cause);
  }
}

/** Removes one extended attribute; absent is not an error. */
export async function removeXattr(path: string, name: string): Promise<void> {
  try {
    await xattr().removeAttribute(path, name);
  } catch (cause) {
    if (NO_ATTR.has(errnoOf(cause) ?? '')) return;
    throw xattrError('removexattr', path, name, cause);
  }
}

/** Reads every extended attribute of a path (not following symlinks) into a map. */
export async function readAllXattrs(path: string): Promise<Map<string, Buffer>> {
  const out = new Map<string, Buffer>();
  for (const name of await listXattrs(path)) {
    const value = await getXattr(path, name);
    if (value !== undefined) out.set(name, value);
  }
  return out;
}

// ---------------------------------------------------------------- libc via koffi

interface Libc {
  koffi: typeof KoffiModule;
  mknod: (path: string, mode: number, dev: number) => number;
  mount: (
    src: string | null,
    target: string,
    fstype: string | null,
    flags: number,
    data: string | null,
  ) => number;
  umount2: (target: string, flags: number) => number;
  fsopen: (fsname: string, flags: number) => number;
  fsconfig: (
    fd: number,
    cmd: number,
    key: string | null,
    value: string | null,
    aux: number,
  ) => number;
  fsmount: (fd: number, flags: number, attrFlags: number) => number;
  moveMount: (
    fromDfd: number,
    fromPath: string,
    toDfd: number,
    toPath: string,
    flags: number,
  ) => number;
  close: (fd: number) => number;
  read: (fd: number, buf: Buffer, count: number) => number;
  mallopt: (param: number, value: number) => number;
  statx: (dirfd: number, path: string, flags: number, mask: number, buf: Buffer) => number;
  openat: (dirfd: number, path: string, flags: number, mode: number) => number;
  readlinkat: (dirfd: number, path: string, buf: Buffer, size: number) => number;
  linkat: (fromDfd: number, from: string, toDfd: number, to: string, flags: number) => number;
  pipe2: (fds: number[], flags: number) => number;
  faInit: (fa: Buffer) => number;
  faDestroy: (fa: Buffer) => number;
  faDup2: (fa: Buffer, fd: number, newfd: number) => number;
  faOpen: (fa: Buffer, fd: number, path: string, flags: number, mode: number) => number;
  attrInit: (attr: Buffer) => number;
  attrDestroy: (attr: Buffer) => number;
  attrFlags: (attr: Buffer, flags: number) => number;
  attrSigmask: (attr: Buffer, set: Buffer) => number;
  attrSigdefault: (attr: Buffer, set: Buffer) => number;
  sigemptyset: (set: Buffer) => number;
  posixSpawnp: (
    pid: number[],
    file: string,
    fa: Buffer,
    attr: Buffer,
    argv: Array<string | null>,
    envp: Array<string | null>,
  ) => number;
  waitpid: (pid: number, status: number[], options: number) => number;
  getdents64: (fd: number, buf: Buffer, size: number) => number;
  /** `syscall(SYS_listxattrat, dirfd, path, at_flags, list, size)` (Linux 6.13+). */
  listxattrat: (
    nr: number,
    dirfd: number,
    path: string,
    flags: number,
    list: Buffer,
    size: number,
  ) => number;
}

let libcBinding: Libc | undefined;

function libc(syscall: string): Libc {
  if (libcBinding) return libcBinding;
  try {
    const koffi = require('koffi') as typeof KoffiModule;
    const lib = koffi.load('libc.so.6');
    // koffi's handles are untyped; each is given its C signature's type once, here.
    const fn = <T>(proto: string): T => lib.func(proto) as unknown as T;
    libcBinding = {
      koffi,
      mknod: fn('int mknod(const char *path, uint32_t mode, uint64_t dev)'),
      mount: fn(
        'int mount(const char *src, const char *target, const char *fstype, unsigned long flags, const char *data)',
      ),
      umount2: fn('int umount2(const char *target, int flags)'),
      fsopen: fn('int fsopen(const char *fsname, unsigned int flags)'),
      fsconfig: fn(
        'int fsconfig(int fd, unsigned int cmd, const char *key, const char *value, int aux)',
      ),
      fsmount: fn('int fsmount(int fd, unsigned int flags, unsigned int attr_flags)'),
      moveMount: fn(
        'int move_mount(int from_dfd, const char *from_path, int to_dfd, const char *to_path, unsigned int flags)',
      ),
      close: fn('int close(int fd)'),
      read: fn('long read(int fd, void *buf, unsigned long count)'),
      mallopt: fn('int mallopt(int param, int value)'),
      statx: fn(
        'int statx(int dirfd, const char *path, int flags, unsigned int mask, void *statxbuf)',
      ),
      openat: fn('int openat(int dirfd, const char *path, int flags, unsigned int mode)'),
      readlinkat: fn('long readlinkat(int dirfd, const char *path, void *buf, size_t size)'),
      linkat: fn(
        'int linkat(int olddirfd, const char *oldpath, int newdirfd, const char *newpath, int flags)',
      ),
      pipe2: fn('int pipe2(_Out_ int *fds, int flags)'),
      // posix_spawn's opaque structs are passed as buffers larger than glibc's.
      faInit: fn('int posix_spawn_file_actions_init(void *fa)'),
      faDestroy: fn('int posix_spawn_file_actions_destroy(void *fa)'),
      faDup2: fn('int posix_spawn_file_actions_adddup2(void *fa, int fd, int newfd)'),
      faOpen: fn(
        'int posix_spawn_file_actions_addopen(void *fa, int fd, const char *path, int oflag, unsigned int mode)',
      ),
      attrInit: fn('int posix_spawnattr_init(void *attr)'),
      attrDestroy: fn('int posix_spawnattr_destroy(void *attr)'),
      attrFlags: fn('int posix_spawnattr_setflags(void *attr, short flags)'),
      attrSigmask: fn('int posix_spawnattr_setsigmask(void *attr, void *set)'),
      attrSigdefault: fn('int posix_spawnattr_setsigdefault(void *attr, void *set)'),
      sigemptyset: fn('int sigemptyset(void *set)'),
      posixSpawnp: fn(
        'int posix_spawnp(_Out_ int *pid, const char *file, void *fa, void *attr, const char **argv, const char **envp)',
      ),
      waitpid: fn('int waitpid(int pid, _Out_ int *status, int options)'),
      getdents64: fn('long getdents64(int fd, void *dirp, size_t count)'),
      // syscall(2) with listxattrat's arguments: glibc 2.36 has no wrapper for it.
      listxattrat: lib.func('syscall', 'long', [
        'long',
        'int',
        'const char *',
        'unsigned int',
        'void *',
        'size_t',
      ]) as unknown as Libc['listxattrat'],
    };
    return libcBinding;
  } catch (cause) {
    throw new SysError(syscall, undefined, `The ${syscall} system call is unavailable here`, {
      cause,
      hint: 'day11 needs Linux with glibc and the koffi package; fall back to the mount(8)/mknod(1) commands',
    });
  }
}

// mallopt(3) parameters.
const M_TRIM_THRESHOLD = -1;
const M_MMAP_THRESHOLD = -3;
let freedMemoryKept: boolean | undefined;

/**
 * Makes glibc's malloc keep freed memory for reuse: blocks up to 4 MiB come
 * from the heap, and up to 32 MiB of free heap top is kept rather than handed
 * back to the kernel. Streaming bulk data allocates a fresh buffer for every
 * socket or file read; with glibc's defaults (128 KiB, adjusted as it goes)
 * each one faults its pages in again: a 75 MB download took ~11,000 page
 * faults and 3–4× the CPU of the same download with these settings.
 * Process-wide and idempotent; false (nothing changed) without glibc.
 *
 * @example
 * ```ts
 * Sys.keepFreedMemory(); // before streaming gigabytes through Node buffers
 * ```
 */
export function keepFreedMemory(): boolean {
  if (freedMemoryKept !== undefined) return freedMemoryKept;
  try {
    const { mallopt } = libc('mallopt');
    freedMemoryKept = mallopt(M_MMAP_THRESHOLD, 4 * 1024 ** 2) === 1;
    freedMemoryKept = mallopt(M_TRIM_THRESHOLD, 32 * 1024 ** 2) === 1 && freedMemoryKept;
  } catch {
    freedMemoryKept = false;
  }
  return freedMemoryKept;
}

/** True when the libc bindings load on this platform (Linux + glibc). */
export function libcAvailable(): boolean {
  try {
    libc('probe');
    return true;
  } catch {
    return false;
  }
}

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(osConstants.errno).map(([name, num]) => [num, name]),
);

/** Symbolic name of an errno number, e.g. 16 → `EBUSY`. */
export function errnoName(num: number): string {
  return ERRNO_NAMES.get(num) ?? `errno ${num}`;
}

function check(syscall: string, ret: number, what: string, path?: string): number {
  if (ret >= 0) return ret;
  const errno = errnoName(libc(syscall).koffi.errno());
  throw new SysError(syscall, errno, `${what} failed: ${errno}`, {
    path,
    hint: errno === 'EPERM' ? 'This needs root (CAP_SYS_ADMIN / CAP_MKNOD)' : undefined,
  });
}

/** `makedev(3)`: the kernel's encoding of a device number. */
export function makedev(major: number, minor: number): number {
  // Low 20 bits of minor and 12 of major, the glibc layout; day11 never sees
  // device numbers above 2^32, where JavaScript numbers would lose bits.
  return (
    ((major & 0xfff) << 8) + (minor & 0xff) + ((minor & 0xfff00) << 12) + (major & ~0xfff) * 2 ** 32
  );
}

/** File type bits for {@link mknod}. */
export const S_IFCHR = 0o020000;
export const S_IFBLK = 0o060000;
export const S_IFIFO = 0o010000;

/**
 * Creates a device node or fifo, e.g. an overlayfs whiteout:
 * `mknod(path, S_IFCHR | 0o000, 0, 0)`.
 */
export function mknod(path: string, mode: number, major = 0, minor = 0): void {
  const lib = libc('mknod');
  check('mknod', lib.mknod(path, mode, makedev(major, minor)), `mknod ${path}`, path);
}

/** Classic `mount(2)`. `data` is the comma-separated option string. */
export function mount(opts: {
  source: string | null;
  target: string;
  fstype: string | null;
  flags?: number;
  data?: string | null;
}): void {
  const lib = libc('mount');
  const ret = lib.mount(opts.source, opts.target, opts.fstype, opts.flags ?? 0, opts.data ?? null);
  check('mount', ret, `mount ${opts.fstype ?? ''} on ${opts.target}`, opts.target);
}

/** `MNT_DETACH` for {@link umount}: lazy unmount. */
export const MNT_DETACH = 2;

/** `umount2(2)`. */
export function umount(target: string, flags = 0): void {
  const lib = libc('umount2');
  check('umount2', lib.umount2(target, flags), `umount ${target}`, target);
}

/** Constants of the new mount API (linux/mount.h). */
const FsConfig = {
  FSOPEN_CLOEXEC: 0x1,
  FSMOUNT_CLOEXEC: 0x1,
  SET_FLAG: 0,
  SET_STRING: 1,
  SET_FD: 5,
  CMD_CREATE: 6,
  MOVE_MOUNT_F_EMPTY_PATH: 0x4,
  AT_FDCWD: -100,
} as const;

/**
 * One fsconfig option: `true` sets a flag, a string sets a string option (the
 * kernel copies at most 255 bytes of it), `{ fd }` passes an open file
 * descriptor (`FSCONFIG_SET_FD`, e.g. a directory for overlayfs's `lowerdir+`
 * on Linux >= 6.13, which has no length limit).
 */
export type FsConfigValue = string | true | { readonly fd: number };

/** Options of {@link mountWithFsconfig} and {@link probeFsconfig}. */
export interface FsConfigOptions {
  fstype: string;
  /** Applied in order; repeated keys such as overlayfs's `lowerdir+` are allowed. */
  options: ReadonlyArray<readonly [key: string, value: FsConfigValue]>;
}

/** The messages the kernel logged on an fs context fd (`e overlay: ...`), prefix stripped. */
function kernelMessages(lib: Libc, fsfd: number): string[] {
  const messages: string[] = [];
  const buf = Buffer.alloc(1024);
  // Each read returns one message; ENODATA ends the log. Bounded in case of a chatty driver.
  for (let i = 0; i < 16; i++) {
    const n = Number(lib.read(fsfd, buf, buf.length));
    if (n <= 0) break;
    messages.push(
      buf
        .subarray(0, n)
        .toString('utf8')
        .trim()
        .replace(/^[ewi] /, ''),
    );
  }
  return messages;
}

/** {@link check} for calls on an fs context: a failure carries the kernel's own explanation. */
function checkFs(
  lib: Libc,
  fsfd: number,
  call: { syscall: string; ret: number; what: string; path?: string },
): number {
  if (call.ret >= 0) return call.ret;
  const errno = errnoName(lib.koffi.errno());
  const said = kernelMessages(lib, fsfd);
  const why = said.length > 0 ? ` (${said.join('; ')})` : '';
  throw new SysError(call.syscall, errno, `${call.what} failed: ${errno}${why}`, {
    path: call.path,
    hint: errno === 'EPERM' ? 'This needs root (CAP_SYS_ADMIN)' : undefined,
  });
}

function describeOption(key: string, value: FsConfigValue): string {
  if (value === true) return key;
  return typeof value === 'string' ? `${key}=${value}` : `${key}=<fd ${value.fd}>`;
}

function setOption(lib: Libc, fsfd: number, key: string, value: FsConfigValue): number {
  if (value === true) return lib.fsconfig(fsfd, FsConfig.SET_FLAG, key, null, 0);
  if (typeof value === 'string') return lib.fsconfig(fsfd, FsConfig.SET_STRING, key, value, 0);
  return lib.fsconfig(fsfd, FsConfig.SET_FD, key, null, value.fd);
}

function applyOptions(lib: Libc, fsfd: number, opts: FsConfigOptions, path?: string): void {
  for (const [key, value] of opts.options) {
    const what = `fsconfig ${describeOption(key, value)}`;
    checkFs(lib, fsfd, { syscall: 'fsconfig', ret: setOption(lib, fsfd, key, value), what, path });
  }
}

/**
 * Mounts a filesystem with the new mount API: fsopen, one fsconfig per option
 * (so no option string is limited to a page), fsmount, move_mount.
 *
 * A rejected option names the option and carries the kernel's own message,
 * read from the fs context (e.g. `overlay: too many lower directories, limit
 * is 500`). Nothing stays mounted when any step fails.
 *
 * @example
 * ```ts
 * Sys.mountWithFsconfig({
 *   fstype: 'overlay',
 *   target: '/tmp/merged',
 *   options: [['lowerdir+', '/tmp/l1'], ['lowerdir+', '/tmp/l2']],
 * });
 * ```
 */
export function mountWithFsconfig(opts: FsConfigOptions & { target: string }): void {
  const lib = libc('fsopen');
  const fsfd = check(
    'fsopen',
    lib.fsopen(opts.fstype, FsConfig.FSOPEN_CLOEXEC),
    `fsopen ${opts.fstype}`,
  );
  let mfd = -1;
  try {
    applyOptions(lib, fsfd, opts, opts.target);
    checkFs(lib, fsfd, {
      syscall: 'fsconfig',
      ret: lib.fsconfig(fsfd, FsConfig.CMD_CREATE, null, null, 0),
      what: `create ${opts.fstype}`,
      path: opts.target,
    });
    mfd = checkFs(lib, fsfd, {
      syscall: 'fsmount',
      ret: lib.fsmount(fsfd, FsConfig.FSMOUNT_CLOEXEC, 0),
      what: `fsmount ${opts.fstype}`,
      path: opts.target,
    });
    const moved = lib.moveMount(
      mfd,
      '',
      FsConfig.AT_FDCWD,
      opts.target,
      FsConfig.MOVE_MOUNT_F_EMPTY_PATH,
    );
    check('move_mount', moved, `move_mount to ${opts.target}`, opts.target);
  } finally {
    if (mfd >= 0) lib.close(mfd);
    lib.close(fsfd);
  }
}

/** What {@link probeFsconfig} found. */
export interface FsConfigProbe {
  /** How many of the options, in order, the kernel accepted before the first refusal. */
  accepted: number;
  /** Why the first refused option (or fsopen itself) failed; `undefined` when all were accepted. */
  error: SysError | undefined;
}

/**
 * Asks the kernel which options a filesystem accepts, without mounting
 * anything: fsopen, then fsconfig for each option in order until one is
 * refused; the context is then closed, never created.
 *
 * @example
 * ```ts
 * // Does this kernel know overlayfs's `lowerdir+`, and how deep may a stack be?
 * const { accepted, error } = Sys.probeFsconfig({
 *   fstype: 'overlay',
 *   options: Array.from({ length: 501 }, () => ['lowerdir+', '/'] as const),
 * });
 * // accepted === 500, error.message ends "(overlay: too many lower directories, limit is 500)"
 * ```
 */
export function probeFsconfig(opts: FsConfigOptions): FsConfigProbe {
  const lib = libc('fsopen');
  let fsfd: number;
  try {
    fsfd = check(
      'fsopen',
      lib.fsopen(opts.fstype, FsConfig.FSOPEN_CLOEXEC),
      `fsopen ${opts.fstype}`,
    );
  } catch (err) {
    return { accepted: 0, error: err as SysError };
  }
  try {
    let accepted = 0;
    for (const [key, value] of opts.options) {
      const what = `fsconfig ${describeOption(key, value)}`;
      const ret = setOption(lib, fsfd, key, value);
      try {
        checkFs(lib, fsfd, { syscall: 'fsconfig', ret, what });
      } catch (err) {
        return { accepted, error: err as SysError };
      }
      accepted++;
    }
    return { accepted, error: undefined };
  } finally {
    lib.close(fsfd);
  }
}

// ---------------------------------------------------------------- calls relative to a directory

// Walking a tree by full paths resolves every component of every path again, three
// times per file (lstat, listxattr, open); relative to an open directory each call
// resolves one name. Measured over 21.7k files: 227 ms against 335 ms.

const AT_FDCWD = -100;
const AT_SYMLINK_NOFOLLOW = 0x100;
const O_DIRECTORY = 0o200000;
const O_NOFOLLOW = 0o400000;
const O_CLOEXEC = 0o2000000;
/** statx(2) mask: type, mode, nlink, uid, gid, mtime, ino, size. */
const STATX_BASIC = 0x7ff;
const STATX_SIZE = 256;
/** The one number every architecture gives listxattrat (Linux 6.13). */
const SYS_LISTXATTRAT = 465;
const XATTR_LIST_MAX = 65536;
const PATH_MAX = 4096;
/** O_TMPFILE as open(2) takes it: `__O_TMPFILE | O_DIRECTORY`. */
const O_TMPFILE = 0o20200000;
const O_RDWR = 2;
const AT_SYMLINK_FOLLOW = 0x400;
// posix_spawnattr_setflags(3) flags (glibc).
const POSIX_SPAWN_SETSIGDEF = 0x04;
const POSIX_SPAWN_SETSIGMASK = 0x08;
const POSIX_SPAWN_SETSID = 0x80;
const WNOHANG = 1;

/** What {@link statAtSync} tells of a file; the fields of `fs.Stats` a tar walk needs. */
export interface FileStat {
  /** Type and permission bits, as `st_mode`. */
  mode: number;
  uid: number;
  gid: number;
  size: number;
  nlink: number;
  ino: number;
  /** The device of the filesystem (an opaque number: equal on one filesystem). */
  dev: number;
  /** A device file's number, encoded as {@link makedev} does. */
  rdev: number;
  mtimeMs: number;
}

/**
 * Per-thread state of the directory-relative calls: reused buffers, and
 * whether the kernel has listxattrat.
 */
const at = {
  stat: Buffer.alloc(STATX_SIZE),
  list: Buffer.alloc(XATTR_LIST_MAX),
  link: Buffer.alloc(PATH_MAX),
  dents: Buffer.alloc(64 * 1024),
  listxattrat: true,
};

/**
 * True when the directory-relative calls work here (Linux, glibc, koffi);
 * callers fall back to paths otherwise.
 *
 * @example
 * ```ts
 * const fast = Sys.directoryCallsAvailable();
 * ```
 */
export function directoryCallsAvailable(): boolean {
  return libcAvailable();
}

/**
 * Opens the directory `name` relative to `dirfd` (or `path` itself, when
 * `dirfd` is undefined), never following a symlink at its last component
 * when relative: a file descriptor for {@link statAtSync} and the like.
 * Close it with {@link closeFdSync}.
 *
 * @example
 * ```ts
 * const root = Sys.openDirectorySync(undefined, '/var/cache/day11/build-0123456789ab/fs', '…/fs');
 * const usr = Sys.openDirectorySync(root, 'usr', '…/fs/usr');
 * ```
 * @throws {SysError} `SYS_CALL_FAILED` naming `path` (e.g. `ENOTDIR`, `ENOENT`).
 */
export function openDirectorySync(dirfd: number | undefined, name: string, path: string): number {
  const lib = libc('openat');
  const flags = O_DIRECTORY | O_CLOEXEC | (dirfd === undefined ? 0 : O_NOFOLLOW);
  return check('openat', lib.openat(dirfd ?? AT_FDCWD, name, flags, 0), `open ${path}`, path);
}

/**
 * `lstat` of `name` in the directory `dirfd`, through statx(2).
 *
 * @example
 * ```ts
 * const st = Sys.statAtSync(dirfd, 'passwd', '/etc/passwd');
 * (st.mode & 0o170000) === 0o100000; // a regular file
 * ```
 * @throws {SysError} `SYS_CALL_FAILED` naming `path`.
 */
export function statAtSync(dirfd: number, name: string, path: string): FileStat {
  const lib = libc('statx');
  const b = at.stat;
  check('statx', lib.statx(dirfd, name, AT_SYMLINK_NOFOLLOW, STATX_BASIC, b), `stat ${path}`, path);
  // struct statx (linux/stat.h): the same layout on every architecture.
  return {
    nlink: b.readUInt32LE(16),
    uid: b.readUInt32LE(20),
    gid: b.readUInt32LE(24),
    mode: b.readUInt16LE(28),
    // 64-bit fields as two halves: a BigInt per field would cost more than the call.
    ino: b.readUInt32LE(32) + b.readUInt32LE(36) * 2 ** 32,
    size: b.readUInt32LE(40) + b.readUInt32LE(44) * 2 ** 32,
    mtimeMs:
      (b.readUInt32LE(112) + b.readInt32LE(116) * 2 ** 32) * 1000 + b.readUInt32LE(120) / 1e6,
    rdev: makedev(b.readUInt32LE(128), b.readUInt32LE(132)),
    dev: makedev(b.readUInt32LE(136), b.readUInt32LE(140)),
  };
}

/**
 * Closes a file descriptor one of the `…AtSync` calls opened. Not
 * `fs.closeSync`: on a worker thread Node warns for every descriptor it did
 * not open itself, and the warning costs more than the call.
 */
export function closeFdSync(fd: number): void {
  libc('close').close(fd);
}

/**
 * Opens the regular file `name` in `dirfd` for reading, not following a
 * symlink. Close it with {@link closeFdSync}.
 *
 * @throws {SysError} `SYS_CALL_FAILED` naming `path`.
 */
export function openFileAtSync(dirfd: number, name: string, path: string): number {
  const lib = libc('openat');
  const fd = lib.openat(dirfd, name, O_NOFOLLOW | O_CLOEXEC, 0);
  return check('openat', fd, `open ${path}`, path);
}

/**
 * The names of the extended attributes of `name` in `dirfd`, not following
 * a symlink: listxattrat(2), or {@link listXattrsSync} of `path` on kernels
 * before 6.13.
 *
 * @throws {SysError} naming `path`.
 */
export function listXattrsAtSync(dirfd: number, name: string, path: string): string[] {
  if (at.listxattrat) {
    const lib = libc('listxattrat');
    const n = lib.listxattrat(
      SYS_LISTXATTRAT,
      dirfd,
      name,
      AT_SYMLINK_NOFOLLOW,
      at.list,
      XATTR_LIST_MAX,
    );
    if (n >= 0) return n === 0 ? [] : at.list.toString('utf8', 0, n - 1).split('\0');
    const errno = errnoName(lib.koffi.errno());
    // No such syscall here (or blocked by a seccomp filter): paths from now on.
    if (errno !== 'ENOSYS' && errno !== 'EPERM') {
      throw new SysError('listxattrat', errno, `listxattr ${path} failed: ${errno}`, { path });
    }
    at.listxattrat = false;
  }
  return listXattrsSync(path);
}

/**
 * The target of the symlink `name` in `dirfd`, as bytes (readlinkat(2)).
 *
 * @example
 * ```ts
 * Sys.readLinkAtSync(dirfd, 'sh', '/bin/sh').toString(); // 'dash'
 * ```
 * @throws {SysError} `SYS_CALL_FAILED` naming `path`.
 */
export function readLinkAtSync(dirfd: number, name: string, path: string): Buffer {
  const lib = libc('readlinkat');
  const n = check(
    'readlinkat',
    lib.readlinkat(dirfd, name, at.link, PATH_MAX),
    `readlink ${path}`,
    path,
  );
  // PATH_MAX bytes read: the target may have been cut short.
  if (n >= PATH_MAX)
    throw new SysError('readlinkat', 'ENAMETOOLONG', `readlink ${path} failed: ENAMETOOLONG`, {
      path,
    });
  return Buffer.from(at.link.subarray(0, n));
}

/**
 * The names in the open directory `fd`, as bytes, without `.` and `..`
 * (getdents64(2): one call per 64 KiB of entries, where `fs.readdirSync`
 * makes a Buffer per name on the way). Reads from the descriptor's current
 * position: call it once per descriptor.
 *
 * @example
 * ```ts
 * const fd = Sys.openDirectorySync(undefined, '/etc', '/etc');
 * const names = Sys.readDirectorySync(fd, '/etc').map((b) => b.toString());
 * ```
 * @throws {SysError} `SYS_CALL_FAILED` naming `path`.
 */
export function readDirectorySync(fd: number, path: string): Buffer[] {
  const lib = libc('getdents64');
  const b = at.dents;
  const names: Buffer[] = [];
  for (;;) {
    const n = check('getdents64', lib.getdents64(fd, b, b.length), `readdir ${path}`, path);
    if (n === 0) return names;
    // struct linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, then the NUL-terminated name.
    for (let off = 0; off < n; off += b.readUInt16LE(off + 16)) {
      const start = off + 19;
      const end = b.indexOf(0, start);
      const dots = end - start;
      if (dots === 1 && b[start] === 0x2e) continue;
      if (dots === 2 && b[start] === 0x2e && b[start + 1] === 0x2e) continue;
      names.push(Buffer.from(b.subarray(start, end)));
    }
  }
}

/**
 * Opens a new file that has no name yet in the filesystem of the directory
 * `dir` (O_TMPFILE): it takes no directory entry, and is gone once closed
 * unless {@link linkOpenFileSync} gave it names. Close it with
 * {@link closeFdSync}.
 *
 * @example
 * ```ts
 * const fd = Sys.openUnnamedSync('/var/cache/day11');
 * writeSync(fd, record);
 * Sys.linkOpenFileSync(fd, '/var/cache/day11/build-0123456789ab/.in-use/42-ab.lease');
 * Sys.closeFdSync(fd);
 * ```
 * @throws {SysError} naming `dir`: `EOPNOTSUPP` where the filesystem has no
 *   O_TMPFILE, `EISDIR` before Linux 3.11.
 */
export function openUnnamedSync(dir: string, mode = 0o644): number {
  const lib = libc('openat');
  const fd = lib.openat(AT_FDCWD, dir, O_TMPFILE | O_RDWR | O_CLOEXEC, mode);
  return check('openat', fd, `open an unnamed file in ${dir}`, dir);
}

/**
 * Gives the open file `fd` one more name, `path`, on the same filesystem: a
 * hard link to what `fd` is, made through `/proc/self/fd` (linkat with
 * AT_SYMLINK_FOLLOW, which needs no privilege, where AT_EMPTY_PATH needs
 * CAP_DAC_READ_SEARCH). Makes no inode: a directory entry and a link count.
 *
 * @throws {SysError} naming `path`: `ENOENT` (its directory is missing, or
 *   /proc is not mounted), `EEXIST`, `EXDEV` (another filesystem), `EMLINK`.
 */
export function linkOpenFileSync(fd: number, path: string): void {
  const lib = libc('linkat');
  const ret = lib.linkat(AT_FDCWD, `/proc/self/fd/${fd}`, AT_FDCWD, path, AT_SYMLINK_FOLLOW);
  check('linkat', ret, `link ${path}`, path);
}

/** A process started by {@link spawnDetachedSync}. */
export interface DetachedChild {
  pid: number;
  /** Read ends of its stdout and stderr pipes (close-on-exec, blocking); the caller closes them. */
  stdoutFd: number;
  stderrFd: number;
}

/**
 * Starts `file` (looked up in PATH) with `args` in a new session (so its own
 * process group, as `spawn` with `detached: true`), stdin from /dev/null,
 * stdout and stderr to new pipes, every signal at its default disposition
 * and none blocked. Through posix_spawn(3), which glibc runs with
 * clone(CLONE_VM | CLONE_VFORK): nothing of this process's memory is copied,
 * where Node's `spawn` forks, a cost that grows with the parent's size
 * (5 ms at 190 MB of RSS, 10 ms at 300 MB, on the main thread). The caller
 * must reap the child ({@link reapChildSync}): Node does not know it.
 *
 * @example
 * ```ts
 * const child = Sys.spawnDetachedSync('crun', ['run', '--bundle', bundle, id], process.env);
 * ```
 * @throws {SysError} `ENOENT` (not found in PATH), `EACCES`, … naming `file`.
 */
export function spawnDetachedSync(
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): DetachedChild {
  const lib = libc('posix_spawnp');
  const out = [-1, -1];
  const err = [-1, -1];
  try {
    check('pipe2', lib.pipe2(out, O_CLOEXEC), 'make a pipe');
    check('pipe2', lib.pipe2(err, O_CLOEXEC), 'make a pipe');
    const pid = spawnWithPipes(lib, { file, args, env, stdout: out[1]!, stderr: err[1]! });
    return { pid, stdoutFd: out[0]!, stderrFd: err[0]! };
  } catch (error) {
    for (const fd of [out[0]!, err[0]!]) if (fd >= 0) lib.close(fd);
    throw error;
  } finally {
    // The child has its copies (or there is no child): the write ends are done here.
    for (const fd of [out[1]!, err[1]!]) if (fd >= 0) lib.close(fd);
  }
}

function spawnWithPipes(
  lib: Libc,
  o: {
    file: string;
    args: readonly string[];
    env: NodeJS.ProcessEnv;
    stdout: number;
    stderr: number;
  },
): number {
  // glibc's posix_spawn_file_actions_t is 80 bytes, posix_spawnattr_t 336, sigset_t 128.
  const actions = Buffer.alloc(256);
  const attr = Buffer.alloc(512);
  const none = Buffer.alloc(128);
  const all = Buffer.alloc(128);
  lib.faInit(actions);
  lib.attrInit(attr);
  try {
    // dup2 clears close-on-exec on the child's 1 and 2; every other descriptor of ours has it.
    lib.faOpen(actions, 0, '/dev/null', 0, 0);
    lib.faDup2(actions, o.stdout, 1);
    lib.faDup2(actions, o.stderr, 2);
    lib.sigemptyset(none);
    // Every signal, glibc's own two (32, 33) too, which sigfillset leaves out and
    // posix_spawn would otherwise leave ignored in the child; Node ignores
    // SIGPIPE, and an ignored signal stays ignored across exec: reset them all.
    all.fill(0xff);
    lib.attrFlags(attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    lib.attrSigmask(attr, none);
    lib.attrSigdefault(attr, all);
    const env = Object.entries(o.env)
      .filter(([, v]) => v !== undefined)
      .map(([k, v]) => `${k}=${v}`);
    const pid = [0];
    // posix_spawnp returns the error number itself.
    const errno = lib.posixSpawnp(
      pid,
      o.file,
      actions,
      attr,
      [o.file, ...o.args, null],
      [...env, null],
    );
    if (errno !== 0) {
      const name = errnoName(errno);
      throw new SysError('posix_spawnp', name, `spawn ${o.file} ${name}`, { path: o.file });
    }
    return pid[0]!;
  } finally {
    lib.faDestroy(actions);
    lib.attrDestroy(attr);
  }
}

/** How a child ended: its exit code, or the signal that killed it. */
export interface ChildExit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

const SIGNAL_NAMES = new Map<number, NodeJS.Signals>(
  Object.entries(osConstants.signals).map(([name, num]) => [num, name as NodeJS.Signals]),
);

/**
 * Reaps the child `pid` (one of {@link spawnDetachedSync}'s) if it has
 * ended: how it ended, or `undefined` while it runs (waitpid with WNOHANG).
 *
 * @throws {SysError} `ECHILD` when `pid` is no child of this process (or was reaped already).
 */
export function reapChildSync(pid: number): ChildExit | undefined {
  const lib = libc('waitpid');
  const status = [0];
  const ret = check('waitpid', lib.waitpid(pid, status, WNOHANG), `wait for ${pid}`);
  if (ret === 0) return undefined;
  const s = status[0]!;
  const termsig = s & 0x7f;
  if (termsig === 0) return { code: (s >> 8) & 0xff, signal: null };
  return { code: null, signal: SIGNAL_NAMES.get(termsig) ?? null };
}

// ---------------------------------------------------------------- helpers

function errnoOf(err: unknown): string | undefined {
  if (typeof err !== 'object' || err === null) return undefined;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return code;
  // napi-rs errors carry the OS message; map the common ones back to errno names.
  const message = messageOf(err);
  if (/No data available|ENODATA/.test(message)) return 'ENODATA';
  if (/Operation not permitted/.test(message)) return 'EPERM';
  if (/Operation not supported/.test(message)) return 'EOPNOTSUPP';
  if (/No such file or directory/.test(message)) return 'ENOENT';
  if (/Permission denied/.test(message)) return 'EACCES';
  return undefined;
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
