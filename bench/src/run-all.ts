/**
 * Runs every benchmark in this directory, one after the other (they would
 * disturb each other in parallel on a 2-core machine), and prints one table.
 */
import { cpus, totalmem } from 'node:os';
import { toMarkdown, type BenchRow } from './table.js';

const suites: Record<string, () => Promise<{ run: () => Promise<BenchRow[]> }>> = {
  merge: () => import('./merge.js'),
  mount: () => import('./mount.js'),
  scan: () => import('./scan.js'),
  runtime: () => import('./runtime.js'),
  runner: () => import('./runner.js'),
  export: () => import('./export.js'),
};

const only = process.argv.slice(2);
const rows: BenchRow[] = [];
for (const [name, load] of Object.entries(suites)) {
  if (only.length && !only.includes(name)) continue;
  process.stderr.write(`bench: ${name}...\n`);
  rows.push(...(await (await load()).run()));
}
const machine = `${cpus().length} × ${cpus()[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}`;
console.log(`Machine: ${machine}\n\n${toMarkdown(rows)}`);
