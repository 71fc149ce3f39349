/** Shared shape and printing of benchmark results. */
import { readFileSync } from 'node:fs';

/** One measured figure and the baseline it is compared to, measured in the same run. */
export interface BenchRow {
  /** What was measured, e.g. "Stack.merge, 20,000 files". */
  name: string;
  /** Our figure (milliseconds unless `unit` says otherwise). */
  value: number;
  /** What it is compared to, e.g. "cp -al". */
  baselineName?: string;
  /** The baseline's figure, same unit. */
  baseline?: number;
  /** Target ratio value/baseline (lower is better), when the issue sets one. */
  target?: number;
  unit?: string;
}

/** Rows of one suite, for {@link toMarkdown}'s suite column. */
export interface SuiteRows {
  suite: string;
  rows: readonly BenchRow[];
}

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

/** value / baseline, when there is a baseline to divide by. */
export function ratioOf(r: BenchRow): number | undefined {
  return r.baseline ? r.value / r.baseline : undefined;
}

/** Whether a row meets its target: `undefined` when it has none. */
export function metOf(r: BenchRow): boolean | undefined {
  const ratio = ratioOf(r);
  return r.target === undefined || ratio === undefined ? undefined : ratio <= r.target;
}

function cells(r: BenchRow): string[] {
  const unit = r.unit ?? 'ms';
  const ratio = ratioOf(r);
  const met = metOf(r);
  return [
    r.name,
    `${fmt(r.value)} ${unit}`,
    r.baselineName ?? '',
    r.baseline === undefined ? '' : `${fmt(r.baseline)} ${unit}`,
    ratio === undefined ? '' : fmt(ratio),
    r.target === undefined ? '' : `≤ ${r.target}`,
    met === undefined ? '' : met ? '✓ met' : '✗ not met',
  ];
}

const HEADER = ['benchmark', 'value', 'baseline', 'baseline value', 'ratio', 'target', 'met'];
const ALIGN = ['---', '---:', '---', '---:', '---:', '---:', '---'];

/**
 * Renders rows as a Markdown table: the figure, its baseline, the ratio
 * value/baseline (lower is better) and, where a target is set, whether it is
 * met. Given suites, a first column names each row's suite.
 */
export function toMarkdown(rows: readonly BenchRow[] | readonly SuiteRows[]): string {
  const groups: readonly SuiteRows[] = isGrouped(rows) ? rows : [{ suite: '', rows }];
  const withSuite = isGrouped(rows);
  const line = (parts: readonly string[]): string =>
    `| ${parts.map((p) => p.replace(/\|/g, '\\|')).join(' | ')} |`;
  const lines = [
    line(withSuite ? ['suite', ...HEADER] : HEADER),
    line(withSuite ? ['---', ...ALIGN] : ALIGN),
  ];
  for (const { suite, rows: suiteRows } of groups) {
    for (const r of suiteRows) lines.push(line(withSuite ? [suite, ...cells(r)] : cells(r)));
  }
  return lines.join('\n');
}

function isGrouped(rows: readonly BenchRow[] | readonly SuiteRows[]): rows is readonly SuiteRows[] {
  return rows.length > 0 && 'suite' in rows[0]!;
}

/** Median of timings, robust to one slow outlier. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** A small seeded generator (mulberry32), so every run shuffles the same way. */
export function seeded(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `items` in an order drawn from `random` (Fisher-Yates). */
export function shuffled<T>(items: readonly T[], random: () => number): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * Peak resident memory of this process's own program, in KiB: `VmHWM` of
 * `/proc/self/status`. Not `resourceUsage().maxRSS`: a child started by
 * fork + exec counts the copy of its parent in that, so a child of a big
 * bench process would report the bench's memory instead of its own.
 */
export function peakRssKiB(): number {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kib = /^VmHWM:\s+(\d+) kB$/m.exec(status)?.[1];
  if (kib === undefined) throw new Error('/proc/self/status has no VmHWM line');
  return Number(kib);
}
