import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { get, touch, touchSync } from './last-used.js';

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

  it('never throws, even for a missing directory', async () => {
    await expect(touch(join(dir, 'gone', 'deeper'))).resolves.toBeUndefined();
    expect(() => touchSync(join(dir, 'gone'))).not.toThrow();
  });
});
