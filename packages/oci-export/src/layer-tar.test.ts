import { execFileSync } from 'node:child_process';
import {
  chmodSync,
  chownSync,
  linkSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  rmSync,
  symlinkSync,
  truncateSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Sys } from '@day11/exec';
import { OciExportCodes } from './errors.js';
import { cleanup, isRoot, parseTar, tarOf, tempDir } from './fixtures/layers.js';
import { tarChunks } from './layer-tar.js';
import type { WalkWarning } from './walk.js';

afterAll(cleanup);

const T = new Date('2024-05-06T07:08:09Z');

/** A tree with directories, files, a symlink and a hardlink group, fixed mtimes. */
async function sampleTree(label = 'tree'): Promise<string> {
  const root = join(await tempDir(label), 'fs');
  mkdirSync(join(root, 'usr/lib'), { recursive: true });
  mkdirSync(join(root, 'etc'));
  writeFileSync(join(root, 'etc/hosts'), '127.0.0.1 localhost\n');
  writeFileSync(join(root, 'usr/lib/big'), Buffer.alloc(300_000, 'x'));
  writeFileSync(join(root, 'usr/lib/a-b'), 'dash');
  symlinkSync('../etc/hosts', join(root, 'usr/hosts'));
  linkSync(join(root, 'etc/hosts'), join(root, 'usr/lib/hosts.link'));
  fixTimes(root);
  return root;
}

/** Sets every mtime (and atime) in the tree to T, deepest first. */
function fixTimes(root: string): void {
  execFileSync('find', [root, '-depth', '-exec', 'touch', '-h', '-d', T.toISOString(), '{}', '+']);
}

describe('tarChunks determinism', () => {
  it('gives byte-identical archives for the same tree, also after atime changes and a copy', async () => {
    const root = await sampleTree();
    const first = await tarOf(root);
    expect((await tarOf(root)).equals(first)).toBe(true);

    utimesSync(join(root, 'etc/hosts'), new Date('2030-01-01'), T);
    utimesSync(join(root, 'usr/lib'), new Date('2031-01-01'), T);
    expect((await tarOf(root)).equals(first)).toBe(true);

    const copy = join(await tempDir('copy'), 'fs');
    execFileSync('cp', ['-a', root, copy]);
    expect((await tarOf(copy)).equals(first)).toBe(true);
  });

  it('does not depend on the chunk size, and every chunk but the last is full', async () => {
    const root = await sampleTree();
    const sizes: number[] = [];
    const lasts: boolean[] = [];
    const parts: Buffer[] = [];
    for await (const { data, last } of tarChunks(root, { chunkSize: 64 * 1024 })) {
      sizes.push(data.length);
      parts.push(Buffer.from(data));
      lasts.push(last);
    }
    expect(lasts.indexOf(true)).toBe(lasts.length - 1);
    expect(sizes.slice(0, -1).every((s) => s === 64 * 1024)).toBe(true);
    expect(Buffer.concat(parts).equals(await tarOf(root))).toBe(true);
  });

  it('orders entries depth first, sorted by bytes, parents before children, no root entry', async () => {
    const root = await sampleTree();
    const names = (await parseTar(await tarOf(root))).map((e) => e.name);
    expect(names).toEqual([
      'etc/',
      'etc/hosts',
      'usr/',
      'usr/hosts',
      'usr/lib/',
      'usr/lib/a-b',
      'usr/lib/big',
      'usr/lib/hosts.link',
    ]);
  });

  it('sorts by UTF-8 bytes where UTF-16 order differs, and keeps a name that holds U+FFFD', async () => {
    const root = join(await tempDir('utf8-order'), 'fs');
    mkdirSync(root);
    // UTF-16 puts the surrogate pair (D83D…) before U+E000; UTF-8 puts EE 80 80 before F0 9F….
    for (const name of ['\u{1F600}', '\uE000', 'z', 'a\uFFFDb'])
      writeFileSync(join(root, name), '');
    for (const directoryCalls of [true, false]) {
      const names = (await parseTar(await tarOf(root, { directoryCalls }))).map((e) => e.name);
      expect(names).toEqual(['a\uFFFDb', 'z', '\uE000', '\u{1F600}']);
    }
  });

  it('lists a directory of thousands of long names the same either way', async () => {
    const root = join(await tempDir('wide'), 'fs');
    mkdirSync(join(root, 'wide'), { recursive: true });
    // ~1 MiB of directory entries: many getdents64 calls.
    for (let i = 0; i < 4000; i++) writeFileSync(join(root, 'wide', `${'n'.repeat(200)}-${i}`), '');
    const relative = await tarOf(root, { directoryCalls: true });
    expect(relative.equals(await tarOf(root, { directoryCalls: false }))).toBe(true);
    expect((await parseTar(relative)).length).toBe(4001);
  });

  it('closes the open file and directories when the reader leaves early', async () => {
    const root = await sampleTree();
    const fds = () => readdirSync('/proc/self/fd').length;
    const before = fds();
    // The first chunk fills inside usr/lib/big, 300 kB: the walk holds it and two directories open.
    for await (const _ of tarChunks(root, { directoryCalls: true, chunkSize: 64 * 1024 })) break;
    expect(fds()).toBe(before);
  });

  it('writes the content, numeric owners, permissions and whole-second mtimes', async () => {
    const root = await sampleTree();
    const entries = await parseTar(await tarOf(root));
    const big = entries.find((e) => e.name === 'usr/lib/big')!;
    expect(big).toMatchObject({
      type: 'file',
      size: 300_000,
      mode: 0o644,
      mtime: T.getTime() / 1000,
    });
    const link = entries.find((e) => e.name === 'usr/hosts')!;
    expect(link).toMatchObject({ type: 'symlink', linkname: '../etc/hosts', size: 0 });
  });
});

describe('a layer changing under the export', () => {
  it('fails with OCI_LAYER_CHANGED when a file shrinks while read', async () => {
    const root = join(await tempDir('shrink'), 'fs');
    mkdirSync(root);
    writeFileSync(join(root, 'big'), Buffer.alloc(500_000, 1));
    const read = async () => {
      for await (const _chunk of tarChunks(root, { chunkSize: 64 * 1024 })) {
        truncateSync(join(root, 'big'), 10);
      }
    };
    await expect(read()).rejects.toMatchObject({
      code: OciExportCodes.LAYER_CHANGED,
      path: join(root, 'big'),
    });
  });
});

describe('names', () => {
  it('archives names over 100 and over 255 bytes, and non-ASCII names', async () => {
    const root = join(await tempDir('names'), 'fs');
    const mid = `${'m'.repeat(120)}/${'n'.repeat(90)}`; // 211 bytes: ustar prefix + name
    const long = `${'p'.repeat(200)}/${'q'.repeat(200)}`; // 401 bytes: PAX
    const unicode = 'données/文件-ñ.txt';
    for (const name of [mid, long, unicode]) {
      mkdirSync(join(root, name, '..'), { recursive: true });
      writeFileSync(join(root, name), name);
    }
    const bytes = await tarOf(root);
    const entries = await parseTar(bytes);
    for (const name of [mid, long, unicode]) {
      expect(entries.find((e) => e.name === name)?.size).toBe(Buffer.byteLength(name));
    }
    // GNU tar reads the same names.
    const listed = execFileSync('tar', ['-tf', '-'], { input: bytes }).toString().split('\n');
    expect(listed).toEqual(expect.arrayContaining([mid, long, unicode]));
  });

  it('refuses names that are not UTF-8, naming the directory', async () => {
    const root = join(await tempDir('latin1'), 'fs');
    mkdirSync(root);
    writeFileSync(Buffer.concat([Buffer.from(`${root}/caf`), Buffer.from([0xe9])]), 'x');
    await expect(tarOf(root)).rejects.toMatchObject({
      code: OciExportCodes.BAD_FILENAME,
      path: root,
    });
  });
});

describe('hardlinks, symlinks, special files', () => {
  it('makes hardlink entries (size 0) to the first path in archive order', async () => {
    const root = join(await tempDir('links'), 'fs');
    mkdirSync(join(root, 'b'), { recursive: true });
    writeFileSync(join(root, 'b/z'), 'shared content');
    linkSync(join(root, 'b/z'), join(root, 'a'));
    linkSync(join(root, 'b/z'), join(root, 'b/y'));
    const entries = await parseTar(await tarOf(root));
    expect(entries.map((e) => [e.name, e.type, e.linkname, e.size])).toEqual([
      ['a', 'file', null, 14],
      ['b/', 'directory', null, 0],
      ['b/y', 'link', 'a', 0],
      ['b/z', 'link', 'a', 0],
    ]);
  });

  it('keeps fifos and skips sockets with a warning', async () => {
    const root = join(await tempDir('special'), 'fs');
    mkdirSync(root);
    execFileSync('mkfifo', [join(root, 'pipe')]);
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(join(root, 'sock'), resolve));
    try {
      const warnings: WalkWarning[] = [];
      const entries = await parseTar(await tarOf(root, { onWarning: (w) => warnings.push(w) }));
      expect(entries.map((e) => [e.name, e.type])).toEqual([['pipe', 'fifo']]);
      expect(warnings).toEqual([
        { path: join(root, 'sock'), message: expect.stringContaining('socket') as string },
      ]);
    } finally {
      server.close();
    }
  });
});

describe.skipIf(!isRoot)('as root', () => {
  it('keeps uid/gid over 2,097,151 (PAX) and other owners', async () => {
    const root = join(await tempDir('ids'), 'fs');
    mkdirSync(root);
    writeFileSync(join(root, 'big-ids'), 'x');
    chownSync(join(root, 'big-ids'), 3_000_000, 4_000_001);
    writeFileSync(join(root, 'small-ids'), 'y');
    chownSync(join(root, 'small-ids'), 1000, 100);
    const bytes = await tarOf(root);
    const entries = await parseTar(bytes);
    expect(entries[0]!.pax).toMatchObject({ uid: '3000000', gid: '4000001' });
    expect(entries[1]).toMatchObject({ uid: 1000, gid: 100, pax: null });
    const listing = execFileSync('tar', ['--numeric-owner', '-tvf', '-'], {
      input: bytes,
    }).toString();
    expect(listing).toContain('3000000/4000001');
  });

  it('keeps character and block devices with their numbers', async () => {
    const root = join(await tempDir('dev'), 'fs');
    mkdirSync(root);
    Sys.mknod(join(root, 'null'), Sys.S_IFCHR | 0o666, 1, 3);
    Sys.mknod(join(root, 'loop9'), Sys.S_IFBLK | 0o660, 7, 9);
    Sys.mknod(join(root, 'wide'), Sys.S_IFCHR | 0o600, 300, 70_000);
    chmodSync(join(root, 'null'), 0o666); // mknod applies the umask
    chmodSync(join(root, 'loop9'), 0o660);
    const entries = await parseTar(await tarOf(root));
    expect(entries.map((e) => [e.name, e.type, e.devmajor, e.devminor, e.mode])).toEqual([
      ['loop9', 'block-device', 7, 9, 0o660],
      ['null', 'character-device', 1, 3, 0o666],
      ['wide', 'character-device', 300, 70_000, 0o600],
    ]);
  });

  it('keeps security.capability and user.* xattrs, drops overlay and other xattrs', async () => {
    const root = join(await tempDir('xattr'), 'fs');
    mkdirSync(root);
    const bin = join(root, 'ping');
    writeFileSync(bin, '#!/bin/sh\n');
    // VFS_CAP_REVISION_2 | effective, permitted = CAP_NET_RAW (13).
    const cap = Buffer.alloc(20);
    cap.writeUInt32LE(0x02000001, 0);
    cap.writeUInt32LE(1 << 13, 4);
    Sys.setXattrSync(bin, 'security.capability', cap);
    Sys.setXattrSync(bin, 'user.note', 'kept');
    Sys.setXattrSync(bin, 'trusted.overlay.origin', Buffer.from([0, 1, 2]));
    Sys.setXattrSync(bin, 'trusted.other', 'dropped');
    const bytes = await tarOf(root);
    expect(
      bytes.includes(Buffer.concat([Buffer.from('SCHILY.xattr.security.capability='), cap])),
    ).toBe(true);
    expect(bytes.includes('SCHILY.xattr.user.note=kept\n')).toBe(true);
    expect(bytes.includes('overlay')).toBe(false);
    expect(bytes.includes('trusted.other')).toBe(false);
    // GNU tar restores the capability from our PAX record.
    const out = join(await tempDir('xattr-out'), 'x');
    mkdirSync(out);
    execFileSync('tar', ['--xattrs', '--xattrs-include=*', '-xpf', '-', '-C', out], {
      input: bytes,
    });
    expect(Sys.getXattrSync(join(out, 'ping'), 'security.capability')?.equals(cap)).toBe(true);
  });

  it('turns whiteouts into .wh. files, never hardlinks, even when they share an inode', async () => {
    const root = join(await tempDir('wh'), 'fs');
    mkdirSync(join(root, 'etc'), { recursive: true });
    Sys.mknod(join(root, 'etc/issue'), Sys.S_IFCHR, 0, 0);
    linkSync(join(root, 'etc/issue'), join(root, 'etc/motd')); // overlayfs shares one whiteout inode
    linkSync(join(root, 'etc/issue'), join(root, 'gone'));
    writeFileSync(join(root, 'etc/a-file'), 'x');
    expect(lstatSync(join(root, 'gone')).nlink).toBe(3);
    const entries = await parseTar(await tarOf(root));
    expect(entries.map((e) => [e.name, e.type, e.size, e.linkname])).toEqual([
      ['.wh.gone', 'file', 0, null],
      ['etc/', 'directory', 0, null],
      ['etc/.wh.issue', 'file', 0, null],
      ['etc/.wh.motd', 'file', 0, null],
      ['etc/a-file', 'file', 1, null],
    ]);
  });

  it('converts an opaque directory (trusted or user xattr) to dir + .wh..wh..opq first', async () => {
    const root = join(await tempDir('opq'), 'fs');
    mkdirSync(join(root, 'opt/new'), { recursive: true });
    mkdirSync(join(root, 'srv'));
    writeFileSync(join(root, 'opt/!first'), 'sorts before .wh');
    writeFileSync(join(root, 'opt/new/file'), 'x');
    Sys.setXattrSync(join(root, 'opt'), 'trusted.overlay.opaque', 'y');
    Sys.setXattrSync(join(root, 'srv'), 'user.overlay.opaque', 'y');
    const entries = await parseTar(await tarOf(root));
    expect(entries.map((e) => e.name)).toEqual([
      'opt/',
      'opt/.wh..wh..opq',
      'opt/!first',
      'opt/new/',
      'opt/new/file',
      'srv/',
      'srv/.wh..wh..opq',
    ]);
  });

  it('treats a file marked trusted.overlay.whiteout as a whiteout', async () => {
    const root = join(await tempDir('xwh'), 'fs');
    mkdirSync(root);
    writeFileSync(join(root, 'gone'), '');
    Sys.setXattrSync(join(root, 'gone'), 'trusted.overlay.whiteout', '');
    const entries = await parseTar(await tarOf(root));
    expect(entries.map((e) => e.name)).toEqual(['.wh.gone']);
  });

  it.each(['trusted.overlay.redirect', 'trusted.overlay.metacopy', 'user.overlay.redirect'])(
    'refuses an upper carrying %s, naming the file',
    async (xattr) => {
      const root = join(await tempDir('redirect'), 'fs');
      mkdirSync(join(root, 'moved'), { recursive: true });
      Sys.setXattrSync(join(root, 'moved'), xattr, '/old');
      await expect(tarOf(root)).rejects.toMatchObject({
        code: OciExportCodes.UNSUPPORTED_UPPER,
        path: join(root, 'moved'),
        hint: expect.stringContaining('redirect_dir=off,metacopy=off') as string,
      });
    },
  );
});

describe.skipIf(!isRoot)('directory-relative calls', () => {
  /** Every kind of entry the walk converts, several directories deep. */
  async function kitchenSink(): Promise<string> {
    const root = join(await tempDir('sink'), 'fs');
    mkdirSync(join(root, 'a/b/c'), { recursive: true });
    mkdirSync(join(root, 'opaque/inner'), { recursive: true });
    writeFileSync(join(root, 'a/b/c/deep'), 'deep\n');
    writeFileSync(join(root, 'a/big'), Buffer.alloc(200_000, 'b'));
    writeFileSync(join(root, 'a/é-ünïcode'), 'u');
    linkSync(join(root, 'a/b/c/deep'), join(root, 'a/deep.link'));
    symlinkSync('b/c/deep', join(root, 'a/to-deep'));
    execFileSync('mkfifo', [join(root, 'a/fifo')]);
    Sys.mknod(join(root, 'a/whiteout'), Sys.S_IFCHR, 0, 0);
    Sys.mknod(join(root, 'a/tty'), Sys.S_IFCHR | 0o620, 4, 70_000);
    writeFileSync(join(root, 'a/xwhiteout'), '');
    Sys.setXattrSync(join(root, 'a/xwhiteout'), 'trusted.overlay.whiteout', '');
    Sys.setXattrSync(join(root, 'opaque'), 'trusted.overlay.opaque', 'y');
    writeFileSync(join(root, 'opaque/inner/kept'), 'k');
    Sys.setXattrSync(join(root, 'opaque/inner/kept'), 'user.note', 'kept');
    chownSync(join(root, 'a/big'), 3_000_000, 4_000_001);
    fixTimes(root);
    return root;
  }

  it('give the same archive as calls by full path', async () => {
    const root = await kitchenSink();
    const relative = await tarOf(root, { directoryCalls: true });
    const byPath = await tarOf(root, { directoryCalls: false });
    expect(relative.equals(byPath)).toBe(true);
    const names = (await parseTar(relative)).map((e) => e.name);
    expect(names).toEqual(
      expect.arrayContaining([
        'a/.wh.whiteout',
        'a/.wh.xwhiteout',
        'a/b/c/deep',
        'a/deep.link',
        'a/tty',
        'opaque/.wh..wh..opq',
        'opaque/inner/kept',
      ]),
    );
  });

  it('name the file in OCI_READ_FAILED when one cannot be opened, and close every directory', async () => {
    const root = await kitchenSink();
    const fds = () => readdirSync('/proc/self/fd').length;
    const before = fds();
    // Root reads anything: make a directory vanish under the walk instead,
    // once the walk has listed it (the first chunk fills inside a/).
    const tar = tarChunks(root, { directoryCalls: true, chunkSize: 64 * 1024 });
    expect((await tar.next()).done).toBe(false);
    rmSync(join(root, 'opaque'), { recursive: true });
    await expect(
      (async () => {
        for await (const _ of tar) void _;
      })(),
    ).rejects.toMatchObject({ code: OciExportCodes.READ_FAILED, path: join(root, 'opaque') });
    expect(fds()).toBe(before);
  });
});
