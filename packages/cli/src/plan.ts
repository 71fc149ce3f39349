/**
 * Build plans: a base and a DAG of steps, validated with zod and then for
 * the rules zod cannot see (duplicate ids, unknown deps, cycles). Every error
 * names the plan file and the step.
 */
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, resolve } from 'node:path';
import { z } from 'zod';
import { Hash } from '@day11/layer';
import { CliCodes, CliError } from './errors.js';

/** A step id doubles as the OCI tag of its image, so it follows the tag grammar. */
const STEP_ID = /^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$/;
const MAX_ID = 2 ** 32 - 2;

const UserSchema = z.union([
  z.number().int().min(0).max(MAX_ID),
  z.string().regex(/^\d+(:\d+)?$/, 'a user is "uid" or "uid:gid" (numbers)'),
]);

const StepSchema = z.strictObject({
  id: z
    .string()
    .regex(STEP_ID, 'a step id is 1-128 of A-Z a-z 0-9 _ . - and does not start with . or -'),
  deps: z.array(z.string()).default([]),
  run: z.union([z.string().min(1), z.array(z.string()).min(1)]),
  env: z
    .record(z.string().regex(/^[^=\0]+$/, 'no "=" or NUL in variable names'), z.string())
    .default({}),
  user: UserSchema.default(0),
  network: z.enum(['none', 'host']).default('none'),
  cwd: z.string().startsWith('/', 'cwd must be an absolute path').default('/'),
});

const BaseSchema = z.union([
  z.literal('busybox'),
  z.strictObject({ busybox: z.literal(true) }),
  z.strictObject({ tarball: z.string().min(1) }),
  z.strictObject({ dir: z.string().min(1) }),
  z.strictObject({ docker: z.string().min(1) }),
]);

/** Schema of a plan file. */
export const PlanSchema = z.strictObject({
  base: BaseSchema,
  steps: z.array(StepSchema).min(1, 'a plan needs at least one step'),
});

/** A step as written in a plan, defaults filled in. */
export type Step = z.infer<typeof StepSchema>;

/** Where the base layer comes from. Paths are absolute (resolved against the plan's directory). */
export type BaseSource =
  | { kind: 'busybox' }
  | { kind: 'tarball'; path: string }
  | { kind: 'dir'; path: string }
  | { kind: 'docker'; image: string };

/** A validated plan: steps in an order where every step comes after its deps. */
export interface Plan {
  file: string;
  base: BaseSource;
  steps: Step[];
}

/** Reads and validates a plan file. */
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

/** Validates a plan already parsed from JSON; `file` is used for messages and relative paths. */
export function parsePlan(json: unknown, file: string): Plan {
  if (typeof json === 'object' && json !== null && !('base' in json)) {
    throw bad(
      file,
      'it has no "base"',
      undefined,
      'Add e.g. "base": "busybox" or "base": { "tarball": "rootfs.tar" }',
    );
  }
  const parsed = PlanSchema.safeParse(json);
  if (!parsed.success) throw bad(file, describeIssues(parsed.error, json), parsed.error);
  const steps = parsed.data.steps;
  checkIds(steps, file);
  return {
    file,
    base: baseSource(parsed.data.base, dirname(resolve(file))),
    steps: topoOrder(steps, file),
  };
}

function describeIssues(error: z.ZodError, json: unknown): string {
  const issue = error.issues[0]!;
  const [first, index] = issue.path;
  let where = issue.path.join('.') || 'the plan';
  if (first === 'steps' && typeof index === 'number') {
    const id = (json as { steps?: { id?: unknown }[] }).steps?.[index]?.id;
    where = `step ${typeof id === 'string' ? JSON.stringify(id) : `#${index + 1}`}${issue.path.length > 2 ? ` (${issue.path.slice(2).join('.')})` : ''}`;
  }
  return `${where}: ${issue.message}`;
}

function checkIds(steps: Step[], file: string): void {
  const seen = new Set<string>();
  for (const step of steps) {
    if (seen.has(step.id)) throw bad(file, `two steps have the id ${JSON.stringify(step.id)}`);
    seen.add(step.id);
  }
  for (const step of steps) {
    for (const dep of step.deps) {
      if (!seen.has(dep))
        throw bad(
          file,
          `step ${JSON.stringify(step.id)} depends on unknown step ${JSON.stringify(dep)}`,
        );
      if (dep === step.id) throw bad(file, `step ${JSON.stringify(step.id)} depends on itself`);
    }
  }
}

/** Kahn's algorithm, stable (plan order among ready steps); a leftover means a cycle, which is named. */
function topoOrder(steps: Step[], file: string): Step[] {
  const byId = new Map(steps.map((s) => [s.id, s]));
  const done = new Set<string>();
  const out: Step[] = [];
  while (out.length < steps.length) {
    const ready = steps.filter((s) => !done.has(s.id) && s.deps.every((d) => done.has(d)));
    if (ready.length === 0) {
      const cycle = findCycle(
        steps.filter((s) => !done.has(s.id)),
        byId,
      );
      throw bad(file, `the steps form a cycle: ${cycle.join(' → ')}`);
    }
    for (const s of ready) {
      done.add(s.id);
      out.push(s);
    }
  }
  return out;
}

function findCycle(pending: Step[], byId: Map<string, Step>): string[] {
  const path: string[] = [];
  let current = pending[0]!;
  while (!path.includes(current.id)) {
    path.push(current.id);
    const next = current.deps.map((d) => byId.get(d)!).find((d) => pending.includes(d));
    current = next!;
  }
  return [...path.slice(path.indexOf(current.id)), current.id];
}

function baseSource(base: z.infer<typeof BaseSchema>, planDir: string): BaseSource {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(planDir, p));
  if (base === 'busybox' || 'busybox' in base) return { kind: 'busybox' };
  if ('tarball' in base) return { kind: 'tarball', path: abs(base.tarball) };
  if ('dir' in base) return { kind: 'dir', path: abs(base.dir) };
  return { kind: 'docker', image: base.docker };
}

function bad(file: string, why: string, cause?: unknown, hint?: string): CliError {
  return new CliError(CliCodes.BAD_PLAN, `Bad plan ${file}: ${why}`, {
    path: file,
    cause,
    hint: hint ?? 'Fix the plan file; `day11 build --help` describes its format',
  });
}

/** Every transitive dependency of `step`, topmost first (the overlay's order: dependents above their deps). */
export function closure(step: Step, plan: Plan): Step[] {
  const byId = new Map(plan.steps.map((s) => [s.id, s]));
  const seen = new Set<Step>();
  const visit = (s: Step): void => {
    for (const id of s.deps) {
      const dep = byId.get(id)!;
      if (!seen.has(dep)) {
        seen.add(dep);
        visit(dep);
      }
    }
  };
  visit(step);
  // plan.steps is topologically ordered, so reverse plan order puts each layer above what it was built on.
  const index = new Map(plan.steps.map((s, i) => [s, i]));
  return [...seen].sort((a, b) => index.get(b)! - index.get(a)!);
}

/** Canonical JSON (sorted keys) of what defines a step's output, apart from its dependencies. */
export function stepKey(step: Step): string {
  const { deps: _deps, ...definition } = step;
  return canonicalJson(definition);
}

function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  if (value && typeof value === 'object') {
    const entries = Object.entries(value as Record<string, unknown>).sort(([a], [b]) =>
      a < b ? -1 : a > b ? 1 : 0,
    );
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
  }
  return JSON.stringify(value);
}

/** Each step's layer hash: `Hash.layerHash` over the base, its transitive deps' hashes and its definition. */
export function stepHashes(plan: Plan, baseHash: string): Map<string, string> {
  const hashes = new Map<string, string>();
  for (const step of plan.steps) {
    const depHashes = closure(step, plan).map((d) => hashes.get(d.id)!);
    hashes.set(step.id, Hash.layerHash({ baseHash, depHashes, pkg: stepKey(step) }));
  }
  return hashes;
}

/** The argv a step runs: a string is given to `/bin/sh -c`. */
export function argvOf(step: Step): string[] {
  return typeof step.run === 'string' ? ['/bin/sh', '-c', step.run] : step.run;
}

/** `user` as uid and gid. */
export function userOf(step: Step): { uid: number; gid: number } {
  if (typeof step.user === 'number') return { uid: step.user, gid: step.user };
  const [uid, gid] = step.user.split(':').map(Number);
  if (uid! > MAX_ID || (gid ?? uid)! > MAX_ID) {
    throw new CliError(
      CliCodes.BAD_PLAN,
      `Step ${JSON.stringify(step.id)}: user ${step.user} is out of range`,
      {
        hint: `uids and gids are 0..${MAX_ID}`,
      },
    );
  }
  return { uid: uid!, gid: gid ?? uid! };
}
