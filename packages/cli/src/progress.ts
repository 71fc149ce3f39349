/**
 * Build progress, rendered from the builder's events: a live view on a
 * terminal, plain lines otherwise, newline-delimited JSON for machines.
 *
 * The live view fits the terminal whatever the plan's size: finished steps
 * (with the end of a failed one's log), exports and notes scroll by above a
 * frame of counts and running steps. Only lines that changed are
 * rewritten, so the bytes written grow with what happens, not with the
 * plan's size times the time.
 */
import type { BuildEvent, StepEvent, StepStatus, SummaryEvent } from '@day11/build';

/** Something the command itself says (a validation, the demo's checks). */
export interface NoteEvent {
  type: 'note';
  time: string;
  message: string;
}

/** What a reporter renders. */
export type ReportEvent = BuildEvent | NoteEvent;

/** Renders events. */
export interface Reporter {
  emit(event: ReportEvent): void;
  /** Says something of the command's own. */
  note(message: string): void;
  /** Stops timers and leaves the terminal tidy. Idempotent. */
  close(): void;
}

/** The stream a reporter writes to: a TTY's size when it is one. */
export interface OutputStream {
  write(text: string): unknown;
  isTTY?: boolean;
  rows?: number;
  columns?: number;
}

/**
 * Picks the reporter for the output: `--json`, a terminal, or plain lines.
 *
 * @example
 * ```ts
 * const reporter = makeReporter({ json: false });
 * await builder.build(plan, { onEvent: (e) => reporter.emit(e) });
 * reporter.close();
 * ```
 */
export function makeReporter(opts: { json: boolean; stream?: OutputStream }): Reporter {
  const stream = opts.stream ?? process.stdout;
  if (opts.json) return new JsonReporter(stream);
  if (stream.isTTY && process.env['TERM'] !== 'dumb') return new TtyReporter(stream);
  return new PlainReporter(stream);
}

/** `1.5 KiB`, `3.2 MiB`, ... */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

/** The summary, one line (plus one per failed export). */
export function formatSummary(s: SummaryEvent): string {
  const parts = [`${s.built} built`, `${s.cached} cached`];
  if (s.fetched) parts.push(`${s.fetched} fetched`);
  parts.push(`${s.failed} failed`);
  if (s.skipped) parts.push(`${s.skipped} skipped (failed dependency)`);
  const exports =
    s.exported.length + s.exportFailures.length > 0
      ? `; ${s.exported.length} images exported${s.exportFailures.length ? `, ${s.exportFailures.length} exports FAILED` : ''}`
      : '';
  const lines = [
    `Summary: ${parts.join(', ')}; ${formatBytes(s.bytes)} written${exports}; ${s.seconds.toFixed(2)} s`,
  ];
  for (const f of s.exportFailures) lines.push(`  export of ${f.tag} failed: ${f.reason}`);
  return lines.join('\n');
}

function describeStep(e: StepEvent): string {
  const time = e.seconds > 0 ? ` ${e.seconds.toFixed(2)} s` : '';
  let extra = '';
  if (e.status === 'skipped') extra = ` (dependency ${e.failedDep ?? '?'} failed)`;
  else if (e.status === 'failed') extra = ` (${e.reason ?? `exit ${e.exitCode ?? '?'}`})`;
  else if (e.status === 'fetched' && e.source) extra = ` (from ${e.source})`;
  const unrecorded = e.recorded === false ? ' [not recorded: tried again next time]' : '';
  return `${e.status.padEnd(7)} ${e.id.padEnd(20)} ${e.layer}${time}${extra}${unrecorded}`;
}

/** A failed step's log path and last lines, indented under it. */
function describeLog(e: StepEvent): string[] {
  if (e.log === undefined) return [];
  return [`      log ${e.log}:`, ...(e.logTail ?? []).map((l) => `      | ${l}`)];
}

/** Lines for the events that are not step rows. */
function describeOther(e: ReportEvent): string | undefined {
  switch (e.type) {
    case 'note':
      return e.message;
    case 'base':
      return `Base ${e.image} (${e.layer})`;
    case 'plan':
      return `Plan ${e.file}: ${e.steps} steps`;
    case 'lookup':
      return e.reason
        ? `Lookup in ${e.source} failed (${e.reason}); building locally`
        : `Lookup in ${e.source}: ${e.found} of ${e.asked} layers found (${e.seconds.toFixed(2)} s)`;
    case 'export':
      return e.status === 'done'
        ? `  exported ${e.id} → ${e.layout}:${e.tag} (${e.layers} layers, ${e.digest?.slice(0, 19)})`
        : `  export of ${e.id} → ${e.layout}:${e.tag} FAILED: ${e.reason}`;
    case 'publish':
      return e.status === 'done'
        ? undefined
        : `  publishing ${e.id} to ${e.publisher} failed: ${e.reason}`;
    case 'summary':
      return formatSummary(e);
    case 'step':
      return undefined;
  }
}

/**
 * Lines written together at the end of the current task (a microtask): a
 * build emits a thousand `queued` events at once, and one write each was a
 * fair part of a cached build's time. Nothing can run between the task and
 * the write (a signal's listener is a task of its own), so what a killed
 * build printed is what it printed before.
 */
class LineWriter {
  private pending: string[] = [];
  constructor(private readonly stream: OutputStream) {}
  line(text: string): void {
    if (this.pending.length === 0) queueMicrotask(() => this.flush());
    this.pending.push(text);
  }
  flush(): void {
    if (this.pending.length === 0) return;
    const text = `${this.pending.join('\n')}\n`;
    this.pending = [];
    this.stream.write(text);
  }
}

class JsonReporter implements Reporter {
  private readonly out: LineWriter;
  constructor(stream: OutputStream) {
    this.out = new LineWriter(stream);
  }
  emit(event: ReportEvent): void {
    this.out.line(JSON.stringify(event));
  }
  note(message: string): void {
    this.emit({ type: 'note', time: new Date().toISOString(), message });
  }
  close(): void {
    this.out.flush();
  }
}

class PlainReporter implements Reporter {
  private readonly out: LineWriter;
  constructor(stream: OutputStream) {
    this.out = new LineWriter(stream);
  }
  emit(event: ReportEvent): void {
    if (event.type === 'step') {
      if (event.status === 'queued') return;
      this.out.line(`  ${describeStep(event)}`);
      if (event.status === 'failed') for (const line of describeLog(event)) this.out.line(line);
      return;
    }
    const line = describeOther(event);
    if (line !== undefined) this.out.line(line);
  }
  note(message: string): void {
    this.emit({ type: 'note', time: new Date().toISOString(), message });
  }
  close(): void {
    this.out.flush();
  }
}

/** Statuses in the order the counts line shows them. */
const COUNTED: readonly StepStatus[] = [
  'done',
  'cached',
  'fetched',
  'running',
  'fetching',
  'waiting',
  'queued',
  'failed',
  'skipped',
];

/** Interval of the running steps' clocks. */
const TICK_MS = 250;
/** Events in a burst (a hundred cache hits) are drawn once. */
const FLUSH_MS = 40;

/**
 * The live view: what happened scrolls by above (built, fetched, failed
 * and skipped steps, exports, notes; cache hits are only counted), and at
 * the bottom a frame of the counts and the running steps with their
 * clocks. The frame is at most the terminal's height less two lines, each
 * line cut to its width (a wrapped line would throw the cursor arithmetic
 * off); a burst of events is drawn once; a redraw rewrites only the lines
 * that changed.
 */
class TtyReporter implements Reporter {
  private readonly running = new Map<string, { event: StepEvent; startedAt: number }>();
  private readonly status = new Map<string, StepStatus>();
  private readonly counts = new Map<StepStatus, number>();
  private readonly started = Date.now();
  private pending: string[] = [];
  private frame: string[] = [];
  private exported = 0;
  private finished = false;
  private flushTimer: NodeJS.Timeout | undefined;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly stream: OutputStream) {
    this.timer = setInterval(() => this.flush(), TICK_MS);
    this.timer.unref();
  }

  emit(event: ReportEvent): void {
    if (this.finished) return;
    if (event.type === 'step') this.step(event);
    else if (event.type === 'export' && event.status === 'done') this.exported++;
    else if (event.type === 'summary') {
      this.flush();
      this.clearFrame();
      this.stream.write(`${this.countsLine()}\n${formatSummary(event)}\n`);
      this.finish();
      return;
    } else {
      const line = describeOther(event);
      if (line !== undefined) this.pending.push(line);
    }
    this.schedule();
  }

  note(message: string): void {
    if (this.finished) this.stream.write(`${message}\n`);
    else {
      this.pending.push(message);
      this.flush();
    }
  }

  close(): void {
    if (this.finished) return;
    this.flush();
    this.finish();
  }

  private step(e: StepEvent): void {
    const previous = this.status.get(e.id);
    if (previous !== undefined) this.count(previous, -1);
    this.count(e.status, 1);
    this.status.set(e.id, e.status);
    if (e.status === 'running' || e.status === 'fetching' || e.status === 'waiting') {
      this.running.set(e.id, { event: e, startedAt: Date.now() });
      return;
    }
    this.running.delete(e.id);
    if (e.status === 'queued' || e.status === 'cached') return;
    const color =
      e.status === 'failed' ? '\x1b[31m' : e.status === 'skipped' ? '\x1b[33m' : '\x1b[32m';
    this.pending.push(`  ${color}${describeStep(e)}\x1b[0m`);
    if (e.status === 'failed') this.pending.push(...describeLog(e));
  }

  private count(status: StepStatus, by: number): void {
    this.counts.set(status, (this.counts.get(status) ?? 0) + by);
  }

  private countsLine(): string {
    const parts = COUNTED.filter((s) => (this.counts.get(s) ?? 0) > 0).map(
      (s) => `${this.counts.get(s)} ${s}`,
    );
    if (this.exported) parts.push(`${this.exported} exported`);
    const elapsed = ((Date.now() - this.started) / 1000).toFixed(0);
    return `${parts.join(' · ')}  (${this.status.size} steps, ${elapsed} s)`;
  }

  /** The frame: the counts, then the running steps (as many as fit). */
  private compose(): string[] {
    const height = Math.max(2, (this.stream.rows ?? 24) - 2);
    const lines = [this.countsLine()];
    const running = [...this.running.values()];
    const room = height - 1;
    const shown = running.length > room ? running.slice(0, room - 1) : running;
    for (const r of shown) {
      const clock = ((Date.now() - r.startedAt) / 1000).toFixed(0);
      lines.push(`  \x1b[1m${describeStep(r.event)}\x1b[0m ${clock} s`);
    }
    if (shown.length < running.length)
      lines.push(`  … and ${running.length - shown.length} more running`);
    const width = Math.max(20, (this.stream.columns ?? 80) - 1);
    return lines.map((l) => cut(l, width));
  }

  private schedule(): void {
    if (this.flushTimer !== undefined) return;
    this.flushTimer = setTimeout(() => this.flush(), FLUSH_MS);
    this.flushTimer.unref();
  }

  /** Prints what scrolled by above the frame, then redraws the frame's changed lines. */
  private flush(): void {
    clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.finished) return;
    if (this.pending.length > 0) {
      this.clearFrame();
      const width = Math.max(20, (this.stream.columns ?? 80) - 1);
      this.stream.write(`${this.pending.map((l) => cut(l, width)).join('\n')}\n`);
      this.pending = [];
    }
    this.draw();
  }

  private draw(): void {
    const next = this.compose();
    const prev = this.frame;
    if (next.length === prev.length && next.every((l, i) => l === prev[i])) return;
    let out = prev.length > 0 ? `\x1b[${prev.length}A\r` : '';
    for (let i = 0; i < next.length; i++) {
      if (i < prev.length && prev[i] === next[i]) out += '\x1b[1B';
      else out += `\x1b[2K${next[i]}${i < prev.length ? '\r\x1b[1B' : '\n'}`;
    }
    if (next.length < prev.length) out += '\x1b[J';
    this.stream.write(out);
    this.frame = next;
  }

  private clearFrame(): void {
    if (this.frame.length > 0) this.stream.write(`\x1b[${this.frame.length}A\r\x1b[J`);
    this.frame = [];
  }

  private finish(): void {
    clearInterval(this.timer);
    clearTimeout(this.flushTimer);
    this.finished = true;
    this.frame = [];
  }
}

/** Cuts a line to `width` visible characters (escape sequences do not count). */
function cut(line: string, width: number): string {
  let visible = 0;
  let out = '';
  for (let i = 0; i < line.length; i++) {
    if (line[i] === '\x1b') {
      const end = line.indexOf('m', i);
      out += line.slice(i, end + 1);
      i = end;
      continue;
    }
    if (visible >= width) break;
    out += line[i];
    visible++;
  }
  return out.includes('\x1b') ? `${out}\x1b[0m` : out;
}
