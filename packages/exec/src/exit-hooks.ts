/**
 * The process's one `exit` listener, shared by everything in day11 that must
 * give something back when the process ends (subprocess groups still
 * running, a runner's mounts, leases and temporary directories). Each part
 * adds a hook while it holds something and removes it when it does not, so
 * the listener exists only while some hook does. Hooks run synchronously
 * (nothing can be awaited in an exit), in the order they were added, and one
 * that throws does not stop the others.
 */

const hooks = new Set<() => void>();

function runHooks(): void {
  for (const hook of [...hooks]) {
    try {
      hook();
    } catch {
      // The process is ending: the other hooks still get their turn.
    }
  }
}

/**
 * Runs `hook` when the process exits, until the returned function is called.
 * Adding a hook that is already there does nothing.
 *
 * @example
 * ```ts
 * const remove = ExitHooks.add(() => unmountSync(target));
 * try { await work(); } finally { remove(); }
 * ```
 */
export function add(hook: () => void): () => void {
  if (hooks.size === 0) process.on('exit', runHooks);
  hooks.add(hook);
  return () => remove(hook);
}

/** Stops running `hook` at exit. */
export function remove(hook: () => void): void {
  if (!hooks.delete(hook)) return;
  if (hooks.size === 0) process.removeListener('exit', runHooks);
}
