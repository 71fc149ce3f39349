/**
 * The builder's logic against a fake sandbox: no root, no runtime. Real
 * temporary caches, real commits, locks and exports.
 */
import { existsSync, rmSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { Commit, Gc, InUse, LayerDir, LayerMeta, Lineage, Sidecar } from '@day11/layer';
import { Layout } from '@day11/oci-export';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createBuilder, type BuilderOptions, type BuildResult } from './builder.js';
import type { BuildEvent, StepEvent } from './events.js';
import { FakeSandbox } from './fixtures/fake-sandbox.js';
import { PlanGraph } from './graph.js';
import { parsePlan, type Plan } from './plan.js';
import type { LayerPublisher, LayerSource } from './seam.js';
import { readStats } from './stats.js';

let work: string;
let osDir: string;
let rootfs: string;
let sandbox: FakeSandbox;

beforeEach(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-builder-'));
  osDir = join(work, 'cache');
  rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'etc'), { recursive: true });
  await writeFile(join(rootfs, 'etc/os-release'), 'fake\n');
  sandbox = new FakeSandbox(osDir);
});
afterEach(async () => {
  await rm(work, { recursive: true, force: true });
});

interface StepSpec {
  id: string;
  deps?: string[];
}

function planOf(steps: StepSpec[]): Plan {
  return parsePlan(
    { base: { dir: rootfs }, steps: steps.map((s) => ({ ...s, run: `step ${s.id}` })) },
    join(work, 'plan.json'),
  );
}

async function build(
  plan: Plan,
  options: Partial<BuilderOptions> = {},
  signal?: AbortSignal,
): Promise<{ result: BuildResult; events: BuildEvent[] }> {
  const events: BuildEvent[] = [];
  const builder = createBuilder({ osDir, sandbox, ...options });
  try {
    const result = await builder.build(plan, { onEvent: (e) => events.push(e), signal });
    return { result, events };
  } finally {
    await builder.close();
  }
}

const statusOf = (result: BuildResult): Record<string, string> =>
  Object.fromEntries(
    result.steps.map((s) => [
      s.id,
      `${s.status}${s.recorded || s.status === 'done' || s.status === 'cached' ? '' : ' (not recorded)'}`,
    ]),
  );

const stepEvents = (events: BuildEvent[], status?: StepEvent['status']): StepEvent[] =>
  events.filter((e): e is StepEvent => e.type === 'step' && (!status || e.status === status));

const diamond = [
  { id: 'a' },
  { id: 'b', deps: ['a'] },
  { id: 'c', deps: ['a'] },
  { id: 'd', deps: ['b', 'c'] },
];

describe('ordering', () => {
  it('starts each step after its dependencies finish, and runs up to `jobs` at once', async () => {
    for (const s of diamond)
      sandbox.behaviour.set(s.id, { delayMs: 30, files: { [`/${s.id}`]: s.id } });
    const { result } = await build(planOf(diamond), { jobs: 2 });
    expect(result.ok).toBe(true);
    const call = (name: string) => sandbox.calls.find((c) => c.name === name)!;
    expect(call('b').startedAt).toBeGreaterThanOrEqual(call('a').endedAt!);
    expect(call('c').startedAt).toBeGreaterThanOrEqual(call('a').endedAt!);
    expect(call('d').startedAt).toBeGreaterThanOrEqual(
      Math.max(call('b').endedAt!, call('c').endedAt!),
    );
    expect(sandbox.maxRunning).toBe(2);
  });

  it('prepares `jobs` more steps while `jobs` containers run, for a sandbox that takes the slot', async () => {
    sandbox.takesContainerSlot = true;
    // Six independent steps: up to four in the sandbox, two in a container.
    const steps = ['p', 'q', 'r', 's', 't', 'u'].map((id) => ({ id }));
    for (const s of steps) sandbox.behaviour.set(s.id, { delayMs: 30 });
    const { result, events } = await build(planOf(steps), { jobs: 2 });
    expect(result.ok).toBe(true);
    expect(sandbox.maxContainers).toBe(2);
    expect(sandbox.maxRunning).toBe(4);
    // Each is reported running once, when its container may start.
    const running = events.filter((e) => e.type === 'step' && e.status === 'running');
    expect(running.map((e) => (e as { id: string }).id).sort()).toEqual(steps.map((s) => s.id));
  });

  it('bounds whole runs by `jobs` for a sandbox that does not take the slot', async () => {
    const steps = ['p', 'q', 'r', 's', 't', 'u'].map((id) => ({ id }));
    for (const s of steps) sandbox.behaviour.set(s.id, { delayMs: 30 });
    await build(planOf(steps), { jobs: 2 });
    expect(sandbox.maxRunning).toBe(2);
    expect(sandbox.maxContainers).toBe(2);
  });

  it('runs one step at a time by default', async () => {
    for (const s of diamond) sandbox.behaviour.set(s.id, { delayMs: 20 });
    await build(planOf(diamond));
    expect(sandbox.maxRunning).toBe(1);
  });

  it("gives each step its whole stack, topmost first, and records it as the layer's parents", async () => {
    const plan = planOf(diamond);
    const { result } = await build(plan);
    const dir = (id: string) => result.steps.find((s) => s.id === id)!.dir;
    const d = sandbox.calls.find((c) => c.name === 'd')!;
    const stack = new PlanGraph(plan, result.base.hash).stack('d').map((s) => s.id);
    expect(stack).toHaveLength(3);
    expect(stack.at(-1)).toBe('a');
    expect(d.lowers).toEqual(stack.map(dir));
    const meta = await LayerMeta.load(dir('d'));
    const hash = (id: string) => result.steps.find((s) => s.id === id)!.hash;
    expect(meta.parent_hashes).toEqual(stack.map(hash));
    expect(meta.hash).toBe(hash('d'));
    expect(await Sidecar.read(dir('d'), 'step.json')).toMatchObject({ id: 'd', plan: plan.file });
  });

  it("agrees with Lineage.stackFor: a layer's recorded stack is what its direct deps expand to", async () => {
    // A DAG with ties of height (b, c; e, f) and a layer above a diamond and a chain.
    const plan = planOf([
      ...diamond,
      { id: 'e', deps: ['a'] },
      { id: 'f', deps: ['e', 'b'] },
      { id: 'g', deps: ['d', 'f'] },
    ]);
    const { result } = await build(plan);
    const step = (id: string) => result.steps.find((s) => s.id === id)!;
    for (const s of plan.steps) {
      const recorded = (await LayerMeta.load(step(s.id).dir)).parent_hashes;
      const deps = s.deps.map((d) => step(d).hash);
      const expanded = deps.length
        ? (await Lineage.stackFor({ osDir, deps })).layers.map((d) =>
            LayerDir.hashPrefix(basename(d)),
          )
        : [];
      expect([...expanded].reverse(), s.id).toEqual(recorded.map((h) => h.slice(0, 12)));
    }
  });

  it('builds a 200-step chain and 200 independent steps; stacks 2,000 deep without recursion', async () => {
    const chain = Array.from({ length: 2000 }, (_, i) => ({
      id: `s${i}`,
      ...(i > 0 && { deps: [`s${i - 1}`] }),
    }));
    const { result } = await build(planOf(chain.slice(0, 200)), { jobs: 4 });
    expect(result.summary.built).toBe(200);
    // Plans this size are validated, hashed and stacked in linear passes.
    const graph = new PlanGraph(planOf(chain), result.base.hash);
    expect(graph.stack('s1999')).toHaveLength(1999);
    const wide = Array.from({ length: 200 }, (_, i) => ({ id: `w${i}` }));
    const second = await build(planOf(wide), { jobs: 8 });
    expect(second.result.summary.built).toBe(200);
  });

  it('settles 20,000 steps that need no waiting (an abort) without nesting a call per step', async () => {
    const wide = Array.from({ length: 20_000 }, (_, i) => ({ id: `w${i}` }));
    const ac = new AbortController();
    const builder = createBuilder({ osDir, sandbox });
    const result = await builder
      .build(planOf(wide), {
        signal: ac.signal,
        onEvent: (e) => {
          if (e.type === 'step' && e.status === 'running') ac.abort();
        },
      })
      .finally(() => builder.close());
    expect(result.summary.failed).toBe(20_000);
    expect(sandbox.calls).toHaveLength(1);
  }, 60_000);
});

describe('cache hits and misses', () => {
  it('builds once, then finds every step cached; stats() and the cache count both', async () => {
    const plan = planOf(diamond);
    const builder = createBuilder({ osDir, sandbox });
    const first = await builder.build(plan);
    expect(first.summary).toMatchObject({ built: 4, cached: 0 });
    const second = await builder.build(plan);
    expect(second.summary).toMatchObject({ built: 0, cached: 4 });
    expect(sandbox.calls).toHaveLength(4);
    expect(builder.stats()).toEqual({ hits: 4, misses: 4, fetched: 0, built: 4 });
    expect(await readStats(osDir)).toMatchObject({ hits: 4, misses: 4, built: 4 });
    await builder.close();
    await builder.close();
    expect(sandbox.closed).toBe(1);
    await expect(builder.build(plan)).rejects.toMatchObject({ code: 'BUILD_CLOSED' });
  });

  it('adds up the bytes of steps built in parallel', async () => {
    const steps = Array.from({ length: 20 }, (_, i) => ({ id: `big${i}` }));
    for (const s of steps) sandbox.behaviour.set(s.id, { files: { '/blob': 'x'.repeat(2 ** 20) } });
    const { result } = await build(planOf(steps), { jobs: 4 });
    expect(result.summary.bytes).toBeGreaterThanOrEqual(20 * 2 ** 20);
  });

  it('refuses a cached layer whose full hash is another one (a 12-digit name collision)', async () => {
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    const { result } = await build(plan);
    const a = result.steps[0]!;
    // Replace a's layer by another layer whose hash shares its first 12 digits.
    await rm(a.dir, { recursive: true });
    const other = a.hash.slice(0, 12) + (a.hash[12] === '0' ? '1' : '0') + a.hash.slice(13);
    const upper = join(osDir, 'other-upper');
    await mkdir(upper);
    await Commit.commit({
      osDir,
      hash: other,
      upper,
      meta: {
        exit_status: 0,
        parent_hashes: [],
        uid: 0,
        gid: 0,
        base_hash: result.base.hash,
        timing: [],
        failed_dep: null,
      },
    });
    const again = await build(plan);
    expect(again.result.steps[0]).toMatchObject({ status: 'failed', recorded: false });
    expect(again.result.steps[0]!.reason).toMatch(/share their first 12 digits/);
    expect(again.result.steps[1]).toMatchObject({ status: 'skipped', recorded: false });
    expect((await LayerMeta.load(a.dir)).hash).toBe(other);
  });

  it('two builds of one plan on one cache share the work: a step locked by the other waits without blocking later ones', async () => {
    // Two workers (as two `day11 build` processes would) on the same wide
    // plan: each builds what the other has not locked, and finds the rest
    // cached, instead of one waiting behind the other's locks in plan order.
    const steps = Array.from({ length: 120 }, (_, i) => ({ id: `w${i}` }));
    for (const s of steps) sandbox.behaviour.set(s.id, { delayMs: 10 });
    const other = new FakeSandbox(osDir);
    for (const s of steps) other.behaviour.set(s.id, { delayMs: 10 });
    for (const fake of [sandbox, other]) fake.takesContainerSlot = true;
    // The base is imported first, so neither build starts by waiting for the other's import.
    await build(planOf([{ id: 'warm' }]));
    const plan = planOf(steps);
    const builders = [sandbox, other].map((s) => createBuilder({ osDir, sandbox: s, jobs: 2 }));
    try {
      const [a, b] = await Promise.all(builders.map((builder) => builder.build(plan)));
      expect(a!.ok && b!.ok).toBe(true);
      expect(a!.summary.built + b!.summary.built).toBe(120);
      expect(a!.summary.built + a!.summary.cached).toBe(120);
      expect(b!.summary.built + b!.summary.cached).toBe(120);
      // Each ran a share (25 to 95 of 120 in 13 runs; without sharing it was 0 or 120).
      expect(Math.min(a!.summary.built, b!.summary.built)).toBeGreaterThanOrEqual(12);
    } finally {
      await Promise.all(builders.map((builder) => builder.close()));
    }
  });
});

describe('failures', () => {
  it('records a failing step and its dependents (failed_dep), and reuses the records', async () => {
    sandbox.behaviour.set('b', { exitCode: 3 });
    const plan = planOf(diamond);
    const { result, events } = await build(plan);
    expect(statusOf(result)).toEqual({ a: 'done', b: 'failed', c: 'done', d: 'skipped' });
    expect(result.ok).toBe(false);
    const b = result.steps[1]!;
    expect(b).toMatchObject({ exitCode: 3, recorded: true });
    expect((await LayerMeta.load(b.dir)).exit_status).toBe(3);
    const d = await LayerMeta.load(result.steps[3]!.dir);
    expect(d).toMatchObject({ exit_status: -1, failed_dep: 'b' });
    const failed = stepEvents(events, 'failed')[0]!;
    expect(failed).toMatchObject({ id: 'b', exitCode: 3, log: join(b.dir, 'layer.log') });
    expect(failed.logTail).toEqual(['ran b', 'line 2']);
    sandbox.calls.length = 0;
    const again = await build(plan);
    expect(statusOf(again.result)).toEqual({ a: 'cached', b: 'failed', c: 'cached', d: 'skipped' });
    expect(sandbox.calls).toEqual([]);
  });

  it('retryFailed runs a recorded failure again, and its dependents with it', async () => {
    sandbox.behaviour.set('b', { exitCode: 3 });
    const plan = planOf(diamond);
    await build(plan);
    sandbox.behaviour.set('b', {});
    const reused = await build(plan);
    expect(statusOf(reused.result)).toEqual({
      a: 'cached',
      b: 'failed',
      c: 'cached',
      d: 'skipped',
    });
    sandbox.calls.length = 0;
    const retried = await build(plan, { retryFailed: true });
    expect(statusOf(retried.result)).toEqual({ a: 'cached', b: 'done', c: 'cached', d: 'done' });
    expect(sandbox.names).toEqual(['b', 'd']);
    expect((await LayerMeta.load(retried.result.steps[3]!.dir)).failed_dep).toBeNull();
  });

  it('never records a step stopped by its timeout, nor anything downstream of it', async () => {
    sandbox.behaviour.set('b', { hang: true });
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }, { id: 'c', deps: ['b'] }]);
    const { result } = await build(plan, { timeoutMs: 50 });
    expect(statusOf(result)).toEqual({
      a: 'done',
      b: 'failed (not recorded)',
      c: 'skipped (not recorded)',
    });
    expect(result.steps[1]!.reason).toBe('timed out');
    expect(existsSync(result.steps[1]!.dir)).toBe(false);
    expect(existsSync(result.steps[2]!.dir)).toBe(false);
    // Next time it is tried again, and can succeed.
    sandbox.behaviour.set('b', {});
    const again = await build(plan);
    expect(statusOf(again.result)).toEqual({ a: 'cached', b: 'done', c: 'done' });
  });

  it('records nothing for a failure of the machine, nor downstream of it', async () => {
    sandbox.behaviour.set('a', { machineError: 'mount failed: ENOSPC' });
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    const { result } = await build(plan);
    expect(statusOf(result)).toEqual({ a: 'failed (not recorded)', b: 'skipped (not recorded)' });
    expect(result.steps[0]!.reason).toMatch(/ENOSPC/);
    expect(existsSync(result.steps[0]!.dir)).toBe(false);
    expect(existsSync(result.steps[1]!.dir)).toBe(false);
  });

  it('records nothing for a step that failed because the disk was full, and drops what it wrote', async () => {
    sandbox.behaviour.set('a', {
      exitCode: 2,
      files: { '/opt/partial': 'x' },
      output: 'cc1: fatal error: writing output: No space left on device\n',
    });
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    const { result } = await build(plan);
    expect(statusOf(result)).toEqual({ a: 'failed (not recorded)', b: 'skipped (not recorded)' });
    expect(result.steps[0]!.reason).toMatch(/^exit 2, not recorded: it ran out of disk space/);
    expect((await readdir(osDir)).filter((n) => n.includes('upper'))).toEqual([]);
    // Space freed, the same plan builds.
    sandbox.behaviour.set('a', {});
    expect(statusOf((await build(plan)).result)).toEqual({ a: 'done', b: 'done' });
  });
});

describe('cancellation', () => {
  it('stops a build mid-way: the running step and everything not started are not recorded', async () => {
    // b and x are both ready once a is done, and either may get the one slot first: the
    // first to run hangs and is stopped, the other must never start.
    sandbox.behaviour.set('b', { hang: true });
    sandbox.behaviour.set('x', { hang: true });
    const plan = planOf([
      { id: 'a' },
      { id: 'b', deps: ['a'] },
      { id: 'c', deps: ['b'] },
      { id: 'x', deps: ['a'] },
    ]);
    const ac = new AbortController();
    const events: BuildEvent[] = [];
    const builder = createBuilder({ osDir, sandbox, jobs: 1 });
    const result = await builder.build(plan, {
      signal: ac.signal,
      onEvent: (e) => {
        events.push(e);
        if (e.type === 'step' && e.id !== 'a' && e.status === 'running') ac.abort();
      },
    });
    await builder.close();
    expect(result.steps.find((s) => s.id === 'a')!.status).toBe('done');
    for (const id of ['b', 'c', 'x']) {
      const o = result.steps.find((s) => s.id === id)!;
      expect(o.recorded).toBe(false);
      expect(existsSync(o.dir)).toBe(false);
    }
    expect(sandbox.names).toHaveLength(2);
    expect(sandbox.names[0]).toBe('a');
    expect(['b', 'x']).toContain(sandbox.names[1]);
    // The interrupted step runs again next time.
    sandbox.behaviour.set('b', {});
    sandbox.behaviour.set('x', {});
    const again = await build(plan);
    expect(statusOf(again.result)).toEqual({ a: 'cached', b: 'done', c: 'done', x: 'done' });
  });
});

describe('sources and publishers', () => {
  it('fetches what a source has instead of running it, and publishes what it built', async () => {
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    // Another machine's cache, built earlier: the source copies from it.
    const elsewhere = join(work, 'elsewhere');
    const other = createBuilder({ osDir: elsewhere, sandbox: new FakeSandbox(elsewhere) });
    const built = await other.build(plan);
    await other.close();
    const hashes = built.steps.map((s) => s.hash);
    const asked: string[][] = [];
    const source: LayerSource = {
      name: 'test source',
      async lookup(wanted) {
        asked.push([...wanted]);
        return new Set(wanted.filter((h) => h === hashes[0]));
      },
      async fetch(hash, { osDir: into }) {
        const from = LayerDir.path({ osDir: elsewhere, hash });
        const meta = await LayerMeta.load(from);
        const upper = join(into, `.day11-tmp-${process.pid}-fetch`);
        await mkdir(upper);
        await writeFile(join(upper, 'fetched'), 'yes');
        await Commit.commit({ osDir: into, hash, upper, meta });
        return true;
      },
    };
    const published: string[] = [];
    const publisher: LayerPublisher = {
      name: 'test publisher',
      async publish({ hash }) {
        published.push(hash);
      },
    };
    const { result, events } = await build(plan, { sources: [source], publishers: [publisher] });
    expect(statusOf(result)).toEqual({ a: 'fetched', b: 'done' });
    // Targets first, so a source can answer a stack from the top; then once
    // more for the step about to run, in case another worker made it since.
    expect(asked).toEqual([[hashes[1], hashes[0]], [hashes[1]]]);
    expect(sandbox.names).toEqual(['b']);
    expect(published).toEqual([hashes[1]]);
    expect(events.filter((e) => e.type === 'publish')).toMatchObject([{ status: 'done', id: 'b' }]);
    expect(existsSync(join(result.steps[0]!.dir, 'fs/fetched'))).toBe(true);
  });

  it('fetches a layer that another worker published after the lookup instead of running it', async () => {
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    const elsewhere = join(work, 'elsewhere');
    const other = createBuilder({ osDir: elsewhere, sandbox: new FakeSandbox(elsewhere) });
    const hashes = (await other.build(plan)).steps.map((s) => s.hash);
    await other.close();
    // The registry is empty when the build looks, and has b by the time b would run.
    let published = new Set<string>();
    const source: LayerSource = {
      name: 'racing worker',
      async lookup(wanted) {
        const found = new Set(wanted.filter((h) => published.has(h)));
        published = new Set(hashes);
        return found;
      },
      async fetch(hash, { osDir: into }) {
        const meta = await LayerMeta.load(LayerDir.path({ osDir: elsewhere, hash }));
        const upper = join(into, `.day11-tmp-${process.pid}-fetch`);
        await mkdir(upper);
        await Commit.commit({ osDir: into, hash, upper, meta });
        return true;
      },
    };
    const { result } = await build(plan, { sources: [source] });
    expect(statusOf(result)).toEqual({ a: 'fetched', b: 'fetched' });
    expect(sandbox.names).toEqual([]);
  });

  it('waits for a layer another worker claimed, fetches it, and runs what it claims itself', async () => {
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    const elsewhere = join(work, 'elsewhere');
    const other = createBuilder({ osDir: elsewhere, sandbox: new FakeSandbox(elsewhere) });
    const hashes = (await other.build(plan)).steps.map((s) => s.hash);
    await other.close();
    // Another worker holds a's claim and publishes it after a while; b is ours.
    const published = new Set<string>();
    const claims: string[] = [];
    let polls = 0;
    const registry: LayerSource & LayerPublisher = {
      name: 'shared',
      async lookup(wanted) {
        if (published.size === 0 && ++polls >= 2) published.add(hashes[0]!);
        return new Set(wanted.filter((h) => published.has(h)));
      },
      async fetch(hash, { osDir: into }) {
        const meta = await LayerMeta.load(LayerDir.path({ osDir: elsewhere, hash }));
        const upper = join(into, `.day11-tmp-${process.pid}-fetch`);
        await mkdir(upper);
        await Commit.commit({ osDir: into, hash, upper, meta });
        return true;
      },
      async publish() {},
      async claim(hash) {
        claims.push(hash);
        return hash !== hashes[0];
      },
    };
    const { result, events } = await build(plan, { sources: [registry], publishers: [registry] });
    expect(statusOf(result)).toEqual({ a: 'fetched', b: 'done' });
    expect(sandbox.names).toEqual(['b']);
    expect(events.filter((e) => e.type === 'step' && e.status === 'waiting')).toMatchObject([
      { id: 'a', source: 'shared' },
    ]);
    expect(claims.filter((h) => h === hashes[1])).toHaveLength(1);
  });

  it('runs a step whose claim fails, and gives up the claim of an interrupted one', async () => {
    const unclaimed: string[] = [];
    const registry: LayerSource & LayerPublisher = {
      name: 'flaky',
      lookup: async () => new Set<string>(),
      fetch: async () => false,
      publish: async () => {},
      claim: async (hash) => {
        if (unclaimed.length === 0 && hash.length > 0) return true;
        throw new Error('registry down');
      },
      unclaim: async (hash) => {
        unclaimed.push(hash);
      },
    };
    sandbox.behaviour.set('a', { hang: true });
    const first = await build(planOf([{ id: 'a' }]), {
      sources: [registry],
      publishers: [registry],
      timeoutMs: 50,
    });
    expect(first.result.steps[0]).toMatchObject({ status: 'failed', recorded: false });
    expect(unclaimed).toEqual([first.result.steps[0]!.hash]);
    sandbox.behaviour.set('a', {});
    const second = await build(planOf([{ id: 'a' }]), {
      sources: [registry],
      publishers: [registry],
    });
    expect(statusOf(second.result)).toEqual({ a: 'done' });
  });

  it('builds locally when a source fails, and reports it', async () => {
    const source: LayerSource = {
      name: 'down',
      lookup: () => Promise.reject(new Error('connection refused')),
      fetch: () => Promise.resolve(false),
    };
    const { result, events } = await build(planOf([{ id: 'a' }]), { sources: [source] });
    expect(result.ok).toBe(true);
    expect(events.find((e) => e.type === 'lookup')).toMatchObject({ reason: 'connection refused' });
  });
});

describe('a dependency collected during the build', () => {
  it('is made again, and the build goes on', async () => {
    await build(planOf([{ id: 'a' }]));
    sandbox.calls.length = 0;
    // A concurrent GC takes a's layer after the builder found it, before b leases it.
    sandbox.beforeRun = async (name, lowers) => {
      sandbox.beforeRun = undefined;
      if (name === 'b') await rm(lowers[0]!, { recursive: true });
    };
    const { result } = await build(planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]));
    expect(statusOf(result)).toEqual({ a: 'cached', b: 'done' });
    expect(sandbox.names).toEqual(['b', 'a', 'b']);
    expect(existsSync(join(result.steps[0]!.dir, 'layer.json'))).toBe(true);
  });

  it('is made again when its export finds it gone, and the image is written', async () => {
    const layout = join(work, 'oci');
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]);
    await build(plan);
    sandbox.calls.length = 0;
    const events: BuildEvent[] = [];
    const builder = createBuilder({ osDir, sandbox, layout });
    let aDir = '';
    const result = await builder
      .build(plan, {
        onEvent: (e) => {
          events.push(e);
          if (e.type === 'step' && e.id === 'a' && e.status === 'cached')
            aDir = join(osDir, e.layer);
          // A concurrent GC takes a's layer once both steps were found cached.
          if (e.type === 'step' && e.id === 'b' && e.status === 'cached')
            rmSync(aDir, { recursive: true });
        },
      })
      .finally(() => builder.close());
    expect(result.ok).toBe(true);
    // a is made again, but its image is exported once.
    expect(result.summary.exported.sort()).toEqual(['a', 'b']);
    expect(sandbox.names).toEqual(['a']);
    expect(events.filter((e) => e.type === 'export').length).toBe(2);
    // Nothing of the build runs after it returned.
    const seen = events.length;
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(events.length).toBe(seen);
    expect(await Layout.verify(layout)).toEqual([]);
  });

  it('never takes a layer the build made or found for an export: each is leased until the build ends', async () => {
    const layout = join(work, 'oci');
    await build(planOf([{ id: 'a' }]));
    sandbox.calls.length = 0;
    sandbox.beforeRun = async (name) => {
      if (name !== 'c') return;
      sandbox.beforeRun = undefined;
      // keepBytes 0: everything nobody holds goes (a was found, b made, in this build).
      await Gc.prune({ osDir, keepBytes: 0 });
    };
    const plan = planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }, { id: 'c', deps: ['b'] }]);
    const { result } = await build(plan, { layout });
    expect(statusOf(result)).toEqual({ a: 'cached', b: 'done', c: 'done' });
    expect(sandbox.names).toEqual(['b', 'c']);
    expect(result.summary.exported.sort()).toEqual(['a', 'b', 'c']);
    for (const step of result.steps) {
      expect(existsSync(join(step.dir, 'layer.json')), step.id).toBe(true);
      expect(await InUse.holders(step.dir), step.id).toEqual([]);
    }
  });

  it('never takes the base: it is leased for the whole build', async () => {
    sandbox.beforeRun = async () => {
      sandbox.beforeRun = undefined;
      // keepBytes 0: everything nobody holds goes (here, before the first step, only the base).
      await Gc.prune({ osDir, keepBytes: 0 });
    };
    const { result } = await build(planOf([{ id: 'a' }, { id: 'b', deps: ['a'] }]));
    expect(statusOf(result)).toEqual({ a: 'done', b: 'done' });
    expect(existsSync(join(result.base.dir, 'layer.json'))).toBe(true);
    // Released afterwards: nothing holds it any more.
    expect(await InUse.holders(result.base.dir)).toEqual([]);
  });
});

describe('per-step export', () => {
  it('exports each ok step as it is done, with its whole stack and tag', async () => {
    const layout = join(work, 'oci');
    sandbox.behaviour.set('c', { exitCode: 1 });
    const plan = parsePlan(
      {
        base: { dir: rootfs },
        steps: [
          { id: 'libstdc++6', run: 'step a' },
          { id: 'g++', deps: ['libstdc++6'], run: 'step b' },
          { id: 'pkg+dfsg', deps: ['g++'], run: 'step c' },
        ],
      },
      join(work, 'plan.json'),
    );
    const { result, events } = await build(plan, { layout });
    expect(result.summary.exported).toEqual(['libstdcpp6', 'gpp']);
    expect(result.summary.exportFailures).toEqual([]);
    expect((await Layout.tags(layout)).map((t) => t.tag).sort()).toEqual(['gpp', 'libstdcpp6']);
    const exported = events.filter((e) => e.type === 'export');
    expect(exported).toMatchObject([
      { id: 'libstdc++6', tag: 'libstdcpp6', status: 'done', layers: 2 },
      { id: 'g++', tag: 'gpp', status: 'done', layers: 3 },
    ]);
    expect(await Layout.verify(layout)).toEqual([]);
    const index = JSON.parse(await readFile(join(layout, 'index.json'), 'utf8')) as unknown;
    expect(JSON.stringify(index)).toContain('gpp');
  });
});
