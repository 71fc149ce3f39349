import { describe, expect, it } from 'vitest';
import { randomHex } from './random.js';

describe('randomHex', () => {
  it('gives 2 × bytes hex characters, different every time, across pool refills', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 3000; i++) {
      const hex = randomHex(6);
      expect(hex).toMatch(/^[0-9a-f]{12}$/);
      seen.add(hex);
    }
    expect(seen.size).toBe(3000); // 4 KiB pool: refilled several times on the way
  });

  it('refuses sizes it cannot give', () => {
    for (const bad of [0, -1, 1.5, 5000, Number.NaN]) {
      expect(() => randomHex(bad)).toThrow(RangeError);
    }
  });
});
