import {
  appendFile,
  link,
  readdir,
  lstat,
  mkdir,
  mkdtemp,
  readFile,
  rm,
  symlink,
  utimes,
  writeFile,
  chmod,
} from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Exec, Sys } from '@day11/exec';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { hostsContent, removeHosts, writeHosts } from './hosts.js';

let dir: string;
let upper: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-runner-hosts-'));
  upper = join(dir, 'upper');
  await mkdir(upper);
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function lowerWithEtc(name: string, mode: number): Promise<string> {
  const lower = join(dir, name);
  await mkdir(join(lower, 'etc'), { recursive: true });
  await chmod(join(lower, 'etc'), mode);
  await utimes(join(lower, 'etc'), 1_000_000, 1_000_000);
  return lower;
}

describe('hostsContent', () => {
  it('maps localhost and the hostname to 127.0.0.1', () => {
    expect(hostsContent('builder')).toBe('127.0.0.1 localhost builder\n');
    expect(hostsContent('localhost')).toBe('127.0.0.1 localhost\n');
    expect(hostsContent('')).toBe('127.0.0.1 localhost\n');
  });
});

describe('writeHosts', () => {
  it('writes a plain etc/hosts, making etc/ as a copy-up of the topmost /etc would', async () => {
    const top = await lowerWithEtc('top', 0o750);
    const bottom = await lowerWithEtc('bottom', 0o755);
    expect(writeHosts({ upper, lowers: [top, bottom], hostname: 'box' })).toBeDefined();
    expect(await readFile(join(upper, 'etc/hosts'), 'utf8')).toBe('127.0.0.1 localhost box\n');
    const etc = await lstat(join(upper, 'etc'));
    expect(etc.mode & 0o7777).toBe(0o750);
    expect(etc.mtimeMs).toBe(1_000_000_000);
    expect((await lstat(join(upper, 'etc/hosts'))).mode & 0o777).toBe(0o644);
  });

  it("skips lowers without /etc, and keeps the caller's own hosts file", async () => {
    const bare = join(dir, 'bare');
    await mkdir(bare);
    const base = await lowerWithEtc('base', 0o711);
    expect(writeHosts({ upper, lowers: [bare, base], hostname: 'box' })).toBeDefined();
    expect((await lstat(join(upper, 'etc'))).mode & 0o7777).toBe(0o711);
    await writeFile(join(upper, 'etc/hosts'), 'mine\n');
    expect(writeHosts({ upper, lowers: [base], hostname: 'other' })).toBeUndefined();
    expect(await readFile(join(upper, 'etc/hosts'), 'utf8')).toBe('mine\n');
  });

  it('writes into an etc/ the upper already has, leaving its attributes', async () => {
    await mkdir(join(upper, 'etc'), { mode: 0o700 });
    const base = await lowerWithEtc('base', 0o755);
    expect(writeHosts({ upper, lowers: [base], hostname: 'box' })).toBeDefined();
    expect((await lstat(join(upper, 'etc'))).mode & 0o7777).toBe(0o700);
  });

  it('makes a plain etc/ when no lower has one', async () => {
    expect(writeHosts({ upper, lowers: [], hostname: 'box' })).toBeDefined();
    expect((await lstat(join(upper, 'etc'))).isDirectory()).toBe(true);
  });

  it('writes nothing when /etc in the stack is a symlink (replacing it would change the tree)', async () => {
    const lower = join(dir, 'lower');
    await mkdir(join(lower, 'usr/etc'), { recursive: true });
    await symlink('usr/etc', join(lower, 'etc'));
    expect(writeHosts({ upper, lowers: [lower], hostname: 'box' })).toBeUndefined();
    await expect(lstat(join(upper, 'etc'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it.skipIf(!Exec.isRoot())('treats a whiteout of /etc as no /etc below it', async () => {
    const top = join(dir, 'top');
    await mkdir(top);
    Sys.mknod(join(top, 'etc'), Sys.S_IFCHR, 0, 0);
    const base = await lowerWithEtc('base', 0o700);
    expect(writeHosts({ upper, lowers: [top, base], hostname: 'box' })).toBeDefined();
    expect((await lstat(join(upper, 'etc'))).mode & 0o7777).toBe(0o755);
  });
});

describe('removeHosts', () => {
  it('takes an untouched hosts file and the etc/ made for it back out', async () => {
    const base = await lowerWithEtc('base', 0o755);
    const written = writeHosts({ upper, lowers: [base], hostname: 'box' })!;
    expect(removeHosts(upper, written)).toBe(true);
    expect(await readdir(upper)).toEqual([]);
  });

  it("keeps the root's times that the step set (a reproducible step) when it takes etc/ out", async () => {
    const base = await lowerWithEtc('base', 0o755);
    const written = writeHosts({ upper, lowers: [base], hostname: 'box' })!;
    await utimes(upper, 1_700_000_000, 1_700_000_000);
    expect(removeHosts(upper, written)).toBe(true);
    expect((await lstat(upper)).mtimeMs).toBe(1_700_000_000_000);
  });

  it('keeps etc/ with what the step added there, with its times', async () => {
    const base = await lowerWithEtc('base', 0o755);
    const written = writeHosts({ upper, lowers: [base], hostname: 'box' })!;
    await writeFile(join(upper, 'etc/motd'), 'hi\n');
    await utimes(join(upper, 'etc'), 2_000_000, 2_000_000);
    expect(removeHosts(upper, written)).toBe(true);
    expect(await readdir(join(upper, 'etc'))).toEqual(['motd']);
    expect((await lstat(join(upper, 'etc'))).mtimeMs).toBe(2_000_000_000);
  });

  it.each([
    ['edited', async (hosts: string) => appendFile(hosts, '10.0.0.1 db\n')],
    [
      'replaced',
      async (hosts: string) => {
        await rm(hosts);
        await writeFile(hosts, '127.0.0.1 localhost box\n');
      },
    ],
    ['hardlinked', async (hosts: string) => link(hosts, `${hosts}.bak`)],
    ['touched', async (hosts: string) => utimes(hosts, 3_000_000, 3_000_000)],
  ])('keeps a hosts file the step %s: that is its own change', async (_what, change) => {
    const written = writeHosts({ upper, lowers: [], hostname: 'box' })!;
    await change(join(upper, 'etc/hosts'));
    expect(removeHosts(upper, written)).toBe(false);
    expect((await lstat(join(upper, 'etc/hosts'))).isFile()).toBe(true);
  });

  it('does nothing when the step deleted it', async () => {
    const written = writeHosts({ upper, lowers: [], hostname: 'box' })!;
    await rm(join(upper, 'etc/hosts'));
    expect(removeHosts(upper, written)).toBe(false);
  });
});
