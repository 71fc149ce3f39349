import { describe, expect, it } from 'vitest';
import { freeNow } from './free.js';

describe('freeNow', () => {
  it('frees the memory there and then, and detaches the buffers', () => {
    const buffers = Array.from({ length: 8 }, () => Buffer.allocUnsafe(1024 * 1024).fill(1));
    const before = process.memoryUsage().arrayBuffers;
    freeNow(buffers.map((b) => b.buffer));
    expect(before - process.memoryUsage().arrayBuffers).toBeGreaterThanOrEqual(8 * 1024 * 1024);
    for (const b of buffers) expect(b.length).toBe(0);
  });

  it('skips buffers listed twice or already detached', () => {
    const b = Buffer.allocUnsafe(64 * 1024);
    freeNow([b.buffer, b.buffer]);
    expect(() => freeNow([b.buffer])).not.toThrow();
    expect(b.buffer.byteLength).toBe(0);
  });
});
