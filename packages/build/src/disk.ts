/**
 * Whether a step that failed ran out of disk space: then its failure is the
 * machine's, not the step's verdict, and is not recorded (the next build,
 * after space is freed, runs it again).
 *
 * The kernel keeps no record of a failed write, and tools that hit ENOSPC
 * often delete their partial output before exiting, so by the time the step
 * has ended the filesystem may have room again. Three signs are asked, most
 * certain first: the filesystem was seen full (now, or by the
 * {@link FreeSpaceWatch} that sampled it while the step ran); the log says
 * ENOSPC; the filesystem was nearly full while the step ran and the log says
 * a write failed. The last is a judgement: a sample can miss a disk that
 * fills and empties within milliseconds, and some tools name no errno
 * (busybox says only "I/O error"). A step that fails saying so with less
 * than {@link TIGHT_BELOW_BYTES} free may well have failed for space:
 * leaving it unrecorded costs one rerun, while recording a failure the disk
 * caused would keep it until the user clears it.
 */
import { statfsSync, type StatsFs } from 'node:fs';
import { open, statfs } from 'node:fs/promises';

/** Below this many free bytes (or with no free inode), the filesystem is full. */
const FULL_BELOW_BYTES = 2 ** 20;
/** Below this many free bytes (or inodes), a failing step may have failed for space. */
export const TIGHT_BELOW_BYTES = 64 * 2 ** 20;
const TIGHT_BELOW_INODES = 1024;
/** strerror(ENOSPC) and strerror(EDQUOT), as C libraries, Python, Node and Go print them. */
const NO_SPACE = /no space left on device|disk quota exceeded|ENOSPC|EDQUOT/i;
/** What tools print when a write fails without naming ENOSPC (busybox: "standard output: I/O error"). */
const WRITE_FAILED = /I\/O error|write error|short write|cannot write|can't write|failed to write/i;
/** How much of the end of a log is read: the error is among the last things a failing step says. */
const TAIL_BYTES = 64 * 1024;
/** The write rate the watch assumes when it decides how soon the free space could be gone. */
const FAST_WRITE_BYTES_PER_MS = 2 * 2 ** 20;

interface Space {
  bytes: number;
  inodes: number;
}

/**
 * Why the step whose output is in `logFile` failed for lack of space in
 * `dir`'s filesystem, or `undefined` when nothing says it did.
 *
 * @example
 * ```ts
 * const why = await outOfSpace({ dir: osDir, logFile });
 * if (why) reportUnrecorded(why);
 * ```
 */
export async function outOfSpace(o: {
  dir: string;
  logFile: string;
  /** What a {@link FreeSpaceWatch} saw while the step ran. */
  watch?: FreeSpaceWatch | undefined;
}): Promise<string | undefined> {
  const now = await freeSpace(o.dir);
  const full = (now && fullness(now)) ?? o.watch?.full;
  if (full !== undefined) {
    return `the filesystem of ${o.dir} is full (${full}): no space left on device`;
  }
  const lines = (await tail(o.logFile)).split('\n');
  const line = lines.findLast((l) => NO_SPACE.test(l));
  if (line !== undefined) return `it ran out of disk space (its output says: ${quote(line)})`;
  const lowest = lower(now, o.watch?.lowest);
  const tight = lowest && (lowest.bytes < TIGHT_BELOW_BYTES || lowest.inodes < TIGHT_BELOW_INODES);
  const writeFailed = tight ? lines.findLast((l) => WRITE_FAILED.test(l)) : undefined;
  if (writeFailed === undefined) return undefined;
  return (
    `the filesystem of ${o.dir} was nearly full while it ran ` +
    `(${freeText(lowest!)} at the lowest) and its output says a write failed ` +
    `(${quote(writeFailed)}): it may have run out of space; free some and build again`
  );
}

/**
 * Samples the free space of `dir`'s filesystem from now until
 * {@link FreeSpaceWatch.stop}: `full` says whether (and how) it was full at
 * some moment, `lowest` is the least free space seen. It samples sooner the
 * less room is left (every `maxIntervalMs` at most, every 2 ms at least), so
 * a step writing fast into a nearly full disk is seen doing it.
 *
 * @example
 * ```ts
 * const watch = new FreeSpaceWatch(osDir);
 * try { await runStep(); } finally { watch.stop(); }
 * if (watch.full) console.log('the disk filled up while it ran');
 * ```
 */
export class FreeSpaceWatch {
  /** How the filesystem was full when last seen full, or `undefined`. */
  full: string | undefined;
  /** The least free space seen (bytes and inodes, each its own minimum). */
  lowest: Space | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly dir: string,
    private readonly maxIntervalMs = 100,
  ) {
    // The first sample synchronously: one statfs of microseconds, where a
    // thread-pool trip costs more, per step; the later ones run off the main
    // thread while the step does.
    this.record(freeSpaceSync(this.dir));
  }

  /** How long until the next sample, when `free` bytes were free at the last. */
  static intervalFor(free: number, maxIntervalMs: number): number {
    return Math.max(2, Math.min(maxIntervalMs, Math.floor(free / FAST_WRITE_BYTES_PER_MS / 2)));
  }

  private sample(): void {
    void freeSpace(this.dir).then((space) => this.record(space));
  }

  /** Keeps what `space` says and schedules the next sample. */
  private record(space: Space | undefined): void {
    if (space) {
      this.full = fullness(space) ?? this.full;
      this.lowest = lower(space, this.lowest);
    }
    if (this.stopped) return;
    const free = space?.bytes ?? Number.MAX_SAFE_INTEGER;
    this.timer = setTimeout(
      () => this.sample(),
      FreeSpaceWatch.intervalFor(free, this.maxIntervalMs),
    );
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}

async function freeSpace(dir: string): Promise<Space | undefined> {
  return spaceOf(await statfs(dir).catch(() => undefined));
}

function freeSpaceSync(dir: string): Space | undefined {
  let fs: StatsFs | undefined;
  try {
    fs = statfsSync(dir);
  } catch {
    fs = undefined;
  }
  return spaceOf(fs);
}

function spaceOf(fs: StatsFs | undefined): Space | undefined {
  // Btrfs, and tmpfs without an inode limit, report 0 inodes of 0: no limit, not none free.
  return fs && { bytes: fs.bfree * fs.bsize, inodes: fs.files > 0 ? fs.ffree : Infinity };
}

/** `undefined`, or what says the filesystem is full (`no free inode`, `N bytes free`). */
function fullness(space: Space): string | undefined {
  if (space.inodes === 0) return 'no free inode';
  return space.bytes < FULL_BELOW_BYTES ? `${space.bytes} bytes free` : undefined;
}

function lower(a: Space | undefined, b: Space | undefined): Space | undefined {
  if (!a || !b) return a ?? b;
  return { bytes: Math.min(a.bytes, b.bytes), inodes: Math.min(a.inodes, b.inodes) };
}

function quote(line: string): string {
  return line.trim().slice(0, 200);
}

function freeText(space: Space): string {
  const bytes = `${(space.bytes / 2 ** 20).toFixed(1)} MiB free`;
  return Number.isFinite(space.inodes) ? `${bytes}, ${space.inodes} inodes free` : bytes;
}

async function tail(file: string): Promise<string> {
  let handle;
  try {
    handle = await open(file, 'r');
  } catch {
    return '';
  }
  try {
    const { size } = await handle.stat();
    const length = Math.min(size, TAIL_BYTES);
    const buf = Buffer.alloc(length);
    await handle.read(buf, 0, length, size - length);
    return buf.toString('utf8');
  } finally {
    await handle.close();
  }
}
