import { createHash } from 'node:crypto';
import {
  chmod,
  chown,
  copyFile,
  link,
  lutimes,
  mkdir,
  readdir,
  readFile,
  stat,
  symlink,
  utimes,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Exec, Sys } from '@day11/exec';
import { LayerCodes, LayerError } from './errors.js';
import * as Hash from './hash.js';
import * as Import from './import.js';
import {
  isRoot,
  packTar,
  paxBody,
  removeAll,
  snapshot,
  tempDir,
  type TestEntry,
} from './import.test-utils.js';
import * as LastUsed from './last-used.js';
import * as LayerDir from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';
import * as Sidecar from './sidecar.js';

const dirs: string[] = [];
let work: string;
let osDir: string;

beforeEach(async () => {
  work = await tempDir();
  dirs.push(work);
  osDir = join(work, 'cache');
});
afterEach(() => removeAll(dirs));

// cap_setuid,cap_net_raw+ep: the 0x80 byte is not valid UTF-8, so a lossy decode would show.
const CAPABILITY = Buffer.from('0100000280200000000000000000000000000000', 'hex');

function rootfsEntries(): TestEntry[] {
  return [
    { header: { name: './', type: 'directory', mode: 0o755 } },
    { header: { name: './bin/busybox', mode: 0o755 }, body: '#!busybox' },
    { header: { name: './bin/sh', type: 'symlink', linkname: 'busybox' } },
    { header: { name: './etc/hostname', uid: 1000, gid: 1000 }, body: 'box\n' },
    { rawPax: paxBody({ 'SCHILY.xattr.security.capability': CAPABILITY }) },
    { header: { name: './bin/ping', mode: 0o755 }, body: 'ping' },
  ];
}

async function writeTarball(name: string, entries: TestEntry[], gzip = true): Promise<string> {
  const path = join(work, name);
  const bytes = await packTar(entries);
  await writeFile(path, gzip ? gzipSync(bytes) : bytes);
  return path;
}

const sha256 = async (path: string) =>
  createHash('sha256')
    .update(await readFile(path))
    .digest('hex');

/** Names in osDir that an import could leave: layers and temp dirs (not the lock dir). */
async function visible(): Promise<string[]> {
  const names = await readdir(osDir).catch(() => []);
  return names.filter((n) => n.startsWith('build-') || n.startsWith('.day11-tmp-')).sort();
}

async function expectCode(promise: Promise<unknown>, code: string): Promise<LayerError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(LayerError);
  expect((err as LayerError).code).toBe(code);
  return err as LayerError;
}

describe.skipIf(!isRoot)('fromTarball', () => {
  it('commits a base layer with layer.json, base.json, last_used and the rootfs', async () => {
    const tarball = await writeTarball('rootfs.tgz', rootfsEntries());
    const base = await Import.fromTarball({ osDir, tarball });

    expect(base.image).toBe(`tarball:${await sha256(tarball)}`);
    expect(base.hash).toBe(Hash.baseHash({ image: base.image }));
    expect(base.dir).toBe(LayerDir.path({ osDir, hash: base.hash }));
    const meta = await LayerMeta.load(base.dir);
    expect(meta).toMatchObject({
      exit_status: 0,
      parent_hashes: [],
      uid: 0,
      gid: 0,
      base_hash: base.hash,
      failed_dep: null,
    });
    expect(meta.disk_usage).toBeGreaterThan(0);
    expect(meta.timing).toEqual([['import', expect.any(Number)]]);
    expect(await Sidecar.read(base.dir, Import.SIDECAR)).toEqual({
      image: base.image,
      source: tarball,
      kind: 'tarball',
      digest: `sha256:${await sha256(tarball)}`,
    });
    expect(await LastUsed.get(base.dir)).toBeDefined();
    const fs = join(base.dir, 'fs');
    expect(await readFile(join(fs, 'etc/hostname'), 'utf8')).toBe('box\n');
    expect((await stat(join(fs, 'etc/hostname'))).uid).toBe(1000);
    expect(await Sys.getXattr(join(fs, 'bin/ping'), 'security.capability')).toEqual(CAPABILITY);
    expect(await visible()).toEqual([LayerDir.name(base.hash)]);
  });

  it('reuses an existing base: same bytes elsewhere give the same layer, not re-imported', async () => {
    const first = await Import.fromTarball({
      osDir,
      tarball: await writeTarball('a.tar', rootfsEntries(), false),
    });
    const marker = join(first.dir, 'fs', 'marker');
    await writeFile(marker, 'still here');
    const old = new Date('2001-01-01T00:00:00Z');
    await utimes(LastUsed.file(first.dir), old, old);

    await mkdir(join(work, 'elsewhere'));
    const again = await Import.fromTarball({
      osDir,
      tarball: await writeTarball('elsewhere/b.tar', rootfsEntries(), false),
    });
    expect(again).toEqual(first);
    expect(await readFile(marker, 'utf8')).toBe('still here');
    expect(await LastUsed.get(first.dir)).toBeGreaterThan(old.getTime());
  });

  it('names the base after the caller-given image', async () => {
    const tarball = await writeTarball('r.tgz', rootfsEntries());
    const base = await Import.fromTarball({ osDir, tarball, image: 'debian:12' });
    expect(base).toMatchObject({ image: 'debian:12', hash: Hash.baseHash({ image: 'debian:12' }) });
    expect(await Import.find({ osDir, image: 'debian:12' })).toEqual(base);
    expect(await Import.find({ osDir, image: 'debian:13' })).toBeUndefined();
  });

  it('refuses to give the old base for a name whose tarball changed; the same bytes, or an old base, are reused', async () => {
    const tarball = await writeTarball('debian.tgz', rootfsEntries());
    const first = await Import.fromTarball({ osDir, tarball, image: 'debian:12' });
    expect(await Import.fromTarball({ osDir, tarball, image: 'debian:12' })).toEqual(first);
    const before = await readFile(tarball);
    await writeTarball('debian.tgz', [
      ...rootfsEntries(),
      { header: { name: './etc/new' }, body: 'new' },
    ]);
    const err = await expectCode(
      Import.fromTarball({ osDir, tarball, image: 'debian:12' }),
      LayerCodes.BASE_CHANGED,
    );
    expect(err.message).toContain(`${tarball} now holds sha256:${await sha256(tarball)}`);
    expect(err.message).toMatch(/Every layer built on debian:12 was built on the old files/);
    expect(err.hint).toContain(
      `day11 import --cache ${osDir} --image debian:12-2 --tarball ${tarball}`,
    );
    expect(err.path).toBe(tarball);
    expect(await visible()).toEqual([LayerDir.name(first.hash)]);
    // Under a new name, or none, the new content is a base of its own.
    const renamed = await Import.fromTarball({ osDir, tarball, image: 'debian:12-2' });
    expect(renamed.hash).not.toBe(first.hash);
    // A base imported before digests were recorded cannot be checked: it is reused.
    await writeFile(tarball, before);
    await Sidecar.write(first.dir, Import.SIDECAR, {
      image: 'debian:12',
      source: tarball,
      kind: 'tarball',
    });
    await writeTarball('debian.tgz', [{ header: { name: './other' }, body: 'x' }]);
    expect(await Import.fromTarball({ osDir, tarball, image: 'debian:12' })).toEqual(first);
  });

  describe('a failed import leaves nothing behind and an existing layer untouched', () => {
    const cases: Array<[string, () => Promise<Buffer>, string]> = [
      [
        'a ".." entry',
        () => packTar([{ header: { name: '../x' }, body: 'x' }]),
        LayerCodes.IMPORT_UNSAFE_PATH,
      ],
      [
        'a symlink escape',
        () =>
          packTar([
            { header: { name: 'a/b' }, body: 'fine' },
            { header: { name: 'evil', type: 'symlink', linkname: join(work, 'outside') } },
            { header: { name: 'evil/pwned' }, body: 'x' },
          ]),
        LayerCodes.IMPORT_UNSAFE_PATH,
      ],
      [
        'a truncated gzip',
        async () => gzipSync(await packTar(rootfsEntries())).subarray(0, 100),
        LayerCodes.IMPORT_FAILED,
      ],
      ['garbage', async () => Buffer.alloc(4096, 0x41), LayerCodes.IMPORT_FAILED],
      ['an archive with no entries', async () => Buffer.alloc(1024), LayerCodes.IMPORT_FAILED],
    ];
    it.each(cases)('%s', async (_name, bytes, code) => {
      await mkdir(join(work, 'outside'));
      const existing = await Import.fromTarball({
        osDir,
        tarball: await writeTarball('ok.tgz', rootfsEntries()),
      });
      const before = await snapshot(existing.dir);
      const bad = join(work, 'bad.tar');
      await writeFile(bad, await bytes());

      const err = await expectCode(Import.fromTarball({ osDir, tarball: bad }), code);
      expect(err.message).toContain(bad);
      expect(await visible()).toEqual([LayerDir.name(existing.hash)]);
      expect(await snapshot(existing.dir)).toEqual(before);
      expect(await readdir(join(work, 'outside'))).toEqual([]);
    });
  });

  it('makes one layer when two imports of the same tarball race', async () => {
    const tarball = await writeTarball('race.tgz', rootfsEntries());
    const [a, b] = await Promise.all([
      Import.fromTarball({ osDir, tarball }),
      Import.fromTarball({ osDir, tarball }),
    ]);
    expect(a).toEqual(b);
    expect(await visible()).toEqual([LayerDir.name(a.hash)]);
  });

  it('leaves nothing behind when aborted', async () => {
    const tarball = await writeTarball('abort.tgz', rootfsEntries());
    const controller = new AbortController();
    controller.abort();
    const err: unknown = await Import.fromTarball({
      osDir,
      tarball,
      signal: controller.signal,
    }).catch((e: unknown) => e);
    expect((err as Error).name).toBe('AbortError');
    expect(await visible()).toEqual([]);
  });

  it('reports a missing tarball', async () => {
    const err = await expectCode(
      Import.fromTarball({ osDir, tarball: join(work, 'missing.tgz') }),
      LayerCodes.IMPORT_FAILED,
    );
    expect(err.message).toMatch(/missing\.tgz/);
  });
});

/** A tree with everything cp -a must keep. */
async function richTree(root: string): Promise<void> {
  await mkdir(join(root, 'etc'), { recursive: true });
  await mkdir(join(root, 'bin'));
  await mkdir(join(root, 'dev'));
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0\n');
  await chown(join(root, 'etc/passwd'), 1234, 5678);
  await writeFile(join(root, 'bin/su'), 'su');
  await chmod(join(root, 'bin/su'), 0o4755);
  await link(join(root, 'bin/su'), join(root, 'bin/su-hardlink'));
  await symlink('/etc/passwd', join(root, 'etc/abs-link'));
  await symlink('../../../../outside', join(root, 'etc/dangling'));
  await writeFile(join(root, 'bin/ping'), 'ping');
  await Sys.setXattr(join(root, 'bin/ping'), 'security.capability', CAPABILITY);
  await Sys.setXattr(join(root, 'etc'), 'user.note', 'hello');
  await Sys.setXattr(join(root, 'etc/passwd'), 'trusted.overlay.opaque', 'y');
  Sys.mknod(join(root, 'dev/null'), Sys.S_IFCHR | 0o666, 1, 3);
  Sys.mknod(join(root, 'dev/fifo'), Sys.S_IFIFO | 0o600);
  await mkdir(join(root, 'tmp'), { mode: 0o1777 });
  await chmod(join(root, 'tmp'), 0o1777);
  const t = new Date('2020-02-02T02:02:02Z');
  await lutimes(join(root, 'etc/abs-link'), t, t);
  for (const d of ['etc', 'bin', 'dev', 'tmp', '.']) await utimes(join(root, d), t, t);
}

describe.skipIf(!isRoot)('fromDirectory', () => {
  it('round-trips owners, modes, times, hardlinks, symlinks, devices and xattrs', async () => {
    const src = join(work, 'rootfs');
    await mkdir(src, { mode: 0o755 });
    await richTree(src);
    const base = await Import.fromDirectory({ osDir, dir: src });

    expect(base.image).toMatch(/^directory:[0-9a-f]{64}$/);
    expect(await snapshot(join(base.dir, 'fs'))).toEqual(await snapshot(src));
    expect(await Sidecar.read(base.dir, Import.SIDECAR)).toEqual({
      image: base.image,
      source: src,
      kind: 'directory',
      digest: `tree:${base.image.slice('directory:'.length)}`,
    });
    expect(await visible()).toEqual([LayerDir.name(base.hash)]);
  });

  it('gives the same base for the same tree and a new one when the tree changes', async () => {
    const src = join(work, 'rootfs');
    await mkdir(src);
    await richTree(src);
    const viaLink = join(work, 'link-to-rootfs');
    await symlink(src, viaLink);
    const first = await Import.fromDirectory({ osDir, dir: src });
    expect(await Import.fromDirectory({ osDir, dir: viaLink })).toEqual(first);
    await writeFile(join(src, 'etc/passwd'), 'changed');
    const second = await Import.fromDirectory({ osDir, dir: src });
    expect(second.hash).not.toBe(first.hash);
    expect(await visible()).toHaveLength(2);
  });

  it('refuses to give the old base for a name whose directory changed', async () => {
    const src = join(work, 'rootfs');
    await mkdir(src);
    await richTree(src);
    const first = await Import.fromDirectory({ osDir, dir: src, image: 'mine:1' });
    expect(await Import.fromDirectory({ osDir, dir: src, image: 'mine:1' })).toEqual(first);
    await writeFile(join(src, 'etc/passwd'), 'changed');
    const err = await expectCode(
      Import.fromDirectory({ osDir, dir: src, image: 'mine:1' }),
      LayerCodes.BASE_CHANGED,
    );
    expect(err.hint).toContain(`--image mine:1-2 --dir ${src}`);
    expect(await visible()).toEqual([LayerDir.name(first.hash)]);
  });

  it('refuses a missing directory, a file, and a tree that contains the cache', async () => {
    await expectCode(
      Import.fromDirectory({ osDir, dir: join(work, 'nope') }),
      LayerCodes.IMPORT_FAILED,
    );
    await writeFile(join(work, 'file'), 'x');
    const err = await expectCode(
      Import.fromDirectory({ osDir, dir: join(work, 'file') }),
      LayerCodes.IMPORT_FAILED,
    );
    expect(err.message).toMatch(/not a directory/);
    const inside = await expectCode(
      Import.fromDirectory({ osDir, dir: work }),
      LayerCodes.IMPORT_FAILED,
    );
    expect(inside.message).toMatch(/inside it/);
    expect(await visible()).toEqual([]);
  });
});

/** A fake docker CLI: logs its arguments, and answers as configured. */
async function fakeDocker(opts: { info: 'ok' | 'fail'; tarball?: string; exportFails?: boolean }) {
  const bin = join(work, 'fake-docker');
  const log = join(work, 'docker.log');
  const script = [
    '#!/bin/sh',
    `echo "$*" >> '${log}'`,
    'case "$1" in',
    opts.info === 'ok'
      ? '  info) echo 27.0.0 ;;'
      : "  info) echo 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock' >&2; exit 1 ;;",
    '  create) echo 0123abcd ;;',
    opts.exportFails
      ? "  export) echo 'Error: no such container' >&2; exit 1 ;;"
      : `  export) cp '${opts.tarball ?? '/dev/null'}' "$3" ;;`,
    '  rm) echo 0123abcd ;;',
    'esac',
  ].join('\n');
  await writeFile(bin, `${script}\n`, { mode: 0o755 });
  return { bin, calls: async () => (await readFile(log, 'utf8')).trim().split('\n') };
}

describe('fromDocker', () => {
  it('rejects with LAYER_NO_DOCKER when the docker CLI is missing', async () => {
    const err = await expectCode(
      Import.fromDocker({ osDir, image: 'debian:12', docker: join(work, 'no-such-docker') }),
      LayerCodes.NO_DOCKER,
    );
    expect(err.message).toMatch(/not installed/);
    expect(err.hint).toContain(
      '`day11 import --image debian:12 --tarball rootfs.tar` (Import.fromTarball)',
    );
    expect(err.hint).toMatch(/--dir ROOTFS/);
  });

  it('rejects with LAYER_NO_DOCKER when `docker info` fails', async () => {
    const docker = await fakeDocker({ info: 'fail' });
    const err = await expectCode(
      Import.fromDocker({ osDir, image: 'debian:12', docker: docker.bin }),
      LayerCodes.NO_DOCKER,
    );
    expect(err.message).toMatch(/Cannot connect to the Docker daemon/);
    expect(await docker.calls()).toEqual(['info --format {{.ServerVersion}}']);
  });

  it('rejects with LAYER_NO_DOCKER on this machine unless an engine answers', async () => {
    const engine = await Exec.run('docker', ['info'], { timeoutMs: 30_000 }).then(
      () => true,
      () => false,
    );
    if (engine) return; // a real engine: nothing to check here
    await expectCode(Import.fromDocker({ osDir, image: 'debian:12' }), LayerCodes.NO_DOCKER);
    expect(await visible()).toEqual([]);
  });

  it('refuses an image reference that would be read as an option', async () => {
    await expectCode(Import.fromDocker({ osDir, image: '--privileged' }), LayerCodes.BAD_ARGUMENT);
  });

  it.skipIf(!isRoot)('returns an imported base without asking Docker', async () => {
    await Import.fromTarball({
      osDir,
      tarball: await writeTarball('r.tgz', rootfsEntries()),
      image: 'debian:12',
    });
    const base = await Import.fromDocker({
      osDir,
      image: 'debian:12',
      docker: join(work, 'no-such-docker'),
    });
    expect(base.image).toBe('debian:12');
  });

  it.skipIf(!isRoot)('creates, exports, extracts and always removes the container', async () => {
    const tarball = await writeTarball('export.tar', rootfsEntries(), false);
    const docker = await fakeDocker({ info: 'ok', tarball });
    const base = await Import.fromDocker({ osDir, image: 'alpine:3', docker: docker.bin });
    expect(base.hash).toBe(Hash.baseHash({ image: 'alpine:3' }));
    expect(await readFile(join(base.dir, 'fs/etc/hostname'), 'utf8')).toBe('box\n');
    expect(await Sidecar.read(base.dir, Import.SIDECAR)).toEqual({
      image: 'alpine:3',
      source: 'alpine:3',
      kind: 'docker',
    });
    const calls = await docker.calls();
    expect(calls[1]).toBe('create alpine:3 true');
    expect(calls[2]).toMatch(
      /^export --output .*\/\.day11-tmp-\d+-[0-9a-f]+-docker-export\.tar 0123abcd$/,
    );
    expect(calls[3]).toBe('rm --force 0123abcd');
    expect(await visible()).toEqual([LayerDir.name(base.hash)]);
  });

  it.skipIf(!isRoot)(
    'removes the container and every temp file when the export fails',
    async () => {
      const docker = await fakeDocker({ info: 'ok', exportFails: true });
      const err = await expectCode(
        Import.fromDocker({ osDir, image: 'alpine:3', docker: docker.bin }),
        LayerCodes.IMPORT_FAILED,
      );
      expect(err.message).toMatch(
        /export a container of Docker image alpine:3.*no such container/s,
      );
      expect((await docker.calls()).at(-1)).toBe('rm --force 0123abcd');
      expect(await visible()).toEqual([]);
    },
  );
});

/** A busybox rootfs: the static binary plus one symlink per applet. */
async function busyboxRootfs(root: string): Promise<void> {
  await mkdir(join(root, 'bin'), { recursive: true, mode: 0o755 });
  await chmod(root, 0o755);
  await copyFile('/bin/busybox', join(root, 'bin/busybox'));
  await chmod(join(root, 'bin/busybox'), 0o755);
  const { stdout } = await Exec.run('/bin/busybox', ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await symlink('busybox', join(root, 'bin', applet));
  }
  await mkdir(join(root, 'etc'));
  await writeFile(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await mkdir(join(root, 'tmp'));
  await chmod(join(root, 'tmp'), 0o1777);
  await mkdir(join(root, 'dev'));
  Sys.mknod(join(root, 'dev/null'), Sys.S_IFCHR | 0o666, 1, 3);
  await mkdir(join(root, 'home/user'), { recursive: true });
  await chown(join(root, 'home/user'), 3_000_000, 3_000_000); // beyond octal fields: base-256 / PAX
  await link(join(root, 'etc/passwd'), join(root, 'etc/passwd-'));
  // Long names: GNU 'L' records in gnu format, PAX `path` in posix format.
  await mkdir(join(root, 'usr', 'd'.repeat(120)), { recursive: true });
  await writeFile(join(root, 'usr', 'd'.repeat(120), `${'f'.repeat(200)}-naïve.txt`), 'long');
  await symlink('x'.repeat(150), join(root, 'usr/long-target'));
}

describe.skipIf(!isRoot)('a real busybox rootfs through GNU tar', () => {
  it.each([
    ['gnu format, gzip', ['--numeric-owner', '-czf']],
    [
      'posix format with xattrs',
      ['--numeric-owner', '--format=posix', '--xattrs', '--xattrs-include=*', '-cf'],
    ],
  ])('%s', async (_name, flags) => {
    const rootfs = join(work, 'rootfs');
    await busyboxRootfs(rootfs);
    if (flags.includes('--xattrs')) {
      await Sys.setXattr(join(rootfs, 'bin/busybox'), 'security.capability', CAPABILITY);
      await Sys.setXattr(join(rootfs, 'etc/passwd'), 'user.kind', 'text');
    }
    const tarball = join(work, 'rootfs.tar.x');
    await Exec.run('tar', ['-C', rootfs, ...flags, tarball, '.']);

    const base = await Import.fromTarball({ osDir, tarball });
    const fs = join(base.dir, 'fs');
    expect(await snapshot(fs)).toEqual(await snapshot(rootfs));
    const { stdout } = await Exec.run(join(fs, 'bin/busybox'), ['echo', 'hello from the base']);
    expect(stdout).toBe('hello from the base\n');
  });
});
