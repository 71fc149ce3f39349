import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BuildCodes } from './errors.js';
import { PlanGraph, stepKey } from './graph.js';
import { MAX_ARG_STRLEN } from './limits.js';
import { argvOf, loadPlan, parsePlan, userOf } from './plan.js';
import { restrictTo, shardOf, targetsOf } from './shard.js';
import { deriveTag } from './tags.js';

let dir: string;
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'day11-plan-'));
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

const diamond = {
  base: 'busybox',
  steps: [
    { id: 'c', deps: ['a', 'b'], run: 'cat /a /b' },
    { id: 'a', run: 'echo a > /a' },
    { id: 'b', run: ['/bin/sh', '-c', 'echo b > /b'] },
  ],
};

function badPlan(json: unknown): string {
  try {
    parsePlan(json, '/plans/p.json');
  } catch (err) {
    expect(err).toMatchObject({ code: BuildCodes.BAD_PLAN, path: '/plans/p.json' });
    return (err as Error).message;
  }
  throw new Error('expected a bad plan');
}

describe('plans', () => {
  it('orders steps after their deps and fills defaults', () => {
    const plan = parsePlan(diamond, '/plans/p.json');
    expect(plan.steps.map((s) => s.id)).toEqual(['a', 'b', 'c']);
    expect(plan.steps[0]).toMatchObject({ deps: [], env: {}, user: 0, network: 'none', cwd: '/' });
    expect(plan.base).toEqual({ kind: 'busybox' });
    expect(argvOf(plan.steps[0]!)).toEqual(['/bin/sh', '-c', 'echo a > /a']);
    expect(argvOf(plan.steps[1]!)).toEqual(['/bin/sh', '-c', 'echo b > /b']);
  });

  it('resolves relative base paths against the plan file', () => {
    expect(parsePlan({ ...diamond, base: { tarball: 'r.tar' } }, '/plans/p.json').base).toEqual({
      kind: 'tarball',
      path: '/plans/r.tar',
    });
    expect(parsePlan({ ...diamond, base: { dir: '/abs' } }, '/plans/p.json').base).toEqual({
      kind: 'dir',
      path: '/abs',
    });
  });

  it.each([
    ['no base', { steps: diamond.steps }, /has no "base"/],
    [
      'a cycle',
      {
        base: 'busybox',
        steps: [
          { id: 'x', deps: ['y'], run: 'true' },
          { id: 'y', deps: ['x'], run: 'true' },
        ],
      },
      /cycle: x → y → x/,
    ],
    [
      'a step id that looks like a cache temporary',
      { base: 'busybox', steps: [{ id: '.day11-tmp-1-x', run: 'true' }] },
      /step "\.day11-tmp-1-x" \(id\): a step id must not start with "\.day11-tmp-"/,
    ],
    [
      'a self-dependency',
      { base: 'busybox', steps: [{ id: 'x', deps: ['x'], run: 'true' }] },
      /step "x" depends on itself/,
    ],
    [
      'an unknown dep',
      { base: 'busybox', steps: [{ id: 'x', deps: ['nope'], run: 'true' }] },
      /step "x" depends on unknown step "nope"/,
    ],
    [
      'duplicate ids',
      {
        base: 'busybox',
        steps: [
          { id: 'x', run: 'a' },
          { id: 'x', run: 'b' },
        ],
      },
      /two steps have the id "x"/,
    ],
    ['no steps', { base: 'busybox', steps: [] }, /at least one step/],
    [
      'an id with a slash',
      { base: 'busybox', steps: [{ id: '../x', run: 'true' }] },
      /step "\.\.\/x"/,
    ],
    ['an empty id', { base: 'busybox', steps: [{ id: '', run: 'true' }] }, /must not be empty/],
    [
      'the id ..',
      { base: 'busybox', steps: [{ id: '..', run: 'true' }] },
      /must not be "\." or "\.\."/,
    ],
    [
      'a dependency listed twice',
      {
        base: 'busybox',
        steps: [
          { id: 'a', run: 'r' },
          { id: 'b', deps: ['a', 'a'], run: 'r' },
        ],
      },
      /lists the dependency "a" twice/,
    ],
    [
      'two ids with one tag',
      {
        base: 'busybox',
        steps: [
          { id: 'a__b', run: 'r' },
          { id: 'a_b', run: 'r' },
        ],
      },
      /steps "a__b" and "a_b" would both be exported as the tag "a_b"/,
    ],
    [
      'an id that gives no tag',
      { base: 'busybox', steps: [{ id: '~~', run: 'r' }] },
      /step "~~": its id gives no usable image tag/,
    ],
    [
      'an invalid tag',
      { base: 'busybox', steps: [{ id: 'x', tag: 'ends-', run: 'r' }] },
      /tag "ends-" is not a valid image tag/,
    ],
    [
      'a run string past MAX_ARG_STRLEN',
      { base: 'busybox', steps: [{ id: 'x', run: 'x'.repeat(200 * 1024) }] },
      /step "x": argument 2 is 204800 bytes, past the kernel's limit of 131071/,
    ],
    [
      'an env value past MAX_ARG_STRLEN',
      { base: 'busybox', steps: [{ id: 'x', run: 'true', env: { BIG: 'v'.repeat(200 * 1024) } }] },
      /step "x": env BIG is 204804 bytes/,
    ],
    [
      'arguments past ARG_MAX together',
      {
        base: 'busybox',
        steps: [{ id: 'x', run: Array.from({ length: 20 }, () => 'y'.repeat(120 * 1024)) }],
      },
      /step "x": its arguments and environment take \d+ bytes, past the \d+ that execve accepts/,
    ],
    [
      'a tiny memory limit',
      { base: 'busybox', steps: [{ id: 'x', run: 'r', resources: { memory: '1k' } }] },
      /step "x" \(resources\): memory must be at least 6M/,
    ],
    [
      'a bad memory size',
      { base: 'busybox', resources: { memory: 'lots' }, steps: [{ id: 'x', run: 'r' }] },
      /memory must be bytes or a size like/,
    ],
    [
      'a user out of range',
      { base: 'busybox', steps: [{ id: 'x', run: 'r', user: '99999999999:1' }] },
      /user 99999999999:1 is out of range/,
    ],
    ['an empty run', { base: 'busybox', steps: [{ id: 'x', run: '' }] }, /step "x" \(run\)/],
    ['an unknown field', { base: 'busybox', steps: [{ id: 'x', run: 'true', rn: 1 }] }, /step "x"/],
    [
      'a relative cwd',
      { base: 'busybox', steps: [{ id: 'x', run: 'true', cwd: 'tmp' }] },
      /cwd must be an absolute path/,
    ],
    [
      'an absurd uid',
      { base: 'busybox', steps: [{ id: 'x', run: 'true', user: 1e12 }] },
      /step "x" \(user\)/,
    ],
    [
      'a bad network',
      { base: 'busybox', steps: [{ id: 'x', run: 'true', network: 'bridge' }] },
      /step "x" \(network\)/,
    ],
    ['an unknown base', { base: 'alpine', steps: [{ id: 'x', run: 'true' }] }, /base/],
  ])('rejects %s, naming the step', (_what, json, message) => {
    expect(badPlan(json)).toMatch(message);
  });

  it('reads files and reports unreadable or non-JSON ones with their path', async () => {
    const good = join(dir, 'good.json');
    await writeFile(good, JSON.stringify(diamond));
    expect((await loadPlan(good)).steps).toHaveLength(3);
    await writeFile(join(dir, 'bad.json'), '{"base": "busybox", ');
    await expect(loadPlan(join(dir, 'bad.json'))).rejects.toMatchObject({
      code: BuildCodes.BAD_PLAN,
      message: expect.stringContaining('not valid JSON') as unknown,
    });
    await expect(loadPlan(join(dir, 'missing.json'))).rejects.toMatchObject({
      code: BuildCodes.BAD_PLAN,
      path: join(dir, 'missing.json'),
    });
  });
});

describe('hashes and stacks', () => {
  const plan = parsePlan(
    { base: 'busybox', steps: [...diamond.steps, { id: 'd', deps: ['c', 'a'], run: 'true' }] },
    '/p.json',
  );
  const base = 'b'.repeat(64);

  it('stacks transitive deps topmost first, by height then hash', () => {
    const graph = new PlanGraph(plan, base);
    const [top, ...rest] = graph.stack('d').map((s) => s.id);
    expect(top).toBe('c');
    const byHash = ['a', 'b'].sort((x, y) => (graph.hash(x) < graph.hash(y) ? 1 : -1));
    expect(rest).toEqual(byHash);
    expect(graph.stack('c').map((s) => s.id)).toEqual(byHash);
    expect(graph.stack('a')).toEqual([]);
  });

  it("keeps every layer's stack a sub-sequence of the stacks built on it (random DAGs)", () => {
    fc.assert(
      fc.property(
        fc
          .integer({ min: 2, max: 30 })
          .chain((n) =>
            fc.tuple(
              ...Array.from({ length: n }, (_, i) =>
                fc.subarray(Array.from({ length: i }, (_, j) => `s${j}`)),
              ),
            ),
          ),
        (depsOf) => {
          const p = parsePlan(
            { base: 'busybox', steps: depsOf.map((deps, i) => ({ id: `s${i}`, deps, run: 'r' })) },
            '/p',
          );
          const graph = new PlanGraph(p, base);
          for (const step of p.steps) {
            const stack = graph.stack(step.id).map((s) => s.id);
            const at = new Map(stack.map((id, i) => [id, i]));
            for (const below of stack) {
              const positions = graph.stack(below).map((s) => at.get(s.id));
              expect(positions.every((x) => x !== undefined)).toBe(true);
              // Topmost first in both: positions must increase.
              expect([...positions].sort((x, y) => x! - y!)).toEqual(positions);
              expect(positions.every((x) => x! > at.get(below)!)).toBe(true);
            }
          }
        },
      ),
      { numRuns: 200, seed: 7 },
    );
  });

  it('gives the same stack and hashes whatever the order of steps in the file', () => {
    const shuffled = parsePlan(
      {
        base: 'busybox',
        steps: [{ id: 'd', deps: ['c', 'a'], run: 'true' }, ...[...diamond.steps].reverse()],
      },
      '/p.json',
    );
    const g1 = new PlanGraph(plan, base);
    const g2 = new PlanGraph(shuffled, base);
    for (const id of ['a', 'b', 'c', 'd']) {
      expect(g2.hash(id)).toBe(g1.hash(id));
      expect(g2.stack(id).map((s) => s.id)).toEqual(g1.stack(id).map((s) => s.id));
    }
  });

  it('hashes each step over the base, its deps (in order) and its definition', () => {
    const h1 = new PlanGraph(plan, base);
    const h2 = new PlanGraph(plan, 'c'.repeat(64));
    expect(new Set(['a', 'b', 'c', 'd'].map((id) => h1.hash(id))).size).toBe(4);
    expect(h1.hash('a')).not.toBe(h2.hash('a'));
    const changed = parsePlan(
      {
        base: 'busybox',
        steps: [
          { ...diamond.steps[1], run: 'echo A > /a' },
          diamond.steps[0],
          diamond.steps[2],
          { id: 'd', deps: ['c', 'a'], run: 'true' },
        ],
      },
      '/p.json',
    );
    const h3 = new PlanGraph(changed, base);
    expect(h3.hash('b')).toBe(h1.hash('b'));
    expect(h3.hash('a')).not.toBe(h1.hash('a'));
    expect(h3.hash('c')).not.toBe(h1.hash('c'));
    expect(h3.hash('d')).not.toBe(h1.hash('d'));
    // deps are a set: their order changes neither the stack nor the hash.
    const swapped = parsePlan(
      { base: 'busybox', steps: [...diamond.steps, { id: 'd', deps: ['a', 'c'], run: 'true' }] },
      '/p.json',
    );
    expect(new PlanGraph(swapped, base).hash('d')).toBe(h1.hash('d'));
    // A tag is an export detail: not part of the hash.
    const tagged = parsePlan(
      { base: 'busybox', steps: [...diamond.steps.map((s) => ({ ...s, tag: `t-${s.id}` }))] },
      '/p.json',
    );
    expect(new PlanGraph(tagged, base).hash('c')).toBe(h1.hash('c'));
  });

  it('keys a step by its canonical definition, whatever the key order', () => {
    const a = parsePlan(
      { base: 'busybox', steps: [{ id: 'x', run: 'r', env: { B: '2', A: '1' } }] },
      '/p',
    ).steps[0]!;
    const b = parsePlan(
      { base: 'busybox', steps: [{ env: { A: '1', B: '2' }, run: 'r', id: 'x' }] },
      '/p',
    ).steps[0]!;
    expect(stepKey(a)).toBe(stepKey(b));
  });

  // Keys are hashed into layer names: the text must stay what it was, for any JSON.
  it('keys any JSON as the first canonical form did (sorted keys, undefined left out)', () => {
    const reference = (value: unknown): string => {
      if (Array.isArray(value)) return `[${value.map(reference).join(',')}]`;
      if (value && typeof value === 'object') {
        const entries = Object.entries(value as Record<string, unknown>)
          .filter(([, v]) => v !== undefined)
          .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
        return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${reference(v)}`).join(',')}}`;
      }
      return JSON.stringify(value);
    };
    const plain = parsePlan({ base: 'busybox', steps: [{ id: 'x', run: 'r' }] }, '/p').steps[0]!;
    fc.assert(
      fc.property(
        fc.dictionary(
          fc.string().filter((k) => !['deps', 'tag', 'resources', 'security'].includes(k)),
          fc.jsonValue(),
        ),
        fc.jsonValue(),
        (extra, env) => {
          const step = { ...plain, ...extra, env: env as Record<string, string> };
          const { deps: _d, tag: _t, resources: _r, security: _s, ...definition } = step;
          expect(stepKey(step)).toBe(reference(definition));
        },
      ),
      { numRuns: 2000 },
    );
    expect(stepKey({ ...plain, env: { b: '1', B: '2', a: undefined as unknown as string } })).toBe(
      '{"cwd":"/","env":{"B":"2","b":"1"},"id":"x","network":"none","run":"r","user":0}',
    );
  });

  it('counts resources in the key only when set', () => {
    const plain = parsePlan({ base: 'busybox', steps: [{ id: 'x', run: 'r' }] }, '/p').steps[0]!;
    const limited = parsePlan(
      {
        base: 'busybox',
        resources: { pids: 64 },
        steps: [{ id: 'x', run: 'r', resources: { memory: '1G' } }],
      },
      '/p',
    ).steps[0]!;
    expect(stepKey(plain)).not.toContain('resources');
    expect(limited.resources).toEqual({ pids: 64, memoryBytes: 2 ** 30 });
    expect(stepKey(limited)).toContain('"resources":{"memoryBytes":1073741824,"pids":64}');
  });

  it('takes security per step over the plan, and counts it in the key only when set', () => {
    const plain = parsePlan({ base: 'busybox', steps: [{ id: 'x', run: 'r' }] }, '/p').steps[0]!;
    expect(plain.security).toEqual({});
    expect(stepKey(plain)).toBe(
      '{"cwd":"/","env":{},"id":"x","network":"none","run":"r","user":0}',
    );
    const open = parsePlan(
      {
        base: 'busybox',
        security: { seccomp: false, noNewPrivileges: false },
        steps: [
          { id: 'x', run: 'r' },
          { id: 'y', run: 'r', security: { noNewPrivileges: true } },
        ],
      },
      '/p',
    ).steps;
    expect(open.map((s) => s.security)).toEqual([
      { seccomp: false, noNewPrivileges: false },
      { seccomp: false, noNewPrivileges: true },
    ]);
    expect(stepKey(open[0]!)).toContain('"security":{"noNewPrivileges":false,"seccomp":false}');
    expect(stepKey(open[0]!)).not.toBe(stepKey(plain));
    expect(() =>
      parsePlan(
        { base: 'busybox', steps: [{ id: 'x', run: 'r', security: { apparmor: 'x' } }] },
        '/p',
      ),
    ).toThrow(/step "x" \(security\): Unrecognized key: "apparmor"/);
  });

  it('parses users', () => {
    const step = (user: unknown) =>
      parsePlan({ base: 'busybox', steps: [{ id: 'x', run: 'r', user }] }, '/p').steps[0]!;
    expect(userOf(step(1000))).toEqual({ uid: 1000, gid: 1000 });
    expect(userOf(step('1000:50'))).toEqual({ uid: 1000, gid: 50 });
  });

  it('validates, orders and hashes 10,000 steps in linear passes (a chain and a fan)', () => {
    const chain = Array.from({ length: 10_000 }, (_, i) => ({
      id: `s${i}`,
      run: 'true',
      ...(i > 0 && { deps: [`s${i - 1}`] }),
    }));
    const p = parsePlan({ base: 'busybox', steps: [...chain].reverse() }, '/p');
    expect(p.steps[0]!.id).toBe('s0');
    const graph = new PlanGraph(p, base);
    expect(graph.stack('s9999')).toHaveLength(9999);
    expect(graph.stack('s9999')[0]!.id).toBe('s9998');
    const fan = parsePlan(
      {
        base: 'busybox',
        steps: [
          ...Array.from({ length: 10_000 }, (_, i) => ({ id: `f${i}`, run: 'true' })),
          { id: 'top', run: 'true', deps: Array.from({ length: 10_000 }, (_, i) => `f${i}`) },
        ],
      },
      '/p',
    );
    expect(new PlanGraph(fan, base).stack('top')).toHaveLength(10_000);
  });
});

describe('names and tags', () => {
  it.each([
    ['libstdc++6', 'libstdcpp6'],
    ['g++', 'gpp'],
    ['ocaml-base-compiler.5.2.0~rc1', 'ocaml-base-compiler.5.2.0-rc1'],
    ['pkg+dfsg', 'pkgpdfsg'],
    ['a__b', 'a_b'],
    ['ends-with-dash-', 'ends-with-dash'],
    ['-.lead', 'lead'],
    ['python3:any', 'python3-any'],
    ['émile', 'mile'],
    ['x'.repeat(200), 'x'.repeat(128)],
  ])('derives the tag of %j as %j', (id, tag) => {
    expect(deriveTag(id)).toBe(tag);
  });

  it('accepts real package names as step ids, and a tag given by hand', () => {
    const plan = parsePlan(
      {
        base: 'busybox',
        steps: [
          { id: 'libstdc++6', run: 'r' },
          { id: 'ocaml-base-compiler.5.2.0~rc1', run: 'r', deps: ['libstdc++6'] },
          { id: 'g++', tag: 'gxx-12', run: 'r' },
          { id: 'x..y', run: 'r' },
        ],
      },
      '/p',
    );
    expect(plan.steps.map((s) => s.tag)).toEqual([
      'libstdcpp6',
      'gxx-12',
      'x.y',
      'ocaml-base-compiler.5.2.0-rc1',
    ]);
  });

  it('checks argument sizes against the kernel limit exactly', () => {
    const ok = 'y'.repeat(MAX_ARG_STRLEN - 1);
    expect(() =>
      parsePlan({ base: 'busybox', steps: [{ id: 'x', run: ['/bin/true', ok] }] }, '/p'),
    ).not.toThrow();
    expect(() =>
      parsePlan({ base: 'busybox', steps: [{ id: 'x', run: ['/bin/true', `${ok}y`] }] }, '/p'),
    ).toThrow(/past the kernel's limit/);
  });
});

describe('targets and shards', () => {
  const plan = parsePlan(
    {
      base: 'busybox',
      steps: [
        { id: 'libc', run: 'r' },
        { id: 'zlib', deps: ['libc'], run: 'r' },
        { id: 'ssl', deps: ['libc'], run: 'r' },
        { id: 'curl', deps: ['zlib', 'ssl'], run: 'r' },
        { id: 'git', deps: ['curl'], run: 'r' },
        { id: 'docs', run: 'r' },
        { id: 'gzip', deps: ['zlib'], run: 'r' },
      ],
    },
    '/p',
  );

  it('finds the targets and restricts a plan to what they need', () => {
    expect(targetsOf(plan).map((s) => s.id)).toEqual(['docs', 'gzip', 'git']);
    expect(restrictTo(plan, ['gzip']).steps.map((s) => s.id)).toEqual(['libc', 'zlib', 'gzip']);
    expect(() => restrictTo(plan, ['nope'])).toThrow(/No step "nope"/);
  });

  it('splits the targets among shards that together cover the plan, the same way every time', () => {
    for (const count of [1, 2, 3, 5]) {
      const shards = Array.from({ length: count }, (_, i) =>
        shardOf(plan, { index: i + 1, count }),
      );
      const covered = new Set(shards.flatMap((s) => s.steps.map((x) => x.id)));
      expect([...covered].sort()).toEqual(plan.steps.map((s) => s.id).sort());
      const targets = shards.flatMap((s) => targetsOf(s).map((t) => t.id));
      expect(targets.sort()).toEqual(['docs', 'git', 'gzip']);
      expect(shards.map((s) => s.steps.map((x) => x.id))).toEqual(
        Array.from({ length: count }, (_, i) =>
          shardOf(plan, { index: i + 1, count }).steps.map((x) => x.id),
        ),
      );
    }
    // The biggest target (git: 5 steps) goes first; the others balance against it.
    expect(shardOf(plan, { index: 1, count: 2 }).steps.map((s) => s.id)).toEqual([
      'libc',
      'zlib',
      'ssl',
      'curl',
      'git',
    ]);
    expect(() => shardOf(plan, { index: 3, count: 2 })).toThrow(/Invalid shard 3\/2/);
  });
});
