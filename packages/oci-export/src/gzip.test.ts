import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { gunzipSync, inflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { OciExportCodes } from './errors.js';
import { gzipChunks, gzipHeader, levelOf } from './gzip.js';
import type { TarChunk } from './layer-tar.js';
import { Semaphore } from './pool.js';

/** Mixed compressible and random data, so chunks reference across boundaries. */
function sample(bytes: number): Buffer {
  const text = Buffer.from('the quick brown fox jumps over the lazy dog\n'.repeat(bytes / 44 + 1));
  const out = Buffer.concat([
    text.subarray(0, bytes / 2),
    randomBytes(bytes / 4),
    text.subarray(0, bytes / 4),
  ]);
  return out.subarray(0, bytes);
}

async function* chunksOf(data: Buffer, size: number): AsyncGenerator<TarChunk> {
  for (let off = 0; off < data.length; off += size) {
    yield { data: data.subarray(off, off + size), last: off + size >= data.length };
  }
}

async function gzip(data: Buffer, options: { chunk: number; slots: number; level?: number }) {
  const parts: Buffer[] = [];
  const result = await gzipChunks(chunksOf(data, options.chunk), {
    slots: new Semaphore(options.slots),
    level: options.level,
    write: async (b) => void parts.push(b),
  });
  return { bytes: Buffer.concat(parts), ...result };
}

const sha = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;

describe('gzipChunks', () => {
  const data = sample(1_000_000);

  it('produces one gzip member that decompresses to the input, with both digests', async () => {
    const gz = await gzip(data, { chunk: 64 * 1024, slots: 3 });
    expect(gunzipSync(gz.bytes).equals(data)).toBe(true);
    // A single deflate stream: the body alone inflates to all of the input.
    expect(inflateRawSync(gz.bytes.subarray(10, -8)).equals(data)).toBe(true);
    expect(gz).toMatchObject({
      diffId: sha(data),
      tarSize: data.length,
      digest: sha(gz.bytes),
      size: gz.bytes.length,
    });
    expect(gz.bytes.readUInt32LE(gz.bytes.length - 4)).toBe(data.length);
    execFileSync('gzip', ['-t'], { input: gz.bytes }); // GNU gzip agrees
  });

  it('is deterministic whatever the number of slots', async () => {
    const a = await gzip(data, { chunk: 64 * 1024, slots: 1 });
    const b = await gzip(data, { chunk: 64 * 1024, slots: 8 });
    expect(b.bytes.equals(a.bytes)).toBe(true);
  });

  it("with freeWritten, frees each of zlib's pieces once written, bytes unchanged", async () => {
    const written: Buffer[] = [];
    const copies: Buffer[] = [];
    await gzipChunks(chunksOf(data, 64 * 1024), {
      slots: new Semaphore(2),
      freeWritten: true,
      write: async (b) => {
        written.push(b);
        copies.push(Buffer.from(b));
      },
    });
    expect(
      Buffer.concat(copies).equals((await gzip(data, { chunk: 64 * 1024, slots: 2 })).bytes),
    ).toBe(true);
    // All but the header and the trailer came from zlib, and are detached now.
    expect(written.slice(1, -1).every((b) => b.length === 0)).toBe(true);
    expect(written[0]!.length).toBe(10);
    expect(written.at(-1)!.length).toBe(8);
  });

  it('writes a header with no name, mtime 0 and OS 3', async () => {
    const gz = await gzip(Buffer.from('x'), { chunk: 64 * 1024, slots: 1 });
    expect([...gz.bytes.subarray(0, 10)]).toEqual([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]);
    expect(gzipHeader(9)[8]).toBe(2);
    expect(gzipHeader(1)[8]).toBe(4);
  });

  it('compresses within a few per cent of one-shot zlib at the same level', async () => {
    const gz = await gzip(data, { chunk: 64 * 1024, slots: 2 });
    const oneShot = (await import('node:zlib')).gzipSync(data, { level: 6 }).length;
    expect(gz.size).toBeLessThan(oneShot * 1.03);
  });

  it('honours the level, 0 to 9', async () => {
    const stored = await gzip(data, { chunk: 64 * 1024, slots: 2, level: 0 });
    const best = await gzip(data, { chunk: 64 * 1024, slots: 2, level: 9 });
    expect(stored.size).toBeGreaterThan(data.length);
    expect(best.size).toBeLessThan(stored.size);
    expect(gunzipSync(best.bytes).equals(data)).toBe(true);
  });

  it('rejects a bad level', () => {
    for (const bad of [-1, 10, 1.5, Number.NaN]) {
      expect(() => levelOf(bad)).toThrow(
        expect.objectContaining({ code: OciExportCodes.BAD_ARGUMENT }),
      );
    }
  });

  it('returns every slot, also when the input fails midway', async () => {
    const slots = new Semaphore(2);
    async function* failing(): AsyncGenerator<TarChunk> {
      yield { data: sample(100_000), last: false };
      throw new Error('disk on fire');
    }
    await expect(gzipChunks(failing(), { slots, write: async () => undefined })).rejects.toThrow(
      'disk on fire',
    );
    const held = await Promise.all([slots.acquire(), slots.acquire()]);
    held.forEach((release) => release());
  });
});
