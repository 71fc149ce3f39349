/**
 * Whether a step that failed ran out of disk space: then its failure is the
 * machine's, not the step's verdict, and is not recorded (the next build,
 * after space is freed, runs it again). Tools that hit ENOSPC say so in
 * their output (or only "I/O error", as busybox does), and often delete their
 * partial output before exiting, so by the time the step has ended the
 * filesystem may have room again: the log is asked, and the filesystem is
 * watched while the step runs ({@link FreeSpaceWatch}).
 */
import { open, statfs } from 'node:fs/promises';

/** Below this many free bytes (or with no free inode), the cache's filesystem is full. */
const FULL_BELOW_BYTES = 2 ** 20;
/** strerror(ENOSPC) and strerror(EDQUOT), as C libraries, Python, Node and Go print them. */
const NO_SPACE = /no space left on device|disk quota exceeded|ENOSPC|EDQUOT/i;
/** How much of the end of a log is read: the error is among the last things a failing step says. */
const TAIL_BYTES = 64 * 1024;

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
  const full = fullness(await statfs(o.dir).catch(() => undefined)) ?? o.watch?.full;
  if (full !== undefined) {
    return `the filesystem of ${o.dir} is full (${full}): no space left on device`;
  }
  const line = (await tail(o.logFile)).split('\n').findLast((l) => NO_SPACE.test(l));
  return line === undefined
    ? undefined
    : `it ran out of disk space (its output says: ${line.trim().slice(0, 200)})`;
}

/** `undefined`, or what says the filesystem is full (`no free inode`, `N bytes free`). */
function fullness(
  fs: { bfree: number; bsize: number; ffree: number } | undefined,
): string | undefined {
  if (fs === undefined) return undefined;
  if (fs.ffree === 0) return 'no free inode';
  return fs.bfree * fs.bsize < FULL_BELOW_BYTES ? `${fs.bfree * fs.bsize} bytes free` : undefined;
}

/**
 * Samples the free space of `dir`'s filesystem every `intervalMs` while a
 * step runs: `full` says whether (and how) it was full at some moment. One
 * `statfs` per interval; {@link FreeSpaceWatch.stop} when the step ends.
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
  private readonly timer: NodeJS.Timeout;
  private sampling = false;

  constructor(
    private readonly dir: string,
    intervalMs = 100,
  ) {
    this.timer = setInterval(() => this.sample(), intervalMs);
    this.timer.unref();
  }

  private sample(): void {
    if (this.sampling) return;
    this.sampling = true;
    statfs(this.dir)
      .then((fs) => {
        this.full = fullness(fs) ?? this.full;
      })
      .catch(() => undefined)
      .finally(() => {
        this.sampling = false;
      });
  }

  stop(): void {
    clearInterval(this.timer);
  }
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
