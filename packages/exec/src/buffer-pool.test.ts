import { describe, expect, it } from 'vitest';
import { BufferPool } from './buffer-pool.js';

describe('BufferPool', () => {
  it('gives back what it was given, keeps at most `keep`, and ignores views and other sizes', () => {
    const pool = new BufferPool(65536, 2);
    const [a, b, c] = [pool.take(), pool.take(), pool.take()];
    expect(a.length).toBe(65536);
    pool.give(a);
    pool.give(b);
    pool.give(c); // over `keep`: dropped
    const again = [pool.take(), pool.take()];
    expect(again.includes(a) && again.includes(b)).toBe(true);
    const fresh = pool.take();
    expect(fresh !== a && fresh !== b && fresh !== c).toBe(true);
    pool.give(a.subarray(0, 512)); // a view is not the pool's buffer
    pool.give(Buffer.alloc(131072));
    pool.give(a.subarray(1)); // offset view
    expect(pool.take()).not.toBe(a);
  });
});
