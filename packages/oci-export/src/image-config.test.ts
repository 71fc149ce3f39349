import { mkdirSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OciExportCodes } from './errors.js';
import { exportImage, imageConfig } from './export.js';
import { asBase, cleanup, makeLayer, tempDir } from './fixtures/layers.js';
import * as LayerBlob from './layer-blob.js';
import * as Layout from './layout.js';

afterAll(cleanup);

describe('imageConfig', () => {
  it('is the config exportImage writes, byte for byte, without a layout', async () => {
    const root = await tempDir('config');
    const osDir = join(root, 'cache');
    const base = await makeLayer(osDir, 'base', (fs) => writeFileSync(join(fs, 'a'), 'a\n'));
    const dep = await makeLayer(
      osDir,
      'dep',
      (fs) => {
        mkdirSync(join(fs, 'usr'));
        writeFileSync(join(fs, 'usr/b'), 'b\n');
      },
      '2025-03-04T05:06:07.000Z',
    );
    const options = {
      base: asBase(base),
      layers: [dep.dir],
      createdBy: ['day11 step dep: make'],
      config: { Env: ['PATH=/bin'] },
    };
    const exported = await exportImage({ ...options, layout: join(root, 'oci'), tag: 't' });
    const written = await readFile(Layout.blobPath(join(root, 'oci'), exported.configDigest));
    const blobs = await Promise.all([base.dir, dep.dir].map((d) => LayerBlob.ensure(d)));
    expect((await imageConfig(options, blobs)).equals(written)).toBe(true);
  });

  it('refuses a blob count that does not match the layers', async () => {
    const root = await tempDir('config-count');
    const base = await makeLayer(join(root, 'cache'), 'base', (fs) =>
      writeFileSync(join(fs, 'a'), 'a\n'),
    );
    await expect(imageConfig({ base: asBase(base), layers: [] }, [])).rejects.toMatchObject({
      code: OciExportCodes.BAD_ARGUMENT,
    });
  });
});
