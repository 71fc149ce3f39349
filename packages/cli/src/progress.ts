/**
 * Build progress, rendered from the builder's events: a live view on a
 * terminal, plain lines otherwise, newline-delimited JSON for machines.
 *
 * The live view fits the terminal whatever the plan's size: a line of
 * counts, the running steps with their clocks, the most recent outcomes;
 * failures (with the end of their log) and notes are printed above it and
 * stay. Only lines that changed are rewritten, so the bytes written grow
 * with what happens, not with the plan's size times the time.
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

class JsonReporter implements Reporter {
  constructor(private readonly stream: OutputStream) {}
  emit(event: ReportEvent): void {
    this.stream.write(`${JSON.stringify(event)}\n`);
  }
  note(message: string): void {
    this.emit({ type: 'note', time: new Date().toISOString(), message });
  }
  close(): void {}
}

class PlainReporter implements Reporter {
  constructor(private readonly stream: OutputStream) {}
  emit(event: ReportEvent): void {
    if (event.type === 'step') {
      if (event.status === 'queued') return;
      this.stream.write(`  ${describeStep(event)}\n`);
      if (event.status === 'failed') {
        for (const line of describeLog(event)) this.stream.write(`${line}\n`);
      }
      return;
    }
    const line = describeOther(event);
    if (line !== undefined) this.stream.write(`${line}\n`);
  }
  note(message: string): void {
    this.emit({ type: 'note', time: new Date().toISOString(), message });
  }
  close(): void {}
}

/** Statuses in the order the counts line shows them. */
const COUNTED: readonly StepStatus[] = [
  'done',
  'cached',
  'fetched',
  'running',
  'fetching',
  'queued',
  'failed',
  'skipped',
];

/** How many recent outcomes the view keeps. */
const RECENT = 50;
/** Interval of the running steps' clocks. */
const TICK_MS = 250;

interface Row {
  event: StepEvent;
  startedAt: number | undefined;
}

/**
 * The live view. Its frame is at most the terminal's height less two lines,
 * each line cut to the terminal's width (a wrapped line would throw the
 * cursor arithmetic off).
 */
class TtyReporter implements Reporter {
  private readonly rows = new Map<string, Row>();
  private readonly counts = new Map<StepStatus, number>();
  private readonly recent: string[] = [];
  private readonly started = Date.now();
  private frame: string[] = [];
  private exported = 0;
  private finished = false;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly stream: OutputStream) {
    this.timer = setInterval(() => this.draw(), TICK_MS);
    this.timer.unref();
  }

  emit(event: ReportEvent): void {
    if (this.finished) return;
    if (event.type === 'step') return this.step(event);
    if (event.type === 'export' && event.status === 'done') {
      this.exported++;
      return this.draw();
    }
    if (event.type === 'summary') {
      this.draw();
      this.clearFrame();
      this.stream.write(`${this.countsLine()}\n${formatSummary(event)}\n`);
      return this.finish();
    }
    const line = describeOther(event);
    if (line !== undefined) this.above([line]);
  }

  note(message: string): void {
    if (this.finished) this.stream.write(`${message}\n`);
    else this.above([message]);
  }

  close(): void {
    if (this.finished) return;
    this.draw();
    this.finish();
  }

  private step(e: StepEvent): void {
    const previous = this.rows.get(e.id);
    if (previous) this.count(previous.event.status, -1);
    this.count(e.status, 1);
    const running = e.status === 'running' || e.status === 'fetching';
    this.rows.set(e.id, { event: e, startedAt: running ? Date.now() : undefined });
    if (e.status === 'failed' || (e.status === 'skipped' && e.recorded === false)) {
      // Failures stay on screen above the view, with the end of their log.
      this.above([`  ${describeStep(e)}`, ...(e.status === 'failed' ? describeLog(e) : [])]);
    }
    if (!running && e.status !== 'queued') {
      this.recent.push(`  ${describeStep(e)}`);
      if (this.recent.length > RECENT) this.recent.shift();
    }
    this.draw();
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
    return `${parts.join(' · ')}  (${this.rows.size} steps, ${elapsed} s)`;
  }

  /** The view: counts, running steps, then the most recent outcomes, to fit. */
  private compose(): string[] {
    const height = Math.max(3, (this.stream.rows ?? 24) - 2);
    const lines = [this.countsLine()];
    const running = [...this.rows.values()].filter((r) => r.startedAt !== undefined);
    const shown = running.slice(0, height - 1);
    for (const r of shown) {
      const clock = ((Date.now() - r.startedAt!) / 1000).toFixed(0);
      lines.push(`  \x1b[1m${describeStep(r.event)}\x1b[0m ${clock} s`);
    }
    if (running.length > shown.length)
      lines[lines.length - 1] = `  … and ${running.length - shown.length + 1} more running`;
    const room = height - lines.length;
    if (room > 0) lines.push(...this.recent.slice(-room));
    const width = Math.max(20, (this.stream.columns ?? 80) - 1);
    return lines.map((l) => cut(l, width));
  }

  /** Rewrites the lines of the frame that changed. */
  private draw(): void {
    if (this.finished) return;
    const next = this.compose();
    const prev = this.frame;
    let out = prev.length > 0 ? `\x1b[${prev.length}A\r` : '';
    for (let i = 0; i < next.length; i++) {
      if (i < prev.length && prev[i] === next[i]) out += '\x1b[1B';
      else out += `\x1b[2K${next[i]}${i < prev.length ? '\r\x1b[1B' : '\n'}`;
    }
    if (next.length < prev.length) out += '\x1b[J';
    // Nothing changed: the cursor trip alone is not worth writing.
    if (next.length === prev.length && next.every((l, i) => l === prev[i])) return;
    this.stream.write(out);
    this.frame = next;
  }

  private clearFrame(): void {
    if (this.frame.length > 0) this.stream.write(`\x1b[${this.frame.length}A\r\x1b[J`);
    this.frame = [];
  }

  /** Prints lines above the view, where they stay. */
  private above(lines: string[]): void {
    this.clearFrame();
    this.stream.write(`${lines.join('\n')}\n`);
    this.draw();
  }

  private finish(): void {
    clearInterval(this.timer);
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
