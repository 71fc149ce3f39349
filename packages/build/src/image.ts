/**
 * What a step puts into the image config of its exported layer: the
 * history line that names it, and the runtime config (PATH as its container
 * had it, its environment and working directory). Works from a `Step` or
 * from the `step.json` sidecar a built layer keeps.
 */
import { OciSpec } from '@day11/container';

/** The parts of a step the image cares about. */
export interface StepLike {
  id?: unknown;
  run?: unknown;
  env?: unknown;
  cwd?: unknown;
}

/** The image-config parts of a step. */
export interface StepImage {
  /** `history[].created_by`: `day11 step ID: COMMAND`, or undefined for a layer no step made. */
  createdBy: string | undefined;
  /** Runtime config: Env (with a default PATH) and WorkingDir. */
  config: { Env: string[]; WorkingDir?: string };
}

/** Longest command kept in a history line. */
const MAX_COMMAND = 200;

/**
 * The image-config parts of a step (or of a `step.json` record).
 *
 * @example
 * ```ts
 * imageOfStep({ id: 'hello', run: 'make install', env: {}, cwd: '/src' }).createdBy; // 'day11 step hello: make install'
 * ```
 */
export function imageOfStep(step: StepLike | undefined): StepImage {
  const env: Record<string, string> = { PATH: OciSpec.DEFAULT_PATH };
  if (step?.env && typeof step.env === 'object') {
    for (const [k, v] of Object.entries(step.env as Record<string, unknown>)) {
      if (typeof v === 'string') env[k] = v;
    }
  }
  const config = {
    Env: Object.entries(env).map(([k, v]) => `${k}=${v}`),
    ...(typeof step?.cwd === 'string' && { WorkingDir: step.cwd }),
  };
  if (typeof step?.id !== 'string') return { createdBy: undefined, config };
  const run = typeof step.run === 'string' ? step.run : JSON.stringify(step.run ?? '');
  const command = run.length > MAX_COMMAND ? `${run.slice(0, MAX_COMMAND)}…` : run;
  return { createdBy: `day11 step ${step.id}: ${command}`, config };
}
