/**
 * Names of the runner's temporary entries, and who owns them.
 *
 * A run works in `{tmpDir}/.day11-tmp-<pid>-<hex>-run/` and hands its upper
 * over as `{tmpDir}/.day11-tmp-<pid>-<hex>-upper`: the same form as
 * `@day11/layer`'s temporary names, so `Recover.sweep` of the cache also
 * recognises them (it never removes one with a mount inside), and
 * {@link ../recover.ts} finds a dead process's runs by the pid in the name.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomHex } from '@day11/exec';

/** Prefix of every day11 temporary entry (the same as `@day11/layer`'s). */
export const TEMP_PREFIX = '.day11-tmp-';
/** Suffix of a run's working directory. */
export const RUN_SUFFIX = '-run';
/** Suffix of an upper handed over to the caller. */
export const UPPER_SUFFIX = '-upper';

const OWNER_RE = /^\.day11-tmp-(\d+)-/;

/** The two paths of one run in `tmpDir`, sharing one random tag. */
export interface RunPaths {
  /** `{tmpDir}/.day11-tmp-<pid>-<hex>-run`: upper/, work/, merged/, config.json. */
  runDir: string;
  /** `{tmpDir}/.day11-tmp-<pid>-<hex>-upper`: where the upper goes when handed over. */
  handover: string;
}

/**
 * Fresh paths for a run of this process in `tmpDir`.
 *
 * @example
 * ```ts
 * runPaths('/var/cache/day11'); // { runDir: '/var/cache/day11/.day11-tmp-4242-9f3a0c1d-run', handover: '...-upper' }
 * ```
 */
export function runPaths(tmpDir: string): RunPaths {
  const tag = `${TEMP_PREFIX}${process.pid}-${randomHex(4)}`;
  return { runDir: join(tmpDir, tag + RUN_SUFFIX), handover: join(tmpDir, tag + UPPER_SUFFIX) };
}

/**
 * The pid in a day11 temporary name, or `undefined` for any other name.
 *
 * @example
 * ```ts
 * ownerPid('.day11-tmp-4242-9f3a0c1d-run'); // 4242
 * ownerPid('build-0123456789ab'); // undefined
 * ```
 */
export function ownerPid(name: string): number | undefined {
  const pid = Number(OWNER_RE.exec(name)?.[1]);
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

/** A process that started this long after an entry last changed cannot have made it. */
const PID_REUSE_MARGIN_MS = 60_000;
/** USER_HZ: /proc times are in 1/100 s on every architecture Node runs on. */
const USER_HZ = 100;

/**
 * Whether the process that named an entry is gone: `pid` does not run (or is
 * a zombie), or it now belongs to a process started well after the entry
 * last changed (`changedMs`, its ctime), so the pid was reused. The same
 * rule as `@day11/layer`'s `Recover.sweep`, so the two agree on every entry.
 *
 * @example
 * ```ts
 * if (ownerGone(4242, (await lstat(path)).ctimeMs)) await removeIt(path);
 * ```
 */
export function ownerGone(pid: number, changedMs: number): boolean {
  if (pid === process.pid) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists, as another user's process.
    if ((err as NodeJS.ErrnoException).code !== 'EPERM') return true;
  }
  const stat = procStat(pid);
  if (stat === undefined) return false; // no /proc: trust kill(0)
  if (stat.state === 'Z' || stat.state === 'X') return true;
  const started = startedAtMs(stat.startTicks);
  return started !== undefined && started > changedMs + PID_REUSE_MARGIN_MS;
}

function procStat(pid: number): { state: string; startTicks: number } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may itself contain spaces and ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return { state: fields[0] ?? '', startTicks: Number(fields[19]) };
}

let bootMs: number | undefined;
function startedAtMs(startTicks: number): number | undefined {
  if (bootMs === undefined) {
    try {
      const btime = /^btime (\d+)$/m.exec(readFileSync('/proc/stat', 'utf8'))?.[1];
      if (btime === undefined) return undefined;
      bootMs = Number(btime) * 1000;
    } catch {
      return undefined;
    }
  }
  return Number.isFinite(startTicks) ? bootMs + (startTicks * 1000) / USER_HZ : undefined;
}
