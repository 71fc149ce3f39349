import { describe, expect, it } from 'vitest';
import { gzipLevelOption, intOption, maxLayersOption, numberOption, sizeOption } from './args.js';
import { CliCodes } from './errors.js';
import { formatBytes, formatSummary } from './progress.js';

describe('options', () => {
  it('parses sizes', () => {
    expect(sizeOption('x', 'keep-bytes', '4096')).toBe(4096);
    expect(sizeOption('x', 'keep-bytes', '500M')).toBe(500 * 2 ** 20);
    expect(sizeOption('x', 'keep-bytes', '1.5g')).toBe(1.5 * 2 ** 30);
    expect(sizeOption('x', 'keep-bytes', '10GiB')).toBe(10 * 2 ** 30);
    expect(sizeOption('x', 'keep-bytes', undefined)).toBeUndefined();
  });

  it.each(['', 'lots', '-1', '1e400', '10X', '99999999999999T'])('refuses the size %j', (value) => {
    expect(() => sizeOption('layers gc', 'keep-bytes', value)).toThrow(
      expect.objectContaining({ code: CliCodes.USAGE }),
    );
  });

  it('bounds integers and numbers', () => {
    expect(intOption('build', 'jobs', '4', { min: 1, max: 256, def: 1 })).toBe(4);
    expect(intOption('build', 'jobs', undefined, { min: 1, max: 256, def: 1 })).toBe(1);
    for (const bad of ['0', '257', '1.5', '1e9', 'x']) {
      expect(() => intOption('build', 'jobs', bad, { min: 1, max: 256, def: 1 })).toThrow(
        /--jobs must be an integer from 1 to 256/,
      );
    }
    expect(numberOption('gc', 'before', '1.5', 10)).toBe(1.5);
    expect(() => numberOption('gc', 'before', 'NaN', 10)).toThrow(/--before/);
    expect(() => numberOption('gc', 'before', '1e99', 10)).toThrow(/--before/);
  });

  it('parses a gzip level from 0 to 9', () => {
    expect(gzipLevelOption('export', '0')).toBe(0);
    expect(gzipLevelOption('build', '9')).toBe(9);
    expect(gzipLevelOption('export', undefined)).toBeUndefined();
    for (const bad of ['-1', '10', '4.5', 'fast']) {
      expect(() => gzipLevelOption('export', bad)).toThrow(/--gzip-level must be an integer/);
    }
  });

  it('parses a layer budget, docker meaning 125', () => {
    expect(maxLayersOption('export', 'docker', 125)).toBe(125);
    expect(maxLayersOption('export', '60', 125)).toBe(60);
    expect(maxLayersOption('export', undefined, 125)).toBeUndefined();
    for (const bad of ['1', '0', '501', '2.5', '-3', 'podman', '']) {
      expect(() => maxLayersOption('export', bad, 125)).toThrow(
        /--max-layers must be docker \(125\) or an integer from 2 to 500/,
      );
    }
  });
});

describe('progress text', () => {
  it('formats bytes and the summary', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 2 ** 30)).toBe('3.0 GiB');
    expect(
      formatSummary({
        type: 'summary',
        time: '2026-01-01T00:00:00.000Z',
        built: 2,
        cached: 3,
        fetched: 0,
        failed: 1,
        skipped: 2,
        bytes: 2048,
        seconds: 1.234,
        exported: [],
        exportFailures: [],
      }),
    ).toBe(
      'Summary: 2 built, 3 cached, 1 failed, 2 skipped (failed dependency); 2.0 KiB written; 1.23 s',
    );
  });
});
