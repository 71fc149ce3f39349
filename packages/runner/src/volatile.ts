/**
 * A run's overlay is mounted `volatile` (Linux >= 5.10): its unmount then
 * skips the `syncfs` of the upper's filesystem that overlayfs otherwise does
 * on the caller's thread — a write-back of every dirty page of that whole
 * filesystem and a journal commit (~7 ms here with almost nothing dirty,
 * far more while other builds write), on the critical path of every step.
 *
 * Why it is safe: the sync bought durability against power loss that day11
 * never promises for a build's own files. The upper goes to `Commit.commit`,
 * which fsyncs what it writes (`layer.json`, the renames) but not the build's
 * output ("a caller that must survive power loss syncs them first"); a killed
 * process loses nothing, as the page cache outlives it. The same holds for
 * the container's own fsync calls, which a volatile overlay skips too (as
 * `OciSpec`'s `fastSync` does). What volatile leaves behind is a mark in the
 * work directory (`work/work/incompat/volatile/dirty`) that makes the kernel refuse
 * to mount that work directory again, so that an upper that lived through a
 * crash is not reused: a crashed run's directory is never reused (recovery
 * removes it), and after a clean unmount {@link clearVolatileMark} removes
 * the mark before the runner reuses the directory for its next run.
 */
import { rmdirSync, unlinkSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';

/** The overlayfs options of a run's mount: `volatile` where the kernel has it. */
export const RUN_MOUNT_OPTIONS: Readonly<Record<string, boolean>> = kernelAtLeast(release(), 5, 10)
  ? { volatile: true }
  : {};

/** True when kernel release string `rel` (e.g. `6.1.0-18-amd64`) is at least `major.minor`. */
export function kernelAtLeast(rel: string, major: number, minor: number): boolean {
  const [a, b] = rel.split(/[.-]/).map(Number);
  return a! > major || (a === major && b! >= minor);
}

/**
 * Removes the volatile mark from work directory `work` of an overlay just
 * unmounted cleanly, so the directory can be mounted again; true when it is
 * gone (or was never there). Never throws.
 */
export function clearVolatileMark(work: string): boolean {
  const incompat = join(work, 'work', 'incompat');
  const volatile = join(incompat, 'volatile');
  const steps = [
    () => unlinkSync(join(volatile, 'dirty')),
    () => rmdirSync(volatile),
    () => rmdirSync(incompat),
  ];
  for (const step of steps) {
    try {
      step();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return false;
    }
  }
  return true;
}
