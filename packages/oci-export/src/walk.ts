/**
 * Walks a layer's `fs/` (an overlay upper) and yields its tar entries in the
 * archive's order, converted to the OCI layer format:
 *
 * - depth first; in each directory the opaque marker `.wh..wh..opq` comes
 *   first, then the whiteouts, then everything else, each group sorted by the
 *   UTF-8 bytes of its archive name (the image-spec asks for whiteouts before
 *   their siblings). A parent always comes before its children.
 * - an overlay whiteout (character device 0/0, or a regular file with
 *   `trusted.overlay.whiteout`) becomes an empty regular file `.wh.<name>`;
 *   an opaque directory (`trusted.overlay.opaque` or `user.overlay.opaque` =
 *   `y`) becomes the directory plus `<dir>/.wh..wh..opq`. Whiteouts may share
 *   one inode: they are never hardlinks.
 * - a second path to an inode already archived becomes a hardlink entry to
 *   the first path in this order.
 * - xattrs: `security.capability` and `user.*` are kept, overlay's own
 *   (`trusted.overlay.*`, `user.overlay.*`) and all others are dropped. A
 *   `redirect` or `metacopy` xattr means the layer is not self-contained and
 *   is refused.
 * - sockets are skipped with a warning; fifos and devices are kept.
 *
 * The walk uses synchronous calls: per entry they cost less than a thread-pool
 * round trip, and the caller yields to the event loop between batches.
 */
import { lstatSync, readdirSync, readlinkSync, type Stats } from 'node:fs';
import { normalize } from 'node:path';
// The light entry points: the walk also runs on worker threads, which should start fast.
import * as Sys from '@day11/exec/sys';
import { messageOf } from '@day11/exec/errors';
import { OciExportCodes as Codes, OciExportError, fsError } from './errors.js';
import type { TarHeader } from './tar-header.js';

/** Prefix of an OCI whiteout file. */
export const WHITEOUT_PREFIX = '.wh.';
/** Name of the OCI opaque-directory marker. */
export const OPAQUE_MARKER = '.wh..wh..opq';

/** One entry of the archive: its header, and for a regular file where to read the content. */
export interface WalkEntry {
  header: TarHeader;
  /** Absolute path of the file whose `header.size` bytes follow the header. */
  source?: string | undefined;
  /**
   * Opens `source` for reading relative to its directory (one name to
   * resolve, not the whole path); valid only until the walk moves on.
   */
  open?: (() => number) | undefined;
}

/** Something the walk skipped, e.g. a socket. */
export interface WalkWarning {
  /** The absolute path on disk. */
  path: string;
  message: string;
}

/** Options of {@link walk}. */
export interface WalkOptions {
  /** Called for each entry skipped (sockets). */
  onWarning?: ((warning: WalkWarning) => void) | undefined;
  /**
   * Stat, list xattrs and open relative to each open directory (default:
   * where the platform has the calls); false resolves every full path, as
   * a platform without them does. The archive is the same either way.
   */
  directoryCalls?: boolean | undefined;
}

const KEPT_XATTR = /^(security\.capability|user\.(?!overlay\.).+)$/;
const OVERLAY_PREFIXES = ['trusted.overlay.', 'user.overlay.'] as const;
const REFUSED = ['redirect', 'metacopy'] as const;

/** What the walk reads of a file's stat: `fs.Stats`, or {@link ModeStat} from statx. */
type StatLike = Pick<
  Stats,
  | 'mode'
  | 'uid'
  | 'gid'
  | 'size'
  | 'nlink'
  | 'ino'
  | 'dev'
  | 'rdev'
  | 'mtimeMs'
  | 'isFile'
  | 'isDirectory'
  | 'isSymbolicLink'
  | 'isCharacterDevice'
  | 'isBlockDevice'
  | 'isSocket'
>;

const S_IFMT = 0o170000;

/** A statx result with `fs.Stats`'s type tests (and none of its Date objects). */
class ModeStat implements StatLike {
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  readonly size: number;
  readonly nlink: number;
  readonly ino: number;
  readonly dev: number;
  readonly rdev: number;
  readonly mtimeMs: number;

  constructor(st: Sys.FileStat) {
    this.mode = st.mode;
    this.uid = st.uid;
    this.gid = st.gid;
    this.size = st.size;
    this.nlink = st.nlink;
    this.ino = st.ino;
    this.dev = st.dev;
    this.rdev = st.rdev;
    this.mtimeMs = st.mtimeMs;
  }

  isFile(): boolean {
    return (this.mode & S_IFMT) === 0o100000;
  }
  isDirectory(): boolean {
    return (this.mode & S_IFMT) === 0o040000;
  }
  isSymbolicLink(): boolean {
    return (this.mode & S_IFMT) === 0o120000;
  }
  isCharacterDevice(): boolean {
    return (this.mode & S_IFMT) === 0o020000;
  }
  isBlockDevice(): boolean {
    return (this.mode & S_IFMT) === 0o060000;
  }
  isSocket(): boolean {
    return (this.mode & S_IFMT) === 0o140000;
  }
}

interface Child {
  /** Name on disk. */
  name: string;
  /** Name in the archive (`.wh.<name>` for a whiteout). */
  tarName: string;
  path: string;
  st: StatLike;
  xattrs: ReadonlyMap<string, Buffer>;
  whiteout: boolean;
}

/** The xattrs of the (many) files that have none. */
const NO_XATTRS: ReadonlyMap<string, Buffer> = new Map();

/**
 * Yields the entries of the tree at `root` in archive order (see the module
 * doc). `root` itself is not an entry: an image's root directory belongs to
 * no layer.
 *
 * @example
 * ```ts
 * for (const { header, source } of walk('/var/cache/day11/build-0123456789ab/fs')) {
 *   console.log(header.kind, header.name, source ?? '');
 * }
 * ```
 * @throws {OciExportError} `OCI_UNSUPPORTED_UPPER` (redirect/metacopy), `OCI_BAD_FILENAME`
 *   (a name that is not UTF-8), `OCI_READ_FAILED`.
 */
export function* walk(given: string, options: WalkOptions = {}): Generator<WalkEntry> {
  const root = normalize(given);
  // The root is no entry, but an opaque root hides every lower file.
  const top = describe(root, undefined);
  if (!top.st.isDirectory()) {
    throw new OciExportError(Codes.LAYER_NOT_FOUND, `Cannot export ${root}: not a directory`, {
      path: root,
      hint: "Pass a layer directory whose fs/ is the layer's files",
    });
  }
  if (isOpaque(top)) yield { header: marker(top, OPAQUE_MARKER) };
  // Directory-relative calls where the platform has them (see Sys.statAtSync); paths otherwise.
  const fd =
    (options.directoryCalls ?? Sys.directoryCallsAvailable())
      ? openDir(undefined, root, root)
      : undefined;
  try {
    yield* walkDir({ dir: root, fd, prefix: '', inodes: new Map(), options });
  } finally {
    if (fd !== undefined) Sys.closeFdSync(fd);
  }
}

interface DirWalk {
  dir: string;
  /** `dir`, open, for directory-relative calls; undefined: calls by path. */
  fd: number | undefined;
  /** Archive path of `dir` with a trailing `/`, or `''` for the root. */
  prefix: string;
  /** `dev:ino` → archive path of the first link seen. */
  inodes: Map<string, string>;
  options: WalkOptions;
}

function* walkDir(w: DirWalk): Generator<WalkEntry> {
  const children = listChildren(w);
  for (const child of children) {
    const name = w.prefix + child.tarName;
    if (child.st.isDirectory()) {
      yield { header: header(child, `${name}/`) };
      if (isOpaque(child)) yield { header: marker(child, `${name}/${OPAQUE_MARKER}`) };
      const fd = w.fd === undefined ? undefined : openDir(w.fd, child.name, child.path);
      try {
        yield* walkDir({ ...w, dir: child.path, fd, prefix: `${name}/` });
      } finally {
        if (fd !== undefined) Sys.closeFdSync(fd);
      }
    } else {
      const entry = fileEntry(w, child, name);
      if (entry) yield entry;
    }
  }
}

function fileEntry(w: DirWalk, child: Child, name: string): WalkEntry | undefined {
  if (child.whiteout) return { header: marker(child, name) };
  if (child.st.isSocket()) {
    w.options.onWarning?.({ path: child.path, message: `skipped socket ${child.path}` });
    return undefined;
  }
  if (child.st.nlink > 1) {
    const key = `${child.st.dev}:${child.st.ino}`;
    const first = w.inodes.get(key);
    if (first !== undefined) {
      return {
        header: {
          ...header(child, name),
          kind: 'hardlink',
          size: 0,
          linkname: first,
          xattrs: undefined,
        },
      };
    }
    w.inodes.set(key, name);
  }
  const h = header(child, name);
  if (child.st.isSymbolicLink()) h.linkname = readLink(child, w.fd);
  if (h.kind !== 'file') return { header: h };
  const { fd } = w;
  const open =
    fd === undefined
      ? undefined
      : () =>
          sysCall('Cannot open', child.path, () => Sys.openFileAtSync(fd, child.name, child.path));
  return { header: h, source: child.path, open };
}

function openDir(dirfd: number | undefined, name: string, path: string): number {
  return sysCall('Cannot open', path, () => Sys.openDirectorySync(dirfd, name, path));
}

/** A system call of the walk, its failure an `OCI_READ_FAILED` naming `path`. */
function sysCall<T>(what: string, path: string, call: () => T): T {
  try {
    return call();
  } catch (cause) {
    throw new OciExportError(Codes.READ_FAILED, `${what} ${path}: ${messageOf(cause)}`, {
      path,
      cause,
      hint: 'Check that the layer is readable',
    });
  }
}

/** Reads, classifies and orders the children of `w.dir` (see the module doc). */
function listChildren(w: DirWalk): Child[] {
  const { dir, fd } = w;
  const children = readNames(dir, fd).map((name) => describe(dir, { name, fd }));
  const group = (c: Child) => (c.whiteout ? 0 : 1);
  // JavaScript compares UTF-16 code units, which agrees with UTF-8 bytes
  // except between a surrogate pair and U+E000–U+FFFF: only a directory
  // holding such a name has its names encoded to compare.
  const byUnits = (a: Child, b: Child) =>
    a.tarName < b.tarName ? -1 : a.tarName > b.tarName ? 1 : 0;
  if (!children.some((c) => HIGH_UNITS.test(c.tarName))) {
    return children.sort((a, b) => group(a) - group(b) || byUnits(a, b));
  }
  const keys = new Map(children.map((c) => [c, Buffer.from(c.tarName)]));
  return children.sort((a, b) => group(a) - group(b) || Buffer.compare(keys.get(a)!, keys.get(b)!));
}

const HIGH_UNITS = /[\uD800-\uFFFF]/;

function readNames(dir: string, fd: number | undefined): string[] {
  let raw: Buffer[];
  try {
    raw =
      fd === undefined ? readdirSync(dir, { encoding: 'buffer' }) : Sys.readDirectorySync(fd, dir);
  } catch (cause) {
    throw fsError(Codes.READ_FAILED, 'Cannot list', dir, cause, 'Check that the layer is readable');
  }
  return raw.map((bytes) => utf8(bytes, dir));
}

function utf8(bytes: Buffer, where: string): string {
  const text = bytes.toString('utf8');
  // Only a name holding U+FFFD may be one that did not decode.
  if (!text.includes('\uFFFD') || Buffer.from(text).equals(bytes)) return text;
  throw new OciExportError(
    Codes.BAD_FILENAME,
    `A name in ${where} is not valid UTF-8: ${JSON.stringify(bytes.toString('latin1'))}`,
    {
      path: where,
      hint: 'OCI layers record names as UTF-8; rename the file in the build and rebuild the layer',
    },
  );
}

/** Stats and classifies `at.name` in `dir`, or `dir` itself without `at`. */
function describe(dir: string, at: { name: string; fd: number | undefined } | undefined): Child {
  const name = at?.name ?? '.';
  const fd = at?.fd;
  // Concatenated: `dir` is already normal, and path.join costs more than the syscall's name lookup.
  const path = at === undefined ? dir : dir.endsWith('/') ? dir + name : `${dir}/${name}`;
  let st: StatLike;
  if (fd !== undefined) {
    st = new ModeStat(sysCall('Cannot stat', path, () => Sys.statAtSync(fd, name, path)));
  } else {
    try {
      st = lstatSync(path);
    } catch (cause) {
      throw fsError(
        Codes.READ_FAILED,
        'Cannot stat',
        path,
        cause,
        'Check that the layer is readable',
      );
    }
  }
  const xattrs = readXattrs(path, st, fd === undefined ? undefined : { fd, name });
  const whiteout =
    (st.isCharacterDevice() && st.rdev === 0) ||
    (st.isFile() &&
      st.size === 0 &&
      (xattrs.has('trusted.overlay.whiteout') || xattrs.has('user.overlay.whiteout')));
  const tarName = whiteout ? WHITEOUT_PREFIX + name : name;
  return { name, tarName, path, st, xattrs, whiteout };
}

/** All xattrs of `path` (listed relative to `at` when given); refuses redirect/metacopy uppers. */
function readXattrs(
  path: string,
  st: StatLike,
  at: { fd: number; name: string } | undefined,
): ReadonlyMap<string, Buffer> {
  // Only regular files, directories and symlinks carry xattrs worth a syscall each.
  if (!(st.isFile() || st.isDirectory() || st.isSymbolicLink())) return NO_XATTRS;
  const names = at ? Sys.listXattrsAtSync(at.fd, at.name, path) : Sys.listXattrsSync(path);
  if (names.length === 0) return NO_XATTRS;
  const out = new Map<string, Buffer>();
  for (const name of names) {
    const overlay = OVERLAY_PREFIXES.find((p) => name.startsWith(p));
    if (overlay && (REFUSED as readonly string[]).includes(name.slice(overlay.length))) {
      throw refused(path, name);
    }
    if (!overlay && !KEPT_XATTR.test(name)) continue;
    const value = Sys.getXattrSync(path, name);
    if (value !== undefined) out.set(name, value);
  }
  return out;
}

function refused(path: string, xattr: string): OciExportError {
  return new OciExportError(
    Codes.UNSUPPORTED_UPPER,
    `Cannot export ${path}: it carries ${xattr}, so its content lives in a lower layer`,
    {
      path,
      hint:
        'The layer was built on an overlay mounted with redirect_dir or metacopy on; ' +
        'rebuild it on a mount with redirect_dir=off,metacopy=off (day11 build mounts do this)',
    },
  );
}

function isOpaque(child: Child): boolean {
  const value =
    child.xattrs.get('trusted.overlay.opaque') ?? child.xattrs.get('user.overlay.opaque');
  return value?.toString('latin1') === 'y';
}

/** The header of an ordinary entry, from its stat. */
function header(child: Child, name: string): TarHeader {
  const st = child.st;
  const h: TarHeader = {
    name,
    kind: kindOf(st),
    mode: st.mode & 0o7777,
    uid: st.uid,
    gid: st.gid,
    size: st.isFile() ? st.size : 0,
    mtime: Math.floor(st.mtimeMs / 1000),
    xattrs: keptXattrs(child.xattrs),
  };
  if (st.isCharacterDevice() || st.isBlockDevice()) {
    h.devmajor = major(st.rdev);
    h.devminor = minor(st.rdev);
  }
  return h;
}

/** A whiteout or opaque marker: an empty regular file, owned by root, mode 0644. */
function marker(child: Child, name: string): TarHeader {
  return {
    name,
    kind: 'file',
    mode: 0o644,
    uid: 0,
    gid: 0,
    size: 0,
    mtime: Math.floor(child.st.mtimeMs / 1000),
  };
}

function keptXattrs(xattrs: ReadonlyMap<string, Buffer>): TarHeader['xattrs'] {
  if (xattrs.size === 0) return undefined;
  const kept = [...xattrs].filter(([name]) => KEPT_XATTR.test(name));
  if (kept.length === 0) return undefined;
  return kept.sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

function kindOf(st: StatLike): TarHeader['kind'] {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  if (st.isCharacterDevice()) return 'char';
  if (st.isBlockDevice()) return 'block';
  return 'fifo';
}

function readLink({ path, name }: Child, fd: number | undefined): string {
  let target: Buffer;
  try {
    target =
      fd === undefined
        ? readlinkSync(path, { encoding: 'buffer' })
        : Sys.readLinkAtSync(fd, name, path);
  } catch (cause) {
    throw fsError(
      Codes.READ_FAILED,
      'Cannot read the symlink',
      path,
      cause,
      'Check that the layer is readable',
    );
  }
  return utf8(target, path);
}

/**
 * glibc's `major()` of a device number (the inverse of `Sys.makedev`).
 *
 * @example
 * ```ts
 * major(lstatSync('/dev/null').rdev); // 1
 * ```
 */
export function major(dev: number): number {
  const lo = dev >>> 0;
  const hi = Math.floor(dev / 2 ** 32);
  return (((lo >>> 8) & 0xfff) | (hi & ~0xfff)) >>> 0;
}

/**
 * glibc's `minor()` of a device number.
 *
 * @example
 * ```ts
 * minor(lstatSync('/dev/null').rdev); // 3
 * ```
 */
export function minor(dev: number): number {
  const lo = dev >>> 0;
  const hi = Math.floor(dev / 2 ** 32);
  return ((lo & 0xff) | (((lo >>> 12) | (hi << 20)) & ~0xff)) >>> 0;
}
