import { Day11Error, isDay11Error } from '@day11/exec';
import { describe, expect, it } from 'vitest';
import { RunnerCodes, RunnerError } from './errors.js';

describe('RunnerError', () => {
  it('is a Day11Error with a stable code, the path, a hint and the cause', () => {
    const cause = new Error('boom');
    const err = new RunnerError(RunnerCodes.PREP_UPPER_FAILED, 'prepUpper failed', {
      path: '/u',
      hint: 'Fix it',
      cause,
    });
    expect(err).toBeInstanceOf(Day11Error);
    expect(isDay11Error(err, 'RUNNER_PREP_UPPER_FAILED')).toBe(true);
    expect(err).toMatchObject({ name: 'RunnerError', path: '/u', hint: 'Fix it', cause });
    expect(err.message).toBe('prepUpper failed');
  });

  it('has RUNNER_-prefixed, unique codes', () => {
    const codes = Object.values(RunnerCodes);
    expect(new Set(codes).size).toBe(codes.length);
    for (const code of codes) expect(code).toMatch(/^RUNNER_[A-Z_]+$/);
  });
});
