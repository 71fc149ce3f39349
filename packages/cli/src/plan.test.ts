import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CliCodes } from './errors.js';
import { argvOf, closure, loadPlan, parsePlan, stepHashes, stepKey, userOf } from './plan.js';

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
    expect(err).toMatchObject({ code: CliCodes.BAD_PLAN, path: '/plans/p.json' });
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
    ['a bad id', { base: 'busybox', steps: [{ id: '../x', run: 'true' }] }, /step "\.\.\/x"/],
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
      code: CliCodes.BAD_PLAN,
      message: expect.stringContaining('not valid JSON') as unknown,
    });
    await expect(loadPlan(join(dir, 'missing.json'))).rejects.toMatchObject({
      code: CliCodes.BAD_PLAN,
      path: join(dir, 'missing.json'),
    });
  });
});

describe('hashes and stacks', () => {
  const plan = parsePlan(
    { base: 'busybox', steps: [...diamond.steps, { id: 'd', deps: ['c', 'a'], run: 'true' }] },
    '/p.json',
  );

  it('stacks transitive deps topmost first', () => {
    const d = plan.steps.find((s) => s.id === 'd')!;
    expect(closure(d, plan).map((s) => s.id)).toEqual(['c', 'b', 'a']);
  });

  it('hashes each step over the base, its transitive deps and its definition', () => {
    const h1 = stepHashes(plan, 'b'.repeat(64));
    const h2 = stepHashes(plan, 'c'.repeat(64));
    expect(new Set(h1.values()).size).toBe(4);
    expect(h1.get('a')).not.toBe(h2.get('a'));
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
    const h3 = stepHashes(changed, 'b'.repeat(64));
    expect(h3.get('b')).toBe(h1.get('b'));
    expect(h3.get('a')).not.toBe(h1.get('a'));
    expect(h3.get('c')).not.toBe(h1.get('c'));
    expect(h3.get('d')).not.toBe(h1.get('d'));
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

  it('parses users', () => {
    const step = (user: unknown) =>
      parsePlan({ base: 'busybox', steps: [{ id: 'x', run: 'r', user }] }, '/p').steps[0]!;
    expect(userOf(step(1000))).toEqual({ uid: 1000, gid: 1000 });
    expect(userOf(step('1000:50'))).toEqual({ uid: 1000, gid: 50 });
    expect(() => userOf(step('99999999999:1'))).toThrow(/out of range/);
  });
});
