/**
 * Where a package's worker-thread script is: compiled next to the module
 * that starts it, or, when that module runs from its TypeScript source (as
 * under vitest), in the package's `dist/` (build first).
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * The script `name` (e.g. `tar-worker.js`) beside the module at `moduleUrl`,
 * or in `../dist/` from it.
 *
 * @example
 * ```ts
 * const worker = new Worker(workerFile('survey-worker.js', import.meta.url));
 * ```
 */
export function workerFile(name: string, moduleUrl: string): URL {
  const beside = new URL(`./${name}`, moduleUrl);
  if (existsSync(fileURLToPath(beside))) return beside;
  return new URL(`../dist/${name}`, moduleUrl);
}
