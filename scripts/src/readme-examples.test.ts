import { describe, expect, it } from 'vitest';
import { readmeExamples } from './readme-examples.js';

describe('readmeExamples', () => {
  it('finds each ts block with the README line it starts on', () => {
    const text =
      '# x\n\n```ts\nconst a = 1;\n```\n\n```sh\nls\n```\n\n```typescript\nlet b;\n```\n';
    expect(readmeExamples(text, 'R.md')).toEqual({
      examples: [
        { line: 4, source: 'const a = 1;\n', preambleLines: 0 },
        { line: 12, source: 'let b;\n', preambleLines: 0 },
      ],
      problems: [],
    });
  });

  it('puts a preamble comment before its block, and skips a block marked example-skip', () => {
    const text = [
      '<!-- example-preamble',
      'declare const depA: string;',
      '-->',
      '',
      '```ts',
      'use(depA);',
      '```',
      '<!-- example-skip: shows an error on purpose -->',
      '```ts',
      'broken(',
      '```',
      '```ts',
      'ok();',
      '```',
    ].join('\n');
    expect(readmeExamples(text, 'R.md')).toEqual({
      examples: [
        { line: 6, source: 'declare const depA: string;\nuse(depA);\n', preambleLines: 1 },
        { line: 13, source: 'ok();\n', preambleLines: 0 },
      ],
      problems: [],
    });
  });

  it('ignores markers shown inside another block, and reports a marker without a block', () => {
    const shown = '```md\n<!-- example-preamble\ndeclare const x: 1;\n-->\n```\n';
    expect(readmeExamples(shown, 'R.md')).toEqual({ examples: [], problems: [] });
    expect(readmeExamples('<!-- example-skip: why -->\n\nText.\n', 'R.md').problems).toEqual([
      'R.md:3: an example marker must be followed by a ```ts block (blank lines allowed)',
    ]);
    expect(readmeExamples('<!-- example-preamble\nx\n', 'R.md').problems).toEqual([
      'R.md:1: example-preamble is not closed by a line "-->"',
    ]);
  });
});
