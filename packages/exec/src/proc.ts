/**
 * Is a process alive, and could it own a given entry: the one rule every
 * day11 package uses for lock owners, leases, temporary names and container
 * ids.
 *
 * A pid alone is not an identity: pids are reused. A record that can keep
 * the kernel's start time of its process (`/proc/<pid>/stat` field 22) does
 * ({@link ProcessId}, {@link isAlive}); a name that carries only a pid
 * (`.day11-tmp-<pid>-...`, a container id) is judged by {@link ownerGone},
 * which compares the pid's start time with when the entry last changed.
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

/**
 * A process that started this long after an entry last changed cannot have
 * made it. The margin absorbs tick granularity and clock adjustments.
 */
export const PID_REUSE_MARGIN_MS = 60_000;

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
/**
 * The identity of this process.
 *
 * @example
 * ```ts
 * await writeFile(ownerFile, JSON.stringify(await Proc.self())); // {"pid":4242,"start":"58290"}
 * ```
 */
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
 * if (!(await Proc.isAlive({ pid: 1234, start: '58290' }))) removeItsLeftovers();
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

/**
 * Whether the process that named an entry by its pid alone is gone: the pid
 * does not run (or is a zombie), or it belongs to a process that started
 * more than {@link PID_REUSE_MARGIN_MS} after the entry last changed
 * (`changedMs`, e.g. its ctime), so the pid was reused. Without `/proc` a
 * running pid counts as the owner.
 *
 * @example
 * ```ts
 * const pid = TempName.ownerPid(name);
 * if (pid !== undefined && (await Proc.ownerGone(pid, (await lstat(path)).ctimeMs))) await rm(path);
 * ```
 */
export async function ownerGone(pid: number, changedMs: number): Promise<boolean> {
  if (!(await isAlive({ pid, start: undefined }))) return true;
  const started = await startedAt(pid);
  return started !== undefined && started > changedMs + PID_REUSE_MARGIN_MS;
}

/**
 * When `pid` started (epoch ms), or `undefined` when it is not running or `/proc` is unavailable.
 *
 * @example
 * ```ts
 * const started = await Proc.startedAt(process.pid); // ≈ Date.now() - process.uptime() * 1000
 * ```
 */
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
 *
 * @example
 * ```ts
 * Proc.parse({ pid: 12, start: '34' }); // { pid: 12, start: '34' }
 * Proc.parse({ pid: '12' }); // undefined
 * ```
 */
export function parse(value: unknown): ProcessId | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const { pid, start } = value as { pid?: unknown; start?: unknown };
  if (typeof pid !== 'number' || !Number.isSafeInteger(pid) || pid <= 0) return undefined;
  return { pid, start: typeof start === 'string' ? start : undefined };
}
