/**
 * The TypeScript examples of a README, as modules a compiler can check.
 *
 * Every fenced ```ts block is one module. A block that uses names it does
 * not define (a fragment) gets them from an HTML comment right above it,
 * which renderers hide:
 *
 *     <!-- example-preamble
 *     declare const depA: string;
 *     -->
 *
 * and a block that is not meant to compile is marked `<!-- example-skip: why -->`.
 */

/** One ```ts block of a README, ready to be written as a module. */
export interface ReadmeExample {
  /** 1-based line of the README where the block's code starts. */
  line: number;
  /** The preamble's lines (from the comment above the block), then the block's. */
  source: string;
  /** How many lines of `source` come from the preamble. */
  preambleLines: number;
}

/** The problems found in a README's markers, and its examples. */
export interface ReadmeExamples {
  examples: ReadmeExample[];
  /** Markers that do not sit right above a ```ts block, or are not closed. */
  problems: string[];
}

const FENCE_TS = /^```(ts|typescript)\s*$/;
const FENCE_END = /^```\s*$/;
const PREAMBLE_START = /^<!--\s*example-preamble\s*$/;
const SKIP = /^<!--\s*example-skip:\s*\S.*-->\s*$/;

/** Extracts the ```ts blocks of README text `text` (`name` is used in problems). */
export function readmeExamples(text: string, name: string): ReadmeExamples {
  const lines = text.split('\n');
  const examples: ReadmeExample[] = [];
  const problems: string[] = [];
  let preamble: string[] | undefined;
  let skip = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (PREAMBLE_START.test(line)) {
      const end = lines.findIndex((l, j) => j > i && l.trim() === '-->');
      if (end < 0) {
        problems.push(`${name}:${i + 1}: example-preamble is not closed by a line "-->"`);
        break;
      }
      preamble = lines.slice(i + 1, end);
      i = end;
      continue;
    }
    if (SKIP.test(line)) {
      skip = true;
      continue;
    }
    if (FENCE_TS.test(line)) {
      const end = lines.findIndex((l, j) => j > i && FENCE_END.test(l));
      if (end < 0) {
        problems.push(`${name}:${i + 1}: the ts block is not closed`);
        break;
      }
      if (!skip) {
        const code = lines.slice(i + 1, end);
        const pre = preamble ?? [];
        examples.push({
          line: i + 2,
          source: [...pre, ...code].join('\n') + '\n',
          preambleLines: pre.length,
        });
      }
      preamble = undefined;
      skip = false;
      i = end;
      continue;
    }
    if (line.startsWith('```')) {
      // Another language's block: its lines are not markers.
      const end = lines.findIndex((l, j) => j > i && FENCE_END.test(l));
      i = end < 0 ? lines.length : end;
    }
    if (line.trim() === '') continue;
    if (preamble || skip) {
      problems.push(
        `${name}:${i + 1}: an example marker must be followed by a \`\`\`ts block (blank lines allowed)`,
      );
      preamble = undefined;
      skip = false;
    }
  }
  if (preamble || skip)
    problems.push(`${name}: an example marker at the end has no \`\`\`ts block`);
  return { examples, problems };
}
