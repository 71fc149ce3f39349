/**
 * Build progress: a live per-step table on a terminal, plain lines otherwise,
 * newline-delimited JSON for machines. The build emits events; reporters
 * only render them.
 */

/** Where a step is. */
export type StepStatus = 'queued' | 'running' | 'cached' | 'done' | 'failed' | 'skipped';

/** A step changed status. `skipped` means a dependency failed (recorded with `failed_dep`). */
export interface StepEvent {
  type: 'step';
  id: string;
  status: StepStatus;
  /** The layer directory name, `build-xxxxxxxxxxxx`. */
  layer: string;
  /** Seconds since the step started running (0 unless it ran). */
  seconds: number;
  exitCode?: number | null;
  failedDep?: string;
  /** Why it failed, when it did not simply exit non-zero (timeout, abort, runtime error). */
  reason?: string;
}

/** The end of a build. */
export interface SummaryEvent {
  type: 'summary';
  built: number;
  cached: number;
  failed: number;
  skipped: number;
  /** Disk usage of the layers built in this run. */
  bytes: number;
  seconds: number;
}

/** Anything else worth saying (base import, export, validation). */
export interface NoteEvent {
  type: 'note';
  message: string;
}

export type BuildEvent = StepEvent | SummaryEvent | NoteEvent;

/** Renders events. */
export interface Reporter {
  emit(event: BuildEvent): void;
  /** Stops timers and leaves the terminal tidy. */
  close(): void;
}

/** Picks the reporter for the output: `--json`, a TTY, or plain lines. */
export function makeReporter(opts: { json: boolean; stream?: NodeJS.WriteStream }): Reporter {
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

/** The summary line. */
export function formatSummary(s: SummaryEvent): string {
  const parts = [`${s.built} built`, `${s.cached} cached`, `${s.failed} failed`];
  if (s.skipped) parts.push(`${s.skipped} skipped (failed dependency)`);
  return `Summary: ${parts.join(', ')}; ${formatBytes(s.bytes)} written; ${s.seconds.toFixed(2)} s`;
}

function describe(e: StepEvent): string {
  const time = e.status === 'done' || e.status === 'failed' ? ` ${e.seconds.toFixed(2)} s` : '';
  const extra =
    e.status === 'skipped'
      ? ` (dependency ${e.failedDep ?? '?'} failed)`
      : e.status === 'failed'
        ? ` (${e.reason ?? `exit ${e.exitCode ?? '?'}`})`
        : '';
  return `${e.status.padEnd(7)} ${e.id.padEnd(20)} ${e.layer}${time}${extra}`;
}

class JsonReporter implements Reporter {
  constructor(private readonly stream: NodeJS.WriteStream) {}
  emit(event: BuildEvent): void {
    this.stream.write(`${JSON.stringify(event)}\n`);
  }
  close(): void {}
}

class PlainReporter implements Reporter {
  constructor(private readonly stream: NodeJS.WriteStream) {}
  emit(event: BuildEvent): void {
    if (event.type === 'note') this.stream.write(`${event.message}\n`);
    else if (event.type === 'summary') this.stream.write(`${formatSummary(event)}\n`);
    else if (event.status !== 'queued') this.stream.write(`  ${describe(event)}\n`);
  }
  close(): void {}
}

/** Redraws one line per step in place; running steps show a live clock. */
class TtyReporter implements Reporter {
  private readonly steps = new Map<string, StepEvent & { startedAt?: number }>();
  private drawn = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly stream: NodeJS.WriteStream) {
    this.timer = setInterval(() => this.draw(), 200);
    this.timer.unref();
  }

  private finished = false;

  emit(event: BuildEvent): void {
    if (this.finished) return;
    if (event.type === 'step') {
      const previous = this.steps.get(event.id);
      const startedAt = event.status === 'running' ? Date.now() : previous?.startedAt;
      this.steps.set(event.id, { ...event, ...(startedAt !== undefined && { startedAt }) });
      this.draw();
      return;
    }
    if (event.type === 'note') {
      // Notes go above the table, which stays at the bottom while steps run.
      this.clear();
      this.stream.write(`${event.message}\n`);
      this.drawn = 0;
      this.draw();
      return;
    }
    // The summary ends the display: the final table stays, the summary below it.
    this.draw();
    this.stream.write(`${formatSummary(event)}\n`);
    this.finish();
  }

  close(): void {
    if (!this.finished) this.draw();
    this.finish();
  }

  private finish(): void {
    clearInterval(this.timer);
    this.finished = true;
    this.drawn = 0;
  }

  private clear(): void {
    if (this.drawn > 0) this.stream.write(`\x1b[${this.drawn}A\x1b[J`);
  }

  private draw(): void {
    if (this.steps.size === 0 || this.finished) return;
    this.clear();
    const lines = [...this.steps.values()].map((s) => {
      const live = s.status === 'running' && s.startedAt ? { ...s, status: 'running' as const } : s;
      const clock =
        s.status === 'running' && s.startedAt
          ? ` ${((Date.now() - s.startedAt) / 1000).toFixed(1)} s`
          : '';
      return `  ${colour(s.status)}${describe(live)}\x1b[0m${clock}`;
    });
    this.stream.write(`${lines.join('\n')}\n`);
    this.drawn = lines.length;
  }
}

function colour(status: StepStatus): string {
  switch (status) {
    case 'done':
      return '\x1b[32m';
    case 'cached':
      return '\x1b[36m';
    case 'failed':
      return '\x1b[31m';
    case 'skipped':
      return '\x1b[33m';
    case 'running':
      return '\x1b[1m';
    case 'queued':
      return '\x1b[2m';
  }
}
