import { createHash } from 'node:crypto';
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

  // Hashes name layers on disk and in registries: they must never change.
  it('keeps its encoding: length-prefixed UTF-8 parts after a header', () => {
    expect(ofStrings(['a', 'bc'])).toBe(
      '82ba59d3a994388c23a16bd9676942a47205b92e6b91577e4708309d0d5c2f81',
    );
  });

  it('equals a Hash object fed part by part, for any UTF-16 (lone surrogates too)', () => {
    const unit = fc.integer({ min: 0, max: 0xffff }).map((c) => String.fromCharCode(c));
    fc.assert(
      fc.property(fc.array(fc.string({ unit })), (parts) => {
        const h = createHash('sha256').update(`day11.v1:${parts.length}\n`);
        for (const p of parts) h.update(`${Buffer.byteLength(p, 'utf8')}:`).update(p, 'utf8');
        expect(ofStrings(parts)).toBe(h.digest('hex'));
      }),
    );
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
