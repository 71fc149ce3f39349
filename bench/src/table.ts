/** Shared shape and printing of benchmark results. */

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

function fmt(n: number): string {
  return n >= 100 ? n.toFixed(0) : n >= 10 ? n.toFixed(1) : n.toFixed(2);
}

/** Renders rows as a Markdown table with ratios. */
export function toMarkdown(rows: readonly BenchRow[]): string {
  const lines = [
    '| benchmark | value | baseline | baseline value | ratio | target |',
    '|---|---:|---|---:|---:|---:|',
  ];
  for (const r of rows) {
    const unit = r.unit ?? 'ms';
    const ratio = r.baseline ? fmt(r.value / r.baseline) : '';
    const met =
      r.target !== undefined && r.baseline ? (r.value / r.baseline <= r.target ? ' ✓' : ' ✗') : '';
    lines.push(
      `| ${r.name} | ${fmt(r.value)} ${unit} | ${r.baselineName ?? ''} | ${r.baseline === undefined ? '' : `${fmt(r.baseline)} ${unit}`} | ${ratio} | ${r.target === undefined ? '' : `≤ ${r.target}${met}`} |`,
    );
  }
  return lines.join('\n');
}

/** Median of timings, robust to one slow outlier. */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}
