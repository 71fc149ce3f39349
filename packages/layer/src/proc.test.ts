import { describe, expect, it } from 'vitest';
import { DEAD_PID } from './fixtures/cache.js';
import { isAlive, parse, self, startedAt } from './proc.js';

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
