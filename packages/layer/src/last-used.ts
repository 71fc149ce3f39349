/**
 * The LRU sentinel: an empty `last_used` file whose mtime is when the layer
 * was last used. Separate from `layer.json` so a touch never rewrites JSON.
 */
import { closeSync, openSync, statSync, utimesSync } from 'node:fs';
import { stat, utimes, open } from 'node:fs/promises';
import { join } from 'node:path';
import { FILES } from './layer-dir.js';

/** The sentinel path of a layer directory. */
export function file(dir: string): string {
  return join(dir, FILES.lastUsed);
}

/** Marks the layer used now. Best-effort bookkeeping: never throws. */
export async function touch(dir: string, when: Date = new Date()): Promise<void> {
  const path = file(dir);
  try {
    await utimes(path, when, when);
  } catch {
    try {
      const handle = await open(path, 'a', 0o600);
      await handle.close();
      await utimes(path, when, when);
    } catch {
      // The layer may be gone or read-only; LRU order is advisory.
    }
  }
}

/** Synchronous {@link touch}, for signal handlers and exit paths. Never throws. */
export function touchSync(dir: string, when: Date = new Date()): void {
  const path = file(dir);
  try {
    utimesSync(path, when, when);
  } catch {
    try {
      closeSync(openSync(path, 'a'));
      utimesSync(path, when, when);
    } catch {
      // Advisory only.
    }
  }
}

/**
 * {@link touchSync}, unless the layer was marked used less than `withinMs`
 * ago: then one stat and no write (a utimes is a journalled inode update;
 * LRU order at a second's resolution is all `Gc` needs). Never throws.
 */
export function touchSyncUnlessRecent(dir: string, withinMs: number): void {
  const now = Date.now();
  try {
    if (statSync(file(dir)).mtimeMs > now - withinMs) return;
  } catch {
    // No mark yet: make one.
  }
  touchSync(dir, new Date(now));
}

/** When the layer was last used (epoch ms), or `undefined` if never recorded. */
export async function get(dir: string): Promise<number | undefined> {
  try {
    return (await stat(file(dir))).mtimeMs;
  } catch {
    return undefined;
  }
}
