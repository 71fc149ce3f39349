import { lstat, mkdir, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Sys } from '@day11/exec';
import { LayerCodes, LayerError } from './errors.js';
import {
  isRoot,
  packTar,
  paxBody,
  removeAll,
  snapshot,
  tempDir,
  type TestEntry,
} from './import.test-utils.js';
import { extractStream, extractTarball, sniffCompression } from './tar-extract.js';
import { parsePaxRecords } from './tar-pax.js';

const dirs: string[] = [];
let work: string;
let dest: string;

beforeEach(async () => {
  work = await tempDir();
  dirs.push(work);
  dest = join(work, 'dest');
  await mkdir(dest, { mode: 0o700 });
});
afterEach(() => removeAll(dirs));

const T = (s: number) => new Date(s * 1000);
const LONG_100 = `long-${'x'.repeat(120)}.txt`;
const LONG_255 = `${'d'.repeat(200)}/${'f'.repeat(200)}`;
const BINARY = Buffer.from([0x00, 0xff, 0x80, 0x0a, 0x3d, 0x20, 0xc3]);
const BIG_UID = 2 ** 31 + 5;

/** A rootfs exercising every property the extractor keeps. */
function goodEntries(): TestEntry[] {
  return [
    { header: { name: './', type: 'directory', mode: 0o755, mtime: T(1000) } },
    {
      header: {
        name: './etc/',
        type: 'directory',
        mode: 0o750,
        uid: 1000,
        gid: 1001,
        mtime: T(2000),
      },
    },
    {
      header: { name: './etc/passwd', mode: 0o644, uid: 0, gid: 42, mtime: T(3000) },
      body: 'root:x:0:0::/root:/bin/sh\n',
    },
    { header: { name: './tmp/', type: 'directory', mode: 0o1777, mtime: T(4000) } },
    { header: { name: './bin/su', mode: 0o4755, uid: 0, gid: 0, mtime: T(5000) }, body: 'setuid' },
    { header: { name: './bin/sg', mode: 0o2711, uid: 3, gid: 4, mtime: T(5001) }, body: 'setgid' },
    {
      header: {
        name: './bin/sh',
        type: 'symlink',
        linkname: '/bin/busybox',
        uid: 7,
        gid: 8,
        mtime: T(6000),
      },
    },
    { header: { name: './bin/link', type: 'link', linkname: './bin/su' } },
    {
      header: {
        name: './dev/null',
        type: 'character-device',
        mode: 0o666,
        devmajor: 1,
        devminor: 3,
      },
    },
    {
      header: {
        name: './dev/loop0',
        type: 'block-device',
        mode: 0o660,
        devmajor: 7,
        devminor: 0,
        gid: 6,
      },
    },
    { header: { name: './run/fifo', type: 'fifo', mode: 0o640, mtime: T(7000) } },
    {
      header: { name: './big-ids', uid: 0, gid: 0, pax: { uid: String(BIG_UID), gid: '3000000' } },
      body: 'big',
    },
    { header: { name: LONG_100 }, body: 'long name' },
    { header: { name: LONG_255 }, body: 'very long name' },
    { header: { name: './données/ünïcødé-名前.txt' }, body: 'utf8' },
    { header: { name: './with-xattr', pax: { 'SCHILY.xattr.user.note': 'hello' } }, body: 'x' },
    { rawPax: paxBody({ 'SCHILY.xattr.user.bin': BINARY }) },
    { header: { name: './binary-xattr' }, body: 'y' },
    { header: { name: './late/child', mtime: T(8000) }, body: 'c' },
    // A directory entry after its contents: its mtime must still be the archive's.
    { header: { name: './late/', type: 'directory', mode: 0o700, mtime: T(9000) } },
    { header: { name: './precise', pax: { mtime: '1700000000.25' } }, body: 'p' },
  ];
}

async function extractBuffer(bytes: Buffer) {
  return extractStream({
    source: Readable.from([bytes]),
    dest,
    archive: { label: 'test archive' },
  });
}

async function expectRefused(
  entries: TestEntry[],
  code: string,
  pattern: RegExp,
): Promise<LayerError> {
  const err: unknown = await extractBuffer(await packTar(entries)).catch((e: unknown) => e);
  expect(err).toBeInstanceOf(LayerError);
  expect((err as LayerError).code).toBe(code);
  expect((err as LayerError).message).toMatch(pattern);
  return err as LayerError;
}

describe.skipIf(!isRoot)('extract a good rootfs (root)', () => {
  it('keeps contents, owners, modes, times, links, devices, long names and xattrs', async () => {
    const { entries } = await extractBuffer(await packTar(goodEntries()));
    expect(entries).toBe(goodEntries().length - 1); // the raw PAX header is not an entry
    const snap = await snapshot(dest);
    const at = (rel: string) => {
      const info = snap.get(rel);
      if (!info) throw new Error(`missing ${rel}`);
      return info;
    };
    expect(at('.')).toMatchObject({ type: 'dir', mode: 0o755, mtime: 1000 });
    expect(at('etc')).toMatchObject({
      type: 'dir',
      mode: 0o750,
      uid: 1000,
      gid: 1001,
      mtime: 2000,
    });
    expect(await readFile(join(dest, 'etc/passwd'), 'utf8')).toBe('root:x:0:0::/root:/bin/sh\n');
    expect(at('etc/passwd')).toMatchObject({ mode: 0o644, gid: 42, mtime: 3000 });
    expect(at('tmp')).toMatchObject({ mode: 0o1777, mtime: 4000 });
    expect(at('bin/su')).toMatchObject({ mode: 0o4755, uid: 0, mtime: 5000 });
    expect(at('bin/sg')).toMatchObject({ mode: 0o2711, uid: 3, gid: 4 });
    expect(at('bin/sh')).toMatchObject({
      type: 'symlink',
      detail: '/bin/busybox',
      uid: 7,
      gid: 8,
      mtime: 6000,
    });
    expect((await stat(join(dest, 'bin/link'))).ino).toBe((await stat(join(dest, 'bin/su'))).ino);
    expect(at('bin')).toMatchObject({ type: 'dir', mode: 0o755, uid: 0 }); // implied parent
    expect(at('dev/null')).toMatchObject({ type: 'char', mode: 0o666, detail: '1:3' });
    expect(at('dev/loop0')).toMatchObject({ type: 'block', mode: 0o660, detail: '7:0', gid: 6 });
    expect(at('run/fifo')).toMatchObject({ type: 'fifo', mode: 0o640, mtime: 7000 });
    expect(at('big-ids')).toMatchObject({ uid: BIG_UID, gid: 3000000 });
    expect(await readFile(join(dest, LONG_100), 'utf8')).toBe('long name');
    expect(await readFile(join(dest, LONG_255), 'utf8')).toBe('very long name');
    expect(await readdir(join(dest, 'données'))).toEqual(['ünïcødé-名前.txt']);
    expect(at('with-xattr').xattrs).toEqual({ 'user.note': Buffer.from('hello').toString('hex') });
    expect(await Sys.getXattr(join(dest, 'binary-xattr'), 'user.bin')).toEqual(BINARY);
    expect(at('late')).toMatchObject({ mode: 0o700, mtime: 9000 });
    expect((await lstat(join(dest, 'precise'))).mtimeMs).toBe(1700000000250);
  });

  it('reads gzip tarballs, detected by magic bytes, whatever the file name', async () => {
    const tarball = join(work, 'rootfs.tar'); // gzip content despite the name
    await writeFile(tarball, gzipSync(await packTar(goodEntries())));
    expect(await sniffCompression(tarball)).toBe('gzip');
    const { entries, sha256 } = await extractTarball({ tarball, dest });
    expect(entries).toBe(goodEntries().length - 1);
    expect(sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(await readFile(join(dest, 'etc/passwd'), 'utf8')).toContain('root');
  });

  it('replaces a symlink planted earlier instead of writing through it', async () => {
    const outside = join(work, 'outside');
    await writeFile(outside, 'host file');
    await extractBuffer(
      await packTar([
        { header: { name: 'evil', type: 'symlink', linkname: outside } },
        { header: { name: 'evil' }, body: 'archive file' },
        { header: { name: 'evil-dir', type: 'symlink', linkname: work } },
        { header: { name: 'evil-dir/', type: 'directory' } },
        { header: { name: 'evil-dir/inside' }, body: 'inside' },
      ]),
    );
    expect(await readFile(outside, 'utf8')).toBe('host file');
    expect(await readFile(join(dest, 'evil'), 'utf8')).toBe('archive file');
    expect((await lstat(join(dest, 'evil-dir'))).isDirectory()).toBe(true);
    expect(await readdir(work)).toEqual(['dest', 'outside']);
  });

  it('lets a later entry replace a directory, and a directory entry update an existing one', async () => {
    await extractBuffer(
      await packTar([
        { header: { name: 'a/b/c' }, body: 'c' },
        { header: { name: 'a', type: 'symlink', linkname: '/nowhere' } },
        { header: { name: 'd/', type: 'directory', mode: 0o700 } },
        { header: { name: 'd/e' }, body: 'e' },
        { header: { name: 'd/', type: 'directory', mode: 0o711, uid: 5 } },
      ]),
    );
    expect(await readlink(join(dest, 'a'))).toBe('/nowhere');
    const d = await lstat(join(dest, 'd'));
    expect([d.mode & 0o7777, d.uid]).toEqual([0o711, 5]);
    expect(await readFile(join(dest, 'd/e'), 'utf8')).toBe('e');
  });

  it('gives the root 0755 when the archive has no ./ entry', async () => {
    await extractBuffer(await packTar([{ header: { name: 'only' }, body: '1' }]));
    expect((await stat(dest)).mode & 0o7777).toBe(0o755);
  });
});

describe.skipIf(!isRoot)('refuse hostile entries (root: entries are chowned)', () => {
  const U = LayerCodes.IMPORT_UNSAFE_PATH;

  it('refuses ".." components, naming the entry and the archive', async () => {
    const err = await expectRefused(
      [{ header: { name: '../escape' }, body: 'x' }],
      U,
      /"\.\.\/escape".*test archive/,
    );
    expect(err.hint).toMatch(/relative member names/);
    await expectRefused([{ header: { name: 'a/../../escape' }, body: 'x' }], U, /".." component/);
    expect(await readdir(work)).toEqual(['dest']);
  });

  it('refuses absolute names', async () => {
    await expectRefused(
      [{ header: { name: '/etc/evil' }, body: 'x' }],
      U,
      /"\/etc\/evil".*absolute path/,
    );
  });

  it('refuses writes through a symlink created earlier in the archive', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    await expectRefused(
      [
        { header: { name: 'evil', type: 'symlink', linkname: outside } },
        { header: { name: 'evil/file' }, body: 'pwned' },
      ],
      U,
      /"evil\/file".*through the symlink "evil"/,
    );
    expect(await readdir(outside)).toEqual([]);
  });

  it('refuses a relative symlink escape too', async () => {
    await expectRefused(
      [
        { header: { name: 'a/', type: 'directory' } },
        { header: { name: 'a/up', type: 'symlink', linkname: '../..' } },
        { header: { name: 'a/up/escaped' }, body: 'pwned' },
      ],
      U,
      /through the symlink "a\/up"/,
    );
    expect(await readdir(work)).toEqual(['dest']);
  });

  it('refuses hardlinks to outside, absolute or through-symlink targets', async () => {
    await expectRefused(
      [{ header: { name: 'h', type: 'link', linkname: '../outside' } }],
      U,
      /".." component/,
    );
    await expectRefused(
      [{ header: { name: 'h', type: 'link', linkname: '/etc/passwd' } }],
      U,
      /absolute path/,
    );
    await expectRefused(
      [
        { header: { name: 'evil', type: 'symlink', linkname: '/etc' } },
        { header: { name: 'h', type: 'link', linkname: 'evil/passwd' } },
      ],
      U,
      /through the symlink "evil"/,
    );
  });

  it('refuses a non-directory entry for the root', async () => {
    await expectRefused(
      [{ header: { name: './', type: 'symlink', linkname: '/' } }],
      U,
      /root directory/,
    );
  });
});

describe.skipIf(!isRoot)('refuse corrupt archives (root)', () => {
  const F = LayerCodes.IMPORT_FAILED;

  async function tarballError(bytes: Buffer): Promise<LayerError> {
    const tarball = join(work, 'bad.tar');
    await writeFile(tarball, bytes);
    const err: unknown = await extractTarball({ tarball, dest }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(LayerError);
    expect((err as LayerError).code).toBe(F);
    expect((err as LayerError).path).toBe(tarball);
    expect((err as LayerError).message).toContain(tarball);
    return err as LayerError;
  }

  const big = (): Promise<Buffer> =>
    packTar([
      { header: { name: 'a' }, body: 'a' },
      { header: { name: 'big' }, body: Buffer.alloc(200_000, 1) },
    ]);

  it('reports a truncated tar', async () => {
    const err = await tarballError((await big()).subarray(0, 50_000));
    expect(err.message).toMatch(/Unexpected end of data/);
    expect(err.hint).toMatch(/truncated/);
  });

  it('reports a truncated gzip', async () => {
    const gz = gzipSync(await big());
    await tarballError(gz.subarray(0, Math.floor(gz.length / 2)));
  });

  it('reports garbage that is not a tar', async () => {
    await tarballError(Buffer.from('this is not a tarball\n'.repeat(100)));
  });

  it('reports a compression it cannot read', async () => {
    const err = await tarballError(Buffer.from([0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0, 0]));
    expect(err.message).toMatch(/zstd-compressed/);
  });

  it('tells bzip2 by its block magic, not by a name that starts with BZh', async () => {
    const err = await tarballError(Buffer.from('BZh91AY&SY\x00\x00', 'latin1'));
    expect(err.message).toMatch(/bzip2-compressed/);
    const tarball = join(work, 'plain.tar');
    await writeFile(tarball, await packTar([{ header: { name: 'BZh-notes' }, body: 'n' }]));
    expect(await sniffCompression(tarball)).toBe('none');
  });

  it('reports a missing tarball', async () => {
    const err: unknown = await extractTarball({ tarball: join(work, 'nope.tar'), dest }).catch(
      (e: unknown) => e,
    );
    expect((err as LayerError).code).toBe(F);
    expect((err as LayerError).message).toMatch(/nope\.tar.*ENOENT/);
  });

  it('reports a hardlink to an entry that is not there', async () => {
    await expectRefused(
      [{ header: { name: 'h', type: 'link', linkname: 'missing' } }],
      F,
      /not in the archive/,
    );
  });
});

describe('PAX records', () => {
  it.skipIf(!isRoot)('keeps raw xattrs in step with tar-stream across global headers', async () => {
    await extractBuffer(
      await packTar([
        { rawPax: paxBody({ 'SCHILY.xattr.user.global': 'G' }), global: true },
        { header: { name: 'a', pax: { 'SCHILY.xattr.user.local': 'L' } }, body: 'a'.repeat(700) },
        { header: { name: 'b' }, body: 'b' },
        { rawPax: paxBody({ 'SCHILY.xattr.user.bin': BINARY }) },
        { header: { name: 'c' }, body: 'c' },
      ]),
    );
    // Like tar-stream, global records apply to entries that have a local PAX header.
    expect(await Sys.getXattr(join(dest, 'a'), 'user.global')).toEqual(Buffer.from('G'));
    expect(await Sys.getXattr(join(dest, 'a'), 'user.local')).toEqual(Buffer.from('L'));
    expect(await Sys.listXattrs(join(dest, 'b'))).toEqual([]);
    expect(await Sys.getXattr(join(dest, 'c'), 'user.bin')).toEqual(BINARY);
  });

  it('keeps binary xattr values and the size record', () => {
    const records = parsePaxRecords(
      paxBody({ path: 'x', size: '12', 'SCHILY.xattr.security.capability': BINARY }),
    );
    expect(records.size).toBe(12);
    expect(records.xattrs.get('security.capability')).toEqual(BINARY);
  });
});

describe('cancellation', () => {
  it('stops when the signal is aborted', async () => {
    const controller = new AbortController();
    controller.abort();
    const bytes = await packTar([{ header: { name: 'a' }, body: 'a' }]);
    const err: unknown = await extractStream({
      source: Readable.from([bytes]),
      dest,
      archive: { label: 'x' },
      signal: controller.signal,
    }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('AbortError');
  });
});

describe.skipIf(!isRoot)('image-layer whiteouts (root: devices and trusted xattrs)', () => {
  const extractAs = async (entries: TestEntry[], whiteouts: 'keep' | 'overlay' | 'apply') =>
    extractStream({
      source: Readable.from([await packTar(entries)]),
      dest,
      archive: { label: 'layer' },
      whiteouts,
    });

  const layerWithWhiteouts: TestEntry[] = [
    { header: { name: 'a/', type: 'directory', mode: 0o750, mtime: T(100) } },
    { header: { name: 'a/.wh..wh..opq', mtime: T(101) }, body: '' },
    { header: { name: 'a/.wh.gone', mtime: T(102) }, body: '' },
    { header: { name: 'a/keep', mtime: T(103) }, body: 'k' },
    { header: { name: '.wh.top', mtime: T(104) }, body: '' },
    { header: { name: 'a/.wh..wh.plnk', mtime: T(105) }, body: '' },
  ];

  it('keep: whiteouts stay ordinary files (the default, for rootfs archives)', async () => {
    await extractAs(layerWithWhiteouts, 'keep');
    expect((await readdir(join(dest, 'a'))).sort()).toEqual([
      '.wh..wh..opq',
      '.wh..wh.plnk',
      '.wh.gone',
      'keep',
    ]);
  });

  it('overlay: .wh.<name> becomes a 0/0 whiteout, .wh..wh..opq an opaque directory', async () => {
    await extractAs(layerWithWhiteouts, 'overlay');
    const snap = await snapshot(dest);
    expect((await readdir(join(dest, 'a'))).sort()).toEqual(['gone', 'keep']);
    expect(snap.get('a')).toMatchObject({ type: 'dir', mode: 0o750, mtime: 100 });
    expect(snap.get('a')?.xattrs).toEqual({ 'trusted.overlay.opaque': '79' });
    expect(snap.get('a/gone')).toMatchObject({ type: 'char', mode: 0, uid: 0, detail: '0:0' });
    expect(snap.get('a/gone')?.mtime).toBe(102);
    expect(snap.get('top')).toMatchObject({ type: 'char', detail: '0:0', mtime: 104 });
  });

  it('apply: whiteouts remove what earlier layers wrote, keeping directory times', async () => {
    await extractAs(
      [
        { header: { name: 'a/', type: 'directory', mtime: T(10) } },
        { header: { name: 'a/x' }, body: 'x' },
        { header: { name: 'a/y' }, body: 'y' },
        { header: { name: 'c/', type: 'directory', mtime: T(20) } },
        { header: { name: 'c/sub/', type: 'directory' } },
        { header: { name: 'c/sub/lower' }, body: 'l' },
        { header: { name: 'c/old' }, body: 'o' },
      ],
      'apply',
    );
    await extractAs(
      [
        { header: { name: 'a/.wh.x' }, body: '' },
        // Before the opaque marker, in the same layer: kept; its lower contents are not.
        { header: { name: 'c/sub/mine' }, body: 'm' },
        { header: { name: 'c/.wh..wh..opq' }, body: '' },
        { header: { name: 'c/new' }, body: 'n' },
        { header: { name: 'missing/.wh.nothing' }, body: '' },
      ],
      'apply',
    );
    expect(await readdir(join(dest, 'a'))).toEqual(['y']);
    expect((await readdir(join(dest, 'c'))).sort()).toEqual(['new', 'sub']);
    expect(await readdir(join(dest, 'c/sub'))).toEqual(['mine']);
    const snap = await snapshot(dest);
    expect(snap.get('a')?.mtime).toBe(10);
    expect(snap.has('missing')).toBe(false);
  });

  it('refuses a whiteout of ".." and a whiteout through a symlink', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    await writeFile(join(outside, 'victim'), 'v');
    for (const mode of ['overlay', 'apply'] as const) {
      const err = await extractAs([{ header: { name: 'a/.wh...' }, body: '' }], mode).catch(
        (e: unknown) => e,
      );
      expect((err as LayerError).code).toBe(LayerCodes.IMPORT_UNSAFE_PATH);
    }
    await extractAs([{ header: { name: 'link', type: 'symlink', linkname: outside } }], 'apply');
    const err = await extractAs([{ header: { name: 'link/.wh.victim' }, body: '' }], 'apply').catch(
      (e: unknown) => e,
    );
    expect((err as LayerError).code).toBe(LayerCodes.IMPORT_UNSAFE_PATH);
    expect(await readFile(join(outside, 'victim'), 'utf8')).toBe('v');
  });
});

/**
 * Past its first 64 regular files, an extraction hands small files and
 * symlinks to worker threads (FileWriter). Each case is extracted twice, after
 * 100 filler files (threads) and without (all on the main thread): trees and
 * errors must be the same.
 */
describe.skipIf(!isRoot)('files written by worker threads (root)', () => {
  const FILLERS = 100;
  const root: TestEntry = { header: { name: './', type: 'directory', mode: 0o755, mtime: T(10) } };

  async function outcome(entries: TestEntry[], fillers: number) {
    const out = join(work, `out-${fillers}`);
    await mkdir(out);
    const filler = (i: number): TestEntry => ({
      header: { name: `zz-filler/f${i}`, mtime: T(20) },
      body: `filler ${i}`,
    });
    const all = [root, ...Array.from({ length: fillers }, (_, i) => filler(i)), ...entries];
    const error = await extractStream({
      source: Readable.from([await packTar(all)]),
      dest: out,
      archive: { label: 'test archive' },
    }).then(
      () => undefined,
      (e: unknown) =>
        (e instanceof LayerError ? `${e.code}: ${e.message}` : String(e)).replaceAll(out, '<dest>'),
    );
    // Directories the archive only implies get the time they were made, and
    // a failed extraction sets no directory times: those are not compared.
    const declared = new Set(all.map((e) => e.header?.name ?? ''));
    const timed = (rel: string) =>
      error === undefined && (rel === '.' || declared.has(`${rel}/`) || declared.has(`./${rel}/`));
    const tree = [...(await snapshot(out))]
      .filter(([rel]) => !rel.startsWith('zz-filler'))
      .map(([rel, info]) =>
        info.type === 'dir' && !timed(rel) ? [rel, { ...info, mtime: 0 }] : [rel, info],
      );
    return { error, tree };
  }

  async function expectSameWithThreads(entries: TestEntry[]) {
    const threaded = await outcome(entries, FILLERS);
    expect(threaded).toEqual(await outcome(entries, 0));
    return threaded;
  }

  it('extracts a good rootfs the same', async () => {
    const files = goodEntries().filter((e) => e.header?.name !== './');
    const big = Buffer.alloc(600 * 1024, 7); // larger than a hand-over: written as it streams
    const { error, tree } = await expectSameWithThreads([
      ...files,
      { header: { name: './big', mtime: T(30) }, body: big },
      { header: { name: './after-big', mtime: T(31) }, body: 'small again' },
    ]);
    expect(error).toBeUndefined();
    expect(tree.length).toBeGreaterThan(20);
  });

  it('replaces, in archive order, what was handed over', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    const { error } = await expectSameWithThreads([
      { header: { name: 'f', mtime: T(40) }, body: 'first' },
      { header: { name: 'f', mtime: T(41) }, body: 'second' },
      { header: { name: 's', type: 'symlink', linkname: outside } },
      { header: { name: 's', mtime: T(42) }, body: 'a file now' },
      { header: { name: 'g', mtime: T(43) }, body: 'a file' },
      { header: { name: 'g/', type: 'directory', mode: 0o711, mtime: T(44) } },
      { header: { name: 'g/inside', mtime: T(45) }, body: 'in g' },
      { header: { name: 'd/x', mtime: T(46) }, body: 'x' },
      { header: { name: 'd', type: 'symlink', linkname: '/nowhere' } },
      { header: { name: 'h', type: 'link', linkname: 'f' } },
      { header: { name: 'l', type: 'symlink', linkname: 'f' } },
      { header: { name: 'l', type: 'link', linkname: 'g/inside' } },
    ]);
    expect(error).toBeUndefined();
    expect(await readdir(outside)).toEqual([]);
  });

  it('refuses the same writes through handed-over symlinks', async () => {
    const outside = join(work, 'outside');
    await mkdir(outside);
    for (const last of [
      { header: { name: 'evil/file' }, body: 'pwned' },
      { header: { name: 'h', type: 'link', linkname: 'evil/passwd' } },
      { header: { name: 'f/under-a-file' }, body: 'x' },
    ] satisfies TestEntry[]) {
      const { error } = await expectSameWithThreads([
        { header: { name: 'f' }, body: 'a file' },
        { header: { name: 'evil', type: 'symlink', linkname: outside } },
        last,
      ]);
      expect(error).toMatch(/^LAYER_IMPORT_(UNSAFE_PATH|FAILED): /);
      await removeAll([join(work, 'out-0'), join(work, `out-${FILLERS}`)]);
    }
    expect(await readdir(outside)).toEqual([]);
  });

  it("reports a file a thread could not write as that entry's failure", async () => {
    const tooLong = `${'n'.repeat(300)}`; // a name component past NAME_MAX
    const { error } = await expectSameWithThreads([
      { header: { name: 'fine' }, body: 'ok' },
      { header: { name: tooLong }, body: 'x' },
    ]);
    expect(error).toMatch(
      /^LAYER_IMPORT_FAILED: Cannot extract entry "n{300}" of test archive: .*ENAMETOOLONG/,
    );
  });
});

describe.skipIf(!isRoot)('cancellation with file-writing threads (root)', () => {
  it('stops part way, and nothing is written after it returns', async () => {
    const entries: TestEntry[] = Array.from({ length: 400 }, (_, i) => ({
      header: { name: `d${i % 7}/f${i}` },
      body: `file ${i}`,
    }));
    const bytes = await packTar(entries);
    const controller = new AbortController();
    const count = async () =>
      (await Promise.all((await readdir(dest)).map((d) => readdir(join(dest, d))))).flat().length;
    // The archive arrives in pieces; once 100 files are on disk (the threads
    // are writing), the extraction is cancelled.
    async function* pieces() {
      for (let at = 0; at < bytes.length; at += 4096) {
        if (!controller.signal.aborted && (await count()) >= 100) controller.abort();
        yield bytes.subarray(at, at + 4096);
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    }
    const err: unknown = await extractStream({
      source: Readable.from(pieces()),
      dest,
      archive: { label: 'x' },
      signal: controller.signal,
    }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('AbortError');
    const now = await count();
    expect(now).toBeGreaterThanOrEqual(100);
    expect(now).toBeLessThan(400);
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(await count()).toBe(now);
  });
});
