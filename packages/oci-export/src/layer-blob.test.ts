import { copyFile, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { gunzipSync, inflateRawSync } from 'node:zlib';
import { Libdeflate, TempName } from '@day11/exec';
import { OciExportCodes, OciExportError } from './errors.js';
import { exportImage } from './export.js';
import { asBase, cleanup, makeLayer, tempDir } from './fixtures/layers.js';
import * as LayerBlob from './layer-blob.js';

afterAll(cleanup);

const fill = async (fs: string) => writeFile(join(fs, 'data'), 'same bytes\n'.repeat(1000));

describe('LayerBlob.adopt', () => {
  it('caches a blob made elsewhere, so an export of the layer compresses nothing', async () => {
    const osDir = join(await tempDir('adopt'), 'cache');
    const origin = await makeLayer(osDir, 'origin', fill);
    const pulled = await makeLayer(osDir, 'pulled', fill);
    const made = await LayerBlob.ensure(origin.dir);
    const temp = TempName.beside(join(osDir, 'layer.tar.gz'));
    await copyFile(made.file, temp);

    const adopted = await LayerBlob.adopt(pulled.dir, {
      file: temp,
      digest: made.digest,
      diffId: made.diffId,
      size: made.size,
      tarSize: made.tarSize,
      encoding: LayerBlob.encoding(),
    });
    expect(adopted).toMatchObject({ digest: made.digest, cached: true });
    expect(await LayerBlob.find(pulled.dir)).toMatchObject({ digest: made.digest });
    await expect(stat(temp)).rejects.toThrow(/ENOENT/);

    const { layers } = await exportImage({
      layout: join(osDir, '..', 'oci'),
      tag: 't',
      base: asBase(pulled),
      layers: [],
    });
    expect(layers[0]).toMatchObject({ digest: made.digest, cached: true });
  });

  it('keeps the blob already cached, and deletes the offered file', async () => {
    const osDir = join(await tempDir('adopt-kept'), 'cache');
    const layer = await makeLayer(osDir, 'layer', fill);
    const made = await LayerBlob.ensure(layer.dir);
    const temp = TempName.beside(join(osDir, 'layer.tar.gz'));
    await copyFile(made.file, temp);
    const offered = { ...made, file: temp, encoding: LayerBlob.encoding() };
    expect((await LayerBlob.adopt(layer.dir, offered)).ino).toBe(made.ino);
    expect((await readdir(osDir)).filter((n) => TempName.is(n))).toEqual([]);
  });

  it('refuses malformed digests and another format, deleting the file', async () => {
    const osDir = join(await tempDir('adopt-bad'), 'cache');
    const layer = await makeLayer(osDir, 'layer', fill);
    for (const bad of [
      { digest: 'md5:abc', encoding: LayerBlob.encoding() },
      { digest: `sha256:${'0'.repeat(64)}`, encoding: { ...LayerBlob.encoding(), format: 99 } },
    ]) {
      const temp = TempName.beside(join(osDir, 'layer.tar.gz'));
      await writeFile(temp, 'x');
      const err = await LayerBlob.adopt(layer.dir, {
        file: temp,
        diffId: `sha256:${'1'.repeat(64)}`,
        size: 1,
        tarSize: 1,
        ...bad,
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(OciExportError);
      expect((err as OciExportError).code).toBe(OciExportCodes.BAD_ARGUMENT);
      await expect(stat(temp)).rejects.toThrow(/ENOENT/);
    }
    expect(await LayerBlob.find(layer.dir)).toBeUndefined();
  });
});

describe.skipIf(!Libdeflate.load())('LayerBlob encodings', () => {
  it('caches one member per chunk with libdeflate (format 2), one member with DAY11_GZIP_ENGINE=zlib (format 1), each rebuilding the other', async () => {
    const osDir = join(await tempDir('formats'), 'cache');
    const layer = await makeLayer(osDir, 'layer', async (fs) => {
      // Three chunks' worth, so libdeflate writes three members.
      await writeFile(join(fs, 'big'), Buffer.alloc(2.5 * 1024 * 1024, 'day11 '));
    });
    const fast = await LayerBlob.ensure(layer.dir);
    expect(LayerBlob.encoding().format).toBe(2);
    expect(
      JSON.parse(await readFile(join(layer.dir, LayerBlob.DIGESTS_FILE), 'utf8')),
    ).toMatchObject({ format: 2 });
    const gz = await readFile(fast.file);
    expect(gunzipSync(gz).length).toBe(fast.tarSize);
    expect(gz.indexOf(Buffer.from([0x1f, 0x8b, 8]), 10)).toBeGreaterThan(0); // a second member

    process.env['DAY11_GZIP_ENGINE'] = 'zlib';
    try {
      expect(LayerBlob.encoding().format).toBe(1);
      expect(await LayerBlob.find(layer.dir)).toBeUndefined();
      const single = await LayerBlob.ensure(layer.dir);
      expect(single).toMatchObject({ cached: false, diffId: fast.diffId, tarSize: fast.tarSize });
      expect(single.digest).not.toBe(fast.digest);
      // One deflate stream: inflating past the 10-byte header yields the whole tar.
      const bytes = await readFile(single.file);
      expect(inflateRawSync(bytes.subarray(10, -8)).length).toBe(fast.tarSize);
    } finally {
      delete process.env['DAY11_GZIP_ENGINE'];
    }
    expect(await LayerBlob.find(layer.dir)).toBeUndefined();
    expect(await LayerBlob.ensure(layer.dir)).toMatchObject({ cached: false, digest: fast.digest });
  });
});
