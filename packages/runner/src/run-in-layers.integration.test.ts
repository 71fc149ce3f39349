/**
 * runInLayers for real, as root: a busybox-static base imported with
 * `Import.fromDirectory`, layers built with runInLayers and committed with
 * `Commit.commit`, runc and crun, overlayfs through the new mount API.
 */
import { lstat, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { OciSpec, Runc } from '@day11/container';
import { Semaphore, Sys, type Day11Error } from '@day11/exec';
import { Commit, Hash, InUse, LayerDir, LayerMeta, type Base } from '@day11/layer';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RunnerCodes } from './errors.js';
import { CLEAN, busyboxBase, fileLayer, leftovers, meta, tempDir } from './fixtures/cache.js';
import { releaseIdle, runInLayers } from './run-in-layers.js';
import type { RunInLayersOptions } from './run.js';
import { PHASES } from './timing.js';

const RUNTIMES = ['runc', 'crun'] as const;

let osDir: string;
let base: Base;

beforeAll(async () => {
  // crun 1.8 refuses a hybrid cgroup layout whose cgroup2 still offers a controller.
  await Runc.prepareCrunCgroups();
  osDir = await tempDir('it');
  base = await busyboxBase(osDir);
});

afterAll(async () => {
  if (osDir) await rm(osDir, { recursive: true, force: true });
});

type Step = Awaited<ReturnType<typeof runInLayers>> & { out: string };

/** Runs `script` with `sh -c` over `deps` (nearest first), collecting its output. */
async function step(
  script: string,
  deps: readonly string[],
  extra: Partial<RunInLayersOptions> = {},
): Promise<Step> {
  let out = '';
  const spec = OciSpec.template(OciSpec.make({ args: ['sh', '-c', script] }));
  const r = await runInLayers({
    base,
    buildDirs: deps,
    spec,
    onOutput: (line) => (out += `${line}\n`),
    ...extra,
  });
  return { ...r, out };
}

/** Commits a step's upper as the layer of (its stack, script), recording the stack it ran over. */
async function commit(s: Step, script: string): Promise<string> {
  const hash = Hash.layerHash({
    baseHash: base.hash,
    depHashes: s.parentHashes,
    pkg: `${script}\n${Math.random()}`,
  });
  const { dir } = await Commit.commit({
    osDir,
    hash,
    upper: s.upper,
    meta: {
      ...meta({ base, parents: s.parentHashes, exitStatus: s.run.exitCode ?? -1 }),
      timing: s.timing,
    },
    log: s.out,
  });
  return dir;
}

async function layerNames(): Promise<string[]> {
  return (await readdir(osDir)).filter((n) => LayerDir.isLayerName(n)).sort();
}

describe.each(RUNTIMES)('a diamond DAG built with runInLayers + Commit.commit (%s)', (runtime) => {
  it('C sees A, B and base; deletions are whiteouts; rm -rf + mkdir is opaque; a failure commits nothing', async () => {
    const A = 'echo A > /a.txt && mkdir -p /opt/data/sub && echo a > /opt/data/sub/from-a';
    const a = await step(A, [], { runtime });
    expect(a.run).toMatchObject({ exitCode: 0, timedOut: false, aborted: false });
    const aDir = await commit(a, A);

    const B = 'echo B > /b.txt && cat /etc/hosts';
    const b = await step(B, [], { runtime });
    expect(b.run.exitCode).toBe(0);
    expect(b.out).toBe('127.0.0.1 localhost builder\n');
    // The runner's own hosts file, untouched by the step, is not part of its layer.
    await expect(lstat(join(b.upper, 'etc'))).rejects.toMatchObject({ code: 'ENOENT' });
    const bDir = await commit(b, B);

    const C = [
      'cat /a.txt /b.txt /etc/issue /opt/data/from-base /opt/data/sub/from-a > /c.txt',
      'rm /etc/issue',
      'rm -rf /opt/data && mkdir /opt/data && echo new > /opt/data/only',
    ].join(' && ');
    const before = await layerNames();
    const c = await step(C, [bDir, aDir], { runtime });
    expect(c.run.exitCode).toBe(0);
    // runInLayers itself records nothing: no layer.json, no new layer, no sidecar.
    expect(await readdir(c.upper)).not.toContain('layer.json');
    expect(await layerNames()).toEqual(before);
    expect(c.buildDirs).toEqual([bDir, aDir]);
    const cDir = await commit(c, C);
    expect((await LayerMeta.load(cDir)).parent_hashes).toEqual([
      (await LayerMeta.load(bDir)).hash,
      (await LayerMeta.load(aDir)).hash,
    ]);

    expect(await readFile(join(cDir, 'fs/c.txt'), 'utf8')).toBe('A\nB\nbusybox base\nbase\na\n');
    const whiteout = await lstat(join(cDir, 'fs/etc/issue'));
    expect(whiteout.isCharacterDevice() && whiteout.rdev === 0).toBe(true);
    expect(
      (await Sys.getXattr(join(cDir, 'fs/opt/data'), 'trusted.overlay.opaque'))?.toString(),
    ).toBe('y');
    expect(await readdir(join(cDir, 'fs/opt/data'))).toEqual(['only']);

    // D over C alone is refused: C was built on B and A, which C's view needs.
    const D = 'cat /c.txt; ls /opt/data; test -e /etc/issue || echo no-issue; exit 3';
    const incomplete = await step(D, [cDir], { runtime }).catch((e: unknown) => e);
    expect(incomplete).toMatchObject({ code: RunnerCodes.BAD_ARGUMENT });
    expect((incomplete as Error).message).toContain(
      `Invalid runInLayers option buildDirs: Not a stack its layers were built on: ${basename(cDir)} was built on ${basename(aDir)}, which is not in the list`,
    );
    expect((incomplete as Day11Error).hint).toMatch(/or pass deps/);
    // D over deps: [C]: C's recorded stack comes with it; it sees C's view, then fails.
    const layersBefore = await layerNames();
    const d = await step(D, [], { runtime, buildDirs: undefined, deps: [cDir] });
    expect(d.buildDirs).toEqual([cDir, bDir, aDir]);
    expect(d.run).toMatchObject({
      exitCode: 3,
      signal: undefined,
      timedOut: false,
      aborted: false,
    });
    expect(d.out).toBe('A\nB\nbusybox base\nbase\na\nonly\nno-issue\n');
    await rm(d.upper, { recursive: true });
    expect(await layerNames()).toEqual(layersBefore);

    // The leases linger for the next run (lingerMs), then go.
    expect(await InUse.isInUse(cDir)).toBe(true);
    await releaseIdle();
    for (const dir of [base.dir, aDir, bDir, cDir]) expect(await InUse.isInUse(dir)).toBe(false);
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });
});

describe('runInLayers', () => {
  it('times every phase, in order', async () => {
    const dep = await fileLayer({ osDir, base, files: { 'dep.txt': 'dep\n' } });
    const s = await step('cat /dep.txt', [dep]);
    expect(s.out).toBe('dep\n');
    expect(s.timing.map(([phase]) => phase)).toEqual([...PHASES]);
    const seconds = Object.fromEntries(s.timing);
    for (const phase of PHASES) expect(seconds[phase]).toBeGreaterThanOrEqual(0);
    expect(seconds['merge']).toBe(0); // two layers: nothing to merge
    expect(seconds['runc_run']).toBeGreaterThan(0);
    const parts = s.timing.filter(([p]) => p !== 'total').reduce((sum, [, t]) => sum + t, 0);
    expect(seconds['total']).toBeGreaterThanOrEqual(parts);
    await rm(s.upper, { recursive: true });
  });

  it('gives prepUpper the upper and the lowers, topmost first; what it writes is in the container', async () => {
    const dep = await fileLayer({ osDir, base, files: { 'dep.txt': 'dep\n' } });
    let seen: { upper: string; lowers: readonly string[] } | undefined;
    const s = await step('cat /seeded /etc/hosts', [dep], {
      prepUpper: async ({ upper, lowers }) => {
        seen = { upper, lowers };
        await writeFile(join(upper, 'seeded'), 'from prepUpper\n');
      },
      spec: OciSpec.template(
        OciSpec.make({ args: ['sh', '-c', 'cat /seeded /etc/hosts'], hostname: 'box' }),
      ),
    });
    expect(seen?.lowers).toEqual([join(dep, 'fs'), join(base.dir, 'fs')]);
    expect(s.out).toBe('from prepUpper\n127.0.0.1 localhost box\n');
    expect(await readFile(join(s.upper, 'seeded'), 'utf8')).toBe('from prepUpper\n');
    // Only what prepUpper and the step wrote: the runner's hosts file went back out.
    expect(await readdir(s.upper)).toEqual(['seeded']);
    await rm(s.upper, { recursive: true });
  });

  it("hands back an empty upper for a step that writes nothing, and keeps a step's own /etc changes", async () => {
    const empty = await step('true', []);
    expect(await readdir(empty.upper)).toEqual([]);
    await rm(empty.upper, { recursive: true });
    const edits = await step('echo "10.1.1.1 db" >> /etc/hosts && echo x > /etc/motd', []);
    expect(edits.run.exitCode).toBe(0);
    expect(await readFile(join(edits.upper, 'etc/hosts'), 'utf8')).toBe(
      '127.0.0.1 localhost builder\n10.1.1.1 db\n',
    );
    // /etc in the upper looks like the base's /etc, as a copy-up would make it.
    const [etc, baseEtc] = await Promise.all([
      lstat(join(edits.upper, 'etc')),
      lstat(join(base.dir, 'fs/etc')),
    ]);
    expect([etc.mode, etc.uid]).toEqual([baseEtc.mode, baseEtc.uid]);
    await rm(edits.upper, { recursive: true });
  });

  it('an exception in prepUpper leaves nothing, not even the upper', async () => {
    const err = await step('true', [], {
      prepUpper: () => {
        throw new Error('boom');
      },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: RunnerCodes.PREP_UPPER_FAILED, cause: { message: 'boom' } });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });

  it('a missing dependency layer is LAYER_NOT_FOUND, and leaves nothing', async () => {
    const missing = LayerDir.path({ osDir, hash: 'f'.repeat(64) });
    await expect(step('true', [missing])).rejects.toMatchObject({ code: 'LAYER_NOT_FOUND' });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });

  it.each(RUNTIMES)(
    'a container that cannot start is CONTAINER_RUNTIME_FAILED naming what to check, not a removed file (%s)',
    async (runtime) => {
      const spec = OciSpec.template(OciSpec.make({ args: ['/no/such/program'] }));
      const err = await runInLayers({ base, buildDirs: [], spec, runtime }).catch(
        (e: unknown) => e,
      );
      expect(err).toMatchObject({ code: 'CONTAINER_RUNTIME_FAILED', path: undefined });
      const { message, hint } = err as Day11Error;
      expect(message).toMatch(new RegExp(`^${runtime} could not start container day11-run-\\S+: `));
      expect(`${message} ${hint}`).not.toMatch(/config\.json|\.day11-tmp-/);
      expect(hint).toContain('"/no/such/program" must be in the stack\'s files');
      expect(await leftovers(osDir)).toEqual(CLEAN);
    },
  );

  it('an abort before the container starts rejects with RUNNER_ABORTED, leaving nothing', async () => {
    const ac = new AbortController();
    const err = await step('true', [], {
      signal: ac.signal,
      prepUpper: () => ac.abort(),
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: RunnerCodes.ABORTED });
    expect(await leftovers(osDir)).toEqual(CLEAN);
    ac.abort();
    await expect(step('true', [], { signal: ac.signal })).rejects.toMatchObject({
      code: RunnerCodes.ABORTED,
    });
  });

  it.each(RUNTIMES)('an abort or a timeout during the run is a result (%s)', async (runtime) => {
    const ac = new AbortController();
    const aborted = await step('echo ready; sleep 100', [], {
      runtime,
      signal: ac.signal,
      onOutput: (line) => line === 'ready' && ac.abort(),
    });
    expect(aborted.run).toMatchObject({ aborted: true, timedOut: false, exitCode: 137 });
    await rm(aborted.upper, { recursive: true });
    const timedOut = await step('sleep 100', [], { runtime, timeoutMs: 300 });
    expect(timedOut.run).toMatchObject({ aborted: false, timedOut: true, exitCode: 137 });
    expect(timedOut.run.durationMs).toBeLessThan(3000);
    await rm(timedOut.upper, { recursive: true });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });

  it('keeps the leases and the scratch directory for lingerMs, for the next run, then lets go', async () => {
    const dep = await fileLayer({ osDir, base, files: { 'dep.txt': 'dep\n' } });
    const temps = async () => (await readdir(osDir)).filter((n) => n.endsWith('-run'));
    const first = await step('true', [dep], { lingerMs: 300 });
    expect(await temps()).toHaveLength(1);
    expect(await InUse.isInUse(dep)).toBe(true);
    const [spare] = await temps();
    const second = await step('true', [dep], { lingerMs: 300 });
    expect(await temps()).toEqual([spare]); // reused, not made again
    expect(second.upper).not.toBe(first.upper);
    await new Promise((resolve) => setTimeout(resolve, 600));
    expect(await temps()).toEqual([]);
    expect(await InUse.isInUse(dep)).toBe(false);
    // lingerMs 0: nothing stays after the run.
    const third = await step('true', [dep], { lingerMs: 0 });
    expect(await temps()).toEqual([]);
    expect(await InUse.isInUse(dep)).toBe(false);
    for (const s of [first, second, third]) await rm(s.upper, { recursive: true });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });

  it('reads each layer.json once per lease: a next run over leased layers reads none', async () => {
    const low = await fileLayer({ osDir, base, files: { low: 'low\n' } });
    const lowHash = (await LayerMeta.load(low)).hash!;
    const high = await fileLayer({ osDir, base, files: { high: 'high\n' }, parents: [lowHash] });
    const first = await step('cat /low /high', [], {
      buildDirs: undefined,
      deps: [high],
      lingerMs: 60_000,
    });
    expect(first.out).toBe('low\nhigh\n');
    expect(first.parentHashes).toEqual([(await LayerMeta.load(high)).hash, lowHash]);
    // While the leases linger, the records are known: hide them and run again.
    const hidden = (dir: string) => [LayerMeta.file(dir), `${LayerMeta.file(dir)}.hidden`] as const;
    for (const dir of [low, high]) await rename(...hidden(dir));
    try {
      const second = await step('cat /low /high', [], {
        buildDirs: undefined,
        deps: [high],
        lingerMs: 60_000,
      });
      expect(second.out).toBe('low\nhigh\n');
      const third = await step('cat /low /high', [high, low], { lingerMs: 60_000 });
      expect(third.parentHashes).toEqual(first.parentHashes);
      for (const s of [second, third]) await rm(s.upper, { recursive: true });
      // Once the leases are gone, so is what was known.
      await releaseIdle();
      await expect(step('true', [high, low])).rejects.toMatchObject({ code: 'LAYER_NOT_FOUND' });
    } finally {
      for (const dir of [low, high])
        await rename(...([...hidden(dir)].reverse() as [string, string]));
    }
    await rm(first.upper, { recursive: true });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });

  it('writes the output to logFile too', async () => {
    const logFile = join(osDir, 'run.log');
    const s = await step('echo one; echo two >&2', [], { logFile });
    expect((await readFile(logFile, 'utf8')).split('\n').sort()).toEqual(['', 'one', 'two']);
    await rm(s.upper, { recursive: true });
    await rm(logFile);
  });

  it('8 runs in parallel over the same dependencies all succeed, with no shared paths', async () => {
    const deps = await Promise.all(
      [1, 2, 3].map((n) => fileLayer({ osDir, base, files: { [`dep${n}`]: `${n}\n` } })),
    );
    const runs = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        step(`cat /dep1 /dep2 /dep3 && echo ${i} > /mine && ls /`, deps, {
          prepUpper: async ({ upper }) => writeFile(join(upper, 'seed'), `${i}`),
        }),
      ),
    );
    for (const [i, r] of runs.entries()) {
      expect(r.run.exitCode).toBe(0);
      expect(r.out.startsWith('1\n2\n3\n')).toBe(true);
      expect(await readFile(join(r.upper, 'mine'), 'utf8')).toBe(`${i}\n`);
      expect(await readFile(join(r.upper, 'seed'), 'utf8')).toBe(`${i}`);
    }
    expect(new Set(runs.map((r) => r.upper)).size).toBe(8);
    // One lease per layer for all eight runs, shared, released once.
    for (const dir of [...deps, base.dir]) expect(await InUse.holders(dir)).toHaveLength(1);
    await releaseIdle();
    for (const dir of [...deps, base.dir]) expect(await InUse.holders(dir)).toEqual([]);
    for (const r of runs) await rm(r.upper, { recursive: true });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  });

  it.each(RUNTIMES)(
    'a containerSlot of one runs one container at a time; a run that fails or is aborted gives it back (%s)',
    async (runtime) => {
      const slot = new Semaphore(1);
      let inside = 0;
      let most = 0;
      const containerSlot = async (): Promise<() => void> => {
        const release = await slot.acquire();
        most = Math.max(most, ++inside);
        return () => {
          inside--;
          release();
        };
      };
      const runs = await Promise.all(
        ['sleep 0.2', 'exit 3', 'sleep 0.2'].map((script) =>
          step(script, [], { runtime, containerSlot }),
        ),
      );
      expect(most).toBe(1);
      expect(runs.map((r) => r.run.exitCode).sort()).toEqual([0, 0, 3]);
      // The last to get the slot waited for at least one sleep.
      const waited = runs.map((r) => Object.fromEntries(r.timing)['slot_wait']!);
      expect(Math.max(...waited)).toBeGreaterThan(0.15);
      for (const r of runs) await rm(r.upper, { recursive: true });

      // The runtime cannot start the container: the slot comes back.
      const missing = OciSpec.template(OciSpec.make({ args: ['/no/such/program'] }));
      await expect(
        runInLayers({ base, buildDirs: [], spec: missing, runtime, containerSlot }),
      ).rejects.toBeDefined();
      expect(inside).toBe(0);

      // Aborted while it waits for the slot: RUNNER_ABORTED at once (the slot
      // still held), nothing left; the slot granted later is given back.
      const holder = await slot.acquire();
      const ac = new AbortController();
      const waiting = step('true', [], { runtime, signal: ac.signal, containerSlot });
      await new Promise((resolve) => setTimeout(resolve, 300));
      ac.abort();
      await expect(waiting).rejects.toMatchObject({ code: RunnerCodes.ABORTED });
      holder();
      (await slot.acquire())();
      expect(inside).toBe(0);
      await releaseIdle();
      expect(await leftovers(osDir)).toEqual(CLEAN);
    },
  );

  it('refuses a containerSlot that is not a function', async () => {
    await expect(
      step('true', [], { containerSlot: 'two' as unknown as RunInLayersOptions['containerSlot'] }),
    ).rejects.toMatchObject({
      code: RunnerCodes.BAD_ARGUMENT,
      message: /containerSlot must be a function/,
    });
  });

  it('a stack deeper than the kernel takes: the deepest layers are merged, the view is the same', async () => {
    const depth = 520;
    const dirs: string[] = [];
    // Built bottom-up; layer 3 deletes layer 1's file (both end up merged),
    // the topmost deletes layer 0's (kept separate over the merged lower).
    for (let n = 0; n < depth; n++) {
      const files: Record<string, string> = { [`l/${n}`]: `${n}\n` };
      if (n === 0) files['l/gone-top'] = 'x';
      dirs.unshift(await fileLayer({ osDir, base, files }));
    }
    const whiteout = (dir: string, name: string) =>
      Sys.mknod(join(dir, 'fs/l', name), Sys.S_IFCHR, 0, 0);
    whiteout(dirs[0]!, 'gone-top');
    whiteout(dirs[depth - 1 - 3]!, '1');
    const s = await step(
      'ls /l | wc -l; cat /l/0 /l/519; test -e /l/1 || echo 1-gone; test -e /l/gone-top || echo top-gone',
      dirs,
    );
    expect(s.run.exitCode).toBe(0);
    expect(s.out).toBe(`${depth - 1}\n0\n519\n1-gone\ntop-gone\n`);
    expect(Object.fromEntries(s.timing)['merge']).toBeGreaterThan(0);
    await rm(s.upper, { recursive: true });
    expect(await leftovers(osDir)).toEqual(CLEAN);
  }, 180_000);
});
