/**
 * Build plans: a base and a DAG of steps, validated with zod and then for
 * the rules zod cannot see (duplicate ids, unknown deps, cycles, image tags,
 * kernel argument limits). Every error names the plan file and the step, and
 * is thrown before anything runs. Validation is linear in the plan's size.
 */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import type { z } from 'zod';
import { BuildCodes, BuildError } from './errors.js';
import { checkArgumentSizes } from './limits.js';
import { planSchemas, type BaseInput, type StepInput } from './plan-schema.js';
import { parseResources, type Resources } from './resources.js';
import { MAX_ID, quickShell, quickStep } from './quick-step.js';
import type { Security } from './security.js';
import { assignTags } from './tags.js';

export type { StepInput };

/**
 * The zod schema of a plan file (made on the first call), e.g. to check a
 * plan object the way `parsePlan` does, or to derive a JSON Schema from it.
 *
 * @example
 * ```ts
 * const ok = planSchema().safeParse(JSON.parse(text)).success;
 * ```
 */
export function planSchema(): ReturnType<typeof planSchemas>['PlanSchema'] {
  return planSchemas().PlanSchema;
}

/** A validated step: the plan's fields, plus what validation derived. */
export interface Step extends Omit<StepInput, 'resources' | 'security'> {
  /** The image tag of this step's export: `tag`, or derived from `id` by `deriveTag`. */
  tag: string;
  /** Limits explicitly set for this step (its own, over the plan's); defaults are not included. */
  resources: Resources;
  /** Hardening explicitly set for this step (its own, over the plan's); defaults are not included. */
  security: Security;
}

/** Where the base layer comes from. Paths are absolute (resolved against the plan's directory). */
export type BaseSource =
  | { kind: 'busybox' }
  | { kind: 'tarball'; path: string }
  | { kind: 'dir'; path: string }
  | { kind: 'docker'; image: string }
  /** An image: `docker://HOST/REPO:TAG` or `oci:DIR:TAG` (pulled), or a name already imported. */
  | { kind: 'image'; ref: string }
  /** A base layer already in the cache, by hash or hash prefix. */
  | { kind: 'layer'; hash: string };

/** A validated plan: steps in an order where every step comes after its deps. */
export interface Plan {
  /** The plan file (or a label for a plan given as an object), for messages. */
  file: string;
  base: BaseSource;
  steps: Step[];
}

/**
 * Reads and validates a plan file.
 *
 * @example
 * ```ts
 * const plan = await loadPlan('plan.json');
 * console.log(plan.steps.map((s) => `${s.id} → ${s.tag}`));
 * ```
 * @throws {BuildError} `BUILD_BAD_PLAN`, naming the file and the step.
 */
export async function loadPlan(file: string): Promise<Plan> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    throw bad(file, `cannot read it (${(cause as Error).message})`, cause);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw bad(file, `not valid JSON (${(cause as Error).message})`, cause);
  }
  return parsePlan(json, file);
}

/**
 * Validates a plan already parsed from JSON (or written as an object);
 * `file` is used for messages and to resolve relative base paths.
 *
 * @example
 * ```ts
 * const plan = parsePlan({ base: 'busybox', steps: [{ id: 'hello', run: 'echo hi > /hi' }] }, 'inline');
 * ```
 * @throws {BuildError} `BUILD_BAD_PLAN`, naming the file and the step.
 */
export function parsePlan(json: unknown, file: string): Plan {
  if (typeof json === 'object' && json !== null && !('base' in json)) {
    throw bad(
      file,
      'it has no "base"',
      undefined,
      'Add e.g. "base": "busybox" or "base": { "tarball": "rootfs.tar" }',
    );
  }
  const shell = quickShell(json) ?? zodShell(json, file);
  const fail = (why: string, hint?: string): never => {
    throw bad(file, why, undefined, hint);
  };
  const planResources = shell.resources;
  const planSecurity = shell.security;
  const inputs = shell.steps.map((raw, i): StepInput => {
    const quick = quickStep(raw);
    if (quick !== undefined) return quick;
    const step = planSchemas().StepSchema.safeParse(raw);
    if (step.success) return step.data;
    const issues = step.error.issues.map((issue) => ({
      ...issue,
      path: ['steps', i, ...issue.path],
    }));
    throw bad(file, describeIssues(issues, json), step.error);
  });
  checkIds(inputs, fail);
  const tags = assignTags(inputs, fail);
  const steps: Step[] = inputs.map((s, i) => {
    // Most steps set neither: no spread, no closure (a plan may have thousands of steps).
    const resources =
      planResources === undefined && s.resources === undefined
        ? {}
        : parseResources({ ...planResources, ...s.resources }, (why) =>
            fail(`step ${JSON.stringify(s.id)} (resources): ${why}`),
          );
    if (typeof s.user === 'string') {
      try {
        userOf(s);
      } catch (err) {
        fail((err as Error).message);
      }
    }
    const security =
      planSecurity === undefined && s.security === undefined
        ? {}
        : { ...planSecurity, ...s.security };
    // Spelled out: a spread of each step cost more than the rest of this loop.
    return {
      id: s.id,
      deps: s.deps,
      run: s.run,
      env: s.env,
      user: s.user,
      network: s.network,
      cwd: s.cwd,
      tag: tags[i]!,
      resources,
      security,
    };
  });
  for (const step of steps) checkArgumentSizes(step, argvOf(step), fail);
  return {
    file,
    base: baseSource(shell.base, dirname(resolve(file))),
    steps: topoOrder(steps, fail),
  };
}

function describeIssues(issues: readonly z.core.$ZodIssue[], json: unknown): string {
  const issue = issues[0]!;
  const [first, index] = issue.path;
  let where = issue.path.join('.') || 'the plan';
  if (first === 'steps' && typeof index === 'number') {
    const id = (json as { steps?: { id?: unknown }[] }).steps?.[index]?.id;
    where = `step ${typeof id === 'string' ? JSON.stringify(id) : `#${index + 1}`}${issue.path.length > 2 ? ` (${issue.path.slice(2).join('.')})` : ''}`;
  }
  return `${where}: ${issue.message}`;
}

type Fail = (why: string, hint?: string) => never;

function checkIds(steps: readonly StepInput[], fail: Fail): void {
  const seen = new Set<string>();
  for (const step of steps) {
    if (seen.has(step.id)) fail(`two steps have the id ${JSON.stringify(step.id)}`);
    seen.add(step.id);
  }
  for (const step of steps) {
    const deps = new Set<string>();
    for (const dep of step.deps) {
      if (dep === step.id) fail(`step ${JSON.stringify(step.id)} depends on itself`);
      if (!seen.has(dep)) {
        fail(`step ${JSON.stringify(step.id)} depends on unknown step ${JSON.stringify(dep)}`);
      }
      if (deps.has(dep)) {
        fail(`step ${JSON.stringify(step.id)} lists the dependency ${JSON.stringify(dep)} twice`);
      }
      deps.add(dep);
    }
  }
}

/**
 * Kahn's algorithm with a queue, stable (plan order among steps ready at the
 * same time), O(steps + edges); a leftover means a cycle, which is named.
 */
function topoOrder(steps: Step[], fail: Fail): Step[] {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const waiting = new Map(steps.map((s) => [s.id, s.deps.length]));
  const dependents = new Map<string, Step[]>();
  for (const s of steps) {
    for (const d of s.deps) {
      const list = dependents.get(d);
      if (list) list.push(s);
      else dependents.set(d, [s]);
    }
  }
  const out = steps.filter((s) => s.deps.length === 0);
  for (let i = 0; i < out.length; i++) {
    for (const next of dependents.get(out[i]!.id) ?? []) {
      const left = waiting.get(next.id)! - 1;
      waiting.set(next.id, left);
      if (left === 0) out.push(next);
    }
  }
  if (out.length < steps.length) {
    const pending = steps.filter((s) => waiting.get(s.id)! > 0);
    fail(`the steps form a cycle: ${findCycle(pending, byId, waiting).join(' → ')}`);
  }
  return out;
}

/** Walks pending deps from a pending step until one repeats: that is a cycle. */
function findCycle(
  pending: readonly Step[],
  byId: ReadonlyMap<string, Step>,
  waiting: ReadonlyMap<string, number>,
): string[] {
  const path: string[] = [];
  const at = new Map<string, number>();
  let current = pending[0]!;
  while (!at.has(current.id)) {
    at.set(current.id, path.length);
    path.push(current.id);
    const next = current.deps.find((d) => waiting.get(d)! > 0)!;
    current = byId.get(next)!;
  }
  return [...path.slice(at.get(current.id)), current.id];
}

function baseSource(base: BaseInput, planDir: string): BaseSource {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(planDir, p));
  if (base === 'busybox' || 'busybox' in base) return { kind: 'busybox' };
  if ('tarball' in base) return { kind: 'tarball', path: abs(base.tarball) };
  if ('dir' in base) return { kind: 'dir', path: abs(base.dir) };
  if ('docker' in base) return { kind: 'docker', image: base.docker };
  if ('image' in base) return { kind: 'image', ref: base.image };
  return { kind: 'layer', hash: base.layer.replace(/^build-/, '') };
}

/** The plan around its steps, by zod: for what `quickShell` leaves to it. */
function zodShell(json: unknown, file: string) {
  const parsed = planSchemas().PlanShellSchema.safeParse(json);
  if (!parsed.success) throw bad(file, describeIssues(parsed.error.issues, json), parsed.error);
  return parsed.data;
}

function bad(file: string, why: string, cause?: unknown, hint?: string): BuildError {
  return new BuildError(BuildCodes.BAD_PLAN, `Bad plan ${file}: ${why}`, {
    path: file,
    cause,
    hint: hint ?? 'Fix the plan file; `day11 build --help` describes its format',
  });
}

/**
 * The argv a step runs: a string is given to `/bin/sh -c`.
 *
 * @example
 * ```ts
 * argvOf(step); // ['/bin/sh', '-c', 'make install']
 * ```
 */
export function argvOf(step: Pick<StepInput, 'run'>): string[] {
  return typeof step.run === 'string' ? ['/bin/sh', '-c', step.run] : step.run;
}

/**
 * `user` as uid and gid.
 *
 * @example
 * ```ts
 * userOf({ user: '1000:50' }); // { uid: 1000, gid: 50 }
 * ```
 */
export function userOf(step: Pick<StepInput, 'user' | 'id'>): { uid: number; gid: number } {
  if (typeof step.user === 'number') return { uid: step.user, gid: step.user };
  const [uid, gid] = step.user.split(':').map(Number);
  if (uid! > MAX_ID || (gid ?? uid)! > MAX_ID) {
    throw new BuildError(
      BuildCodes.BAD_PLAN,
      `Step ${JSON.stringify(step.id)}: user ${step.user} is out of range`,
      { hint: `uids and gids are 0..${MAX_ID}` },
    );
  }
  return { uid: uid!, gid: gid ?? uid! };
}
