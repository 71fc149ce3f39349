import { describe, expect, it } from 'vitest';
import { LayerCodes } from './errors.js';
import { hashPrefix, isLayerName, name, path } from './layer-dir.js';

const HASH = '0123456789abcdef'.repeat(4);

describe('LayerDir', () => {
  it('names a layer build- plus 12 hex characters', () => {
    expect(name(HASH)).toBe('build-0123456789ab');
    expect(path({ osDir: '/cache', hash: HASH })).toBe('/cache/build-0123456789ab');
  });

  it.each([
    '',
    'xyz',
    HASH.toUpperCase(),
    '0123456789a',
    `${HASH}0`,
    '../../etc',
    `${HASH.slice(0, 20)}/x`,
  ])('refuses the malformed hash %j with a typed error', (bad) => {
    expect(() => name(bad)).toThrow(expect.objectContaining({ code: LayerCodes.BAD_HASH }));
  });

  it('recognises layer directory names', () => {
    expect(isLayerName('build-0123456789ab')).toBe(true);
    expect(hashPrefix('build-0123456789ab')).toBe('0123456789ab');
    for (const other of [
      'build-0123456789a',
      'packages',
      '.day11-tmp-1-build-0123456789ab',
      'build-0123456789abc',
    ])
      expect(isLayerName(other)).toBe(false);
  });
});
