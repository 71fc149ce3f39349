/**
 * A hand-written check of the common shape of a plan step, ahead of zod: a
 * plan of thousands of steps spent most of its validation in zod. It accepts
 * only what `StepSchema` accepts and returns what it returns (defaults filled
 * in, fresh arrays and objects); anything unusual (`resources`, `security`,
 * an object that is not a plain object, an explicit `undefined`) or invalid gives
 * `undefined`, and zod decides and words the error. A property test holds
 * the two equal. The same for the plan around the steps ({@link quickShell}),
 * so that a plan of the usual shape needs no zod schema at all.
 */

import { LayerSymlinks } from '@day11/layer';
import type { BaseInput } from './plan-schema.js';

/** What `StepSchema` gives for a step (kept in step with it by the tests). */
export interface QuickStep {
  id: string;
  tag?: string;
  deps: string[];
  run: string | string[];
  env: Record<string, string>;
  user: number | string;
  network: 'none' | 'host';
  cwd: string;
}

/** uids and gids are 32-bit, and (uid_t)-1 means "unchanged". */
export const MAX_ID = 2 ** 32 - 2;
/** A step id names a directory in the cache's registry (`packages/{id}/`): one path component. */
export const MAX_ID_BYTES = 255;

const KEYS = new Set(['id', 'tag', 'deps', 'run', 'env', 'user', 'network', 'cwd']);
const ENV_NAME = /^[^=\0]+$/;
const USER = /^\d+(:\d+)?$/;

/** The step `value` as `StepSchema` parses it, or `undefined` to leave it to zod. */
export function quickStep(value: unknown): QuickStep | undefined {
  if (!isPlain(value)) return undefined;
  for (const key of Object.keys(value)) {
    if (!KEYS.has(key) || value[key] === undefined) return undefined;
  }
  const { id, tag, deps = [], run, env = {}, user = 0, network = 'none', cwd = '/' } = value;
  if (!validId(id)) return undefined;
  if (tag !== undefined && (typeof tag !== 'string' || tag === '')) return undefined;
  if (!Array.isArray(deps) || !deps.every((d) => typeof d === 'string')) return undefined;
  const runCopy = validRun(run);
  if (runCopy === undefined) return undefined;
  const envCopy = validEnv(env);
  if (envCopy === undefined) return undefined;
  if (!validUser(user)) return undefined;
  if (network !== 'none' && network !== 'host') return undefined;
  if (typeof cwd !== 'string' || !cwd.startsWith('/')) return undefined;
  return {
    id,
    ...(tag !== undefined && { tag }),
    deps: [...deps],
    run: runCopy,
    env: envCopy,
    user,
    network,
    cwd,
  };
}

function isPlain(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  return Object.getPrototypeOf(value) === Object.prototype;
}

function validId(id: unknown): id is string {
  return typeof id === 'string' && LayerSymlinks.isId(id) && Buffer.byteLength(id) <= MAX_ID_BYTES;
}

function validRun(run: unknown): string | string[] | undefined {
  if (typeof run === 'string') return run !== '' && !run.includes('\0') ? run : undefined;
  if (!Array.isArray(run) || run.length === 0) return undefined;
  for (const arg of run as unknown[]) {
    if (typeof arg !== 'string' || arg.includes('\0')) return undefined;
  }
  return [...(run as string[])];
}

function validEnv(env: unknown): Record<string, string> | undefined {
  if (!isPlain(env)) return undefined;
  const out: Record<string, string> = {};
  for (const name of Object.keys(env)) {
    const v = env[name];
    // `__proto__` as an own key (JSON makes one) is left to zod.
    if (name === '__proto__' || !ENV_NAME.test(name)) return undefined;
    if (typeof v !== 'string' || v.includes('\0')) return undefined;
    out[name] = v;
  }
  return out;
}

function validUser(user: unknown): user is number | string {
  if (typeof user === 'number') return Number.isInteger(user) && user >= 0 && user <= MAX_ID;
  return typeof user === 'string' && USER.test(user);
}

/** What `PlanShellSchema` gives for a plan with only `base` and `steps`. */
export interface QuickShell {
  base: BaseInput;
  steps: unknown[];
  resources?: undefined;
  security?: undefined;
}

/** Bases that name their source with one non-empty string. */
const STRING_BASES = new Set(['tarball', 'dir', 'docker', 'image']);
/** A `{ layer }` base: a layer hash or its prefix, with or without `build-`. */
export const LAYER_HASH = /^(build-)?[0-9a-f]{12,64}$/;

/** The plan `value` around its steps as `PlanShellSchema` parses it, or `undefined` to leave it to zod. */
export function quickShell(value: unknown): QuickShell | undefined {
  if (!isPlain(value)) return undefined;
  for (const key of Object.keys(value)) if (key !== 'base' && key !== 'steps') return undefined;
  const { steps } = value;
  if (!Array.isArray(steps) || steps.length === 0) return undefined;
  const base = quickBase(value['base']);
  return base === undefined ? undefined : { base, steps: [...(steps as unknown[])] };
}

function quickBase(base: unknown): BaseInput | undefined {
  if (base === 'busybox') return base;
  if (!isPlain(base)) return undefined;
  const keys = Object.keys(base);
  if (keys.length !== 1) return undefined;
  const key = keys[0]!;
  const value = base[key];
  if (key === 'busybox') return value === true ? { busybox: true } : undefined;
  if (typeof value !== 'string') return undefined;
  if (key === 'layer') return LAYER_HASH.test(value) ? { layer: value } : undefined;
  if (!STRING_BASES.has(key) || value === '') return undefined;
  return { [key]: value } as BaseInput;
}
