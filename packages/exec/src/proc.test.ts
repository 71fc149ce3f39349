import { describe, expect, it } from 'vitest';
import { isAlive, ownerGone, parse, self, startedAt } from './proc.js';

/** Above the kernel's pid_max (4194304): never a running process. */
const DEAD_PID = 4_999_999;

describe('Proc', () => {
  it('knows this process, with its start time from /proc', async () => {
    const me = await self();
    expect(me.pid).toBe(process.pid);
    expect(me.start).toMatch(/^\d+$/);
    expect(await isAlive(me)).toBe(true);
    const started = await startedAt(process.pid);
    expect(started).toBeGreaterThan(Date.now() - process.uptime() * 1000 - 5000);
    expect(started).toBeLessThanOrEqual(Date.now());
  });

  it('treats a reused pid (other start time), a missing pid and a bad pid as dead', async () => {
    const me = await self();
    expect(await isAlive({ pid: me.pid, start: `${me.start}1` })).toBe(false);
    expect(await isAlive({ pid: DEAD_PID, start: undefined })).toBe(false);
    expect(await isAlive({ pid: 0, start: undefined })).toBe(false);
    expect(await isAlive({ pid: -1, start: undefined })).toBe(false);
    // pid 1 runs, and without a recorded start time a live pid is enough.
    expect(await isAlive({ pid: 1, start: undefined })).toBe(true);
  });

  it('parses records and refuses malformed ones', () => {
    expect(parse({ pid: 12, start: '34' })).toEqual({ pid: 12, start: '34' });
    expect(parse({ pid: 12 })).toEqual({ pid: 12, start: undefined });
    expect(parse({ pid: '12' })).toBeUndefined();
    expect(parse({ pid: 1.5 })).toBeUndefined();
    expect(parse(null)).toBeUndefined();
  });
});

describe('Proc.ownerGone', () => {
  it('keeps what this process changed since it started, and gives up a pid that cannot run', async () => {
    expect(await ownerGone(process.pid, Date.now())).toBe(false);
    expect(await ownerGone(DEAD_PID, Date.now())).toBe(true);
    expect(await ownerGone(0, Date.now())).toBe(true);
  });

  it('treats a live pid that started long after the entry changed as reused', async () => {
    // pid 1 started at boot; an entry last changed years before cannot be its.
    const yearsAgo = Date.now() - 10 * 365 * 86_400_000;
    expect(await ownerGone(1, yearsAgo)).toBe(true);
    expect(await ownerGone(1, Date.now())).toBe(false);
    // The same holds for this process: an entry older than it is a previous owner's.
    expect(await ownerGone(process.pid, yearsAgo)).toBe(true);
  });
});
