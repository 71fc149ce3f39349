import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContainerCodes } from './errors.js';
import { DEFAULT_LOG_CAP, MAX_LINE_BYTES, MIN_LOG_CAP, OutputLog } from './output-log.js';

let work: string;
let n = 0;
const fresh = (): string => join(work, `log-${++n}`);

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-output-log-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

/** Lines `0000001\n` ... of 8 bytes each. */
function numbered(from: number, to: number): Buffer {
  let s = '';
  for (let i = from; i <= to; i++) s += `${String(i).padStart(7, '0')}\n`;
  return Buffer.from(s);
}

describe('OutputLog', () => {
  it('writes everything below the cap, stdout and stderr interleaved by whole lines', async () => {
    const path = fresh();
    const lines: string[] = [];
    const log = await OutputLog.open({ path, onOutput: (l, s) => lines.push(`${s}:${l}`) });
    await log.write(Buffer.from('a1\na'), 'stdout');
    await log.write(Buffer.from('e1\r\n'), 'stderr');
    await log.write(Buffer.from('2\n\nlast'), 'stdout');
    expect(await log.close()).toEqual({ bytes: 15, omitted: 0 });
    expect(await readFile(path, 'utf8')).toBe('a1\ne1\r\na2\n\nlast\n');
    expect(lines).toEqual(['stdout:a1', 'stderr:e1', 'stdout:a2', 'stdout:', 'stdout:last']);
    expect(log.stderrHead).toBe('e1\r\n');
  });

  it('past the cap keeps the head and the tail, the tail from a line start, with a marker', async () => {
    const path = fresh();
    const cap = 64 * 1024;
    const log = await OutputLog.open({ path, capBytes: cap });
    const all = numbered(1, 100_000); // 800,000 bytes
    for (let at = 0; at < all.length; at += 3001) {
      await log.write(all.subarray(at, at + 3001), 'stdout');
    }
    const { bytes, omitted } = await log.close();
    expect(bytes).toBe(all.length);
    const text = await readFile(path, 'utf8');
    const [head, marker, tail] = text.split(/(\[day11: .*\]\n)/);
    expect(head).toBe(all.subarray(0, cap / 2).toString()); // 4096 whole lines: no newline added
    expect(marker).toBe(
      `[day11: ${omitted} bytes of output left out here; the log keeps the first 32768 and the last 32768 bytes (log cap 65536 bytes)]\n`,
    );
    // The tail is the end of the output, from the first whole line of its last 32 KiB.
    expect(tail).toBe(all.subarray(all.length - cap / 2).toString());
    expect(head!.length + omitted + tail!.length).toBe(all.length);
    expect(text.length).toBeLessThan(cap + 200);
    expect((await readdir(work)).filter((f) => f.startsWith('.day11-tmp-'))).toEqual([]);
  });

  it('cuts the tail to a line start when the cap falls inside a line', async () => {
    const path = fresh();
    const log = await OutputLog.open({ path, capBytes: MIN_LOG_CAP });
    const output = `${'x'.repeat(5000)}\n${`${'y'.repeat(99)}\n`.repeat(60)}last line\n`;
    await log.write(Buffer.from(output), 'stdout');
    const { omitted } = await log.close();
    const text = await readFile(path, 'utf8');
    // The head is cut inside the x line: the marker goes on a line of its own.
    const match =
      /^(x{4096})\n\[day11: (\d+) bytes of output left out here;.*\]\n((?:y{99}\n)+last line\n)$/.exec(
        text,
      );
    expect(match).not.toBeNull();
    expect(Number(match![2])).toBe(omitted);
    expect(match![1]!.length + omitted + match![3]!.length).toBe(output.length);
    expect(match![3]!.length).toBeGreaterThan(4096 - 100);
  });

  it('passes an overlong line on in pieces and never holds more than one piece', async () => {
    const lines: string[] = [];
    const log = await OutputLog.open({ onOutput: (l) => lines.push(l) });
    const long = Buffer.alloc(MAX_LINE_BYTES * 2 + 10, 'z');
    for (let at = 0; at < long.length; at += 1000)
      await log.write(long.subarray(at, at + 1000), 'stdout');
    expect(lines.map((l) => l.length)).toEqual([MAX_LINE_BYTES, MAX_LINE_BYTES]);
    await log.write(Buffer.from('\n'), 'stdout');
    await log.close();
    expect(lines.map((l) => l.length)).toEqual([MAX_LINE_BYTES, MAX_LINE_BYTES, 10]);
  });

  it('keeps nothing of a chunk once its write resolved: the caller may reuse the buffer', async () => {
    // As Runc.run hands it chunks: one buffer, overwritten by the next read.
    // Partial lines held back, lines completed across chunks and the tail
    // must all be copies.
    const all = Buffer.concat([numbered(1, 30_000), Buffer.from('no newline at the end')]);
    for (const capBytes of [Infinity, 64 * 1024]) {
      const path = fresh();
      const lines: string[] = [];
      const log = await OutputLog.open({ path, capBytes, onOutput: (l) => lines.push(l) });
      const lent = Buffer.alloc(4099);
      for (let at = 0; at < all.length; at += lent.length) {
        const n = all.copy(lent, 0, at, at + lent.length);
        await log.write(lent.subarray(0, n), 'stdout');
        lent.fill('#');
      }
      const { omitted } = await log.close();
      const text = await readFile(path, 'utf8');
      expect(text).not.toContain('#');
      expect(lines).toHaveLength(30_001);
      expect(lines[12_345]).toBe('0012346');
      if (capBytes === Infinity) expect(text).toBe(`${all.toString()}\n`);
      else
        expect(text.endsWith(`${all.subarray(omitted + 32 * 1024 + 1).toString()}\n`)).toBe(true);
    }
  });

  it('keeps every byte with no cap', async () => {
    const path = fresh();
    const log = await OutputLog.open({ path, capBytes: Infinity });
    const all = numbered(1, 20_000);
    await log.write(all, 'stderr');
    await log.close();
    expect((await readFile(path)).equals(all)).toBe(true);
  });

  it('reports a write error when closed, and takes the whole output meanwhile', async () => {
    const log = await OutputLog.open({ path: '/dev/full' });
    await log.write(numbered(1, 1000), 'stdout');
    await log.write(numbered(1, 1000), 'stdout');
    await expect(log.close()).rejects.toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
      message: expect.stringMatching(/Cannot write log file \/dev\/full: .*ENOSPC/) as string,
    });
  });

  it('refuses a cap too small to be one, and an unopenable file', async () => {
    expect(DEFAULT_LOG_CAP).toBe(64 * 2 ** 20);
    await expect(OutputLog.open({ capBytes: 100 })).rejects.toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
    });
    await expect(OutputLog.open({ path: join(work, 'no/such/dir/log') })).rejects.toMatchObject({
      code: ContainerCodes.BAD_ARGUMENT,
      message: expect.stringMatching(/Cannot open log file/) as string,
    });
  });
});
