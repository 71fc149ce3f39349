import { describe, expect, it } from 'vitest';
import { CliCodes, CliError, formatError } from './errors.js';

describe('formatError', () => {
  it('prints the message and the hint on two lines', () => {
    const err = new CliError(CliCodes.BAD_PLAN, 'Bad plan p.json', { hint: 'Fix it' });
    expect(formatError(err)).toBe('day11: Bad plan p.json\nhint: Fix it');
  });

  it('keeps a message quoting binary garbage on one line', () => {
    const err = new CliError(CliCodes.BAD_PLAN, 'not valid JSON ("\n\x1b[2J\r\x00")', {
      hint: 'line\nbreak',
    });
    const lines = formatError(err).split('\n');
    expect(lines).toEqual(['day11: not valid JSON ("\\n\\x1b[2J\\r\\x00")', 'hint: line\\nbreak']);
  });

  it('says an unforeseen error is one and points to --debug', () => {
    expect(formatError(new Error('boom\nagain'))).toBe(
      'day11: unexpected error: boom\\nagain (run again with --debug for the stack trace)',
    );
  });
});
