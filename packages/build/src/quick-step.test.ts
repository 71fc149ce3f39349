import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { planSchemas } from './plan-schema.js';
import { quickShell, quickStep } from './quick-step.js';

const { StepSchema, PlanShellSchema } = planSchemas();

/** Valid values of each key (the common shapes), and values zod may refuse. */
const valid = {
  id: fc.oneof(fc.string({ minLength: 1 }), fc.constantFrom('pkg-1', 'é'.repeat(127))),
  tag: fc.string({ minLength: 1 }),
  deps: fc.array(fc.string()),
  run: fc.oneof(fc.string({ minLength: 1 }), fc.array(fc.string(), { minLength: 1 })),
  env: fc.dictionary(fc.string({ minLength: 1 }), fc.string()),
  user: fc.oneof(
    fc.integer({ min: 0, max: 2 ** 32 - 2 }),
    fc.constantFrom('1000', '1000:50', '0', 2 ** 32 - 2),
  ),
  network: fc.constantFrom('none', 'host'),
  cwd: fc.oneof(
    fc.constantFrom('/', '/src'),
    fc.string().map((s) => `/${s}`),
  ),
};
const odd = {
  id: fc.oneof(
    fc.string(),
    fc.constantFrom('', '.', '..', 'a/b', 'a\0b', 'é'.repeat(128), 'x'.repeat(256)),
    fc.constantFrom('.day11-tmp-1-ab-x', '.day11-tmp-'),
    fc.integer(),
  ),
  tag: fc.oneof(fc.constant(''), fc.integer(), fc.constant(undefined)),
  deps: fc.oneof(fc.array(fc.anything()), fc.string(), fc.constant(undefined)),
  run: fc.oneof(
    fc.constantFrom([], '', 'a\0b', ['a', 'b\0']),
    fc.integer(),
    fc.array(fc.anything()),
  ),
  env: fc.oneof(
    fc.dictionary(fc.string(), fc.anything()),
    fc.constantFrom({ 'A=B': 'x' }, { A: 'x\0' }, { '': 'x' }, { A: 1 }, ['A'], null),
    fc.constant(JSON.parse('{"__proto__": "x"}') as unknown),
  ),
  user: fc.oneof(
    fc.integer({ min: -5, max: 2 ** 32 + 5 }),
    fc.double(),
    fc.string(),
    fc.constantFrom('a', '1:', ':1', '-1', '1.5', 2 ** 32 - 1, -0, 0.5, NaN),
  ),
  network: fc.oneof(fc.constantFrom('bridge', 'None', ''), fc.integer()),
  cwd: fc.oneof(fc.constantFrom('rel', '', ' /'), fc.string(), fc.integer()),
  resources: fc.constantFrom({ pids: 10 }, { bogus: 1 }),
  security: fc.constantFrom({ seccomp: false }, 'no'),
  bogus: fc.anything(),
};
type Key = keyof typeof odd;

/** A step of valid values (id and run always there), with zero, one or two keys odd. */
const stepLike = fc
  .tuple(
    fc.record(valid, { requiredKeys: ['id', 'run'] }),
    fc
      .subarray(Object.keys(odd) as Key[], { maxLength: 2 })
      .chain((keys) => fc.tuple(...keys.map((k) => odd[k].map((v) => [k, v] as const)))),
  )
  .map(([step, changes]) => ({ ...step, ...Object.fromEntries(changes) }));

describe('quickStep', () => {
  it('gives what zod gives, or leaves the step to zod', () => {
    fc.assert(
      fc.property(
        fc.oneof({ arbitrary: stepLike, weight: 9 }, { arbitrary: fc.anything(), weight: 1 }),
        (value) => {
          const quick = quickStep(value);
          const parsed = StepSchema.safeParse(value);
          if (quick === undefined) return;
          expect(parsed.success).toBe(true);
          expect(quick).toEqual(parsed.data);
        },
      ),
      { numRuns: 5000 },
    );
  });

  it.each([
    { id: 'hello', run: 'echo hi > /hi' },
    { id: 'libc6', deps: ['base-files'], run: ['sh', '-c', 'true'], tag: 'libc6:2.36' },
    { id: 'x', run: 'make', env: { CC: 'gcc', EMPTY: '' }, user: '1000:50', cwd: '/src' },
    { id: 'y', run: 'true', user: 65534, network: 'host' },
  ])('takes the usual step %j itself', (step) => {
    const quick = quickStep(step);
    expect(quick).toBeDefined();
    expect(quick).toEqual(StepSchema.parse(step));
  });

  it('copies what it returns: the plan given stays the caller’s', () => {
    const step = { id: 'a', run: ['x'], deps: ['b'], env: { A: '1' } };
    const quick = quickStep(step)!;
    expect(quick.deps).not.toBe(step.deps);
    expect(quick.run).not.toBe(step.run);
    expect(quick.env).not.toBe(step.env);
  });

  it.each([
    { id: 'a', run: 'true', resources: { pids: 10 } },
    { id: 'a', run: 'true', tag: undefined },
    Object.assign(Object.create({ inherited: 1 }) as object, { id: 'a', run: 'true' }),
    { id: 'a', run: 'true', env: JSON.parse('{"__proto__": "x"}') as unknown },
  ])('leaves %j to zod', (step) => {
    expect(quickStep(step)).toBeUndefined();
  });
});

describe('quickShell', () => {
  const base = fc.oneof(
    fc.constantFrom('busybox', 'debian', '', { busybox: true }, { busybox: false }),
    fc.constantFrom({ layer: 'build-0123456789ab' }, { layer: '0123456789AB' }, { layer: 'abc' }),
    fc.record({ tarball: fc.string() }),
    fc.record({ dir: fc.string(), docker: fc.string() }, { requiredKeys: [] }),
    fc.record({ image: fc.oneof(fc.string(), fc.integer()) }),
    fc.dictionary(fc.string(), fc.anything(), { maxKeys: 2 }),
    fc.anything(),
  );
  const shell = fc.record(
    {
      base,
      steps: fc.oneof(fc.array(fc.anything(), { maxLength: 3 }), fc.anything()),
      resources: fc.constantFrom({ pids: 10 }, { bogus: 1 }),
      security: fc.constantFrom({ seccomp: false }, 'no'),
      bogus: fc.anything(),
    },
    { requiredKeys: [] },
  );

  it('gives what zod gives, or leaves the plan to zod', () => {
    fc.assert(
      fc.property(
        fc.oneof({ arbitrary: shell, weight: 9 }, { arbitrary: fc.anything(), weight: 1 }),
        (value) => {
          const quick = quickShell(value);
          if (quick === undefined) return;
          const parsed = PlanShellSchema.safeParse(value);
          expect(parsed.success).toBe(true);
          expect(quick).toEqual(parsed.data);
        },
      ),
      { numRuns: 5000 },
    );
  });

  it.each([
    { base: 'busybox', steps: [{ id: 'a', run: 'true' }] },
    { base: { tarball: '/srv/rootfs.tar' }, steps: [1] },
    { base: { image: 'docker://127.0.0.1:5000/debian:12' }, steps: [{}] },
    { base: { layer: 'build-0123456789ab' }, steps: [{}] },
    { base: { busybox: true }, steps: [{}] },
  ])('takes the usual plan %j itself', (plan) => {
    expect(quickShell(plan)).toEqual(PlanShellSchema.parse(plan));
  });

  it.each([
    { base: 'busybox', steps: [] },
    { base: 'busybox', steps: [{}], resources: { pids: 1 } },
    { base: { tarball: '' }, steps: [{}] },
    { base: { tarball: 'a', dir: 'b' }, steps: [{}] },
    { steps: [{}] },
    JSON.parse('{"base": "busybox", "steps": [{}], "__proto__": {}}') as unknown,
  ])('leaves %j to zod', (plan) => {
    expect(quickShell(plan)).toBeUndefined();
  });
});
