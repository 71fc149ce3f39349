import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { gunzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import * as Libdeflate from './libdeflate.js';

// Debian's libdeflate0; .ci/setup installs it.
const installed = ['/usr/lib/x86_64-linux-gnu', '/usr/lib/aarch64-linux-gnu', '/usr/lib'].some(
  (dir) => existsSync(`${dir}/libdeflate.so.0`),
);

describe.skipIf(!installed)('Libdeflate', () => {
  const input = Buffer.concat([Buffer.from('day11 '.repeat(50_000)), randomBytes(100_000)]);

  it('loads, and writes one gzip member that gzip and Node read back', async () => {
    const lib = Libdeflate.load()!;
    expect(lib).toBeDefined();
    const out = Buffer.alloc(lib.bound(input.length));
    const n = await lib.gzip(6, input, out);
    const member = out.subarray(0, n);
    expect(n).toBeLessThan(input.length);
    expect(gunzipSync(member).equals(input)).toBe(true);
    expect(execFileSync('gzip', ['-dc'], { input: member }).equals(input)).toBe(true);
    // mtime 0, no name: the bytes depend on the input alone.
    expect([...member.subarray(0, 8)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    const again = Buffer.alloc(lib.bound(input.length));
    expect(again.subarray(0, await lib.gzip(6, input, again)).equals(member)).toBe(true);
  });

  it('compresses on several threads at once, each call with a compressor of its own', async () => {
    const lib = Libdeflate.load()!;
    const outs = Array.from({ length: 8 }, () => Buffer.alloc(lib.bound(input.length)));
    const sizes = await Promise.all(outs.map((out, i) => lib.gzip(1 + i, input, out)));
    outs.forEach((out, i) =>
      expect(gunzipSync(out.subarray(0, sizes[i])).equals(input)).toBe(true),
    );
  });

  it('rejects a level it does not have and an output buffer too small, with no output', async () => {
    const lib = Libdeflate.load()!;
    await expect(lib.gzip(13, input, Buffer.alloc(lib.bound(input.length)))).rejects.toThrow(
      /no compression level 13/,
    );
    await expect(lib.gzip(6, randomBytes(10_000), Buffer.alloc(100))).rejects.toThrow(/too small/);
  });
});
