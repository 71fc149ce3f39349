import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { get, touch, touchSync, touchSyncUnlessRecent } from './last-used.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-lru-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('LastUsed', () => {
  it('is undefined until touched, then the touch time', async () => {
    expect(await get(dir)).toBeUndefined();
    await touch(dir, new Date(1_700_000_000_000));
    expect(await get(dir)).toBe(1_700_000_000_000);
    await touch(dir);
    expect(await get(dir)).toBeGreaterThan(Date.now() - 10_000);
    touchSync(dir, new Date(1_600_000_000_000));
    expect(await get(dir)).toBe(1_600_000_000_000);
  });

  it('touchSyncUnlessRecent marks a layer not marked within the interval, and leaves a fresh mark', async () => {
    touchSyncUnlessRecent(dir, 1000); // no mark yet: made
    const first = await get(dir);
    expect(first).toBeGreaterThan(Date.now() - 5000);
    const fresh = new Date(Math.floor(Date.now() / 1000) * 1000 - 1000); // whole seconds: exact
    await touch(dir, fresh);
    touchSyncUnlessRecent(dir, 60_000);
    expect(await get(dir)).toBe(fresh.getTime()); // marked a second or two ago: left alone
    touchSyncUnlessRecent(dir, 100);
    expect(await get(dir)).toBeGreaterThan(fresh.getTime());
    touchSyncUnlessRecent(join(dir, 'missing'), 1000); // never throws
  });

  it('never throws, even for a missing directory', async () => {
    await expect(touch(join(dir, 'gone', 'deeper'))).resolves.toBeUndefined();
    expect(() => touchSync(join(dir, 'gone'))).not.toThrow();
  });
});
