/**
 * Cgroups of containers: crun on a hybrid cgroup layout, and removing the
 * cgroups a killed runtime left.
 */
import { existsSync, readdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
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
 * Removes the cgroups of container `name` (best effort) wherever a relative
 * `cgroupsPath` may have put them: at the top of every hierarchy under
 * {@link CGROUP_ROOT} (v1 controllers, v2 itself; crun puts them there) and
 * below this process's own cgroup in it (runc puts them below the cgroup it
 * ran in, which it inherited from us). Processes still in them are killed
 * first (a runtime killed while creating the container can leave its init
 * behind); a cgroup that will not go is left as it is.
 *
 * @example
 * ```ts
 * await removeCgroups('day11-run-4242-1-ab12cd');
 * ```
 */
export async function removeCgroups(name: string): Promise<void> {
  for (const dir of placesOf(name)) await removeCgroupDir(dir);
}

/**
 * {@link removeCgroups}, synchronously, for a process about to die (a signal
 * handler): kills what is left in them, then removes them, waiting up to
 * `waitMs` for the killed processes to be gone. Never throws.
 *
 * @example
 * ```ts
 * removeCgroupsSync('day11-run-4242-1-ab12cd');
 * ```
 */
export function removeCgroupsSync(name: string, waitMs = 1000): void {
  const dirs = placesOf(name).filter((dir) => existsSync(dir));
  if (dirs.length === 0) return;
  for (const dir of dirs) killMembersSync(dir);
  const deadline = performance.now() + waitMs;
  let left = dirs;
  for (;;) {
    left = left.filter((dir) => !rmdirQuietSync(dir));
    if (left.length === 0 || performance.now() > deadline) return;
    sleepSync(10);
  }
}

/**
 * Cgroup directories anywhere in any hierarchy whose name `match`es,
 * deepest first (a container's cgroup may sit below any cgroup its runtime
 * ran in, so only a walk finds the ones of a process that is gone).
 *
 * @example
 * ```ts
 * const mine = await findCgroups((name) => name.startsWith('day11-run-4242-'));
 * ```
 */
export async function findCgroups(match: (name: string) => boolean): Promise<string[]> {
  const found: string[] = [];
  const walk = async (dir: string, depth: number): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const path = join(dir, e.name);
      if (match(e.name)) found.push(path);
      else if (depth < MAX_CGROUP_DEPTH) await walk(path, depth + 1);
    }
  };
  await walk(CGROUP_ROOT, 0);
  return found.sort((a, b) => b.length - a.length);
}

/** How deep {@link findCgroups} looks below each hierarchy's root. */
const MAX_CGROUP_DEPTH = 8;

/**
 * Kills the processes of cgroup `dir` (and of the cgroups below it), then
 * removes them all, deepest first; resolves true when `dir` is gone.
 *
 * @example
 * ```ts
 * for (const dir of await findCgroups(isOrphan)) await removeCgroupDir(dir);
 * ```
 */
export async function removeCgroupDir(dir: string): Promise<boolean> {
  const tree = [dir];
  for (let i = 0; i < tree.length; i++) {
    const entries = await readdir(tree[i]!, { withFileTypes: true }).catch(() => []);
    for (const e of entries) if (e.isDirectory()) tree.push(join(tree[i]!, e.name));
  }
  tree.reverse();
  for (const d of tree) killMembersSync(d);
  for (let attempt = 0; attempt < 100; attempt++) {
    let gone = true;
    for (const d of tree) gone = rmdirQuietSync(d) && gone;
    if (gone) return true;
    await delay(10);
  }
  return false;
}

/** The places {@link removeCgroups} looks: each hierarchy's top, and our own cgroup in it. */
function placesOf(name: string): string[] {
  let hierarchies: string[];
  try {
    hierarchies = [CGROUP_ROOT, ...readdirSync(CGROUP_ROOT).map((e) => join(CGROUP_ROOT, e))];
  } catch {
    return [];
  }
  const own = ownCgroupPaths();
  const places = new Set<string>();
  for (const hierarchy of hierarchies)
    for (const parent of ['/', ...own]) places.add(join(hierarchy, parent, name));
  return [...places];
}

/** SIGKILL to every process of cgroup `dir` (thawed first if frozen). Never throws. */
function killMembersSync(dir: string): void {
  try {
    if (existsSync(join(dir, 'freezer.state'))) writeFileSync(join(dir, 'freezer.state'), 'THAWED');
  } catch {
    // Not frozen, or not ours to thaw: the kill below is all we can do.
  }
  let pids: string[];
  try {
    pids = readFileSync(join(dir, 'cgroup.procs'), 'utf8').split('\n').filter(Boolean);
  } catch {
    return;
  }
  for (const pid of pids) {
    try {
      process.kill(Number(pid), 'SIGKILL');
    } catch {
      // Gone already.
    }
  }
}

/** rmdir that says whether `dir` is gone now. */
function rmdirQuietSync(dir: string): boolean {
  try {
    rmdirSync(dir);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT';
  }
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** The cgroup paths of this process, one per hierarchy (`/proc/self/cgroup`). */
function ownCgroupPaths(): string[] {
  let text: string;
  try {
    text = readFileSync('/proc/self/cgroup', 'utf8');
  } catch {
    return [];
  }
  return text
    .split('\n')
    .map((line) => line.split(':').slice(2).join(':'))
    .filter((path) => path.startsWith('/'));
}
