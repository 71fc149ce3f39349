/**
 * Process identity for crash-safe bookkeeping (lock owners, leases, temp
 * names). A pid alone is not an identity: pids are reused, so a record also
 * keeps the kernel's start time of the process (`/proc/<pid>/stat` field 22)
 * and a record whose pid now belongs to a younger process counts as dead.
 *
 * All processes sharing a cache are assumed to share one pid namespace.
 */
import { readFile } from 'node:fs/promises';

/** Who holds something: a pid and, on Linux, its start time in clock ticks since boot. */
export interface ProcessId {
  pid: number;
  /** `/proc/<pid>/stat` field 22, as a decimal string; `undefined` where `/proc` is unavailable. */
  start: string | undefined;
}

/** Linux exposes times in /proc in USER_HZ, which is 100 on every architecture Node runs on. */
const USER_HZ = 100;

interface ProcStat {
  state: string;
  start: string;
}

async function readStat(pid: number): Promise<ProcStat | undefined> {
  let text: string;
  try {
    text = await readFile(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  // Field 2 (comm) is in parentheses and may itself contain spaces and ')'.
  const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const state = fields[0];
  const start = fields[19]; // field 22; fields[0] is field 3
  return state && start ? { state, start } : undefined;
}

let procAvailable: Promise<boolean> | undefined;
function hasProc(): Promise<boolean> {
  procAvailable ??= readStat(process.pid).then((s) => s !== undefined);
  return procAvailable;
}

let selfId: Promise<ProcessId> | undefined;
/** The identity of this process. */
export function self(): Promise<ProcessId> {
  selfId ??= readStat(process.pid).then((s) => ({ pid: process.pid, start: s?.start }));
  return selfId;
}

function signalZero(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * True when the process `id` still runs: the pid exists, is not a zombie, and
 * (when `id.start` is known) started at the recorded time, so a reused pid is dead.
 *
 * @example
 * ```ts
 * if (!(await isAlive({ pid: 1234, start: '58290' }))) removeItsLeftovers();
 * ```
 */
export async function isAlive(id: ProcessId): Promise<boolean> {
  if (!Number.isSafeInteger(id.pid) || id.pid <= 0) return false;
  if (id.pid === process.pid) return id.start === undefined || id.start === (await self()).start;
  if (!signalZero(id.pid)) return false;
  if (!(await hasProc())) return true;
  const stat = await readStat(id.pid);
  if (!stat || stat.state === 'Z' || stat.state === 'X') return false;
  return id.start === undefined || stat.start === id.start;
}

/** When `pid` started (epoch ms), or `undefined` when it is not running or `/proc` is unavailable. */
export async function startedAt(pid: number): Promise<number | undefined> {
  const stat = await readStat(pid);
  if (!stat) return undefined;
  const bootSeconds = await bootTime();
  if (bootSeconds === undefined) return undefined;
  return bootSeconds * 1000 + (Number(stat.start) * 1000) / USER_HZ;
}

let boot: Promise<number | undefined> | undefined;
function bootTime(): Promise<number | undefined> {
  boot ??= readFile('/proc/stat', 'utf8').then(
    (text) => {
      const match = /^btime (\d+)$/m.exec(text);
      return match ? Number(match[1]) : undefined;
    },
    () => undefined,
  );
  return boot;
}

/**
 * Parses a {@link ProcessId} written as JSON (`{ "pid": 1, "start": "2" }`);
 * `undefined` when malformed.
 */
export function parse(value: unknown): ProcessId | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { pid, start } = value as { pid?: unknown; start?: unknown };
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  return { pid, start: typeof start === 'string' ? start : undefined };
}
