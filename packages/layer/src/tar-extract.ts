/**
 * Safe, faithful extraction of a rootfs tar archive into a directory.
 *
 * Faithful: numeric owners, modes (setuid, sticky), mtimes, symlinks,
 * hardlinks, device nodes, fifos, long names and `SCHILY.xattr.*` PAX
 * records are kept, so `docker export` output round-trips. Entries stream to
 * disk; no file is held in memory.
 *
 * Safe: an archive must not touch anything outside `dest`. Entries with `..`
 * components or absolute names, writes whose parent path goes through a
 * symlink, and hardlinks to missing, outside or through-symlink targets are
 * refused with `LAYER_IMPORT_UNSAFE_PATH`. Leaves are never followed: an
 * existing non-directory is unlinked before an entry replaces it, nodes are
 * created exclusively (`O_EXCL`, mkdir, mknod, symlink), and owner, mode and
 * time calls go through the new file's descriptor or are the `l*` variants.
 *
 * OCI whiteouts (`.wh.*`) have no special meaning in a rootfs archive (an
 * exported container has none): by default they are extracted as ordinary
 * files. {@link WhiteoutMode} reads them as the image-spec means them, for
 * archives that are image layers (a pulled layer, the layers of a base image).
 */
import {
  chmodSync,
  closeSync,
  fchmodSync,
  fchownSync,
  futimesSync,
  createReadStream,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeSync,
  type Stats,
} from 'node:fs';
import { open } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Readable, Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
// Not imported lazily: extractStream must pipe its source before it first
// yields, or an early error of that stream (a garbled gzip) has no listener.
import tar, { type Header } from 'tar-stream';
import { Sys } from '@day11/exec';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import { FileWriter, MAX_FILE_BYTES } from './file-writer.js';
import { PaxXattrTap, XATTR_PREFIX, type Xattrs } from './tar-pax.js';

/** Where an archive came from, for error messages. */
export interface ArchiveSource {
  /** Human description, e.g. the tarball path or `docker export of debian:12`. */
  label: string;
  /** The archive file, when there is one (recorded as the error's `path`). */
  path?: string | undefined;
}

/**
 * What `.wh.*` entries mean (OCI image-spec, "whiteouts"):
 * - `'keep'`: nothing; they are ordinary files, as in a rootfs archive.
 * - `'overlay'`: the archive is one layer turned back into an overlay upper:
 *   `.wh.<name>` becomes an overlay whiteout at `<name>` (a character device
 *   0/0, mode 0, owned by root, with the marker's times) and `.wh..wh..opq`
 *   marks its directory opaque (`trusted.overlay.opaque=y`). The inverse of
 *   what `@day11/oci-export` writes.
 * - `'apply'`: the archive is a layer applied onto what earlier layers left in
 *   `dest`: `.wh.<name>` removes `<name>`, `.wh..wh..opq` removes everything
 *   in its directory that this archive did not write. Times of the directories
 *   touched are kept, so applying the same layers gives the same tree.
 *
 * In both image modes, other `.wh..wh.*` names (aufs bookkeeping) are skipped,
 * and a whiteout whose name is empty, `.` or `..` is refused as unsafe.
 */
export type WhiteoutMode = 'keep' | 'overlay' | 'apply';

/** Options of {@link extractStream}. */
export interface ExtractStreamOptions {
  /** Uncompressed tar bytes. */
  source: Readable;
  /** An existing, empty directory that becomes the archive's root. */
  dest: string;
  /** What the archive is, for error messages. */
  archive: ArchiveSource;
  /** What `.wh.*` entries mean; default `'keep'`. */
  whiteouts?: WhiteoutMode | undefined;
  signal?: AbortSignal | undefined;
}

/** What an extraction did. */
export interface ExtractResult {
  /** Entries extracted (not counting PAX / long-name headers). */
  entries: number;
}

/** Compression of a tarball, from its magic bytes. */
export type Compression = 'gzip' | 'none';

/** tar-stream's header as it really is: `type` is null for unknown type flags, `pax` holds the records. */
type TarHeader = Omit<Header, 'type' | 'pax'> & {
  type: Header['type'] | null;
  pax?: Record<string, string> | null;
};

/** An entry's data: a tar-stream Source (a streamx Readable). */
type EntryBody = AsyncIterable<unknown> & { resume(): unknown };

interface Times {
  atime: number;
  mtime: number;
}

/** Prefix of an OCI whiteout entry. */
const WHITEOUT_PREFIX = '.wh.';
/** The OCI opaque-directory marker. */
const OPAQUE_MARKER = '.wh..wh..opq';
/** The xattr overlayfs reads to treat a directory as opaque. */
const OVERLAY_OPAQUE = 'trusted.overlay.opaque';

/** A whiteout entry as {@link Extractor} applies it. */
interface WhiteoutEntry {
  w: Whiteout;
  marker: string;
  meta: Meta;
  name: string;
}

/** A `.wh.*` entry: a removed file, an opaque directory, or aufs bookkeeping to skip. */
type Whiteout =
  | { kind: 'file'; dir: string; rel: string }
  | { kind: 'opaque'; dir: string }
  | { kind: 'skip'; dir: string };

interface Meta extends Times {
  uid: number;
  gid: number;
  mode: number;
}

const startsWith = (head: Buffer, magic: number[]) =>
  head.subarray(0, magic.length).equals(Buffer.from(magic));

/**
 * Compressions Node cannot stream. bzip2 is matched with its block magic too:
 * `BZh` alone could be the first bytes of a plain tar entry's name.
 */
const UNSUPPORTED: ReadonlyArray<readonly [string, (head: Buffer) => boolean]> = [
  ['zstd', (h) => startsWith(h, [0x28, 0xb5, 0x2f, 0xfd])],
  ['xz', (h) => startsWith(h, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00])],
  ['bzip2', (h) => /^BZh[1-9]1AY&SY/.test(h.toString('latin1', 0, 10))],
];

/**
 * Detects gzip by its magic bytes; any other content is treated as plain tar.
 *
 * @example
 * ```ts
 * if ((await sniffCompression('rootfs.tgz')) === 'gzip') source = source.pipe(createGunzip());
 * ```
 * @throws {LayerError} `LAYER_IMPORT_FAILED` when the file cannot be read, or is
 *   zstd/xz/bzip2-compressed (Node cannot stream those).
 */
export async function sniffCompression(path: string): Promise<Compression> {
  let head: Buffer;
  try {
    const handle = await open(path, 'r');
    try {
      const { buffer, bytesRead } = await handle.read(Buffer.alloc(16), 0, 16, 0);
      head = buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  } catch (cause) {
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot read tarball ${path}: ${messageOf(cause)}`,
      {
        path,
        cause,
        hint: 'Check that the file exists and is readable',
      },
    );
  }
  if (head[0] === 0x1f && head[1] === 0x8b) return 'gzip';
  const other = UNSUPPORTED.find(([, matches]) => matches(head));
  if (other) {
    throw new LayerError(LayerCodes.IMPORT_FAILED, `Tarball ${path} is ${other[0]}-compressed`, {
      path,
      hint: `Only plain and gzip tarballs are read; decompress it first (e.g. \`${other[0]} -d\`) or re-create it with gzip`,
    });
  }
  return 'none';
}

/** A pass-through that hashes the bytes it sees. */
class HashTap extends Transform {
  private readonly hash = createHash('sha256');
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: TransformCallback): void {
    this.hash.update(chunk);
    done(null, chunk);
  }
  /** Hex sha256 of everything that passed (call once, after the stream ended). */
  digest(): string {
    return this.hash.digest('hex');
  }
}

/** Bytes per read of a tarball (Node's default is 64 KiB). */
const READ_CHUNK = 1024 * 1024;
/** Bytes per piece gunzip hands on (its default is 16 KiB): fewer, larger writes into the tar parser. */
const GUNZIP_CHUNK = 256 * 1024;

/**
 * Extracts a plain or gzip tarball into `dest` and returns the sha256 of the
 * tarball's bytes as read (so a caller can check the file did not change).
 *
 * @example
 * ```ts
 * const { entries, sha256 } = await extractTarball({ tarball: 'rootfs.tgz', dest: tmpDir });
 * ```
 * @throws {LayerError} `LAYER_IMPORT_UNSAFE_PATH` for a hostile entry,
 *   `LAYER_IMPORT_FAILED` for an unreadable, truncated or corrupt archive.
 */
export async function extractTarball(opts: {
  tarball: string;
  dest: string;
  /** Names the archive in errors; default `tarball <path>`. */
  label?: string | undefined;
  signal?: AbortSignal | undefined;
}): Promise<ExtractResult & { sha256: string }> {
  const compression = await sniffCompression(opts.tarball);
  const hashTap = new HashTap();
  // 1 MiB reads: each read is a trip through the thread pool, which the extraction waits for.
  const raw = createReadStream(opts.tarball, { highWaterMark: READ_CHUNK });
  const tarBytes =
    compression === 'gzip'
      ? raw.pipe(hashTap).pipe(createGunzip({ chunkSize: GUNZIP_CHUNK }))
      : raw.pipe(hashTap);
  // `.pipe` does not forward errors: surface the file's and the hasher's on the stream we read.
  for (const upstream of [raw, hashTap])
    upstream.on('error', (err: Error) => tarBytes.destroy(err));
  let result: ExtractResult;
  try {
    result = await extractStream({
      source: tarBytes,
      dest: opts.dest,
      archive: { label: opts.label ?? `tarball ${opts.tarball}`, path: opts.tarball },
      signal: opts.signal,
    });
  } finally {
    // `.pipe` does not close the source when its destination is destroyed: close the file here.
    raw.destroy();
  }
  return { ...result, sha256: hashTap.digest() };
}

/**
 * Extracts uncompressed tar bytes from `source` into the existing empty
 * directory `dest`. On failure `dest` holds a partial tree: the caller removes it.
 *
 * @example
 * ```ts
 * await extractStream({
 *   source: createReadStream('rootfs.tar'),
 *   dest: '/var/cache/day11/.day11-tmp-42-ab12cd34-build-0123456789ab',
 *   archive: { label: 'tarball rootfs.tar', path: 'rootfs.tar' },
 * });
 * ```
 * @throws {LayerError} `LAYER_IMPORT_UNSAFE_PATH` or `LAYER_IMPORT_FAILED`.
 */
export async function extractStream(opts: ExtractStreamOptions): Promise<ExtractResult> {
  const tap = new PaxXattrTap();
  const extract = tar.extract();
  // Settles with the stream error (or undefined) so it is never an unhandled rejection.
  const piping = pipeline(opts.source, tap, extract).then(
    () => undefined,
    (err: unknown) => (err instanceof Error ? err : new Error(String(err))),
  );
  const extractor = new Extractor(opts.dest, opts.archive, opts.whiteouts ?? 'keep');
  let entries = 0;
  try {
    for await (const entry of extract) {
      opts.signal?.throwIfAborted();
      await extractor.entry(entry.header as TarHeader, entry, tap.next());
      entries++;
    }
    const streamError = await piping;
    if (streamError !== undefined) throw streamError;
    await extractor.finish();
  } catch (err) {
    opts.source.destroy();
    throw chooseError({ err, streamError: await piping, archive: opts.archive });
  } finally {
    await extractor.close();
  }
  return { entries };
}

/** The error to report: our refusal first, else a stream's own error, else what the entry hit. */
function chooseError({
  err,
  streamError,
  archive,
}: {
  err: unknown;
  streamError: Error | undefined;
  archive: ArchiveSource;
}): unknown {
  if (err instanceof LayerError && err.code === LayerCodes.IMPORT_UNSAFE_PATH) return err;
  if (isAbort(err)) return err;
  const real = streamError ?? (err instanceof LayerError ? undefined : err);
  if (real !== undefined && errnoCode(real) !== 'ERR_STREAM_PREMATURE_CLOSE') {
    return new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot read ${archive.label}: ${messageOf(real)}`,
      {
        path: archive.path,
        cause: real,
        hint: 'The archive is truncated, corrupt or not a tar/tar.gz file; re-create or re-download it (check it with `tar -tvf`)',
      },
    );
  }
  return err;
}

function isAbort(err: unknown): boolean {
  return err instanceof Error && err.name === 'AbortError';
}

/** Files and symlinks extracted on the main thread before a writer thread is worth starting. */
const FILES_BEFORE_THREAD = 64;

/**
 * Applies tar entries to a directory tree, in archive order.
 *
 * Metadata calls are synchronous on purpose: a rootfs has tens of thousands of
 * tiny entries, and a thread-pool hop per lstat/chown/chmod/utimes made
 * extraction several times slower than `tar -x`. Each call blocks for
 * microseconds, and the loop yields to the event loop between stream chunks.
 * Past the first few files of an archive, small files and symlinks go to a
 * {@link FileWriter}'s thread; an entry that depends on one still being
 * written (the same path, a parent, a hardlink's target) waits for them.
 */
class Extractor {
  /** Relative paths verified to be real directories (not symlinks) under dest; '' is dest. */
  private readonly dirs = new Set<string>(['']);
  /** Directory times, applied at the end: creating children changes a directory's mtime. */
  private readonly dirTimes = new Map<string, Times>();
  private rootSeen = false;
  /** In `'apply'` mode: what this archive wrote (an opaque marker keeps these). */
  private readonly written = new Set<string>();
  /** Outside `'apply'` mode: the non-directories made, which a file must not be handed over to replace. */
  private readonly made = new Set<string>();
  private filesSeen = 0;
  private writer: FileWriter | undefined;

  constructor(
    private readonly dest: string,
    private readonly archive: ArchiveSource,
    private readonly whiteouts: WhiteoutMode,
  ) {}

  async entry(header: TarHeader, body: EntryBody, xattrs: Xattrs): Promise<void> {
    const isFile = header.type === 'file' || header.type === 'contiguous-file';
    const rel = this.safePath(header.name, header.name);
    const whiteout = this.whiteouts === 'keep' ? undefined : this.whiteoutOf(rel, header.name);
    if (!isFile || whiteout) body.resume();
    try {
      assertSupported(header, (why) => this.failed(header.name, why));
      const meta = entryMeta(header, (why) => this.failed(header.name, why));
      if (this.writer?.busy && this.dependsOnWriter(rel, header, whiteout)) {
        await this.writer.settle();
      }
      if (this.whiteouts === 'apply' && !whiteout) this.markWritten(rel);
      if (whiteout) this.whiteout({ w: whiteout, marker: rel, meta, name: header.name });
      else if (rel === '') this.root(header, meta);
      else if (isFile) {
        await this.file({ rel, name: header.name, meta, body, size: header.size ?? 0, xattrs });
      } else if (header.type === 'symlink') await this.symlink({ rel, header, meta, xattrs });
      else this.node({ rel, header, meta });
      this.applyXattrs(rel, header, xattrs);
    } catch (err) {
      throw this.entryError(header.name, err);
    }
  }

  /**
   * Whether the entry at `rel` may touch a file still being written: the
   * same path, an ancestor not yet seen to be a directory, a directory it
   * replaces, a hardlink's target, or (for whiteouts) what they remove or replace.
   */
  private dependsOnWriter(rel: string, header: TarHeader, whiteout: Whiteout | undefined): boolean {
    const writer = this.writer!;
    if (whiteout || writer.isPending(rel) || !this.dirs.has(parentOf(rel))) return true;
    // Replacing a directory removes what is in it.
    if (header.type !== 'directory' && this.dirs.has(rel)) return true;
    if (header.type !== 'link') return false;
    const target = this.safePath(header.linkname ?? '', header.name);
    return writer.isPending(target) || !this.dirs.has(parentOf(target));
  }

  /** A regular file: created, written chunk by chunk, then owned, moded and timed through its fd. */
  private async file(opts: {
    rel: string;
    name: string;
    meta: Meta;
    body: EntryBody;
    size: number;
    xattrs: Xattrs;
  }): Promise<void> {
    const { rel, meta } = opts;
    this.ensureParents(rel, opts.name);
    const path = join(this.dest, rel);
    const writer = this.writerFor(rel, opts.size, opts.xattrs);
    if (writer) {
      await this.handOver({ ...opts, writer, path });
      return;
    }
    if (this.whiteouts !== 'apply') this.made.add(rel);
    // 'wx' is O_CREAT|O_EXCL: never writes through a symlink planted at `path`.
    const fd = this.replacing(rel, () => openSync(path, 'wx', 0o600));
    try {
      for await (const chunk of opts.body) {
        const bytes = chunk as Uint8Array;
        for (let at = 0; at < bytes.length;) at += writeSync(fd, bytes, at);
      }
      // After the data (a write clears setuid), and chown before chmod (chown clears it too).
      fchownSync(fd, meta.uid, meta.gid);
      fchmodSync(fd, meta.mode & 0o7777);
      futimesSync(fd, meta.atime, meta.mtime);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * The writer to hand a file (or symlink) over to, when it should be: a
   * small one without xattrs at a path nothing in the archive made before,
   * once the archive has shown enough of them to be worth the threads.
   */
  private writerFor(rel: string, size: number, xattrs: Xattrs): FileWriter | undefined {
    if (this.whiteouts === 'apply') return undefined;
    if (this.writer === undefined) {
      if (++this.filesSeen < FILES_BEFORE_THREAD) return undefined;
      this.writer = new FileWriter((name, cause) =>
        this.failedBy({ name, why: messageOf(cause), cause }),
      );
    }
    if (size > MAX_FILE_BYTES || xattrs.size > 0) return undefined;
    if (this.made.has(rel) || this.dirs.has(rel)) return undefined;
    return this.writer;
  }

  /** Copies a file's bytes into the writer's next batch and hands the file over. */
  private async handOver(opts: {
    writer: FileWriter;
    rel: string;
    path: string;
    name: string;
    meta: Meta;
    body: EntryBody;
    size: number;
  }): Promise<void> {
    const { writer, size } = opts;
    const room = await writer.reserve(size);
    let at = 0;
    for await (const chunk of opts.body) {
      const bytes = chunk as Uint8Array;
      if (at + bytes.length > size) throw this.failed(opts.name, 'it has more data than its size');
      room.set(bytes, at);
      at += bytes.length;
    }
    if (at !== size) throw this.failed(opts.name, 'its data ended early');
    const { uid, gid, mode, atime, mtime } = opts.meta;
    writer.add(
      { rel: opts.rel, path: opts.path, name: opts.name, uid, gid, mode, atime, mtime },
      size,
    );
    this.made.add(opts.rel);
  }

  /** A symlink: handed over like a small file, or made here. */
  private async symlink(opts: {
    rel: string;
    header: TarHeader;
    meta: Meta;
    xattrs: Xattrs;
  }): Promise<void> {
    const { rel, header, meta } = opts;
    const writer = this.writerFor(rel, 0, opts.xattrs);
    if (!writer) return this.node({ rel, header, meta });
    this.ensureParents(rel, header.name);
    await writer.reserve(0);
    const path = join(this.dest, rel);
    const { uid, gid, mode, atime, mtime } = meta;
    const linkname = header.linkname ?? '';
    writer.add({ rel, path, name: header.name, uid, gid, mode, atime, mtime, linkname }, 0);
    this.made.add(rel);
  }

  /** Anything but a regular file or the root. */
  private node({ rel, header, meta }: { rel: string; header: TarHeader; meta: Meta }): void {
    this.ensureParents(rel, header.name);
    const path = join(this.dest, rel);
    if (header.type !== 'directory' && this.whiteouts !== 'apply') this.made.add(rel);
    if (header.type === 'link') {
      this.hardlink(rel, header);
      return;
    }
    if (header.type === 'directory') {
      this.directory(rel);
    } else {
      this.replacing(rel, () => createNode(path, header));
    }
    lchownSync(path, meta.uid, meta.gid);
    // chown clears setuid/setgid, so chmod comes after it; symlinks have no mode of their own.
    if (header.type !== 'symlink') chmodSync(path, meta.mode & 0o7777);
    if (header.type === 'directory') this.dirTimes.set(rel, meta);
    else lutimesSync(path, meta.atime, meta.mtime);
  }

  /** Makes (or keeps) a real directory at `rel`. */
  private directory(rel: string): void {
    const path = join(this.dest, rel);
    try {
      mkdirSync(path, { mode: 0o700 });
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      if (!this.clear(rel, true)) mkdirSync(path, { mode: 0o700 });
    }
    this.dirs.add(rel);
  }

  /**
   * Runs `make`, which creates `rel` exclusively; when something is already
   * there, removes it (never following it) and runs `make` again.
   */
  private replacing<T>(rel: string, make: () => T): T {
    try {
      return make();
    } catch (err) {
      if (errnoOf(err) !== 'EEXIST') throw err;
      this.clear(rel, false);
      return make();
    }
  }

  /** The `./` entry describes dest itself: only a directory may. */
  private root(header: TarHeader, meta: Meta): void {
    if (header.type !== 'directory') {
      throw this.unsafe(header.name, 'it would replace the root directory of the extraction');
    }
    this.rootSeen = true;
    lchownSync(this.dest, meta.uid, meta.gid);
    chmodSync(this.dest, meta.mode & 0o7777);
    this.dirTimes.set('', meta);
  }

  private hardlink(rel: string, header: TarHeader): void {
    const target = this.safePath(header.linkname ?? '', header.name);
    if (target === rel) return; // a link to itself: already there
    if (target === '') throw this.unsafe(header.name, 'it is a hardlink to the root directory');
    this.assertInside(target, header.name);
    const stat = lstatSync(join(this.dest, target), { throwIfNoEntry: false });
    if (!stat) {
      const what = `its hardlink target ${JSON.stringify(header.linkname)}`;
      throw this.failed(header.name, `${what} is not in the archive before it`);
    }
    if (stat.isDirectory()) throw this.failed(header.name, 'it is a hardlink to a directory');
    this.replacing(rel, () => linkSync(join(this.dest, target), join(this.dest, rel)));
  }

  /** Creates missing ancestors of `rel`; refuses any ancestor that is a symlink. */
  private ensureParents(rel: string, name: string): void {
    for (const dir of ancestors(rel)) {
      if (this.dirs.has(dir)) continue;
      const stat = lstatSync(join(this.dest, dir), { throwIfNoEntry: false });
      if (!stat) mkdirSync(join(this.dest, dir), { mode: 0o755 });
      else this.checkAncestor({ stat, dir, name });
      this.dirs.add(dir);
    }
  }

  /** The whiteout an entry at `rel` is, or `undefined` for an ordinary entry. */
  private whiteoutOf(rel: string, name: string): Whiteout | undefined {
    const slash = rel.lastIndexOf('/');
    const base = rel.slice(slash + 1);
    if (!base.startsWith(WHITEOUT_PREFIX)) return undefined;
    const dir = slash < 0 ? '' : rel.slice(0, slash);
    if (base === OPAQUE_MARKER) return { kind: 'opaque', dir };
    if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) return { kind: 'skip', dir };
    const target = base.slice(WHITEOUT_PREFIX.length);
    if (target === '' || target === '.' || target === '..') {
      throw this.unsafe(name, `it is a whiteout of ${JSON.stringify(target)}`);
    }
    return { kind: 'file', dir, rel: dir === '' ? target : `${dir}/${target}` };
  }

  /** Applies whiteout `w`, read from the entry `name` at `marker` (its path under dest). */
  private whiteout({ w, marker, meta, name }: WhiteoutEntry): void {
    if (w.kind === 'skip') return;
    if (this.whiteouts === 'overlay') {
      this.ensureParents(marker, name);
      if (w.kind === 'opaque') {
        Sys.setXattrSync(join(this.dest, w.dir), OVERLAY_OPAQUE, Buffer.from('y'));
        return;
      }
      const path = join(this.dest, w.rel);
      this.made.add(w.rel);
      this.replacing(w.rel, () => Sys.mknod(path, Sys.S_IFCHR, 0, 0));
      lchownSync(path, 0, 0);
      lutimesSync(path, meta.atime, meta.mtime);
      return;
    }
    // 'apply': nothing to remove when the directory is not there.
    const dirStat = this.existingDir(w.dir, name);
    if (!dirStat) return;
    if (w.kind === 'opaque') this.purge(w.dir);
    else this.clear(w.rel, false);
    // Removing entries changed the directory's times: put back what the tree had.
    if (!this.dirTimes.has(w.dir)) {
      lutimesSync(join(this.dest, w.dir), dirStat.atime, dirStat.mtime);
    }
  }

  /** `rel` when it is a directory under dest reached through directories only; else `undefined`. */
  private existingDir(rel: string, name: string): Stats | undefined {
    for (const dir of [...ancestors(rel), ...(rel === '' ? [] : [rel])]) {
      const stat = lstatSync(join(this.dest, dir), { throwIfNoEntry: false });
      if (!stat || !stat.isDirectory()) {
        if (stat?.isSymbolicLink()) this.checkAncestor({ stat, dir, name });
        return undefined;
      }
    }
    return lstatSync(join(this.dest, rel));
  }

  /** Records that this archive wrote `rel`, and so holds its ancestors too. */
  private markWritten(rel: string): void {
    for (
      let at = rel;
      at !== '' && !this.written.has(at);
      at = at.slice(0, Math.max(0, at.lastIndexOf('/')))
    ) {
      this.written.add(at);
    }
  }

  /** Removes what is under `dir` and was not written by this archive; recurses into what was. */
  private purge(dir: string): void {
    const path = join(this.dest, dir);
    for (const child of readdirSync(path)) {
      const rel = dir === '' ? child : `${dir}/${child}`;
      if (!this.written.has(rel)) this.clear(rel, false);
      else if (lstatSync(join(path, child)).isDirectory()) this.purge(rel);
    }
  }

  /** Like {@link ensureParents} but creates nothing: for a hardlink's target. */
  private assertInside(rel: string, name: string): void {
    for (const dir of ancestors(rel)) {
      if (this.dirs.has(dir)) continue;
      const stat = lstatSync(join(this.dest, dir), { throwIfNoEntry: false });
      if (!stat) {
        const why = `its hardlink target's directory ${JSON.stringify(dir)} does not exist`;
        throw this.failed(name, why);
      }
      this.checkAncestor({ stat, dir, name });
    }
  }

  private checkAncestor({ stat, dir, name }: { stat: Stats; dir: string; name: string }): void {
    if (stat.isSymbolicLink()) {
      throw this.unsafe(name, `it would be written through the symlink ${JSON.stringify(dir)}`);
    }
    if (!stat.isDirectory()) {
      throw this.failed(name, `its parent ${JSON.stringify(dir)} is not a directory`);
    }
  }

  /**
   * Makes room for an entry at `rel`. An existing directory stays when the
   * entry is a directory too (returns true); anything else is removed, never followed.
   */
  private clear(rel: string, wantDir: boolean): boolean {
    const path = join(this.dest, rel);
    const stat = lstatSync(path, { throwIfNoEntry: false });
    if (!stat) return false;
    if (stat.isDirectory() && wantDir) return true;
    if (stat.isDirectory()) this.forgetTree(rel);
    rmSync(path, { recursive: true, force: true });
    return false;
  }

  private forgetTree(rel: string): void {
    const prefix = `${rel}/`;
    for (const dir of this.dirs) if (dir === rel || dir.startsWith(prefix)) this.dirs.delete(dir);
    for (const dir of this.dirTimes.keys()) {
      if (dir === rel || dir.startsWith(prefix)) this.dirTimes.delete(dir);
    }
  }

  private applyXattrs(rel: string, header: TarHeader, raw: Xattrs): void {
    const names = Object.keys(header.pax ?? {})
      .filter((k) => k.startsWith(XATTR_PREFIX))
      .map((k) => k.slice(XATTR_PREFIX.length));
    if (names.length !== raw.size || names.some((n) => !raw.has(n))) {
      throw this.failed(header.name, 'its PAX xattr records could not be matched to the entry');
    }
    // On a hardlink this sets its target's xattrs again: they share the inode.
    const path = join(this.dest, rel);
    for (const [name, value] of raw) Sys.setXattrSync(path, name, value);
  }

  /**
   * Waits for the files being written, then sets directory times deepest
   * first, and gives dest a rootfs mode when the archive did not.
   */
  async finish(): Promise<void> {
    await this.writer?.settle();
    if (!this.rootSeen) chmodSync(this.dest, 0o755);
    const byDepth = [...this.dirTimes].sort(([a], [b]) => depth(b) - depth(a));
    for (const [rel, times] of byDepth) {
      lutimesSync(join(this.dest, rel), times.atime, times.mtime);
    }
  }

  /** Stops the writer's threads, if any were started. */
  async close(): Promise<void> {
    await this.writer?.close();
  }

  /** Normalises an entry name to a path relative to dest ('' for dest), or refuses it. */
  private safePath(name: string, entry: string): string {
    if (name.startsWith('/')) {
      throw this.unsafe(entry, `${JSON.stringify(name)} is an absolute path`);
    }
    if (name.includes('\0'))
      throw this.unsafe(entry, `${JSON.stringify(name)} contains a NUL byte`);
    const parts = name.split('/').filter((p) => p !== '' && p !== '.');
    if (parts.includes('..'))
      throw this.unsafe(entry, `${JSON.stringify(name)} has a ".." component`);
    return parts.join('/');
  }

  private unsafe(name: string, why: string): LayerError {
    return new LayerError(
      LayerCodes.IMPORT_UNSAFE_PATH,
      `Refusing entry ${JSON.stringify(name)} of ${this.archive.label}: ${why}`,
      {
        path: this.archive.path,
        hint: 'The archive tries to write outside its root. Re-create it with relative member names (e.g. `tar -C rootfs -cf rootfs.tar .`), and do not import archives you do not trust',
      },
    );
  }

  private failed(name: string, why: string): LayerError {
    return this.failedBy({ name, why, cause: undefined });
  }

  private failedBy({
    name,
    why,
    cause,
  }: {
    name: string;
    why: string;
    cause: unknown;
  }): LayerError {
    return new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot extract entry ${JSON.stringify(name)} of ${this.archive.label}: ${why}`,
      { path: this.archive.path, cause, hint: failureHint(cause) },
    );
  }

  private entryError(name: string, err: unknown): unknown {
    if (err instanceof LayerError || isAbort(err)) return err;
    return this.failedBy({ name, why: messageOf(err), cause: err });
  }
}

/** The symbolic errno of a Node fs error (`code`) or a SysError (`errno`). */
function errnoOf(err: unknown): string | undefined {
  const sysErrno = (err as { errno?: unknown } | undefined)?.errno;
  return typeof sysErrno === 'string' ? sysErrno : errnoCode(err);
}

function failureHint(cause: unknown): string {
  const code = errnoOf(cause);
  if (code === 'EPERM') {
    return 'Importing a base keeps owners, device nodes and xattrs, which needs root; run as root';
  }
  if (code === 'ENOSPC')
    return 'The cache filesystem is full; free space or run garbage collection';
  if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
    return 'The cache filesystem does not support this; put osDir on ext4, xfs or btrfs';
  }
  return 'The archive may be corrupt; check it with `tar -tvf`';
}

function assertSupported(header: TarHeader, failed: (why: string) => LayerError): void {
  const supported = [
    'file',
    'contiguous-file',
    'directory',
    'symlink',
    'link',
    'character-device',
    'block-device',
    'fifo',
  ];
  if (!supported.includes(header.type ?? '')) {
    throw failed(`unsupported entry type ${header.type ?? '(unknown type flag)'}`);
  }
  // GNU sparse files carry a sparse map in their data: writing it as-is would corrupt them.
  if (Object.keys(header.pax ?? {}).some((k) => k.startsWith('GNU.sparse.'))) {
    throw failed('GNU sparse files are not supported; re-create the archive without --sparse');
  }
}

/** Owner, mode and times of an entry; PAX records override the header's fields. */
function entryMeta(header: TarHeader, failed: (why: string) => LayerError): Meta {
  const pax = header.pax ?? {};
  const id = (key: 'uid' | 'gid'): number => {
    const value = pax[key] !== undefined ? Number(pax[key]) : (header[key] ?? 0);
    if (!Number.isInteger(value) || value < 0 || value > 0xfffffffe) {
      throw failed(`its ${key} ${String(pax[key] ?? header[key])} is not a valid id`);
    }
    return value;
  };
  const headerMtime = (header.mtime?.getTime() ?? 0) / 1000;
  const time = (key: 'mtime' | 'atime', fallback: number): number => {
    const value = pax[key] !== undefined ? Number(pax[key]) : fallback;
    if (!Number.isFinite(value)) throw failed(`its ${key} ${String(pax[key])} is not a number`);
    return value;
  };
  const mtime = time('mtime', headerMtime);
  return {
    uid: id('uid'),
    gid: id('gid'),
    mode: header.mode ?? 0o644,
    mtime,
    atime: time('atime', mtime),
  };
}

/** `a/b/c` → `a/b`; `a` → `` (dest). */
function parentOf(rel: string): string {
  const slash = rel.lastIndexOf('/');
  return slash < 0 ? '' : rel.slice(0, slash);
}

/** `a/b/c` → `a`, `a/b`. */
function ancestors(rel: string): string[] {
  const parts = rel.split('/');
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
}

function depth(rel: string): number {
  return rel === '' ? 0 : rel.split('/').length;
}

/** Creates a symlink, device node or fifo. */
function createNode(path: string, header: TarHeader): void {
  const perm = (header.mode ?? 0) & 0o7777;
  switch (header.type) {
    case 'symlink':
      symlinkSync(header.linkname ?? '', path);
      return;
    case 'character-device':
      Sys.mknod(path, Sys.S_IFCHR | perm, header.devmajor ?? 0, header.devminor ?? 0);
      return;
    case 'block-device':
      Sys.mknod(path, Sys.S_IFBLK | perm, header.devmajor ?? 0, header.devminor ?? 0);
      return;
    default: // 'fifo': assertSupported admitted nothing else
      Sys.mknod(path, Sys.S_IFIFO | perm);
  }
}
