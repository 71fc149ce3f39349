/**
 * The runs in progress in this process, and what happens to them when the
 * process is told to stop.
 *
 * While at least one run is active, handlers for SIGINT, SIGTERM and SIGHUP
 * (and an `exit` hook) are installed; they go when the last run ends, so a
 * library user's own handlers are never overridden for longer than a run.
 * On a signal, every active run is torn down synchronously, with no
 * promise to wait for: its container is killed and deleted (`runc delete
 * --force`, through `Exec.runSync`), its overlay unmounted (`umount2`,
 * detached when busy), its directory removed (never while a mount remains
 * below it), and the leases released and spare directories removed. Then the handlers are removed and the
 * signal is raised again, so the process dies of it as it would have —
 * unless another listener for that signal exists, whose owner then decides.
 */
import { Runc } from '@day11/container';
import { releaseAllSync } from './leases.js';
import { removeTreeSync, unmountSync } from './mounts.js';
import { removeAllSparesSync } from './scratch.js';

/** Signals that tear the active runs down. */
export const SIGNALS: readonly NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];

/** What the synchronous teardown needs to know about a run. */
export interface ActiveRun {
  /** The run's directory (upper/, work/, merged/, config.json). */
  readonly runDir: string;
  /** The overlay mount point. */
  readonly merged: string;
  /** Where the upper is moved when handed over; still the run's until it is unregistered. */
  readonly handover: string;
  /** The runtime binary (`runc`, `crun`, a path). */
  readonly runtime: string;
  /** The container id once the runtime has been asked to run it. */
  containerId: string | undefined;
  /** Set when a signal tore the run down; the run must then fail. */
  interrupted: NodeJS.Signals | undefined;
}

const active = new Set<ActiveRun>();
let installed = false;

/**
 * Adds a run; installs the signal handlers when it is the first.
 *
 * @example
 * ```ts
 * register(run);
 * try { await work(run); } finally { unregister(run); }
 * ```
 */
export function register(run: ActiveRun): void {
  active.add(run);
  install();
}

/** Removes a run; removes the handlers when it was the last. */
export function unregister(run: ActiveRun): void {
  active.delete(run);
  if (active.size === 0) uninstall();
}

/** The runs in progress (for tests and diagnostics). */
export function activeRuns(): ReadonlySet<ActiveRun> {
  return active;
}

function install(): void {
  if (installed) return;
  installed = true;
  for (const sig of SIGNALS) process.on(sig, onSignal);
  process.on('exit', onExit);
}

function uninstall(): void {
  if (!installed) return;
  installed = false;
  for (const sig of SIGNALS) process.removeListener(sig, onSignal);
  process.removeListener('exit', onExit);
}

function onSignal(sig: NodeJS.Signals): void {
  teardownAllSync(sig);
  uninstall();
  // Dying of the signal is what would have happened without us; a user's
  // own listener (called by the same emit) takes that decision instead.
  if (othersListening(sig) === 0) process.kill(process.pid, sig);
}

/**
 * Listeners for `sig` that are neither ours nor signal-exit's. signal-exit
 * (in proper-lockfile and execa) listens to every signal but re-raises one
 * only when its own listeners are the only ones, counting them in a global:
 * the same convention here, or each would wait for the other and the process
 * would live on. On the re-raised signal it runs its exit hooks and re-raises
 * once more, so the process dies of the signal.
 */
export function othersListening(sig: NodeJS.Signals): number {
  const v3 = (process as { __signal_exit_emitter__?: { count?: unknown } }).__signal_exit_emitter__;
  const v4 = (globalThis as Record<symbol, { count?: unknown } | undefined>)[
    Symbol.for('signal-exit emitter')
  ];
  const helpers = [v3?.count, v4?.count].reduce<number>(
    (sum, n) => sum + (typeof n === 'number' ? n : 0),
    0,
  );
  return Math.max(0, process.listenerCount(sig) - helpers);
}

function onExit(): void {
  teardownAllSync(undefined);
}

/**
 * Tears down every active run synchronously and forgets them. Never throws.
 *
 * @example
 * ```ts
 * process.on('SIGUSR2', () => teardownAllSync('SIGUSR2'));
 * ```
 */
export function teardownAllSync(sig: NodeJS.Signals | undefined): void {
  for (const run of active) {
    run.interrupted = sig ?? 'SIGTERM';
    teardownSync(run);
  }
  active.clear();
  releaseAllSync();
  removeAllSparesSync();
}

/** Container, then mount, then directory: each step needs the one before. */
export function teardownSync(run: ActiveRun): void {
  if (run.containerId !== undefined) stopContainerSync(run.runtime, run.containerId);
  unmountSync(run.merged);
  removeTreeSync(run.runDir);
  removeTreeSync(run.handover);
}

/** Kills and deletes a container synchronously (see `Runc.killAndDeleteSync`). */
function stopContainerSync(runtime: string, id: string): void {
  Runc.killAndDeleteSync({ runtime, id });
}
