import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { baseHash, deriveKey, layerHash, ofStrings } from './hash.js';

describe('Hash.ofStrings', () => {
  it('is sha256 hex', () => {
    expect(ofStrings(['a'])).toMatch(/^[0-9a-f]{64}$/);
  });

  it('does not confuse part boundaries', () => {
    expect(ofStrings(['a', 'bc'])).not.toBe(ofStrings(['ab', 'c']));
    expect(ofStrings(['', 'a'])).not.toBe(ofStrings(['a', '']));
    expect(ofStrings(['a'])).not.toBe(ofStrings(['a', '']));
    expect(ofStrings([])).not.toBe(ofStrings(['']));
  });

  it('is injective on random lists (no collisions between different lists)', () => {
    fc.assert(
      fc.property(fc.array(fc.string()), fc.array(fc.string()), (a, b) => {
        const same = a.length === b.length && a.every((x, i) => x === b[i]);
        expect(ofStrings(a) === ofStrings(b)).toBe(same);
      }),
    );
  });

  it('counts bytes, not UTF-16 units', () => {
    expect(ofStrings(['é', 'x'])).not.toBe(ofStrings(['éx']));
  });
});

describe('Hash.layerHash', () => {
  const base = baseHash({ image: 'debian:12' });
  const a = ofStrings(['a']);
  const b = ofStrings(['b']);

  it('ignores dependency order and duplicates', () => {
    expect(layerHash({ baseHash: base, depHashes: [a, b], pkg: 'p' })).toBe(
      layerHash({ baseHash: base, depHashes: [b, a, a], pkg: 'p' }),
    );
  });

  it('changes with every input', () => {
    const h = layerHash({ baseHash: base, depHashes: [a], pkg: 'p' });
    expect(layerHash({ baseHash: base, depHashes: [a], pkg: 'q' })).not.toBe(h);
    expect(layerHash({ baseHash: base, depHashes: [b], pkg: 'p' })).not.toBe(h);
    expect(layerHash({ baseHash: base, depHashes: [], pkg: 'p' })).not.toBe(h);
    expect(layerHash({ baseHash: baseHash({ image: 'x' }), depHashes: [a], pkg: 'p' })).not.toBe(h);
  });

  it('differs from a base hash and from deriveKey on the same strings', () => {
    expect(baseHash({ image: 'p' })).not.toBe(layerHash({ baseHash: '', depHashes: [], pkg: 'p' }));
    expect(deriveKey(base, 'p')).not.toBe(layerHash({ baseHash: base, depHashes: [], pkg: 'p' }));
  });
});

describe('Hash.deriveKey', () => {
  it('chains deterministically and depends on order', () => {
    const k1 = deriveKey(deriveKey('root', 'op1'), 'op2');
    expect(deriveKey(deriveKey('root', 'op1'), 'op2')).toBe(k1);
    expect(deriveKey(deriveKey('root', 'op2'), 'op1')).not.toBe(k1);
  });
});
