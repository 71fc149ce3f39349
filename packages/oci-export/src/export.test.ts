import { execFileSync } from 'node:child_process';
import { mkdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sys } from '@day11/exec';
import { OciExportCodes } from './errors.js';
import { exportImage, type ExportProgress } from './export.js';
import {
  asBase,
  cleanup,
  isRoot,
  makeLayer,
  parseTar,
  tempDir,
  type TestLayer,
} from './fixtures/layers.js';
import * as LayerBlob from './layer-blob.js';
import * as Layout from './layout.js';

afterAll(cleanup);

let root: string;
let osDir: string;
let layout: string;
let base: TestLayer;
let dep: TestLayer;
let app: TestLayer;

async function populate(): Promise<void> {
  base = await makeLayer(osDir, 'base', (fs) => {
    mkdirSync(join(fs, 'etc'));
    mkdirSync(join(fs, 'bin'));
    writeFileSync(join(fs, 'etc/os-release'), 'ID=test\n');
    writeFileSync(join(fs, 'bin/tool'), Buffer.alloc(5_000_000, 'tool '));
  });
  dep = await makeLayer(osDir, 'dep', (fs) => {
    mkdirSync(join(fs, 'usr/lib'), { recursive: true });
    writeFileSync(join(fs, 'usr/lib/libdep.so'), 'dep library');
    symlinkSync('libdep.so', join(fs, 'usr/lib/libdep.so.1'));
  });
  app = await makeLayer(osDir, 'app', (fs) => {
    mkdirSync(join(fs, 'opt/app'), { recursive: true });
    writeFileSync(join(fs, 'opt/app/run'), '#!/bin/sh\necho hi\n', { mode: 0o755 });
  });
}

beforeEach(async () => {
  root = await tempDir('export');
  osDir = join(root, 'cache');
  layout = join(root, 'oci');
  await populate();
});

afterEach(async () => {
  // Nothing of an export may stay behind: no lock, no temp file, no lease.
  expect(await leftovers()).toEqual([]);
});

async function leftovers(): Promise<string[]> {
  const out = execFileSync('find', [
    root,
    '(',
    '-name',
    '*.lock',
    '-o',
    '-name',
    '.day11-tmp-*',
    '-o',
    '-name',
    '*.lease',
    ')',
  ]);
  return out.toString().split('\n').filter(Boolean);
}

const blobFiles = async () => (await readdir(join(layout, 'blobs/sha256'))).sort();

describe('exportImage', () => {
  it('writes one layer blob per layer, base first, and a valid, tagged image', async () => {
    const r = await exportImage({
      layout,
      tag: 'app.1.0',
      base: asBase(base, 'test-base'),
      layers: [dep.dir, app.dir],
      config: {
        Env: ['PATH=/usr/bin:/bin'],
        Cmd: ['/opt/app/run'],
        WorkingDir: '/opt/app',
        Labels: { b: '2', a: '1' },
      },
    });
    expect(r.layers.map((l) => [l.dir, l.cached])).toEqual([
      [base.dir, false],
      [dep.dir, false],
      [app.dir, false],
    ]);
    expect(await Layout.verify(layout)).toEqual([]);
    expect(await Layout.tags(layout)).toEqual([
      expect.objectContaining({ tag: 'app.1.0', digest: r.manifestDigest }),
    ]);

    const manifest = JSON.parse(
      await readFile(Layout.blobPath(layout, r.manifestDigest), 'utf8'),
    ) as {
      layers: Array<{ mediaType: string; digest: string; size: number }>;
      config: { digest: string };
    };
    expect(manifest.config.digest).toBe(r.configDigest);
    expect(manifest.layers).toEqual(
      r.layers.map((l) => ({
        mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip',
        digest: l.digest,
        size: l.size,
      })),
    );
    const config = JSON.parse(
      await readFile(Layout.blobPath(layout, r.configDigest), 'utf8'),
    ) as Record<string, unknown>;
    expect(config).toEqual({
      created: '2025-01-02T03:04:05Z',
      architecture: expect.any(String) as string,
      os: 'linux',
      config: {
        Env: ['PATH=/usr/bin:/bin'],
        Cmd: ['/opt/app/run'],
        WorkingDir: '/opt/app',
        Labels: { a: '1', b: '2' },
      },
      rootfs: { type: 'layers', diff_ids: r.layers.map((l) => l.diffId) },
      history: [
        { created: '2025-01-02T03:04:05Z', created_by: 'day11 import test-base' },
        { created: '2025-01-02T03:04:05Z', created_by: `day11 build ${dep.dir.split('/').pop()}` },
        { created: '2025-01-02T03:04:05Z', created_by: `day11 build ${app.dir.split('/').pop()}` },
      ],
    });
    // The layer tar holds exactly that layer's files.
    const entries = await parseTar(await readFile(Layout.blobPath(layout, r.layers[1]!.digest)));
    expect(entries.map((e) => e.name)).toEqual([
      'usr/',
      'usr/lib/',
      'usr/lib/libdep.so',
      'usr/lib/libdep.so.1',
    ]);
  });

  it('caches each blob in its layer directory and hardlinks it into the layout', async () => {
    const r = await exportImage({ layout, tag: 'a', base: asBase(base), layers: [dep.dir] });
    for (const l of r.layers) {
      const cached = await LayerBlob.find(l.dir);
      expect(cached).toMatchObject({ digest: l.digest, diffId: l.diffId, size: l.size });
      const [a, b] = await Promise.all([
        stat(cached!.file),
        stat(Layout.blobPath(layout, l.digest)),
      ]);
      expect(b.ino).toBe(a.ino);
    }
  });

  it("caches a layer's blob private (0600) until a layout publishes it (0644, one inode)", async () => {
    const cached = await LayerBlob.ensure(dep.dir);
    expect((await stat(cached.file)).mode & 0o777).toBe(0o600);
    await exportImage({ layout, tag: 'a', base: asBase(base), layers: [dep.dir] });
    const published = await stat(Layout.blobPath(layout, cached.digest));
    expect(published.ino).toBe(cached.ino);
    expect(published.mode & 0o777).toBe(0o644);
  });

  it('compresses nothing on a warm re-export', async () => {
    const cold = await exportImage({
      layout,
      tag: 'a',
      base: asBase(base),
      layers: [dep.dir, app.dir],
    });
    const mtimes = await Promise.all(
      cold.layers.map(async (l) => (await stat(join(l.dir, 'layer.tar.gz'))).mtimeMs),
    );
    const events: ExportProgress[] = [];
    const other = join(root, 'oci2');
    const warm = await exportImage({
      layout: other,
      tag: 'a',
      base: asBase(base),
      layers: [dep.dir, app.dir],
      onProgress: (e) => events.push(e),
    });
    expect(warm.layers.every((l) => l.cached)).toBe(true);
    expect(warm.manifestDigest).toBe(cold.manifestDigest);
    expect(events.filter((e) => e.phase === 'compress')).toEqual([]);
    expect(events.map((e) => e.phase)).toEqual(['layer', 'layer', 'layer', 'tagged']);
    const after = await Promise.all(
      warm.layers.map(async (l) => (await stat(join(l.dir, 'layer.tar.gz'))).mtimeMs),
    );
    expect(after).toEqual(mtimes);
  });

  it('gives byte-identical blobs for the same tree exported twice, also after atime changes', async () => {
    const first = await exportImage({
      layout,
      tag: 'a',
      base: asBase(base),
      layers: [dep.dir, app.dir],
    });
    for (const l of first.layers) {
      await rm(join(l.dir, 'layer.tar.gz'));
      await rm(join(l.dir, 'layer.tar.gz.digests'));
    }
    await utimes(
      join(dep.fs, 'usr/lib/libdep.so'),
      new Date('2040-01-01'),
      (await stat(join(dep.fs, 'usr/lib/libdep.so'))).mtime,
    );
    const second = await exportImage({
      layout: join(root, 'again'),
      tag: 'a',
      base: asBase(base),
      layers: [dep.dir, app.dir],
    });
    expect(second.layers.every((l) => !l.cached)).toBe(true);
    expect(second.layers.map((l) => l.digest)).toEqual(first.layers.map((l) => l.digest));
    expect(second.manifestDigest).toBe(first.manifestDigest);
  });

  it('shares blobs between images with shared dependencies', async () => {
    const other = await makeLayer(osDir, 'other', (fs) => writeFile(join(fs, 'other'), 'other'));
    const a = await exportImage({
      layout,
      tag: 'a',
      base: asBase(base),
      layers: [dep.dir, app.dir],
    });
    const b = await exportImage({
      layout,
      tag: 'b',
      base: asBase(base),
      layers: [dep.dir, other.dir],
    });
    expect(b.layers.slice(0, 2)).toEqual(a.layers.slice(0, 2).map((l) => ({ ...l, cached: true })));
    // 4 distinct layers + 2 configs + 2 manifests.
    expect(await blobFiles()).toHaveLength(8);
    expect(await Layout.verify(layout)).toEqual([]);
  });

  it('replaces the index entry of a re-exported tag', async () => {
    await exportImage({ layout, tag: 'x', base: asBase(base), layers: [dep.dir] });
    const second = await exportImage({
      layout,
      tag: 'x',
      base: asBase(base),
      layers: [dep.dir, app.dir],
    });
    const index = await Layout.readIndex(layout);
    expect(index.manifests).toEqual([
      expect.objectContaining({
        digest: second.manifestDigest,
        annotations: { 'org.opencontainers.image.ref.name': 'x' },
      }),
    ]);
  });

  it('takes created from the option, then SOURCE_DATE_EPOCH, then the newest layer', async () => {
    const created = async (tag: string) => {
      const [t] = (await Layout.tags(layout)).filter((x) => x.tag === tag);
      const m = JSON.parse(await readFile(Layout.blobPath(layout, t!.digest), 'utf8')) as {
        config: { digest: string };
      };
      return (
        JSON.parse(await readFile(Layout.blobPath(layout, m.config.digest), 'utf8')) as {
          created: string;
        }
      ).created;
    };
    await exportImage({
      layout,
      tag: 'opt',
      base: asBase(base),
      layers: [],
      created: new Date('2020-02-02T02:02:02.5Z'),
    });
    process.env['SOURCE_DATE_EPOCH'] = '1000000000';
    try {
      await exportImage({ layout, tag: 'sde', base: asBase(base), layers: [] });
    } finally {
      delete process.env['SOURCE_DATE_EPOCH'];
    }
    const newer = await makeLayer(osDir, 'newer', () => undefined, '2026-06-07T08:09:10.123Z');
    await exportImage({ layout, tag: 'newest', base: asBase(base), layers: [newer.dir] });
    expect([await created('opt'), await created('sde'), await created('newest')]).toEqual([
      '2020-02-02T02:02:02Z',
      '2001-09-09T01:46:40Z',
      '2026-06-07T08:09:10Z',
    ]);
  });

  it('rebuilds the cache for another gzip level', async () => {
    const six = await exportImage({ layout, tag: 'a', base: asBase(base), layers: [] });
    const one = await exportImage({
      layout,
      tag: 'b',
      base: asBase(base),
      layers: [],
      gzipLevel: 1,
    });
    expect(one.layers[0]).toMatchObject({ cached: false, diffId: six.layers[0]!.diffId });
    expect(one.layers[0]!.digest).not.toBe(six.layers[0]!.digest);
    expect(await Layout.verify(layout)).toEqual([]);
  });

  it('refuses bad arguments before writing anything', async () => {
    const cases: Array<[Parameters<typeof exportImage>[0], string]> = [
      [{ layout, tag: 'no spaces', base: asBase(base), layers: [] }, OciExportCodes.BAD_TAG],
      [
        { layout, tag: 't', base: asBase(base), layers: [dep.dir, dep.dir] },
        OciExportCodes.BAD_ARGUMENT,
      ],
      [
        { layout, tag: 't', base: asBase(base), layers: [], gzipLevel: 11 },
        OciExportCodes.BAD_ARGUMENT,
      ],
      [
        { layout, tag: 't', base: asBase(base), layers: [], concurrency: 0 },
        OciExportCodes.BAD_ARGUMENT,
      ],
      [
        { layout, tag: 't', base: asBase(base), layers: [], config: { Env: ['NOEQUALS'] } },
        OciExportCodes.BAD_ARGUMENT,
      ],
    ];
    for (const [options, code] of cases)
      await expect(exportImage(options)).rejects.toMatchObject({ code });
    await expect(
      exportImage({ layout, tag: 't', base: asBase(base), layers: [join(osDir, 'nope')] }),
    ).rejects.toThrow();
    expect(await Layout.tags(layout).catch(() => [])).toEqual([]);
  });

  it('stops on abort, leaving no temp file, lock or half-written cache', async () => {
    const controller = new AbortController();
    const run = exportImage({
      layout,
      tag: 'a',
      base: asBase(base),
      layers: [dep.dir],
      signal: controller.signal,
      onProgress: (e) => e.phase === 'compress' && controller.abort(new Error('stop')),
    });
    await expect(run).rejects.toThrow('stop');
    expect(await LayerBlob.find(base.dir)).toBeUndefined();
    expect(await Layout.tags(layout)).toEqual([]);
  });

  it.skipIf(!isRoot)(
    'refuses a redirect_dir upper with a typed error and caches nothing',
    async () => {
      Sys.setXattrSync(join(app.fs, 'opt/app'), 'trusted.overlay.redirect', '/opt/old');
      await expect(
        exportImage({ layout, tag: 'a', base: asBase(base), layers: [app.dir] }),
      ).rejects.toMatchObject({
        code: OciExportCodes.UNSUPPORTED_UPPER,
        path: join(app.fs, 'opt/app'),
      });
      expect(await LayerBlob.find(app.dir)).toBeUndefined();
      expect(await Layout.tags(layout)).toEqual([]);
    },
  );

  it('copies blobs into a layout on another filesystem', async () => {
    const shm = await mkdtemp('/dev/shm/day11-oci-');
    try {
      const r = await exportImage({ layout: shm, tag: 'a', base: asBase(base), layers: [dep.dir] });
      const cache = await stat(join(base.dir, 'layer.tar.gz'));
      const blob = await stat(Layout.blobPath(shm, r.layers[0]!.digest));
      expect(blob.dev).not.toBe(cache.dev);
      expect(blob.size).toBe(cache.size);
      expect(await Layout.verify(shm)).toEqual([]);
      expect((await readdir(join(shm, 'blobs/sha256'))).some((n) => n.startsWith('.day11'))).toBe(
        false,
      );
    } finally {
      await rm(shm, { recursive: true, force: true });
    }
  });

  it('fails on a corrupt index.json without compressing or placing a blob', async () => {
    await exportImage({ layout, tag: 'a', base: asBase(base), layers: [] });
    await writeFile(join(layout, 'index.json'), '}garbage{');
    const blobs = await readdir(join(layout, 'blobs', 'sha256'));
    await expect(
      exportImage({ layout, tag: 'b', base: asBase(base), layers: [dep.dir] }),
    ).rejects.toMatchObject({
      code: OciExportCodes.INDEX_CORRUPT,
      path: join(layout, 'index.json'),
    });
    expect(await readdir(join(layout, 'blobs', 'sha256'))).toEqual(blobs);
    expect(await LayerBlob.find(dep.dir)).toBeUndefined();
  });

  it('heals a truncated blob in the layout', async () => {
    const r = await exportImage({ layout, tag: 'a', base: asBase(base), layers: [] });
    const path = Layout.blobPath(layout, r.layers[0]!.digest);
    await rm(path);
    await writeFile(path, 'truncated');
    await exportImage({ layout, tag: 'a', base: asBase(base), layers: [] });
    expect(await Layout.verify(layout)).toEqual([]);
  });
});
