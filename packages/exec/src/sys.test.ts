import { execFileSync } from 'node:child_process';
import { constants } from 'node:fs';
import { lstat, mkdtemp, open, rm, symlink, writeFile, mkdir, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ExecCodes, SysError } from './errors.js';
import { isRoot } from './exec.js';
import * as Sys from './sys.js';

/** Privileged steps run directly only as root; elsewhere these tests are skipped, not passed. */
const root = isRoot();

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-sys-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('Sys xattrs', () => {
  it('sets, gets, lists and removes user xattrs', async () => {
    const f = join(dir, 'f');
    await writeFile(f, '');
    await Sys.setXattr(f, 'user.day11', 'v1');
    Sys.setXattrSync(f, 'user.other', Buffer.from([0, 1, 2]));
    expect((await Sys.getXattr(f, 'user.day11'))?.toString()).toBe('v1');
    expect(Sys.getXattrSync(f, 'user.other')).toEqual(Buffer.from([0, 1, 2]));
    expect((await Sys.listXattrs(f)).sort()).toEqual(['user.day11', 'user.other']);
    expect([...(await Sys.readAllXattrs(f)).keys()].sort()).toEqual(['user.day11', 'user.other']);
    await Sys.removeXattr(f, 'user.day11');
    await Sys.removeXattr(f, 'user.day11');
    expect(await Sys.getXattr(f, 'user.day11')).toBeUndefined();
    expect(Sys.getXattrSync(f, 'user.day11')).toBeUndefined();
  });

  it('does not follow symlinks', async () => {
    const f = join(dir, 'f');
    await writeFile(f, '');
    await Sys.setXattr(f, 'user.a', '1');
    await symlink(f, join(dir, 'l'));
    expect(await Sys.listXattrs(join(dir, 'l'))).toEqual([]);
    expect(await Sys.getXattr(join(dir, 'l'), 'user.a')).toBeUndefined();
  });

  it.skipIf(!root)('sets trusted.overlay.opaque as root', async () => {
    await mkdir(join(dir, 'd'));
    await Sys.setXattr(join(dir, 'd'), 'trusted.overlay.opaque', 'y');
    expect((await Sys.getXattr(join(dir, 'd'), 'trusted.overlay.opaque'))?.toString()).toBe('y');
  });

  it('reports a missing file as a typed SysError naming the path', async () => {
    const err = await Sys.listXattrs(join(dir, 'missing')).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SysError);
    expect(err).toMatchObject({ code: ExecCodes.SYSCALL_FAILED, path: join(dir, 'missing') });
  });
});

describe('Sys.mknod', () => {
  it.skipIf(!root)('creates an overlay whiteout (character device 0/0) and a fifo', async () => {
    Sys.mknod(join(dir, 'wh'), Sys.S_IFCHR, 0, 0);
    const st = await lstat(join(dir, 'wh'));
    expect(st.isCharacterDevice()).toBe(true);
    expect(st.rdev).toBe(0);
    Sys.mknod(join(dir, 'fifo'), Sys.S_IFIFO | 0o640);
    expect((await lstat(join(dir, 'fifo'))).isFIFO()).toBe(true);
    expect((await lstat(join(dir, 'fifo'))).mode & 0o777).toBe(0o640 & ~process.umask());
  });

  it.skipIf(!root)('encodes device numbers like glibc makedev', async () => {
    Sys.mknod(join(dir, 'null'), Sys.S_IFCHR | 0o666, 1, 3);
    expect((await lstat(join(dir, 'null'))).rdev).toBe(Sys.makedev(1, 3));
    expect(Sys.makedev(1, 3)).toBe(0x103);
    expect(Sys.makedev(259, 65536)).toBe(0x1001_0300);
    expect(Sys.makedev(4096, 0)).toBe(2 ** 44);
  });

  it.skipIf(!root)('fails with errno and path when the file exists', () => {
    Sys.mknod(join(dir, 'x'), Sys.S_IFIFO | 0o600);
    expect(() => Sys.mknod(join(dir, 'x'), Sys.S_IFIFO | 0o600)).toThrow(
      expect.objectContaining({ errno: 'EEXIST', syscall: 'mknod', path: join(dir, 'x') }),
    );
  });
});

describe('Sys mounts', () => {
  it.skipIf(!root)(
    'mounts overlayfs with fsconfig (one lowerdir+ each) and unmounts it',
    async () => {
      const lowers = ['l1', 'l2', 'l3'].map((n) => join(dir, n));
      for (const [i, l] of lowers.entries()) {
        await mkdir(l);
        await writeFile(join(l, `f${i}`), String(i));
      }
      const target = join(dir, 'merged');
      await mkdir(target);
      Sys.mountWithFsconfig({
        fstype: 'overlay',
        target,
        options: lowers.map((l) => ['lowerdir+', l] as const),
      });
      try {
        expect((await readdir(target)).sort()).toEqual(['f0', 'f1', 'f2']);
      } finally {
        Sys.umount(target);
      }
      expect(await readdir(target)).toEqual([]);
    },
  );

  it.skipIf(!root)('names the option the kernel refused', async () => {
    const target = join(dir, 'm');
    await mkdir(target);
    expect(() =>
      Sys.mountWithFsconfig({
        fstype: 'overlay',
        target,
        options: [['lowerdir+', join(dir, 'missing')]],
      }),
    ).toThrow(/lowerdir\+=.*missing/);
  });

  it.skipIf(!root)("carries the kernel's own message for a refused option", async () => {
    const target = join(dir, 'm');
    await mkdir(target);
    expect(() =>
      Sys.mountWithFsconfig({ fstype: 'overlay', target, options: [['lowerdirx+', dir]] }),
    ).toThrow(/EINVAL \(overlay: Unknown parameter 'lowerdirx\+'\)/);
  });

  it.skipIf(!root)('passes a directory as a file descriptor (FSCONFIG_SET_FD)', async () => {
    // The kernel copies at most 255 bytes of a string value; an fd has no such limit.
    const long = join(dir, 'd'.repeat(200), 'e'.repeat(100));
    await mkdir(long, { recursive: true });
    await writeFile(join(long, 'f'), '');
    await mkdir(join(dir, 'l2'));
    const target = join(dir, 'm');
    await mkdir(target);
    const handle = await open(long, constants.O_RDONLY | constants.O_DIRECTORY);
    try {
      Sys.mountWithFsconfig({
        fstype: 'overlay',
        target,
        options: [
          ['lowerdir+', { fd: handle.fd }],
          ['lowerdir+', join(dir, 'l2')],
        ],
      });
    } finally {
      await handle.close();
    }
    try {
      expect(await readdir(target)).toEqual(['f']);
    } finally {
      Sys.umount(target);
    }
  });

  it.skipIf(!root)('probes options without mounting', () => {
    const probe = Sys.probeFsconfig({
      fstype: 'overlay',
      options: Array.from({ length: 501 }, () => ['lowerdir+', '/'] as const),
    });
    expect(probe.accepted).toBe(500);
    expect(probe.error?.message).toMatch(/limit is 500/);
    expect(Sys.probeFsconfig({ fstype: 'overlay', options: [['index', 'off']] })).toEqual({
      accepted: 1,
      error: undefined,
    });
    expect(Sys.probeFsconfig({ fstype: 'no-such-fs', options: [] }).error?.errno).toBe('ENODEV');
  });

  it.skipIf(!root)('mounts and unmounts a tmpfs with classic mount(2)', async () => {
    const target = join(dir, 't');
    await mkdir(target);
    Sys.mount({ source: 'day11-test', target, fstype: 'tmpfs', data: 'size=1m' });
    try {
      await writeFile(join(target, 'x'), 'y');
    } finally {
      Sys.umount(target, Sys.MNT_DETACH);
    }
    expect(await readdir(target)).toEqual([]);
  });

  it.skipIf(!root)('reports EINVAL/ENOENT for an unmount of something not mounted', () => {
    expect(() => Sys.umount(dir)).toThrow(expect.objectContaining({ errno: 'EINVAL' }));
  });

  it('names errno numbers', () => {
    expect(Sys.errnoName(16)).toBe('EBUSY');
    expect(Sys.libcAvailable()).toBe(true);
  });
});

describe('Sys.keepFreedMemory', () => {
  // In a child (of the built module), as it changes the process's malloc: churning
  // 1 MiB buffers (an upload's file reads) faults far fewer pages in after it.
  const churn = (keep: boolean): number => {
    const script = `
      const { keepFreedMemory } = await import(${JSON.stringify(new URL('../dist/sys.js', import.meta.url).href)});
      if (${keep}) keepFreedMemory();
      const start = process.resourceUsage().minorPageFault;
      let live = [];
      for (let i = 0; i < 400; i++) {
        const b = Buffer.allocUnsafeSlow(1024 * 1024);
        b.fill(1);
        live.push(b);
        if (live.length > 8) {
          live = live.slice(4);
          globalThis.gc();
        }
      }
      console.log(process.resourceUsage().minorPageFault - start);`;
    const out = execFileSync(
      process.execPath,
      ['--expose-gc', '--input-type=module', '-e', script],
      { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] },
    );
    return Number(out.trim());
  };

  it('is idempotent and true with glibc', () => {
    expect(Sys.keepFreedMemory()).toBe(true);
    expect(Sys.keepFreedMemory()).toBe(true);
  });

  it('makes buffer churn fault fewer pages in', () => {
    // Medians of alternated runs: one run of either can be off (another process's load).
    const runs = { before: [] as number[], after: [] as number[] };
    for (let i = 0; i < 3; i++) {
      runs.before.push(churn(false));
      runs.after.push(churn(true));
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[1]!;
    expect(median(runs.after)).toBeLessThan(median(runs.before) / 2); // ~15,000 → ~3,300 here
  });
});

describe('Sys calls relative to a directory', () => {
  it.skipIf(!root)(
    'stat like lstat, list xattrs like llistxattr, and open without following a symlink',
    async () => {
      await mkdir(join(dir, 'd'));
      await writeFile(join(dir, 'd/file'), 'content');
      Sys.setXattrSync(join(dir, 'd/file'), 'user.a', '1');
      Sys.setXattrSync(join(dir, 'd/file'), 'user.bb', '2');
      await symlink('file', join(dir, 'd/link'));
      Sys.mknod(join(dir, 'd/tty'), Sys.S_IFCHR | 0o620, 4, 70_000);
      Sys.mknod(join(dir, 'd/fifo'), Sys.S_IFIFO | 0o600);
      const fd = Sys.openDirectorySync(undefined, join(dir, 'd'), join(dir, 'd'));
      try {
        for (const name of ['file', 'link', 'tty', 'fifo', '.']) {
          const path = join(dir, 'd', name);
          const want = await lstat(path);
          const got = Sys.statAtSync(fd, name, path);
          expect(got).toEqual({
            mode: want.mode,
            uid: want.uid,
            gid: want.gid,
            size: want.size,
            nlink: want.nlink,
            ino: want.ino,
            dev: got.dev, // encoded differently from Node's; compared below
            rdev: want.rdev,
            mtimeMs: want.mtimeMs,
          });
        }
        expect(Sys.statAtSync(fd, 'file', '').dev).toBe(Sys.statAtSync(fd, 'link', '').dev);
        expect(Sys.listXattrsAtSync(fd, 'file', join(dir, 'd/file')).sort()).toEqual([
          'user.a',
          'user.bb',
        ]);
        expect(Sys.listXattrsAtSync(fd, 'link', join(dir, 'd/link'))).toEqual([]);
        const file = Sys.openFileAtSync(fd, 'file', join(dir, 'd/file'));
        const buf = Buffer.alloc(16);
        const { readSync } = await import('node:fs');
        expect(buf.subarray(0, readSync(file, buf)).toString()).toBe('content');
        Sys.closeFdSync(file);
        expect(() => Sys.openFileAtSync(fd, 'link', join(dir, 'd/link'))).toThrow(
          expect.objectContaining({
            code: 'SYS_CALL_FAILED',
            errno: 'ELOOP',
            path: join(dir, 'd/link'),
          }),
        );
        expect(() => Sys.statAtSync(fd, 'missing', join(dir, 'd/missing'))).toThrow(
          expect.objectContaining({ errno: 'ENOENT', path: join(dir, 'd/missing') }),
        );
        // A symlink is never followed: to a file, not a directory.
        expect(() => Sys.openDirectorySync(fd, 'link', join(dir, 'd/link'))).toThrow(
          expect.objectContaining({ errno: 'ENOTDIR' }),
        );
      } finally {
        Sys.closeFdSync(fd);
      }
    },
  );
});

describe('Sys unnamed files', () => {
  it('gives an unnamed file names: hard links to one inode that outlive the descriptor', async () => {
    const fd = Sys.openUnnamedSync(dir);
    const { writeSync, readFileSync, lstatSync } = await import('node:fs');
    writeSync(fd, 'record\n');
    // Nothing named yet.
    expect(await readdir(dir)).toEqual([]);
    Sys.linkOpenFileSync(fd, join(dir, 'a'));
    Sys.linkOpenFileSync(fd, join(dir, 'b'));
    expect(() => Sys.linkOpenFileSync(fd, join(dir, 'a'))).toThrow(
      expect.objectContaining({ code: 'SYS_CALL_FAILED', errno: 'EEXIST', path: join(dir, 'a') }),
    );
    expect(() => Sys.linkOpenFileSync(fd, join(dir, 'missing/c'))).toThrow(
      expect.objectContaining({ errno: 'ENOENT', path: join(dir, 'missing/c') }),
    );
    Sys.closeFdSync(fd);
    expect(readFileSync(join(dir, 'b'), 'utf8')).toBe('record\n');
    expect(lstatSync(join(dir, 'a')).ino).toBe(lstatSync(join(dir, 'b')).ino);
    expect(lstatSync(join(dir, 'a')).nlink).toBe(2);
  });

  it('names the directory when it cannot open one there', () => {
    expect(() => Sys.openUnnamedSync(join(dir, 'missing'))).toThrow(
      expect.objectContaining({
        code: 'SYS_CALL_FAILED',
        errno: 'ENOENT',
        path: join(dir, 'missing'),
      }),
    );
  });
});
