/**
 * Resource limits of a step (`resources` in a plan, per step or plan-wide):
 * memory, CPUs and processes. A step always runs with a pids limit
 * ({@link DEFAULT_PIDS} unless set), so a fork bomb in one step cannot take
 * the machine; memory and CPU are unlimited unless set.
 */
import type { ResourcesInput } from './plan-schema.js';

/**
 * The pids limit of a step that sets none: a build spawns many processes
 * (make -j, compilers, shells), but not thousands.
 */
export const DEFAULT_PIDS = 4096;

/** The kernel's own ceiling on pids (pid_max on 64-bit). */
export const MAX_PIDS = 4_194_304;

const SIZE_UNITS: Readonly<Record<string, number>> = {
  '': 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
};

/** Limits of a step, in the units the runtime takes; absent means the default. */
export interface Resources {
  /** Memory limit in bytes. */
  memoryBytes?: number;
  /** CPU time in CPUs (e.g. 1.5). */
  cpus?: number;
  /** Process limit. */
  pids?: number;
}

/**
 * Normalises plan `resources` (sizes to bytes); `fail` is called with a
 * reason for a value the runtime would refuse.
 *
 * @example
 * ```ts
 * parseResources({ memory: '4G', pids: 512 }, fail); // { memoryBytes: 4294967296, pids: 512 }
 * ```
 */
export function parseResources(input: ResourcesInput, fail: (why: string) => never): Resources {
  const out: Resources = {};
  if (input.memory !== undefined) out.memoryBytes = memoryBytes(input.memory, fail);
  if (input.cpus !== undefined) out.cpus = input.cpus;
  if (input.pids !== undefined) out.pids = input.pids;
  return out;
}

/** Below this the runtime itself cannot start (runc needs a few MiB to set up). */
const MIN_MEMORY = 6 * 2 ** 20;

function memoryBytes(value: number | string, fail: (why: string) => never): number {
  let bytes = value;
  if (typeof value === 'string') {
    const match = /^(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?$/i.exec(value.trim());
    bytes = match ? Math.round(Number(match[1]) * SIZE_UNITS[match[2]!.toLowerCase()]!) : NaN;
    if (!Number.isSafeInteger(bytes)) {
      fail(`memory must be bytes or a size like "512M" or "4G", got ${JSON.stringify(value)}`);
    }
  }
  if ((bytes as number) < MIN_MEMORY) {
    fail(`memory must be at least 6M (the runtime needs that much to start), got ${value}`);
  }
  return bytes as number;
}
