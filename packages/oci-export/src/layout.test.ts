import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeEach, describe, expect, it } from 'vitest';
import { OciExportCodes, type OciExportError } from './errors.js';
import { exportImage } from './export.js';
import { asBase, cleanup, makeLayer, tempDir, type TestLayer } from './fixtures/layers.js';
import * as Layout from './layout.js';
import { assertTag, REF_NAME, sha256, type Descriptor } from './oci.js';

afterAll(cleanup);

describe('assertTag', () => {
  it.each(['hello', 'hello.1.0', '0install.2.18', 'ocaml/dune:3.22', 'a--b', 'x_y-z+w@v'])(
    'accepts %s',
    (tag) => {
      expect(() => assertTag(tag)).not.toThrow();
    },
  );
  it.each(['', 'hello world', '-lead', 'trail.', 'a..b', 'a/', '/a', 'ü', 'a---b'])(
    'refuses %j',
    (tag) => {
      expect(() => assertTag(tag)).toThrow(
        expect.objectContaining({ code: OciExportCodes.BAD_TAG }),
      );
    },
  );
});

describe('init and the index', () => {
  it('creates oci-layout and blobs/sha256; an empty layout has no tags', async () => {
    const layout = join(await tempDir('init'), 'oci');
    await Layout.init(layout);
    expect(JSON.parse(await readFile(join(layout, 'oci-layout'), 'utf8'))).toEqual({
      imageLayoutVersion: '1.0.0',
    });
    expect(await readdir(join(layout, 'blobs'))).toEqual(['sha256']);
    expect(await Layout.tags(layout)).toEqual([]);
  });

  it('refuses an oci-layout of another version', async () => {
    const layout = await tempDir('badlayout');
    await writeFile(join(layout, 'oci-layout'), '{"imageLayoutVersion":"9.9"}');
    await expect(Layout.init(layout)).rejects.toMatchObject({
      code: OciExportCodes.LAYOUT_INVALID,
    });
  });

  it('refuses a directory with files but no oci-layout, and changes nothing', async () => {
    const layout = await tempDir('notalayout');
    await writeFile(join(layout, 'notes.txt'), 'mine\n');
    const err = await Layout.init(layout).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: OciExportCodes.LAYOUT_INVALID,
      path: join(layout, 'oci-layout'),
    });
    expect((err as Error).message).toContain('notes.txt');
    expect(await readdir(layout)).toEqual(['notes.txt']);
    // A layout that lost its marker: the same.
    const lost = await tempDir('lostmarker');
    await mkdir(join(lost, 'blobs', 'sha256'), { recursive: true });
    await writeFile(join(lost, 'blobs', 'sha256', 'ab'), 'x');
    await expect(Layout.init(lost)).rejects.toMatchObject({
      code: OciExportCodes.LAYOUT_INVALID,
    });
    expect(await readdir(lost)).toEqual(['blobs']);
  });

  it('completes what an interrupted init left (empty blobs/sha256)', async () => {
    const layout = await tempDir('interrupted');
    await mkdir(join(layout, 'blobs', 'sha256'), { recursive: true });
    await Layout.init(layout);
    expect(await readdir(layout)).toEqual(['blobs', 'index.json', 'oci-layout']);
    expect(await Layout.readIndex(layout)).toMatchObject({ schemaVersion: 2, manifests: [] });
  });

  it('never writes the empty index over one a concurrent export tagged', async () => {
    const layout = await tempDir('inittagged');
    await Layout.init(layout);
    const tagged = Layout.withTag(await Layout.readIndex(layout), 'kept', {
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: `sha256:${'a'.repeat(64)}`,
      size: 1,
    });
    await Layout.writeIndex(layout, tagged);
    await Promise.all([Layout.init(layout), Layout.init(layout)]);
    expect((await Layout.tags(layout)).map((t) => t.tag)).toEqual(['kept']);
  });

  it('says that a layout does not exist, or is not one, instead of listing no tags', async () => {
    const missing = join(await tempDir('missing'), 'nothing-here');
    const err = await Layout.tags(missing).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: OciExportCodes.LAYOUT_INVALID, path: missing });
    expect((err as Error).message).toMatch(/no OCI image layout at .*does not exist/);
    expect((err as OciExportError).hint).toContain('day11 export --oci');
    const plain = await tempDir('plain');
    await expect(Layout.tags(plain)).rejects.toThrow(/is not an OCI image layout/);
    await expect(Layout.gc(plain)).rejects.toMatchObject({ code: OciExportCodes.LAYOUT_INVALID });
    await expect(Layout.removeTag(missing, 'x')).rejects.toMatchObject({
      code: OciExportCodes.LAYOUT_INVALID,
    });
    expect((await Layout.verify(missing)).map((p) => p.message)).toContainEqual(
      expect.stringMatching(/does not exist/),
    );
  });

  it('names the file and the fix when index.json is corrupt', async () => {
    const layout = await tempDir('corrupt');
    await Layout.init(layout);
    await writeFile(
      join(layout, 'index.json'),
      '{"schemaVersion": 2, "manifests": [{"digest": 1}]}',
    );
    const err = await Layout.tags(layout).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: OciExportCodes.INDEX_CORRUPT,
      path: join(layout, 'index.json'),
    });
    expect((err as OciExportError).hint).toMatch(/export each image again/);
    // Every problem, on one line (the CLI prints errors as one line).
    expect((err as Error).message).toMatch(/manifests\.0\.mediaType: .*; manifests\.0\.digest: /);
    expect((err as Error).message).not.toContain('\n');
    await writeFile(join(layout, 'index.json'), '{not json');
    await expect(Layout.readIndex(layout)).rejects.toMatchObject({
      code: OciExportCodes.INDEX_CORRUPT,
    });
  });

  it('withTag replaces the entry of the same tag and sorts by tag, untagged first', () => {
    const d = (digest: string, tag?: string): Descriptor => ({
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      digest: `sha256:${digest.repeat(64)}`,
      size: 1,
      ...(tag && { annotations: { [REF_NAME]: tag } }),
    });
    const index = {
      schemaVersion: 2 as const,
      manifests: [d('b', 'zeta'), d('c'), d('d', 'alpha')],
    };
    const next = Layout.withTag(index, 'zeta', d('e'));
    expect(next.manifests.map((m) => [m.digest[7], m.annotations?.[REF_NAME]])).toEqual([
      ['c', undefined],
      ['d', 'alpha'],
      ['e', 'zeta'],
    ]);
  });
});

describe('the blob store', () => {
  it('adds bytes once, by their digest, with no temporary name left', async () => {
    const layout = join(await tempDir('put'), 'oci');
    await Layout.init(layout);
    const bytes = Buffer.from('{"hello":1}');
    const ref = await Layout.putBlob(layout, bytes);
    expect(ref).toEqual({ digest: sha256(bytes), size: bytes.length });
    const { ino } = await stat(Layout.blobPath(layout, ref.digest));
    expect(await Layout.putBlob(layout, bytes)).toEqual(ref);
    expect((await stat(Layout.blobPath(layout, ref.digest))).ino).toBe(ino);
    expect(await Layout.hasBlob(layout, ref)).toBe(true);
    expect(await Layout.hasBlob(layout, { ...ref, size: ref.size + 1 })).toBe(false);
    expect(await readdir(join(layout, 'blobs', 'sha256'))).toEqual([ref.digest.slice(7)]);
  });

  it("links a private file in readable, as the layout's other blobs", async () => {
    const dir = await tempDir('link-mode');
    const layout = join(dir, 'oci');
    await Layout.init(layout);
    const file = join(dir, 'layer.tar.gz');
    await writeFile(file, 'private bytes', { mode: 0o600 });
    const digest = sha256(Buffer.from('private bytes'));
    expect(await Layout.linkBlob(layout, { file, digest, size: 13 })).toBe(true);
    expect((await stat(Layout.blobPath(layout, digest))).mode & 0o777).toBe(0o644);
    const put = await Layout.putBlob(layout, Buffer.from('{}'));
    expect((await stat(Layout.blobPath(layout, put.digest))).mode & 0o777).toBe(0o644);
  });

  it('links a file in once; a replaced file is refused, and nothing stays', async () => {
    const dir = await tempDir('link');
    const layout = join(dir, 'oci');
    await Layout.init(layout);
    const file = join(dir, 'blob');
    await writeFile(file, 'layer bytes');
    const blob = { file, digest: sha256(Buffer.from('layer bytes')), size: 11 };
    const { ino } = await stat(file);
    expect(await Layout.linkBlob(layout, { ...blob, ino })).toBe(true);
    expect((await stat(Layout.blobPath(layout, blob.digest))).ino).toBe(ino);
    expect(await Layout.linkBlob(layout, { ...blob, ino })).toBe(false);
    // Gone (as a gc would remove it) and linked again from a file that was replaced since.
    await writeFile(`${file}.new`, 'other bytes'); // while the old inode lives: a new one
    await rename(`${file}.new`, file);
    await rm(Layout.blobPath(layout, blob.digest));
    await expect(Layout.linkBlob(layout, { ...blob, ino })).rejects.toMatchObject({
      code: OciExportCodes.LAYER_CHANGED,
      path: file,
    });
    expect(await readdir(join(layout, 'blobs', 'sha256'))).toEqual([]);
  });
});

describe('tags, removeTag, gc, verify', () => {
  let osDir: string;
  let layout: string;
  let base: TestLayer;
  let shared: TestLayer;
  let onlyA: TestLayer;
  let onlyB: TestLayer;

  beforeEach(async () => {
    const root = await tempDir('layout');
    osDir = join(root, 'cache');
    layout = join(root, 'oci');
    base = await makeLayer(osDir, 'base', (fs) => writeFile(join(fs, 'base.txt'), 'base'));
    shared = await makeLayer(osDir, 'shared', (fs) => writeFile(join(fs, 'shared.txt'), 'shared'));
    onlyA = await makeLayer(osDir, 'a', (fs) => writeFile(join(fs, 'a.txt'), 'a'));
    onlyB = await makeLayer(osDir, 'b', (fs) => writeFile(join(fs, 'b.txt'), 'b'));
  });

  const exportBoth = async () => {
    const a = await exportImage({
      layout,
      tag: 'img.a',
      base: asBase(base),
      layers: [shared.dir, onlyA.dir],
    });
    const b = await exportImage({
      layout,
      tag: 'img.b',
      base: asBase(base),
      layers: [shared.dir, onlyB.dir],
    });
    return { a, b };
  };

  it('lists tags with their manifest digests, and removes one', async () => {
    const { a, b } = await exportBoth();
    expect(await Layout.tags(layout)).toEqual([
      expect.objectContaining({ tag: 'img.a', digest: a.manifestDigest }),
      expect.objectContaining({ tag: 'img.b', digest: b.manifestDigest }),
    ]);
    expect(await Layout.removeTag(layout, 'img.a')).toBe(true);
    expect(await Layout.removeTag(layout, 'img.a')).toBe(false);
    expect((await Layout.tags(layout)).map((t) => t.tag)).toEqual(['img.b']);
    expect(await Layout.verify(layout)).toEqual([]);
  });

  it('gc deletes only the blobs no manifest references, and dead temp files', async () => {
    const { a, b } = await exportBoth();
    const deadTemp = join(layout, 'blobs/sha256/.day11-tmp-999999999-abcd-x');
    const liveTemp = join(layout, `blobs/sha256/.day11-tmp-${process.pid}-abcd-x`);
    await writeFile(deadTemp, '');
    await writeFile(liveTemp, '');
    const first = await Layout.gc(layout);
    expect(first).toEqual({ removed: [], bytes: 0, temps: [deadTemp] });
    await Layout.removeTag(layout, 'img.a');
    const result = await Layout.gc(layout);
    const onlyInA = [a.manifestDigest, a.configDigest, a.layers[2]!.digest];
    expect(result.removed.sort()).toEqual(onlyInA.sort());
    expect(result.bytes).toBeGreaterThan(0);
    const left = await readdir(join(layout, 'blobs/sha256'));
    for (const l of b.layers) expect(left).toContain(l.digest.slice(7));
    expect(left).toContain(liveTemp.split('/').pop());
    expect(await Layout.verify(layout)).toEqual([]);
    expect(await readdir(layout)).toEqual(['blobs', 'index.json', 'oci-layout']); // lock released
  });

  it('gc deletes the temporary entries a killed writer left at the root', async () => {
    await exportBoth();
    // A kill while writing index.json, or while making the layout lock (a directory).
    const deadIndex = join(layout, '.day11-tmp-999999999-abcd-index.json');
    const deadLock = join(layout, '.day11-tmp-999999999-ef01-index.json.lock');
    const liveIndex = join(layout, `.day11-tmp-${process.pid}-abcd-index.json`);
    await writeFile(deadIndex, '{"schemaVersion":');
    await mkdir(deadLock);
    await writeFile(join(deadLock, 'owner'), '{"pid":999999999}');
    await writeFile(liveIndex, '');
    const result = await Layout.gc(layout);
    expect(result.temps.sort()).toEqual([deadIndex, deadLock].sort());
    expect((await readdir(layout)).sort()).toEqual(
      ['blobs', 'index.json', 'oci-layout', liveIndex.split('/').pop()!].sort(),
    );
    expect(await Layout.verify(layout)).toEqual([]);
  });

  it('recover removes what a killed exporter left (temps, its lock) but no blob, and leaves index.json alone', async () => {
    const { a } = await exportBoth();
    await Layout.removeTag(layout, 'img.a'); // a's blobs are unreferenced now: gc's, not recover's
    const index = await readFile(join(layout, 'index.json'));
    const deadBlob = join(layout, 'blobs/sha256/.day11-tmp-999999999-abcd-blob');
    const deadIndex = join(layout, '.day11-tmp-999999999-abcd-index.json');
    const liveIndex = join(layout, `.day11-tmp-${process.pid}-abcd-index.json`);
    const lock = join(layout, 'index.json.lock');
    for (const f of [deadBlob, deadIndex, liveIndex]) await writeFile(f, 'partial');
    await mkdir(lock);
    await writeFile(join(lock, 'owner'), '{"pid":999999999,"start":"1"}');
    const result = await Layout.recover(layout);
    expect(result.temps.sort()).toEqual([deadBlob, deadIndex].sort());
    expect(result.locks).toEqual([lock]);
    expect(await readFile(join(layout, 'index.json'))).toEqual(index);
    const blobs = await readdir(join(layout, 'blobs/sha256'));
    for (const l of a.layers) expect(blobs).toContain(l.digest.slice(7));
    expect(await readdir(layout)).toContain(liveIndex.split('/').pop());
    // A layout that does not exist has nothing to recover.
    expect(await Layout.recover(join(layout, 'missing'))).toMatchObject({ temps: [], locks: [] });
  });

  it('recover completes a layout whose making a kill cut short (oci-layout, no index.json)', async () => {
    const half = join(layout, '..', 'half');
    await mkdir(join(half, 'blobs/sha256'), { recursive: true });
    await writeFile(join(half, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
    await expect(Layout.tags(half)).rejects.toMatchObject({ code: 'OCI_LAYOUT_INVALID' });
    expect(await Layout.recover(half)).toMatchObject({ indexWritten: true });
    expect(await Layout.tags(half)).toEqual([]);
    expect(await Layout.verify(half)).toEqual([]);
    // A complete layout's index is never rewritten.
    expect(await Layout.recover(half)).toMatchObject({ indexWritten: false });
  });

  it('recover clears a layout killed while writing oci-layout (only a temp file); init then makes it', async () => {
    const half = join(layout, '..', 'before-marker');
    await mkdir(join(half, 'blobs/sha256'), { recursive: true });
    const temp = join(half, '.day11-tmp-999999999-abcd-oci-layout');
    await writeFile(temp, '{"imageLayout');
    expect(await Layout.recover(half)).toMatchObject({ temps: [temp], indexWritten: false });
    expect(await readdir(half)).toEqual(['blobs']);
    await Layout.init(half);
    expect(await Layout.verify(half)).toEqual([]);
  });

  it('the cache remembers the layouts it exported into, and forgets those gone', async () => {
    await exportBoth();
    const other = join(layout, '..', 'oci-2');
    await exportImage({ layout: other, tag: 'img.c', base: asBase(base), layers: [shared.dir] });
    expect(await Layout.remembered(osDir)).toEqual([layout, other].sort());
    // Idempotent: remembering again adds nothing.
    await Layout.remember({ osDir, layout });
    expect(await readdir(join(osDir, Layout.REGISTRY_DIR))).toHaveLength(2);
    // A note a killed process left half-written, or one whose layout is gone, goes.
    await writeFile(join(osDir, Layout.REGISTRY_DIR, '0123456789abcdef'), '{"lay');
    await rm(other, { recursive: true });
    expect(await Layout.remembered(osDir)).toEqual([layout]);
    expect(await readdir(join(osDir, Layout.REGISTRY_DIR))).toHaveLength(1);
  });

  it('gc deletes nothing when a referenced manifest is missing', async () => {
    const { a } = await exportBoth();
    await Layout.removeTag(layout, 'img.b');
    const { rm } = await import('node:fs/promises');
    await rm(Layout.blobPath(layout, a.manifestDigest));
    const before = await readdir(join(layout, 'blobs/sha256'));
    await expect(Layout.gc(layout)).rejects.toMatchObject({ code: OciExportCodes.BLOB_MISSING });
    expect(await readdir(join(layout, 'blobs/sha256'))).toEqual(before);
  });

  it('verify reports missing blobs, wrong sizes, wrong digests and wrong diff_ids', async () => {
    const { a, b } = await exportBoth();
    const { rm } = await import('node:fs/promises');
    await rm(Layout.blobPath(layout, a.layers[2]!.digest)); // only in a
    // b's own layer: other bytes of another size.
    const bLayer = Layout.blobPath(layout, b.layers[2]!.digest);
    await rm(bLayer);
    await writeFile(
      bLayer,
      Buffer.concat([
        await readFile(Layout.blobPath(layout, b.layers[1]!.digest)),
        Buffer.from('x'),
      ]),
    );
    const problems = await Layout.verify(layout);
    expect(problems).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          tag: 'img.a',
          digest: a.layers[2]!.digest,
          message: 'missing blob',
        }),
        expect.objectContaining({
          tag: 'img.b',
          digest: b.layers[2]!.digest,
          message: expect.stringMatching(/^size/) as string,
        }),
      ]),
    );
    // Same size, other content.
    await writeFile(bLayer, Buffer.alloc(b.layers[2]!.size, 1));
    expect(await Layout.verify(layout)).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          digest: b.layers[2]!.digest,
          message: expect.stringMatching(/^content hashes to/) as string,
        }),
      ]),
    );
  });

  it('verify reports a corrupt index and a missing oci-layout', async () => {
    await exportBoth();
    await writeFile(join(layout, 'index.json'), '[]');
    const { rm } = await import('node:fs/promises');
    await rm(join(layout, 'oci-layout'));
    const problems = await Layout.verify(layout);
    expect(problems.map((p) => p.path)).toEqual([
      join(layout, 'oci-layout'),
      join(layout, 'index.json'),
    ]);
  });

  it('verify finds a layer whose content does not match its diff_id', async () => {
    const root = await tempDir('diffid');
    const bad = join(root, 'oci');
    await exportImage({ layout: bad, tag: 't', base: asBase(base), layers: [] });
    const [tag] = await Layout.tags(bad);
    const manifest = JSON.parse(await readFile(Layout.blobPath(bad, tag!.digest), 'utf8')) as {
      config: Descriptor;
    };
    const config = JSON.parse(
      await readFile(Layout.blobPath(bad, manifest.config.digest), 'utf8'),
    ) as {
      rootfs: { diff_ids: string[] };
    };
    config.rootfs.diff_ids[0] = `sha256:${'0'.repeat(64)}`;
    // Rewrite config and manifest consistently, so only the diff_id is wrong.
    const { sha256 } = await import('./oci.js');
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDigest = sha256(configBytes);
    await writeFile(Layout.blobPath(bad, configDigest), configBytes);
    const m = {
      ...manifest,
      config: { ...manifest.config, digest: configDigest, size: configBytes.length },
    };
    const mBytes = Buffer.from(JSON.stringify(m));
    await writeFile(Layout.blobPath(bad, sha256(mBytes)), mBytes);
    const index = await Layout.readIndex(bad);
    await Layout.writeIndex(
      bad,
      Layout.withTag(index, 't', {
        ...index.manifests[0]!,
        digest: sha256(mBytes),
        size: mBytes.length,
      }),
    );
    const problems = await Layout.verify(bad);
    expect(problems).toEqual([
      expect.objectContaining({
        tag: 't',
        message: expect.stringContaining('uncompresses to') as string,
      }),
    ]);
  });

  it('keeps a valid layout valid: a fresh mkdir is not a layout until init', async () => {
    const dir = join(await tempDir('plain'), 'x');
    await mkdir(dir);
    expect((await Layout.verify(dir)).map((p) => p.message)).toEqual([
      'missing',
      `${dir} is not an OCI image layout: it has no oci-layout and no index.json`,
    ]);
  });
});
