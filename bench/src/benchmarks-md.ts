/**
 * Updating BENCHMARKS.md after re-running some suites alone (`run-all.js
 * --write SUITE...`): their rows and notes are replaced, the other suites'
 * kept, the targets recounted, and the Machine section says when and where
 * the re-run happened.
 */

/** What {@link mergeInto} combines. */
export interface MergeInput {
  /** The BENCHMARKS.md there was. */
  previous: string;
  /** The render of the suites just run. */
  fresh: string;
  /** Their names. */
  run: readonly string[];
  /** Every suite, in table order. */
  order: readonly string[];
  /** The Machine items of the re-run. */
  machine: string;
}

/** Lines of `markdown`'s section `title` (without its heading), and where they sit. */
function section(markdown: string, title: string): { start: number; end: number } {
  const lines = markdown.split('\n');
  const start = lines.indexOf(`## ${title}`) + 1;
  const next = lines.findIndex((l, i) => i > start && l.startsWith('## '));
  return { start, end: next < 0 ? lines.length : next };
}

/** Rows and notes of `suite` in a BENCHMARKS.md: the table rows, the notes item. */
function ofSuite(line: string, suite: string): boolean {
  return line.startsWith(`| ${suite} |`) || line.startsWith(`- **${suite}** (`);
}

/**
 * `previous` BENCHMARKS.md with the rows and notes of the suites just run
 * replaced by `fresh`'s (a render of those suites alone), the targets
 * recounted, a line under Machine saying when they were re-run (replacing
 * that of an earlier re-run of the same suites), and How to reproduce as the
 * code has it now.
 */
export function mergeInto({ previous, fresh, run, order, machine }: MergeInput): string {
  const old = previous.split('\n');
  const now = fresh.split('\n');
  const take = (title: string): string[] => {
    const at = section(fresh, title);
    return now.slice(at.start, at.end).filter((l) => run.some((s) => ofSuite(l, s)));
  };
  const rank = (l: string) => order.findIndex((s) => ofSuite(l, s));
  const merged = (title: string): string[] => {
    const at = section(previous, title);
    const kept = old.slice(at.start, at.end).filter((l) => !run.some((s) => ofSuite(l, s)));
    const items = [...kept.filter((l) => rank(l) >= 0), ...take(title)];
    items.sort((a, b) => rank(a) - rank(b)); // stable: each suite's rows keep their order
    const first = kept.findIndex((l) => rank(l) >= 0);
    const before = first < 0 ? kept : kept.slice(0, first);
    const after = first < 0 ? [] : kept.slice(first).filter((l) => rank(l) < 0);
    return [...before, ...items, ...after];
  };
  const results = merged('Results');
  const met = results.filter((l) => l.endsWith('| ✓ met |')).length;
  const targeted = met + results.filter((l) => l.endsWith('| ✗ not met |')).length;
  const notes = merged('What each suite measures');
  const machineAt = section(previous, 'Machine');
  const heading = `- Re-run alone since (\`run-all.js --write ${run.join(' ')}\`), on the machine below:`;
  // An earlier re-run of the same suites is superseded: drop its item and sub-items.
  const machineLines = old.slice(machineAt.start, machineAt.end).filter((l, i, all) => {
    if (l !== heading && !l.startsWith('  ')) return true;
    return all.slice(0, i + 1).findLast((x) => x.startsWith('- ')) !== heading;
  });
  // After the last item and its sub-items, so each re-run's machine stays under its own line.
  const end = machineLines.map((l) => l.startsWith('- ') || l.startsWith('  ')).lastIndexOf(true);
  const rerun = [heading, ...machine.split('\n').map((l) => `  ${l}`)];
  machineLines.splice(end + 1, 0, ...rerun);
  const reproduce = section(fresh, 'How to reproduce');
  const replace = (lines: string[], title: string, body: string[]): string[] => {
    const at = section(lines.join('\n'), title);
    return [...lines.slice(0, at.start), ...body, ...lines.slice(at.end)];
  };
  let out = replace(old, 'Results', results);
  out = replace(out, 'Machine', machineLines);
  out = replace(out, 'What each suite measures', notes);
  out = replace(out, 'How to reproduce', now.slice(reproduce.start, reproduce.end));
  return out
    .join('\n')
    .replace(/\d+ of \d+ targets met\./, `${met} of ${targeted} targets met.`)
    .replace(/\n*$/, '\n');
}
