/**
 * Cgroups of containers: crun on a hybrid cgroup layout, and removing the
 * cgroups a killed runtime left.
 */
import { readdir, readFile, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Exec, Mountinfo } from '@day11/exec';
import { ContainerCodes, ContainerError, messageOf } from './errors.js';
import { binary, type Runtime } from './runc-command.js';

/** crun 1.8's refusal of a hybrid cgroup layout whose cgroup2 still has controllers. */
export const HYBRID_REFUSAL = /cgroups in hybrid mode not supported/;

/** Where cgroup hierarchies are mounted. */
const CGROUP_ROOT = '/sys/fs/cgroup';

/** Options of {@link prepareCrunCgroups}. */
export interface PrepareCgroupsOptions {
  /** Where the cgroup hierarchies are mounted (default `/sys/fs/cgroup`). */
  cgroupRoot?: string;
}

/**
 * Lets crun run on a hybrid cgroup layout: every controller the cgroup2
 * hierarchy (`<root>/unified`) still offers, e.g. `hugetlb`, gets a cgroup v1
 * hierarchy of its own (`mkdir -p <root>/hugetlb && mount -t cgroup -o hugetlb
 * cgroup <root>/hugetlb`). Idempotent: once moved, a controller is no longer
 * offered, and nothing is done on pure v1 or pure v2 machines. Privileged
 * (sudo -n when not root). Returns the controllers it moved.
 *
 * @example
 * ```ts
 * await Runc.prepareCrunCgroups(); // ['hugetlb'] the first time, [] after
 * ```
 * @throws {ContainerError} `CONTAINER_CRUN_HYBRID_CGROUPS` when a mount fails.
 */
export async function prepareCrunCgroups(opts: PrepareCgroupsOptions = {}): Promise<string[]> {
  const root = opts.cgroupRoot ?? CGROUP_ROOT;
  const moved: string[] = [];
  for (const controller of await unifiedControllers(root)) {
    const target = join(root, controller);
    if (await isMountPoint(target)) continue;
    try {
      await Exec.run('mkdir', ['-p', target], { privileged: true });
      await Exec.run('mount', ['-t', 'cgroup', '-o', controller, 'cgroup', target], {
        privileged: true,
      });
    } catch (cause) {
      throw new ContainerError(
        ContainerCodes.CRUN_HYBRID_CGROUPS,
        `Cannot give the ${controller} cgroup controller a v1 hierarchy at ${target}: ${messageOf(cause)}`,
        {
          path: target,
          cause,
          hint: `It may be in use in ${join(root, 'unified')}; use runtime 'runc', which supports this layout`,
        },
      );
    }
    moved.push(controller);
  }
  return moved;
}

/** Controllers offered by the cgroup2 hierarchy of a hybrid layout; [] when there is none. */
async function unifiedControllers(root: string): Promise<string[]> {
  const text = await readFile(join(root, 'unified', 'cgroup.controllers'), 'utf8').catch(() => '');
  return text.split(/\s+/).filter((c) => /^[a-z_]+$/.test(c));
}

async function isMountPoint(path: string): Promise<boolean> {
  return (await Mountinfo.read()).some((e) => e.mountPoint === path);
}

/**
 * The error for crun refusing a hybrid cgroup layout, with the fix for this machine.
 *
 * @example
 * ```ts
 * if (HYBRID_REFUSAL.test(detail)) throw await hybridCgroupsError({ runtime: 'crun', id, detail });
 * ```
 */
export async function hybridCgroupsError(opts: {
  runtime?: Runtime | undefined;
  id: string;
  detail: string;
}): Promise<ContainerError> {
  const { detail } = opts;
  const controllers = await unifiedControllers(CGROUP_ROOT);
  const fix = (controllers.length ? controllers : ['hugetlb'])
    .map((c) => {
      const dir = join(CGROUP_ROOT, c);
      return `mkdir -p ${dir} && mount -t cgroup -o ${c} cgroup ${dir}`;
    })
    .join(' && ');
  return new ContainerError(
    ContainerCodes.CRUN_HYBRID_CGROUPS,
    `${binary(opts)} refused this machine's hybrid cgroup layout for container ${opts.id}: ${detail}`,
    {
      path: join(CGROUP_ROOT, 'unified'),
      hint: `The cgroup2 hierarchy still offers ${controllers.join(', ') || 'a controller'}; give it a v1 hierarchy as root: \`${fix}\` (Runc.prepareCrunCgroups() does this), or use runtime 'runc'`,
    },
  );
}

/**
 * rmdir of cgroup `name` (best effort) wherever a relative `cgroupsPath` may have put it:
 * at the top of every hierarchy under {@link CGROUP_ROOT} (v1 controllers,
 * v2 itself) and below this process's own cgroup. rmdir removes only an empty
 * cgroup (no process, no child): anything else is left as it is.
 *
 * @example
 * ```ts
 * await removeCgroups('day11-run-4242-1-ab12cd');
 * ```
 */
export async function removeCgroups(name: string): Promise<void> {
  const hierarchies = [CGROUP_ROOT];
  for (const entry of await readdir(CGROUP_ROOT).catch(() => [] as string[]))
    hierarchies.push(join(CGROUP_ROOT, entry));
  const own = await ownCgroupPaths();
  for (const hierarchy of hierarchies) {
    for (const parent of new Set(['/', ...own])) {
      await rmdir(join(hierarchy, parent, name)).catch(() => undefined);
    }
  }
}

/** The cgroup paths of this process, one per hierarchy (`/proc/self/cgroup`). */
async function ownCgroupPaths(): Promise<string[]> {
  const text = await readFile('/proc/self/cgroup', 'utf8').catch(() => '');
  return text
    .split('\n')
    .map((line) => line.split(':').slice(2).join(':'))
    .filter((path) => path.startsWith('/'));
}
