import { describe, expect, it } from 'vitest';
import { makeReporter, type OutputStream } from './progress.js';

function recorder(): OutputStream & { writes: string[] } {
  const writes: string[] = [];
  return { writes, write: (text: string) => writes.push(text) };
}

const time = '2026-12-02T00:00:00.000Z';
const step = (id: string, status: 'queued' | 'cached' | 'done') =>
  ({
    type: 'step',
    id,
    status,
    layer: 'build-0123456789ab',
    hash: 'ab',
    seconds: 0,
    time,
  }) as const;

describe('makeReporter', () => {
  it('--json: the events of one task go out in one write, in order, one per line', async () => {
    const stream = recorder();
    const reporter = makeReporter({ json: true, stream });
    for (let i = 0; i < 1000; i++) reporter.emit(step(`s${i}`, 'queued'));
    expect(stream.writes).toEqual([]);
    await Promise.resolve();
    expect(stream.writes).toHaveLength(1);
    const lines = stream.writes[0]!.split('\n');
    expect(lines.pop()).toBe('');
    expect(lines.map((l) => (JSON.parse(l) as { id: string }).id)).toEqual(
      Array.from({ length: 1000 }, (_, i) => `s${i}`),
    );
    // A later task writes its own lines.
    reporter.emit(step('s0', 'cached'));
    await new Promise((r) => setImmediate(r));
    expect(stream.writes).toHaveLength(2);
    reporter.close();
  });

  it('close writes what is pending at once', () => {
    const stream = recorder();
    const reporter = makeReporter({ json: true, stream });
    reporter.note('hello');
    reporter.close();
    expect(stream.writes).toHaveLength(1);
    expect(JSON.parse(stream.writes[0]!)).toMatchObject({ type: 'note', message: 'hello' });
    reporter.close();
    expect(stream.writes).toHaveLength(1);
  });

  it('plain lines: queued steps are not shown; the rest batch the same way', async () => {
    const stream = recorder();
    const reporter = makeReporter({ json: false, stream });
    reporter.emit(step('a', 'queued'));
    reporter.emit(step('a', 'done'));
    reporter.note('bye');
    await Promise.resolve();
    expect(stream.writes).toHaveLength(1);
    expect(stream.writes[0]).toMatch(/^ {2}done {4}a .*build-0123456789ab\nbye\n$/);
    reporter.close();
  });
});
