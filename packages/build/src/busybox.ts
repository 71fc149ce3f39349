/** A minimal root filesystem made from the host's busybox-static: the `busybox` base of plans. */
import { createHash } from 'node:crypto';
import {
  chmod,
  copyFile,
  lutimes,
  mkdir,
  readdir,
  readFile,
  stat,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { Exec } from '@day11/exec';
import { BuildCodes, BuildError } from './errors.js';

/** Where Debian's busybox-static puts the binary. */
export const BUSYBOX = '/bin/busybox';

/** The base's image name: it changes when the host's busybox does, so the cache follows upgrades. */
export async function busyboxImageName(): Promise<string> {
  const bytes = await readBusybox();
  return `busybox-static:${createHash('sha256').update(bytes).digest('hex').slice(0, 16)}`;
}

async function readBusybox(): Promise<Buffer> {
  try {
    return await readFile(BUSYBOX);
  } catch (cause) {
    throw new BuildError(
      BuildCodes.MISSING_REQUIREMENT,
      `The busybox base needs ${BUSYBOX}, which is missing`,
      {
        path: BUSYBOX,
        cause,
        hint: 'Install it: apt-get install -y busybox-static',
      },
    );
  }
}

/** Builds a busybox rootfs in `dir` (which must not exist yet): the binary, one symlink per applet, /etc basics. */
export async function makeBusyboxRootfs(dir: string): Promise<void> {
  for (const sub of ['bin', 'etc', 'tmp', 'proc', 'dev', 'sys', 'root', 'opt', 'usr/bin']) {
    await mkdir(join(dir, sub), { recursive: true });
  }
  await chmod(join(dir, 'tmp'), 0o1777);
  await readBusybox();
  await copyFile(BUSYBOX, join(dir, 'bin/busybox'));
  await chmod(join(dir, 'bin/busybox'), 0o755);
  const { stdout } = await Exec.run(BUSYBOX, ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await symlink('busybox', join(dir, 'bin', applet));
  }
  await writeFile(
    join(dir, 'etc/passwd'),
    'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n',
  );
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\nnogroup:x:65534:\n');
  // Every entry gets the binary's mtime, so the same busybox makes the same
  // tree (and blob) on every machine: workers sharing a registry agree on it.
  const { mtime } = await stat(BUSYBOX);
  await settleTimes(dir, mtime);
}

/** Sets the mtime of `dir` and everything below it (links themselves, not their targets). */
async function settleTimes(dir: string, time: Date): Promise<void> {
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await settleTimes(path, time);
    else await lutimes(path, time, time);
  }
  await lutimes(dir, time, time);
}
