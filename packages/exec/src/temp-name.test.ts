import { basename, dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { PATTERN, PREFIX, beside, inside, is, make, ownerPid } from './temp-name.js';

describe('TempName', () => {
  it('makes names with our pid and a random tag, shared on request', () => {
    expect(make('run')).toMatch(new RegExp(`^\\.day11-tmp-${process.pid}-[0-9a-f]{8}-run$`));
    expect(make('run')).not.toBe(make('run'));
    expect(make('upper', 'abcd')).toBe(`.day11-tmp-${process.pid}-abcd-upper`);
  });

  it('puts paths inside a directory or beside a target', () => {
    const path = inside('/cache', 'busybox');
    expect(dirname(path)).toBe('/cache');
    expect(basename(path)).toMatch(/-busybox$/);
    const temp = beside('/oci/index.json');
    expect(dirname(temp)).toBe('/oci');
    expect(basename(temp)).toMatch(
      new RegExp(`^\\.day11-tmp-${process.pid}-[0-9a-f]{8}-index\\.json$`),
    );
  });

  it('recognises every name it makes', () => {
    const name = make('x');
    expect(is(name)).toBe(true);
    expect(name.startsWith(PREFIX)).toBe(true);
    expect(PATTERN.exec(name)?.[1]).toBe(String(process.pid));
    expect(ownerPid(name)).toBe(process.pid);
  });

  it.each([
    ['.day11-tmp-4242-9f3a0c1d-run', 4242],
    ['.day11-tmp-7-x-build-0123456789ab', 7],
    ['.day11-tmp-nopid', undefined],
    ['.day11-tmp-0-ab-run', undefined],
    ['.day11-tmp-99999999999999999999-ab', undefined],
    ['build-0123456789ab', undefined],
    ['day11-tmp-42-ab', undefined],
  ])('ownerPid(%s) is %s', (name, pid) => {
    expect(ownerPid(name)).toBe(pid);
  });
});
