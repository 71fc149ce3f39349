/** A minimal root filesystem made from the host's busybox-static. */
import { chmod, copyFile, mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Exec } from '@day11/exec';

const BUSYBOX = '/bin/busybox';

/** Builds a busybox rootfs in `dir` (which must not exist yet). */
export async function makeBusyboxRootfs(dir: string): Promise<void> {
  for (const sub of ['bin', 'etc', 'tmp', 'proc', 'dev', 'sys', 'root', 'opt']) {
    await mkdir(join(dir, sub), { recursive: true });
  }
  await chmod(join(dir, 'tmp'), 0o1777);
  await copyFile(BUSYBOX, join(dir, 'bin/busybox')).catch((cause: unknown) => {
    throw new Error(`${BUSYBOX} is missing: run \`apt-get install -y busybox-static\``, { cause });
  });
  await chmod(join(dir, 'bin/busybox'), 0o755);
  const { stdout } = await Exec.run(BUSYBOX, ['--list']);
  for (const applet of stdout.split('\n').filter((a) => a && a !== 'busybox')) {
    await symlink('busybox', join(dir, 'bin', applet));
  }
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(dir, 'etc/group'), 'root:x:0:\n');
  await writeFile(join(dir, 'etc/issue'), 'busybox base\n');
}
