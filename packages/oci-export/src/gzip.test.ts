import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { gunzipSync, inflateRawSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { OciExportCodes } from './errors.js';
import { Libdeflate } from '@day11/exec';
import { type GzipEngine, fastestEngine, gzipChunks, gzipHeader, levelOf } from './gzip.js';
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

async function gzip(
  data: Buffer,
  options: { chunk: number; slots: number; level?: number; engine?: GzipEngine },
) {
  const parts: Buffer[] = [];
  const result = await gzipChunks(chunksOf(data, options.chunk), {
    engine: options.engine,
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

/** Offsets of the gzip members in `gz`, by walking each member's deflate stream. */
function memberLengths(gz: Buffer): number[] {
  const lengths: number[] = [];
  let rest = gz;
  while (rest.length > 0) {
    // inflateRaw reports how much it consumed through its engine's bytesWritten.
    const body = rest.subarray(10);
    const { engine } = inflateRawSync(body, { info: true }) as unknown as {
      engine: { bytesWritten: number };
    };
    const length = 10 + engine.bytesWritten + 8;
    lengths.push(length);
    rest = rest.subarray(length);
  }
  return lengths;
}

describe.skipIf(!Libdeflate.load())("gzipChunks with the 'libdeflate' engine", () => {
  const data = sample(1_000_000);
  const chunk = 64 * 1024;

  it('writes one member per chunk, each with its own CRC and size, and the whole decompresses to the input', async () => {
    const gz = await gzip(data, { chunk, slots: 3, engine: 'libdeflate' });
    expect(gunzipSync(gz.bytes).equals(data)).toBe(true);
    execFileSync('gzip', ['-t'], { input: gz.bytes });
    expect(
      execFileSync('gzip', ['-dc'], { input: gz.bytes, maxBuffer: 1 << 24 }).equals(data),
    ).toBe(true);
    const lengths = memberLengths(gz.bytes);
    expect(lengths).toHaveLength(Math.ceil(data.length / chunk));
    let at = 0;
    lengths.forEach((length, i) => {
      const member = gz.bytes.subarray(at, at + length);
      const input = data.subarray(i * chunk, (i + 1) * chunk);
      expect([...member.subarray(0, 4)]).toEqual([0x1f, 0x8b, 8, 0]);
      expect(member.readUInt32LE(length - 4)).toBe(input.length);
      expect(gunzipSync(member).equals(input)).toBe(true);
      at += length;
    });
    expect(gz).toMatchObject({
      diffId: sha(data),
      tarSize: data.length,
      digest: sha(gz.bytes),
      size: gz.bytes.length,
    });
  });

  it('is deterministic whatever the number of slots, and smaller than zlib at the same level', async () => {
    const a = await gzip(data, { chunk, slots: 1, engine: 'libdeflate' });
    const b = await gzip(data, { chunk, slots: 8, engine: 'libdeflate' });
    expect(b.bytes.equals(a.bytes)).toBe(true);
    const zlib = await gzip(data, { chunk, slots: 2 });
    expect(a.size).toBeLessThan(zlib.size * 1.01);
  });

  it('with freeWritten, reuses its output buffers once written, bytes unchanged', async () => {
    const copies: Buffer[] = [];
    const written = new Set<ArrayBufferLike>();
    const big = sample(8 * 1024 * 1024);
    await gzipChunks(chunksOf(big, 1024 * 1024), {
      engine: 'libdeflate',
      slots: new Semaphore(2),
      freeWritten: true,
      write: async (b) => {
        written.add(b.buffer);
        copies.push(Buffer.from(b));
      },
    });
    const kept = await gzip(big, { chunk: 1024 * 1024, slots: 2, engine: 'libdeflate' });
    expect(Buffer.concat(copies).equals(kept.bytes)).toBe(true);
    expect(written.size).toBeLessThan(8);
  });

  it('gives a chunk larger than the reused buffers an output buffer of its own', async () => {
    const big = sample(3 * 1024 * 1024);
    const gz = await gzip(big, { chunk: 1536 * 1024, slots: 2, engine: 'libdeflate' });
    expect(memberLengths(gz.bytes)).toHaveLength(2);
    expect(gunzipSync(gz.bytes).equals(big)).toBe(true);
  });

  it('honours the level, 0 to 9, and writes one empty member for an empty stream', async () => {
    const stored = await gzip(data, { chunk, slots: 2, level: 0, engine: 'libdeflate' });
    const best = await gzip(data, { chunk, slots: 2, level: 9, engine: 'libdeflate' });
    expect(stored.size).toBeGreaterThan(data.length);
    expect(best.size).toBeLessThan(stored.size);
    expect(gunzipSync(stored.bytes).equals(data)).toBe(true);
    const empty = await gzip(Buffer.alloc(0), { chunk, slots: 1, engine: 'libdeflate' });
    expect(gunzipSync(empty.bytes).length).toBe(0);
    expect(memberLengths(empty.bytes)).toHaveLength(1);
  });

  it('is the fastest engine here unless DAY11_GZIP_ENGINE=zlib', () => {
    expect(fastestEngine({})).toBe('libdeflate');
    expect(fastestEngine({ DAY11_GZIP_ENGINE: 'zlib' })).toBe('zlib');
  });
});
