import { createHash } from 'node:crypto';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import zlib from 'node:zlib';
import { afterAll, describe, expect, it } from 'vitest';
import { OciExportCodes } from './errors.js';
import { cleanup, tarOf, tempDir } from './fixtures/layers.js';
import { TarThread } from './tar-thread.js';

afterAll(cleanup);

const CHUNK = 64 * 1024;

/** A tree of many small files (several walk batches), a few large ones and a symlink. */
async function manyFiles(label: string): Promise<string> {
  const root = join(await tempDir(label), 'fs');
  for (let d = 0; d < 30; d++) {
    mkdirSync(join(root, `d${d}`), { recursive: true });
    for (let f = 0; f < 100; f++) writeFileSync(join(root, `d${d}/f${f}`), `file ${d}/${f}\n`);
  }
  writeFileSync(join(root, 'big'), Buffer.alloc(3 * CHUNK + 17, 'b'));
  symlinkSync('big', join(root, 'link'));
  return root;
}

/** Reads a thread's whole archive, giving every chunk back. */
async function drain(tar: TarThread): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const { data } of tar) {
    parts.push(Buffer.from(data));
    tar.recycle(data);
  }
  return Buffer.concat(parts);
}

describe('TarThread', () => {
  it('produces the same bytes, digest and CRC as the tar made on this thread, twice over', async () => {
    const root = await manyFiles('same-bytes');
    const expected = await tarOf(root, { chunkSize: CHUNK });
    for (let run = 0; run < 2; run++) {
      // The second run reuses the idle worker of the first.
      const tar = TarThread.start(root, { chunkSize: CHUNK, credits: 2 });
      const bytes = await drain(tar);
      expect(bytes.equals(expected)).toBe(true);
      expect(await tar.summary).toEqual({
        diffId: `sha256:${createHash('sha256').update(expected).digest('hex')}`,
        tarSize: expected.length,
        crc: zlib.crc32(expected),
      });
    }
    // Asked for no CRC (libdeflate's members carry their own): the rest is the same.
    const tar = TarThread.start(root, { chunkSize: CHUNK, credits: 2, crc: false });
    expect((await drain(tar)).equals(expected)).toBe(true);
    expect(await tar.summary).toMatchObject({ tarSize: expected.length, crc: 0 });
  });

  it("rebuilds the walk's typed error, naming the directory", async () => {
    const root = join(await tempDir('bad-name'), 'fs');
    mkdirSync(root);
    writeFileSync(Buffer.concat([Buffer.from(`${root}/caf`), Buffer.from([0xe9])]), 'x');
    const tar = TarThread.start(root, { chunkSize: CHUNK, credits: 2 });
    await expect(drain(tar)).rejects.toMatchObject({
      code: OciExportCodes.BAD_FILENAME,
      path: root,
    });
    await expect(tar.summary).rejects.toMatchObject({ code: OciExportCodes.BAD_FILENAME });
    // A later archive gets a fresh worker and works.
    const ok = await manyFiles('after-error');
    expect((await drain(TarThread.start(ok, { chunkSize: CHUNK, credits: 2 }))).length).toBe(
      (await tarOf(ok, { chunkSize: CHUNK })).length,
    );
  });

  it('stops on abort with the signal’s reason', async () => {
    const root = await manyFiles('abort');
    const controller = new AbortController();
    const tar = TarThread.start(root, { chunkSize: CHUNK, credits: 1, signal: controller.signal });
    const reason = new Error('stop here');
    let chunks = 0;
    const reading = (async () => {
      for await (const { data } of tar) {
        if (++chunks === 1) controller.abort(reason);
        tar.recycle(data);
      }
    })();
    await expect(reading).rejects.toBe(reason);
    await expect(tar.summary).rejects.toBe(reason);
  });

  it('frees a chunk given back once the worker has finished', async () => {
    const root = join(await tempDir('late-recycle'), 'fs');
    mkdirSync(root);
    writeFileSync(join(root, 'small'), 'x');
    const tar = TarThread.start(root, { chunkSize: CHUNK, credits: 2 });
    const chunks = [];
    for await (const { data } of tar) chunks.push(data);
    await tar.summary;
    for (const chunk of chunks) tar.recycle(chunk);
    expect(chunks.map((c) => c.buffer.byteLength)).toEqual(chunks.map(() => 0));
  });

  it('stops the worker when the reader leaves early', async () => {
    const root = await manyFiles('early');
    const tar = TarThread.start(root, { chunkSize: CHUNK, credits: 1 });
    for await (const chunk of tar) {
      expect(chunk.data.length).toBe(CHUNK);
      break;
    }
    await expect(tar.summary).rejects.toThrow(/abandoned/);
  });
});
