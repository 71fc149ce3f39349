/**
 * Whether a step that failed ran out of disk space: then its failure is the
 * machine's, not the step's verdict, and is not recorded (the next build,
 * after space is freed, runs it again). Tools that hit ENOSPC say so in
 * their output, and often delete their partial output before exiting, so by
 * the time the step has ended the filesystem may have room again: both the
 * log and the filesystem are asked.
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
export async function outOfSpace(o: { dir: string; logFile: string }): Promise<string | undefined> {
  const fs = await statfs(o.dir).catch(() => undefined);
  if (fs !== undefined && (fs.bfree * fs.bsize < FULL_BELOW_BYTES || fs.ffree === 0)) {
    const free = fs.ffree === 0 ? 'no free inode' : `${fs.bfree * fs.bsize} bytes free`;
    return `the filesystem of ${o.dir} is full (${free}): no space left on device`;
  }
  const line = (await tail(o.logFile)).split('\n').findLast((l) => NO_SPACE.test(l));
  return line === undefined
    ? undefined
    : `it ran out of disk space (its output says: ${line.trim().slice(0, 200)})`;
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
