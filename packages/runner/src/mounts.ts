/**
 * Removing a run's directories without ever deleting through a mount.
 *
 * A recursive removal walks into whatever is mounted below the directory:
 * through an overlay it would turn into whiteouts in the upper, through a
 * bind mount it would delete the source. So every removal here first reads
 * `/proc/self/mountinfo`, unmounts what lies below (deepest first), and
 * refuses to remove anything while a mount remains.
 */
import { rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Overlay } from '@day11/container';
import { Mountinfo } from '@day11/exec';
import { RunnerCodes, RunnerError, messageOf } from './errors.js';

/**
 * Mount points at `dir` or below it, deepest first, read synchronously (for
 * signal handlers and exit hooks).
 *
 * @example
 * ```ts
 * mountsUnderSync('/var/cache/day11/.day11-tmp-42-ab-run'); // ['/var/cache/.../merged']
 * ```
 */
export function mountsUnderSync(dir: string): string[] {
  return Mountinfo.underSync(dir).map((m) => m.mountPoint);
}

/**
 * Removes `dir` recursively, synchronously, after unmounting whatever is
 * mounted below it; leaves it in place (returns false) if a mount remains.
 * Never throws.
 *
 * @example
 * ```ts
 * if (!removeTreeSync(runDir)) console.error(`${runDir} still has a mount; run recover()`);
 * ```
 */
export function removeTreeSync(dir: string): boolean {
  const mounted = mountsUnderSync(dir);
  for (const target of mounted) Overlay.unmountSync(target);
  // Read again only when there was something to unmount.
  if (mounted.length > 0 && mountsUnderSync(dir).length > 0) return false;
  try {
    rmSync(dir, { recursive: true, force: true });
    return true;
  } catch {
    return false;
  }
}

/**
 * Unmounts (lazily if busy) whatever is mounted at or below `dir`, deepest first.
 *
 * @example
 * ```ts
 * await unmountBelow('/var/cache/day11/.day11-tmp-42-ab-run');
 * ```
 * @throws {RunnerError} `RUNNER_CLEANUP_FAILED` when a mount stays.
 */
export async function unmountBelow(dir: string): Promise<void> {
  try {
    await Overlay.unmountAll(dir, { lazy: true });
  } catch (cause) {
    throw cleanupFailed(dir, `cannot unmount what is mounted below it: ${messageOf(cause)}`, cause);
  }
  const left = await Overlay.listMounts(dir);
  if (left.length > 0) {
    throw cleanupFailed(dir, `${left[0]!.mountPoint} is still mounted`, undefined);
  }
}

/**
 * Removes `dir` recursively after unmounting (lazily if busy) whatever is
 * mounted at or below it.
 *
 * @example
 * ```ts
 * await removeTree('/var/cache/day11/.day11-tmp-42-ab-run');
 * ```
 * @throws {RunnerError} `RUNNER_CLEANUP_FAILED` when a mount stays or the removal fails;
 *   nothing is removed while a mount remains below `dir`.
 */
export async function removeTree(dir: string): Promise<void> {
  await unmountBelow(dir);
  try {
    await rm(dir, { recursive: true, force: true });
  } catch (cause) {
    throw cleanupFailed(dir, messageOf(cause), cause);
  }
}

function cleanupFailed(dir: string, why: string, cause: unknown): RunnerError {
  return new RunnerError(RunnerCodes.CLEANUP_FAILED, `Cannot remove ${dir}: ${why}`, {
    path: dir,
    cause,
    hint: `Nothing below a mount was deleted. Stop what uses it (\`fuser -vm ${dir}\`), then run \`day11 recover --cache ${dirname(dir)}\` (recover() of @day11/runner)`,
  });
}
