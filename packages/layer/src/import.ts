/**
 * Import: bootstrap a base layer, the bottom of every overlay stack, from a
 * rootfs tarball, a directory, or a Docker image.
 *
 * A base is an ordinary committed layer `build-{hash[:12]}/` whose `fs/` is
 * the root filesystem, with `layer.json` (no parents, `base_hash` = its own
 * hash) and a `base.json` sidecar `{ image, source, kind, digest }`. Its hash
 * is `Hash.baseHash({ image })`: the name is the base's identity, and every
 * layer built on it is cached under it. Importing under a name already
 * imported reuses that base (and touches `last_used`) when the tarball or
 * directory still holds what it was imported from (its recorded `digest`),
 * and is refused with `LAYER_BASE_CHANGED` when it does not: changed content
 * needs a new name, or no name at all — then the name is derived from the
 * content. A Docker image is not looked at again once imported.
 *
 * The rootfs is built in a `.day11-tmp-<pid>-...` directory inside `osDir`
 * and committed with one rename: a failed or interrupted import leaves no
 * layer behind, and `Recover.sweep` removes what a killed process left.
 *
 * Importing needs root: owners, device nodes and `trusted.*` xattrs are kept.
 */
import { mkdir, realpath, rm, stat } from 'node:fs/promises';
import * as CacheDir from './cache-dir.js';
import { dirname, join, relative, resolve, isAbsolute } from 'node:path';
import { CommandError, Exec, ExecCodes, TempName } from '@day11/exec';
import * as Commit from './commit.js';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import { baseHash } from './hash.js';
import * as LastUsed from './last-used.js';
import * as LayerDir from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';
import * as Sidecar from './sidecar.js';
import { extractTarball } from './tar-extract.js';
import { fileSha256, treeDigest } from './tree-digest.js';
import type { Base } from './types.js';

/** Name of the sidecar that marks a layer as a base. */
export const SIDECAR = 'base.json';

/** Where a base came from. */
export type BaseKind = 'tarball' | 'directory' | 'docker';

/** Content of the `base.json` sidecar. */
export interface BaseSidecar {
  /** The image name the hash was made from. */
  image: string;
  /** The absolute tarball or directory path, or the Docker image reference. */
  source: string;
  kind: BaseKind;
  /**
   * What the source held when it was imported: `sha256:<hex>` of a tarball's
   * bytes, `tree:<hex>` ({@link treeDigest}) of a directory. Absent for Docker
   * images and for bases imported by older versions, which are not checked.
   */
  digest?: string;
}

interface CommonOptions {
  /** The layer cache directory (created when missing). */
  osDir: string;
  /** Aborting stops the import and removes its temporary directory. */
  signal?: AbortSignal | undefined;
}

/** Options of {@link fromTarball}. */
export interface FromTarballOptions extends CommonOptions {
  /** A plain or gzip tar of a root filesystem (e.g. `docker export` output). */
  tarball: string;
  /**
   * The base's name; default `tarball:` + sha256 hex of the tarball's bytes.
   * A name already imported from other bytes is `LAYER_BASE_CHANGED`.
   */
  image?: string | undefined;
}

/** Options of {@link fromDirectory}. */
export interface FromDirectoryOptions extends CommonOptions {
  /** A root filesystem directory (a symlink to one is resolved; links inside are not followed). */
  dir: string;
  /**
   * The base's name; default `directory:` + {@link treeDigest} of the tree.
   * A name already imported from another tree is `LAYER_BASE_CHANGED`.
   */
  image?: string | undefined;
}

/** Options of {@link fromDocker}. */
export interface FromDockerOptions extends CommonOptions {
  /**
   * A Docker image reference, e.g. `debian:12`; pulled when missing. It is
   * also the base's name: once imported, the engine is not asked again, so a
   * newer `debian:12` needs a reference that changes with it (its digest,
   * `debian@sha256:…`).
   */
  image: string;
  /** The Docker CLI to run (default `docker` from PATH). */
  docker?: string | undefined;
}

const DOCKER_TIMEOUT_MS = 30_000;

/**
 * The base named `image` in `osDir`, or `undefined` when it has not been
 * imported (no `layer.json`). Touches `last_used` when found.
 *
 * @example
 * ```ts
 * const base = await Import.find({ osDir: '/var/cache/day11', image: 'debian:12' });
 * ```
 */
export async function find({
  osDir,
  image,
}: {
  osDir: string;
  image: string;
}): Promise<Base | undefined> {
  assertImage(image);
  const hash = baseHash({ image });
  const dir = LayerDir.path({ osDir: resolve(osDir), hash });
  try {
    await stat(LayerMeta.file(dir));
  } catch (err) {
    if (errnoCode(err) === 'ENOENT') return undefined;
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot check for base ${image} in ${dir}: ${messageOf(err)}`,
      {
        path: dir,
        cause: err,
        hint: 'Check that the cache directory is readable',
      },
    );
  }
  await LastUsed.touch(dir);
  return { hash, dir, image };
}

/**
 * Imports a rootfs tarball (plain or gzip, detected by magic bytes) as a base.
 * Without `image`, the name is `tarball:<sha256 of the file>`, so the same
 * bytes give the same base wherever the file lives. With an `image` already
 * imported, the tarball is hashed and must hold the bytes that base came from.
 *
 * @example
 * ```ts
 * // docker export $(docker create debian:12 true) | gzip > debian.tgz
 * const base = await Import.fromTarball({ osDir: '/var/cache/day11', tarball: 'debian.tgz' });
 * // base.dir + '/fs' is the root filesystem
 * ```
 * @throws {LayerError} `LAYER_IMPORT_UNSAFE_PATH` for an entry that escapes the
 *   root (`..`, absolute names, writes through symlinks); `LAYER_IMPORT_FAILED`
 *   for a missing, truncated or corrupt tarball; `LAYER_BASE_CHANGED` when
 *   `image` names a base imported from other bytes.
 */
export async function fromTarball(opts: FromTarballOptions): Promise<Base> {
  const tarball = resolve(opts.tarball);
  const sha256 = opts.image === undefined ? await tarballSha256(tarball) : undefined;
  const image = opts.image ?? `tarball:${sha256}`;
  return importBase({
    osDir: opts.osDir,
    sidecar: { image, source: tarball, kind: 'tarball' },
    signal: opts.signal,
    // A content-derived name cannot hold other content.
    ...(opts.image !== undefined && {
      digestNow: async () => `sha256:${await tarballSha256(tarball)}`,
    }),
    fill: async (upper) => {
      await mkdir(upper, { mode: 0o700 });
      const result = await extractTarball({ tarball, dest: upper, signal: opts.signal });
      if (result.entries === 0) throw emptyArchive(tarball);
      if (sha256 !== undefined && result.sha256 !== sha256) {
        throw new LayerError(
          LayerCodes.IMPORT_FAILED,
          `Tarball ${tarball} changed while it was imported`,
          {
            path: tarball,
            hint: 'Do not modify the tarball during an import; retry once it is complete',
          },
        );
      }
      return `sha256:${result.sha256}`;
    },
  });
}

/**
 * Imports a directory tree as a base with `cp -dR --preserve=...`: owners,
 * modes, times, xattrs, hardlinks, symlinks and device nodes are kept,
 * symlinks are never followed, and other filesystems mounted inside (e.g. a
 * chroot's `/proc`) are not entered. Without `image`, the name is
 * `directory:<treeDigest>`; the tree must not change during the import.
 *
 * @example
 * ```ts
 * const base = await Import.fromDirectory({ osDir: '/var/cache/day11', dir: '/srv/rootfs', image: 'my-rootfs:1' });
 * ```
 * @throws {LayerError} `LAYER_IMPORT_FAILED` when `dir` is not a directory or the copy fails;
 *   `LAYER_BASE_CHANGED` when `image` names a base imported from another tree.
 */
export async function fromDirectory(opts: FromDirectoryOptions): Promise<Base> {
  const dir = await sourceDirectory(opts.dir);
  assertOutside({ dir, osDir: resolve(opts.osDir) });
  const named = opts.image === undefined ? await treeDigest(dir) : undefined;
  const image = opts.image ?? `directory:${named}`;
  const digestNow = async () => `tree:${named ?? (await treeDigest(dir))}`;
  return importBase({
    osDir: opts.osDir,
    sidecar: { image, source: dir, kind: 'directory' },
    signal: opts.signal,
    ...(opts.image !== undefined && { digestNow }),
    fill: async (upper) => {
      // Digested before the copy: the tree must not change during the import.
      const digest = await digestNow();
      await copyTree({ from: dir, to: upper, signal: opts.signal });
      return digest;
    },
  });
}

/**
 * Imports a Docker image as a base: `docker create`, `docker export` to a
 * temporary file in `osDir`, extraction, and `docker rm` whatever happens.
 * A base already imported under this name is returned without Docker.
 *
 * @example
 * ```ts
 * const base = await Import.fromDocker({ osDir: '/var/cache/day11', image: 'debian:12' });
 * ```
 * @throws {LayerError} `LAYER_NO_DOCKER` when the CLI is missing or no engine
 *   answers `docker info` (use {@link fromTarball} or {@link fromDirectory} then);
 *   `LAYER_IMPORT_FAILED` when the image cannot be created or exported.
 */
export async function fromDocker(opts: FromDockerOptions): Promise<Base> {
  assertImage(opts.image);
  if (opts.image.startsWith('-') || /\s/.test(opts.image)) {
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Invalid Docker image reference ${JSON.stringify(opts.image)}`,
      {
        hint: 'Pass a reference such as debian:12 or registry.example.com/app@sha256:...',
      },
    );
  }
  const existing = await find({ osDir: opts.osDir, image: opts.image });
  if (existing) return existing;
  const docker = opts.docker ?? 'docker';
  await requireDocker({ docker, image: opts.image, signal: opts.signal });
  return importBase({
    osDir: opts.osDir,
    sidecar: { image: opts.image, source: opts.image, kind: 'docker' },
    signal: opts.signal,
    fill: (upper) =>
      exportImage({
        docker,
        image: opts.image,
        upper,
        osDir: resolve(opts.osDir),
        signal: opts.signal,
      }),
  });
}

interface ImportPlan {
  osDir: string;
  sidecar: BaseSidecar;
  signal: AbortSignal | undefined;
  /**
   * Creates the rootfs at `upper` (a path that does not exist yet); resolves
   * with the source's digest, when it has one, for `base.json`.
   */
  fill: (upper: string) => Promise<string | void>;
  /**
   * The source's digest as it is now, to compare with an existing base of
   * this name; left out when the name already says what the content is.
   */
  digestNow?: () => Promise<string>;
}

/** The shared path: reuse an existing base, else fill a temp dir and commit it. */
async function importBase(plan: ImportPlan): Promise<Base> {
  const { image } = plan.sidecar;
  const existing = await find({ osDir: plan.osDir, image });
  if (existing) {
    if (plan.digestNow) await assertUnchanged(existing, plan, plan.digestNow);
    return existing;
  }
  const osDir = resolve(plan.osDir);
  await CacheDir.ensure(osDir);
  const hash = baseHash({ image });
  const upper = TempName.beside(LayerDir.path({ osDir, hash }));
  const started = performance.now();
  try {
    plan.signal?.throwIfAborted();
    const digest = await plan.fill(upper);
    plan.signal?.throwIfAborted();
    const seconds = (performance.now() - started) / 1000;
    const { dir } = await Commit.commit({
      osDir,
      hash,
      upper,
      meta: baseMeta({ hash, seconds }),
      sidecars: { [SIDECAR]: { ...plan.sidecar, ...(digest && { digest }) } },
    });
    return { hash, dir, image };
  } finally {
    // Gone after a commit; after a failure it is removed here. If even that
    // fails, Recover.sweep removes it later (its name carries our pid).
    await rm(upper, { recursive: true, force: true }).catch(() => undefined);
  }
}

/**
 * An existing base of this name must have come from what the source holds
 * now, when its `base.json` says what that was (older bases do not).
 */
async function assertUnchanged(
  existing: Base,
  plan: ImportPlan,
  digestNow: () => Promise<string>,
): Promise<void> {
  const recorded = (await Sidecar.read(existing.dir, SIDECAR))?.['digest'];
  if (typeof recorded !== 'string') return;
  const now = await digestNow();
  if (now === recorded) return;
  const { image, source, kind } = plan.sidecar;
  const osDir = dirname(existing.dir);
  const option = kind === 'tarball' ? '--tarball' : '--dir';
  throw new LayerError(
    LayerCodes.BASE_CHANGED,
    `The base ${image} in ${osDir} was imported from other content: ${source} now holds ${now}, the base ${recorded}. Every layer built on ${image} was built on the old files`,
    {
      path: source,
      hint: `Import the new content under a new name (\`day11 import --cache ${osDir} --image ${image}-2 ${option} ${source}\`), or leave --image out to name the base by its content`,
    },
  );
}

/** `layer.json` of a base; commit measures `disk_usage` from the committed tree. */
function baseMeta(opts: { hash: string; seconds: number }): Commit.CommitMeta {
  return {
    exit_status: 0,
    parent_hashes: [],
    uid: 0,
    gid: 0,
    base_hash: opts.hash,
    timing: [['import', opts.seconds]],
    failed_dep: null,
  };
}

function assertImage(image: string): void {
  if (typeof image !== 'string' || image === '' || image.includes('\0')) {
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Invalid base image name ${JSON.stringify(image)}`,
      {
        hint: 'The image name is any non-empty string without NUL, e.g. debian:12',
      },
    );
  }
}

async function tarballSha256(tarball: string): Promise<string> {
  try {
    return await fileSha256(tarball);
  } catch (cause) {
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot read tarball ${tarball}: ${messageOf(cause)}`,
      {
        path: tarball,
        cause,
        hint: 'Check that the file exists and is readable',
      },
    );
  }
}

function emptyArchive(tarball: string): LayerError {
  return new LayerError(LayerCodes.IMPORT_FAILED, `Tarball ${tarball} contains no entries`, {
    path: tarball,
    hint: 'It is probably the output of a failed export; re-create it (an empty base can be imported with fromDirectory on an empty directory)',
  });
}

/** Resolves `dir` (following a symlink given as the argument itself) and checks it is a directory. */
async function sourceDirectory(dir: string): Promise<string> {
  let real: string;
  try {
    real = await realpath(dir);
    if ((await stat(real)).isDirectory()) return real;
  } catch (cause) {
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot import directory ${dir}: ${messageOf(cause)}`,
      {
        path: dir,
        cause,
        hint: 'Check that the directory exists and is readable',
      },
    );
  }
  throw new LayerError(LayerCodes.IMPORT_FAILED, `Cannot import ${dir}: it is not a directory`, {
    path: dir,
    hint: 'For a tarball use `day11 import --tarball FILE` (Import.fromTarball)',
  });
}

/** Copying a tree that contains the cache would copy the import into itself. */
function assertOutside({ dir, osDir }: { dir: string; osDir: string }): void {
  const rel = relative(dir, osDir);
  if (rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))) {
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot import ${dir}: the cache ${osDir} is inside it`,
      {
        path: dir,
        hint: 'Put osDir outside the directory being imported',
      },
    );
  }
}

async function copyTree(opts: {
  from: string;
  to: string;
  signal: AbortSignal | undefined;
}): Promise<void> {
  // Explicit --preserve (not -a) so a failure to keep an owner or xattr is an error, not silence.
  const args = ['-dR', '--preserve=mode,ownership,timestamps,links,xattr', '--one-file-system'];
  try {
    await Exec.run('cp', [...args, '--no-target-directory', '--', opts.from, opts.to], {
      signal: opts.signal,
    });
  } catch (cause) {
    if (isAborted(cause)) throw cause;
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot copy directory ${opts.from}: ${messageOf(cause)}`,
      {
        path: opts.from,
        cause,
        hint: 'Importing keeps owners, devices and xattrs, which needs root; run as root and check free space in osDir',
      },
    );
  }
}

function isAborted(err: unknown): boolean {
  return err instanceof CommandError && err.code === ExecCodes.ABORTED;
}

async function requireDocker(opts: {
  docker: string;
  image: string;
  signal: AbortSignal | undefined;
}): Promise<void> {
  try {
    await Exec.run(opts.docker, ['info', '--format', '{{.ServerVersion}}'], {
      timeoutMs: DOCKER_TIMEOUT_MS,
      signal: opts.signal,
    });
  } catch (cause) {
    if (isAborted(cause)) throw cause;
    const why =
      cause instanceof CommandError && cause.code === ExecCodes.COMMAND_NOT_FOUND
        ? `the \`${opts.docker}\` CLI is not installed`
        : `\`${opts.docker} info\` failed: ${firstLine(cause)}`;
    throw new LayerError(
      LayerCodes.NO_DOCKER,
      `Cannot import Docker image ${opts.image}: no Docker engine is reachable (${why})`,
      {
        cause,
        hint: `Without an engine, export the image elsewhere (\`docker export $(docker create ${opts.image} true) > rootfs.tar\`) and import that: \`day11 import --image ${opts.image} --tarball rootfs.tar\` (Import.fromTarball), or --dir ROOTFS for an unpacked one`,
      },
    );
  }
}

function firstLine(err: unknown): string {
  const text =
    err instanceof CommandError && err.stderrTail.trim() ? err.stderrTail : messageOf(err);
  return text.trim().split('\n')[0] ?? '';
}

/** create → export to a temp file in osDir → extract; the container and the file are always removed. */
async function exportImage(opts: {
  docker: string;
  image: string;
  upper: string;
  osDir: string;
  signal: AbortSignal | undefined;
}): Promise<void> {
  const created = await docker({
    ...opts,
    args: ['create', opts.image, 'true'],
    what: 'create a container from',
  });
  const id = created.stdout.trim();
  // Exec.run collects output as text, so the tar goes through a file, not a pipe.
  const exported = TempName.beside(join(opts.osDir, 'docker-export.tar'));
  try {
    await docker({
      ...opts,
      args: ['export', '--output', exported, id],
      what: 'export a container of',
    });
    await mkdir(opts.upper, { mode: 0o700 });
    const label = `docker export of ${opts.image}`;
    await extractTarball({ tarball: exported, dest: opts.upper, label, signal: opts.signal });
  } finally {
    await rm(exported, { force: true }).catch(() => undefined);
    // No signal: the container must go even when the import was aborted.
    await Exec.run(opts.docker, ['rm', '--force', id], { timeoutMs: DOCKER_TIMEOUT_MS }).catch(
      () => undefined,
    );
  }
}

/** Runs one docker command; `what` completes "Cannot ... Docker image X" in its error. */
async function docker(opts: {
  docker: string;
  image: string;
  args: string[];
  what: string;
  signal: AbortSignal | undefined;
}) {
  const { what } = opts;
  try {
    return await Exec.run(opts.docker, opts.args, { signal: opts.signal });
  } catch (cause) {
    if (isAborted(cause)) throw cause;
    throw new LayerError(
      LayerCodes.IMPORT_FAILED,
      `Cannot ${what} Docker image ${opts.image}: ${messageOf(cause)}`,
      {
        cause,
        hint: `Check the image reference and that it can be pulled (\`${opts.docker} pull ${opts.image}\`)`,
      },
    );
  }
}
