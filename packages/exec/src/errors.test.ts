import { describe, expect, it } from 'vitest';
import {
  Day11Error,
  ExecCodes,
  ExecError,
  describeError,
  hintOf,
  isDay11Error,
  type CodeOf,
  type ExecCode,
} from './errors.js';

const Codes = { A: 'T_A', B: 'T_B' } as const;
type Code = CodeOf<typeof Codes>;
class TestError extends Day11Error<Code> {
  override name = 'TestError';
}

describe('Day11Error', () => {
  it('keeps the hint out of the message', () => {
    const err = new TestError(Codes.A, 'Cannot read /x', { path: '/x', hint: 'Check permissions' });
    expect(err.message).toBe('Cannot read /x');
    expect(err.hint).toBe('Check permissions');
    expect(err.name).toBe('TestError');
    const code: Code = err.code;
    expect(code).toBe('T_A');
    expect(describeError(err)).toBe('Cannot read /x\nCheck permissions');
    expect(describeError(new Error('plain'))).toBe('plain');
  });

  it("keeps a cause's hint only when the wrapper has none", () => {
    const inner = new ExecError(ExecCodes.WRITE_FAILED, 'Cannot write /x', { hint: 'inner' });
    expect(new TestError(Codes.B, 'outer', { cause: inner }).hint).toBe('inner');
    const outer = new TestError(Codes.B, `outer: ${inner.message}`, {
      cause: inner,
      hint: 'outer',
    });
    expect(outer.hint).toBe('outer');
    expect(outer.message).toBe('outer: Cannot write /x');
    expect(hintOf(new Error('x'))).toBeUndefined();
  });

  it('narrows by code', () => {
    const err: unknown = new ExecError(ExecCodes.WRITE_FAILED, 'x');
    expect(isDay11Error(err)).toBe(true);
    expect(isDay11Error(err, ExecCodes.TIMED_OUT)).toBe(false);
    if (isDay11Error(err, ExecCodes.WRITE_FAILED)) {
      const code: ExecCode = err.code;
      expect(code).toBe('EXEC_WRITE_FAILED');
    }
  });
});
