/**
 * The symlink registry: `packages/{id}/build-{hash}` → the layer directory.
 * The id is opaque ("name.version" for opam callers, anything for others);
 * it lets a caller find every layer built for one id without reading them all.
 */
import { lstatSync, mkdirSync, readlinkSync, symlinkSync } from 'node:fs';
import { mkdir, rename, rm, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { errnoCode, LayerCodes, LayerError, messageOf } from './errors.js';
import { isLayerName } from './layer-dir.js';
import { TempName } from '@day11/exec';

/**
 * Whether `id` can name one directory of the registry: not empty, no `/`, no
 * NUL, not `.` or `..`, and not a temporary name (`.day11-tmp-…`, which
 * recovery removes).
 */
export function isId(id: string): boolean {
  return (
    id !== '' &&
    id !== '.' &&
    id !== '..' &&
    !id.includes('/') &&
    !id.includes('\0') &&
    !TempName.is(id)
  );
}

/** Throws unless {@link isId}. */
export function assertId(id: string): void {
  if (!isId(id)) {
    throw new LayerError(LayerCodes.BAD_ID, `Invalid registry id ${JSON.stringify(id)}`, {
      hint: `An id names one directory: it must be non-empty, not "." or "..", contain no "/" or NUL, and not start with "${TempName.PREFIX}"`,
    });
  }
}

/**
 * Makes `{packagesDir}/{id}/{layerName}` a symlink to the layer directory
 * `{packagesDir}/../{layerName}` (relative, so the cache can be moved),
 * replacing any other existing link atomically; a link that is already
 * right costs an `lstat` and a `readlink`, a new one a `symlink`.
 *
 * `likelyNew` (a layer this process just made): no look first, the link and
 * its id's directory are made at once (`mkdir -p` and `symlink`). A look for
 * a name that is not there waits on the directory's lock while another step
 * adds an id to `packages/` (~60 µs per step of a cold build, measured); the
 * result is the same either way.
 *
 * @example
 * ```ts
 * await LayerSymlinks.ensure({ packagesDir: `${osDir}/packages`, id: 'hello.1.0', layerName: 'build-0123456789ab' });
 * ```
 */
export async function ensure({
  packagesDir,
  id,
  layerName,
  likelyNew = false,
}: {
  packagesDir: string;
  id: string;
  layerName: string;
  /** The link is likely not there yet: make it without looking first. */
  likelyNew?: boolean;
}): Promise<void> {
  assertId(id);
  if (!isLayerName(layerName)) {
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Invalid layer name ${JSON.stringify(layerName)}`,
      {
        hint: 'Pass LayerDir.name(hash), e.g. "build-0123456789ab"',
      },
    );
  }
  const idDir = join(packagesDir, id);
  const link = join(idDir, layerName);
  // relative(idDir, join(packagesDir, '..', layerName)): an id is one path component.
  const target = `../../${layerName}`;
  // Synchronous: the link is usually right already (a cached step), and an
  // lstat and a readlink cost less than a thread-pool round trip.
  if (!likelyNew && lstatSync(link, { throwIfNoEntry: false }) !== undefined) {
    if (currentTarget(link) === target) return;
  } else {
    try {
      // A new link: a symlink appears whole, so it needs no temporary name.
      if (create(idDir, link, target, likelyNew)) return;
    } catch (cause) {
      throw cannotRegister(link, cause);
    }
    if (currentTarget(link) === target) return; // made meanwhile by another process
  }
  // Another link there: replaced atomically. The temporary link is made in
  // `packages/` itself, not in the id's directory, so that recovery finds a
  // killed process's by reading one directory.
  const temp = TempName.inside(packagesDir, layerName);
  try {
    await symlink(target, temp);
    // A GC removing the id's last dangling link removes its directory too.
    await rename(temp, link).catch(async (err: unknown) => {
      if (errnoCode(err) !== 'ENOENT') throw err;
      await mkdir(idDir, { recursive: true });
      await rename(temp, link);
    });
  } catch (cause) {
    await rm(temp, { force: true });
    throw cannotRegister(link, cause);
  }
}

/**
 * Makes symlink `link` → `target`, and the id's directory first when it is
 * missing (a new id, the usual case of a build: one layer per package), or
 * with `makeDir` without looking; false when `link` exists. Synchronously:
 * two short system calls cost less than thread-pool round trips.
 */
function create(idDir: string, link: string, target: string, makeDir: boolean): boolean {
  for (let attempt = 0; ; attempt++) {
    if (attempt > 0 || makeDir || lstatSync(idDir, { throwIfNoEntry: false }) === undefined)
      mkdirSync(idDir, { recursive: true });
    try {
      symlinkSync(target, link);
      return true;
    } catch (err) {
      const code = errnoCode(err);
      if (code === 'EEXIST') return false;
      // A GC removing the id's last dangling link removes its directory too.
      if (code !== 'ENOENT' || attempt > 0) throw err;
    }
  }
}

function cannotRegister(link: string, cause: unknown): LayerError {
  return new LayerError(LayerCodes.WRITE_FAILED, `Cannot register ${link}: ${messageOf(cause)}`, {
    path: link,
    cause,
    hint: 'Check that the packages directory is writable',
  });
}

function currentTarget(link: string): string | undefined {
  try {
    return readlinkSync(link);
  } catch {
    return undefined;
  }
}
