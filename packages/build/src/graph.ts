/**
 * A plan as a graph: each step's layer hash, its dependents, and its stack
 * (every layer it is built on, in overlay order). All of it is linear in
 * the plan's size except a stack, which is as long as the stack itself and
 * is computed only when a step runs. Nothing here recurses: a chain of
 * 10,000 steps is as safe as a diamond.
 */
import { Hash } from '@day11/layer';
import type { Plan, Step } from './plan.js';

/**
 * Canonical JSON (sorted keys) of what defines a step's output, apart from
 * its dependencies: its tag is an export detail, and limits and hardening
 * count only when set.
 *
 * @example
 * ```ts
 * stepKey(step); // '{"cwd":"/","env":{},"id":"hello","network":"none","run":"echo hi","user":0}'
 * ```
 */
export function stepKey(step: Step): string {
  const { deps: _deps, tag: _tag, resources, security, ...definition } = step;
  return canonicalJson({
    ...definition,
    ...(Object.keys(resources).length > 0 && { resources }),
    ...(Object.keys(security).length > 0 && { security }),
  });
}

/**
 * JSON with object keys sorted (by UTF-16 code units) and undefined members
 * left out. The text is hashed into every layer name: it must never change.
 * Loops rather than entries/filter/sort/map: a plan hashes every step.
 */
function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) {
    let out = '[';
    // `?? ''`: what join made of an undefined element (not from JSON, but the text must not change).
    for (let i = 0; i < value.length; i++) {
      out += (i > 0 ? ',' : '') + ((canonicalJson(value[i]) as string | undefined) ?? '');
    }
    return `${out}]`;
  }
  if (value && typeof value === 'object') {
    const record = value as Record<string, unknown>;
    const keys = Object.keys(record).sort();
    let out = '{';
    for (const key of keys) {
      const v = record[key];
      if (v === undefined) continue;
      out += `${out.length > 1 ? ',' : ''}${JSON.stringify(key)}:${canonicalJson(v)}`;
    }
    return `${out}}`;
  }
  return JSON.stringify(value);
}

/**
 * The graph of a validated plan on a given base.
 *
 * Hashes form a Merkle DAG: a step's hash covers the base, its definition
 * and its direct dependencies' hashes — and through them everything below.
 * Stacks follow one order for every layer of every plan (see
 * {@link PlanGraph.stack}), a function of that same DAG, so one hash names
 * one overlay view, and every layer's recorded stack is a sub-sequence of
 * the stack of anything built on it.
 *
 * @example
 * ```ts
 * const graph = new PlanGraph(plan, base.hash);
 * graph.hash('app'); // 64 hex
 * graph.stack('app').map((s) => s.id); // ['lib2', 'lib1'] (topmost first)
 * ```
 */
export class PlanGraph {
  private readonly byId = new Map<string, Step>();
  private readonly hashes = new Map<string, string>();
  private readonly heights = new Map<string, number>();
  private readonly dependentsOf = new Map<string, Step[]>();

  constructor(
    readonly plan: Plan,
    readonly baseHash: string,
  ) {
    for (const step of plan.steps) {
      this.byId.set(step.id, step);
      for (const dep of step.deps) {
        const list = this.dependentsOf.get(dep);
        if (list) list.push(step);
        else this.dependentsOf.set(dep, [step]);
      }
    }
    // plan.steps is in topological order: every dep's hash is known first.
    for (const step of plan.steps) {
      const depHashes = step.deps.map((d) => this.hashes.get(d)!);
      this.hashes.set(step.id, Hash.layerHash({ baseHash, depHashes, pkg: stepKey(step) }));
      let height = 0;
      for (const d of step.deps) height = Math.max(height, this.heights.get(d)!);
      this.heights.set(step.id, height + 1);
    }
  }

  /** The step with this id. */
  step(id: string): Step {
    const step = this.byId.get(id);
    if (step === undefined) throw new Error(`no step ${JSON.stringify(id)} in the plan`);
    return step;
  }

  /** The full layer hash of a step. */
  hash(id: string): string {
    const hash = this.hashes.get(id);
    if (hash === undefined) this.step(id);
    return hash!;
  }

  /** The steps that list `id` among their deps. */
  dependents(id: string): readonly Step[] {
    return this.dependentsOf.get(id) ?? [];
  }

  /**
   * Every step `id` is built on (its transitive dependencies), topmost
   * first: the overlay's lowers above the base. The order is the same for
   * every stack: by height (a step lies above everything it was built on,
   * one step higher than the highest of its deps), then by hash. It depends
   * only on the layers themselves, not on the plan that names them, so a
   * layer's own stack is always a sub-sequence of the stack of anything
   * built on it, in any plan. Of two unrelated layers that write one path,
   * the higher wins; make one depend on the other to choose.
   */
  stack(id: string): Step[] {
    const seen = new Set<string>([id]);
    const todo = [...this.step(id).deps];
    const below: Step[] = [];
    for (let dep = todo.pop(); dep !== undefined; dep = todo.pop()) {
      if (seen.has(dep)) continue;
      seen.add(dep);
      const step = this.byId.get(dep)!;
      below.push(step);
      todo.push(...step.deps);
    }
    const key = (s: Step): [number, string] => [this.heights.get(s.id)!, this.hashes.get(s.id)!];
    return below.sort((a, b) => {
      const [ha, xa] = key(a);
      const [hb, xb] = key(b);
      return hb - ha || (xa < xb ? 1 : xa > xb ? -1 : 0);
    });
  }
}
