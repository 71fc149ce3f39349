/** Checks and option helpers shared by the commands. */
import { readFile } from 'node:fs/promises';
import type { Runc } from '@day11/container';
import { usage } from '../args.js';
import { CliCodes, CliError } from '../errors.js';

/** `--runtime`: runc, crun, or an absolute path. */
export function runtimeOption(value: string | undefined): Runc.Runtime {
  if (value === undefined || value === 'runc' || value === 'crun' || value.startsWith('/'))
    return value ?? 'runc';
  throw usage(
    'build',
    `--runtime must be runc, crun or an absolute path, got ${JSON.stringify(value)}`,
  );
}

/** What running containers over overlayfs needs: root, overlayfs, the runtime. Clear errors, no stack traces. */
export async function checkRequirements(runtime: Runc.Runtime): Promise<void> {
  const { Exec } = await import('@day11/exec');
  if (!Exec.isRoot()) {
    throw new CliError(
      CliCodes.MISSING_REQUIREMENT,
      'day11 mounts overlayfs and runs containers, which needs root',
      {
        hint: 'Run it as root (e.g. with sudo)',
      },
    );
  }
  const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  if (!/\boverlay\b/.test(filesystems)) {
    await Exec.run('modprobe', ['overlay']).catch(() => undefined);
    const again = await readFile('/proc/filesystems', 'utf8').catch(() => '');
    if (!/\boverlay\b/.test(again)) {
      throw new CliError(CliCodes.MISSING_REQUIREMENT, 'This kernel has no overlayfs', {
        hint: 'Load it with `modprobe overlay`, or use a kernel built with CONFIG_OVERLAY_FS',
      });
    }
  }
  // Looked up, not spawned: a spawn costs more than the rest of a cached build's start.
  if (Exec.which(runtime) === undefined) {
    throw new CliError(
      CliCodes.MISSING_REQUIREMENT,
      `The container runtime ${runtime} is not installed`,
      { hint: `Install it: apt-get install -y ${runtime.startsWith('/') ? 'runc' : runtime}` },
    );
  }
}

/** Whether a command is on PATH (for optional validators such as umoci and skopeo). */
export async function hasCommand(cmd: string): Promise<boolean> {
  const { Exec } = await import('@day11/exec');
  return Exec.which(cmd) !== undefined;
}
