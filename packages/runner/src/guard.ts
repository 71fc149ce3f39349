/**
 * The process-wide guard of every live runner: the one piece of module
 * state in this package.
 *
 * While some runner has a run in progress, handlers for SIGINT, SIGTERM and
 * SIGHUP are installed; while some runner holds anything (a run, a lease, a
 * spare directory), an `exit` hook is. They go when that stops being true,
 * so a library user's own handlers are never overridden for longer than a
 * run. On a signal, every runner is torn down synchronously, with no promise
 * to wait for: each run's container is killed and deleted, its overlay
 * unmounted (detached when busy), its directory removed (never while a mount
 * remains below it), and the leases released and spare directories
 * removed. Then the handlers are removed and the signal is raised again, so
 * the process dies of it as it would have — unless another listener for
 * that signal exists, whose owner then decides.
 *
 * It also keeps the shared runners behind `runInLayers`, the one-shot
 * convenience: consecutive calls reuse one runner (its leases and spare
 * directories) until it has been idle for the calls' `lingerMs`.
 */
import { Overlay, Runc } from '@day11/container';
import { ExitHooks } from '@day11/exec';
import { removeTreeSync } from './mounts.js';

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

/** What the guard needs of a runner. */
export interface Guarded {
  /** Whether a run is in progress. */
  hasActiveRuns(): boolean;
  /** Whether it holds anything a dying process must give back (runs, leases, spares). */
  holdsAnything(): boolean;
  /** Tears everything down synchronously and forgets it. Never throws. */
  teardownSync(sig: NodeJS.Signals | undefined): void;
}

const runners = new Set<Guarded>();
let signalsInstalled = false;

/**
 * Watches `runner` (or stops watching it), and installs or removes the
 * handlers as the runners' state requires. Runners call it whenever they
 * start or end a run, or take or give back a lease or a spare.
 *
 * @example
 * ```ts
 * update(runner); // after a run started
 * update(runner, false); // closed
 * ```
 */
export function update(runner: Guarded, live = true): void {
  if (live) runners.add(runner);
  else runners.delete(runner);
  let active = false;
  let holds = false;
  for (const r of runners) {
    active ||= r.hasActiveRuns();
    holds ||= r.holdsAnything();
  }
  if (active !== signalsInstalled) {
    signalsInstalled = active;
    for (const sig of SIGNALS) {
      if (active) process.on(sig, onSignal);
      else process.removeListener(sig, onSignal);
    }
  }
  if (holds) ExitHooks.add(onExit);
  else ExitHooks.remove(onExit);
}

/** A runner shared by `runInLayers` calls, and its idle timer. */
interface Shared<R> {
  runner: R;
  users: number;
  timer: NodeJS.Timeout | undefined;
  /** Close it as soon as its last call is done (see {@link releaseShared}). */
  closeWhenIdle: boolean;
}

interface Closable {
  close(): Promise<void>;
  releaseIdle(): Promise<void>;
}

const shared = new Map<string, Shared<Closable>>();

/**
 * Runs `use` with the shared runner for `key` (made by `make` when there is
 * none), closing that runner once no call has used it for `lingerMs`.
 *
 * @example
 * ```ts
 * await withShared(`${tmpDir}:${lingerMs}`, lingerMs, makeRunner, (r) => r.run(opts));
 * ```
 */
export async function withShared<R extends Closable, T>(
  key: string,
  lingerMs: number,
  make: () => R,
  use: (runner: R) => Promise<T>,
): Promise<T> {
  let entry = shared.get(key) as Shared<R> | undefined;
  if (entry === undefined) {
    entry = { runner: make(), users: 0, timer: undefined, closeWhenIdle: false };
    shared.set(key, entry);
  }
  const mine = entry;
  clearTimeout(mine.timer);
  mine.users++;
  try {
    return await use(mine.runner);
  } finally {
    if (--mine.users === 0) {
      const close = (): void => {
        if (shared.get(key) === mine) shared.delete(key);
        void mine.runner.close();
      };
      if (lingerMs <= 0 || mine.closeWhenIdle) close();
      else {
        mine.timer = setTimeout(close, lingerMs);
        // Lingering must not keep the process alive; the exit hook cleans up.
        mine.timer.unref();
      }
    }
  }
}

function onSignal(sig: NodeJS.Signals): void {
  teardownAllSync(sig);
  // Dying of the signal is what would have happened without us; a user's
  // own listener (called by the same emit) takes that decision instead.
  if (othersListening(sig) === 0) process.kill(process.pid, sig);
}

/**
 * Listeners for `sig` that are neither ours nor signal-exit's. signal-exit
 * (in @day11/layer's locks and execa) listens to every signal but re-raises one
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
 * Closes the shared runners of `runInLayers` that no call is using (and
 * the others as soon as their calls are done), ending their lingering.
 *
 * @example
 * ```ts
 * await releaseShared();
 * ```
 */
export async function releaseShared(): Promise<void> {
  const closing: Promise<void>[] = [];
  for (const [key, entry] of shared) {
    if (entry.users > 0) {
      entry.closeWhenIdle = true;
      closing.push(entry.runner.releaseIdle());
      continue;
    }
    clearTimeout(entry.timer);
    shared.delete(key);
    closing.push(entry.runner.close());
  }
  await Promise.all(closing);
}

/**
 * Tears every runner down synchronously (they stay usable: a runner whose
 * runs were interrupted rejects them with `RUNNER_INTERRUPTED`). Never throws.
 *
 * @example
 * ```ts
 * process.on('SIGUSR2', () => teardownAllSync('SIGUSR2'));
 * ```
 */
export function teardownAllSync(sig: NodeJS.Signals | undefined): void {
  for (const runner of [...runners]) {
    try {
      runner.teardownSync(sig);
    } catch {
      // Never throws: this is a dying process's last resort.
    }
  }
  for (const entry of shared.values()) clearTimeout(entry.timer);
  shared.clear();
  for (const runner of [...runners]) update(runner, false);
}

/** Container, then mount, then directory: each step needs the one before. Never throws. */
export function teardownRunSync(run: ActiveRun): void {
  // Also kills a runtime still creating it, which would otherwise create it after we are gone.
  if (run.containerId !== undefined)
    Runc.killAndDeleteSync({ runtime: run.runtime, id: run.containerId });
  Overlay.unmountSync(run.merged);
  removeTreeSync(run.runDir);
  removeTreeSync(run.handover);
}
