/**
 * Parts of a plan: its targets (the steps nothing else depends on), the
 * plan restricted to some targets and what they are built on, and shards —
 * a deterministic split of the targets among N workers (a CI matrix, a
 * Kubernetes Indexed Job) so that together they cover the plan. Each worker
 * computes its own shard from the plan alone; they agree without talking.
 */
import { BuildCodes, BuildError } from './errors.js';
import type { Plan, Step } from './plan.js';

/**
 * The plan's targets: steps no other step depends on, in plan order.
 *
 * @example
 * ```ts
 * targetsOf(plan).map((s) => s.id); // ['app', 'docs']
 * ```
 */
export function targetsOf(plan: Plan): Step[] {
  const needed = new Set<string>();
  for (const step of plan.steps) for (const dep of step.deps) needed.add(dep);
  return plan.steps.filter((s) => !needed.has(s.id));
}

/** Ids of `ids` and everything they are built on. */
function closureIds(plan: Plan, ids: Iterable<string>): Set<string> {
  const byId = new Map(plan.steps.map((s) => [s.id, s]));
  const seen = new Set<string>();
  const todo = [...ids];
  for (let id = todo.pop(); id !== undefined; id = todo.pop()) {
    if (seen.has(id)) continue;
    const step = byId.get(id);
    if (step === undefined) {
      throw new BuildError(
        BuildCodes.BAD_ARGUMENT,
        `No step ${JSON.stringify(id)} in ${plan.file}`,
        {
          hint: 'Name steps by the ids the plan gives them',
        },
      );
    }
    seen.add(id);
    todo.push(...step.deps);
  }
  return seen;
}

/**
 * The plan restricted to `ids` and every step they are built on (order and
 * hashes unchanged: a step's hash depends only on what it is built on).
 *
 * @example
 * ```ts
 * await builder.build(restrictTo(plan, ['curl']));
 * ```
 * @throws {BuildError} `BUILD_BAD_ARGUMENT` for an id the plan lacks.
 */
export function restrictTo(plan: Plan, ids: Iterable<string>): Plan {
  const keep = closureIds(plan, ids);
  return { ...plan, steps: plan.steps.filter((s) => keep.has(s.id)) };
}

/**
 * Shard `index` (1-based) of `count`: the plan restricted to the targets
 * this worker takes. Targets are dealt out largest first (by how many steps
 * each needs) to the shard with the least work so far, ties by id and shard
 * number, so the split depends on the plan alone and every worker computes
 * the same one. Steps that several shards need are in each of them: with a
 * shared cache (a registry), whichever worker gets there first builds them.
 *
 * @example
 * ```ts
 * const mine = shardOf(plan, { index: Number(process.env.JOB_COMPLETION_INDEX) + 1, count: 4 });
 * ```
 * @throws {BuildError} `BUILD_BAD_ARGUMENT` for an index outside 1..count.
 */
export function shardOf(plan: Plan, { index, count }: { index: number; count: number }): Plan {
  if (
    !Number.isSafeInteger(count) ||
    count < 1 ||
    !Number.isSafeInteger(index) ||
    index < 1 ||
    index > count
  ) {
    throw new BuildError(BuildCodes.BAD_ARGUMENT, `Invalid shard ${index}/${count}`, {
      hint: 'A shard is K/N with 1 ≤ K ≤ N, e.g. 2/4 for the second of four workers',
    });
  }
  const targets = targetsOf(plan).map((t) => ({ id: t.id, size: closureIds(plan, [t.id]).size }));
  targets.sort((a, b) => b.size - a.size || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const load = new Array<number>(count).fill(0);
  const mine: string[] = [];
  for (const t of targets) {
    let best = 0;
    for (let i = 1; i < count; i++) if (load[i]! < load[best]!) best = i;
    load[best]! += t.size;
    if (best === index - 1) mine.push(t.id);
  }
  return restrictTo(plan, mine);
}
