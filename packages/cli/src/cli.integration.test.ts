/**
 * The built `day11` binary, spawned as a user would: builds, failures with
 * failed_dep, gc, export + umoci unpack, help and error output.
 */
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Exec, TempName } from '@day11/exec';
import { InUse } from '@day11/layer';

const BIN = resolve(import.meta.dirname, '../dist/bin/day11.js');
let work: string;
let cache: string;

async function day11(...args: string[]) {
  return Exec.run(process.execPath, [BIN, ...args], { allowNonZeroExit: true, timeoutMs: 120_000 });
}

interface LsLine {
  name: string;
  meta: { exit_status: number; failed_dep: string | null } | null;
  sidecars: string[];
}

async function ls(): Promise<LsLine[]> {
  const { stdout } = await day11('layers', 'ls', '--cache', cache, '--json');
  return stdout
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as LsLine);
}

const PLAN = {
  base: 'busybox',
  steps: [
    { id: 'lib', run: 'mkdir -p /opt/lib && echo lib > /opt/lib/v' },
    { id: 'broken', deps: ['lib'], run: 'echo about to fail; exit 3' },
    { id: 'app', deps: ['broken'], run: 'echo never' },
    { id: 'tool', deps: ['lib'], run: 'cat /opt/lib/v > /opt/tool && rm /etc/passwd' },
  ],
};

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-cli-'));
  cache = join(work, 'cache');
  await writeFile(join(work, 'plan.json'), JSON.stringify(PLAN));
});

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('day11 build', () => {
  it('builds, records the failure and its dependents with failed_dep, and exits 1', async () => {
    const r = await day11('build', join(work, 'plan.json'), '--cache', cache, '--jobs', '2');
    expect(r.exitCode).toBe(1);
    expect(r.stdout).toMatch(/failed\s+broken.*exit 3/);
    expect(r.stdout).toMatch(/skipped\s+app.*dependency broken failed/);
    expect(r.stdout).toMatch(/Summary: 2 built, 0 cached, 1 failed, 1 skipped/);
    const layers = await ls();
    const byStep = new Map<number | string | null, LsLine[]>();
    for (const l of layers)
      byStep.set(l.meta?.failed_dep ?? l.meta?.exit_status ?? null, [
        ...(byStep.get(l.meta?.failed_dep ?? l.meta?.exit_status ?? null) ?? []),
        l,
      ]);
    expect(byStep.get(3)).toHaveLength(1); // broken, with its exit status
    expect(byStep.get('broken')).toHaveLength(1); // app, not run
    expect(byStep.get(0)).toHaveLength(3); // base, lib, tool
    const broken = byStep.get(3)![0]!;
    expect(await readFile(join(cache, broken.name, 'layer.log'), 'utf8')).toContain(
      'about to fail',
    );
  });

  it('finds everything cached the second time, failures included', async () => {
    const r = await day11('build', join(work, 'plan.json'), '--cache', cache, '--json');
    const events = r.stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { type: string; status?: string; cached?: number });
    const summary = events.find((e) => e.type === 'summary')!;
    expect(summary).toMatchObject({ built: 0, cached: 2, failed: 1, skipped: 1 });
    expect(events.filter((e) => e.status === 'running')).toEqual([]);
  });

  it('explains a bad plan in one line, its hint on the next, with no stack trace', async () => {
    await writeFile(
      join(work, 'cycle.json'),
      JSON.stringify({ base: 'busybox', steps: [{ id: 'a', deps: ['a'], run: 'x' }] }),
    );
    const r = await day11('build', join(work, 'cycle.json'), '--cache', cache);
    expect(r.exitCode).toBe(1);
    const [message, hint, ...rest] = r.stderr.trim().split('\n');
    expect(message).toMatch(/^day11: .*step "a" depends on itself/);
    expect(hint).toMatch(/^hint: Fix the plan file/);
    expect(rest).toEqual([]);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('day11 export', () => {
  it('exports layers as an image that umoci unpacks to what the build saw', async () => {
    const tool = (await ls()).find(
      (l) => l.sidecars.includes('step.json') && l.meta?.exit_status === 0 && !l.meta.failed_dep,
    );
    expect(tool).toBeDefined();
    const steps = await Promise.all(
      (await ls())
        .filter((l) => l.sidecars.includes('step.json'))
        .map(async (l) => ({
          l,
          step: JSON.parse(await readFile(join(cache, l.name, 'step.json'), 'utf8')) as {
            id: string;
          },
        })),
    );
    const lib = steps.find((s) => s.step.id === 'lib')!.l.name;
    const toolLayer = steps.find((s) => s.step.id === 'tool')!.l.name;
    const layout = join(work, 'oci');
    const exportAs = (tag: string, ...rest: string[]) =>
      day11('export', '--cache', cache, '--oci', layout, '--tag', tag, ...rest);
    const r = await exportAs('tool', lib, toolLayer);
    expect(r.exitCode).toBe(0);
    const bundle = join(work, 'bundle');
    await Exec.run('umoci', ['unpack', '--image', `${layout}:tool`, bundle]);
    expect(await readFile(join(bundle, 'rootfs/opt/tool'), 'utf8')).toBe('lib\n');
    await expect(readFile(join(bundle, 'rootfs/etc/passwd'))).rejects.toThrow(/ENOENT/);
    expect(await readFile(join(bundle, 'rootfs/etc/group'), 'utf8')).toContain('root');

    // With a budget of 2, lib and tool become one merged layer; the image unpacks the same.
    const squashed = await exportAs('tool-squashed', '--max-layers', '2', lib, toolLayer);
    expect(squashed.stdout).toMatch(/\(2 layers merged\)/);
    const inspect = await Exec.run('skopeo', ['inspect', `oci:${layout}:tool-squashed`]);
    expect((JSON.parse(inspect.stdout) as { Layers: string[] }).Layers).toHaveLength(2);
    const again = join(work, 'bundle-squashed');
    await Exec.run('umoci', ['unpack', '--image', `${layout}:tool-squashed`, again]);
    expect(await readFile(join(again, 'rootfs/opt/tool'), 'utf8')).toBe('lib\n');
    await expect(readFile(join(again, 'rootfs/etc/passwd'))).rejects.toThrow(/ENOENT/);

    // Another gzip level compresses again (the cache is keyed by level) and unpacks the same.
    const stored = await exportAs('tool-stored', '--gzip-level', '0', '--json', lib, toolLayer);
    expect(stored.exitCode).toBe(0);
    const storedLayers = (
      JSON.parse(stored.stdout) as { layers: { cached: boolean; size: number }[] }
    ).layers;
    expect(storedLayers.map((l) => l.cached)).toEqual(storedLayers.map(() => false));
    const level0 = join(work, 'bundle-level0');
    await Exec.run('umoci', ['unpack', '--image', `${layout}:tool-stored`, level0]);
    expect(await readFile(join(level0, 'rootfs/opt/tool'), 'utf8')).toBe('lib\n');
    const bad = await exportAs('x', '--gzip-level', '10', lib);
    expect(bad.exitCode).toBe(2);
    expect(bad.stderr).toMatch(/--gzip-level must be an integer from 0 to 9/);
  });
});

describe('day11 layers rm', () => {
  it("a damaged layer's hint is a day11 command; running it removes the layer and a build makes it again", async () => {
    const { stdout } = await day11('layers', 'ls', '--cache', cache, '--json');
    const tool = stdout
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as LsLine & { step: { id: string } | null })
      .find((l) => l.step?.id === 'tool')!;
    await writeFile(join(cache, tool.name, 'layer.json'), '{ torn');
    const shown = await day11('layers', 'show', '--cache', cache, tool.name);
    expect(shown.exitCode).toBe(1);
    const hint = /hint: .*`(day11 layers rm [^`]+)`/.exec(shown.stderr)?.[1];
    expect(hint, shown.stderr).toBe(`day11 layers rm --cache ${cache} ${tool.name}`);
    const removed = await day11(...hint!.split(' ').slice(1));
    expect(removed.stdout).toBe(`removed ${tool.name}\n`);
    expect((await ls()).map((l) => l.name)).not.toContain(tool.name);
    const typo = await day11('layers', 'rm', '--cache', cache, 'build-000000000000');
    expect(typo.stderr).toMatch(/No layer build-000000000000/);
    const again = await day11('build', join(work, 'plan.json'), '--cache', cache);
    expect(again.stdout).toMatch(/done +tool .*\n[^]*Summary: 1 built, 1 cached, 1 failed/);
    expect((await ls()).map((l) => l.name)).toContain(tool.name);
  });
});

describe('day11 layers gc', () => {
  it('deletes nothing on a dry run, then collects for real', async () => {
    const before = await ls();
    const dry = await day11('layers', 'gc', '--cache', cache, '--keep-bytes', '0', '--dry-run');
    expect(dry.exitCode).toBe(0);
    expect(dry.stdout).toContain(`Dry run: would delete ${before.length} layers`);
    expect(await ls()).toEqual(before);
    const real = await day11('layers', 'gc', '--cache', cache, '--keep-bytes', '0');
    expect(real.exitCode).toBe(0);
    expect(await ls()).toEqual([]);
  });

  it('refuses gc without a limit, and absurd values', async () => {
    expect((await day11('layers', 'gc', '--cache', cache)).stderr).toMatch(
      /--before DAYS and\/or --keep-bytes/,
    );
    expect((await day11('layers', 'gc', '--cache', cache, '--before', '-3')).exitCode).toBe(2);
    expect((await day11('layers', 'ls', '--cache', join(work, 'nope'))).stderr).toMatch(
      /No cache directory at/,
    );
  });
});

describe('day11 demo', () => {
  it('builds, exports, validates and runs the demo; the second run is all cache hits', async () => {
    const demoCache = join(work, 'demo');
    const first = await day11('demo', '--cache', demoCache);
    expect(first.exitCode, first.stderr).toBe(0);
    expect(first.stdout).toMatch(/Summary: 5 built, 0 cached, 0 failed/);
    expect(first.stdout).toContain('the image shows what the build saw');
    const second = await day11('demo', '--cache', demoCache);
    expect(second.exitCode, second.stderr).toBe(0);
    expect(second.stdout).toMatch(/Summary: 0 built, 5 cached, 0 failed/);
    expect(second.stdout).toContain('Every step was a cache hit');
  });
});

describe('day11 run, import, recover', () => {
  it('runs a command over layers and throws the upper away unless --commit', async () => {
    const runCache = join(work, 'run-cache');
    const r = await day11(
      'run',
      '--cache',
      runCache,
      '--',
      '/bin/sh',
      '-c',
      'echo out; echo err >&2; touch /made; exit 4',
    );
    expect(r).toMatchObject({ exitCode: 4, stdout: 'out\n', stderr: 'err\n' });
    const before = await day11('layers', 'ls', '--cache', runCache, '--json');
    expect(before.stdout.trim().split('\n')).toHaveLength(1); // the busybox base only
    const committed = await day11(
      'run',
      '--cache',
      runCache,
      '--commit',
      '--',
      '/bin/sh',
      '-c',
      'echo kept > /kept',
    );
    expect(committed.exitCode).toBe(0);
    const name = /committed .*(build-[0-9a-f]{12})/.exec(committed.stderr)![1]!;
    const shown = await day11('run', '--cache', runCache, '--layer', name, '--', 'cat', '/kept');
    expect(shown.stdout).toBe('kept\n');
    // `ls` says what made each layer: the base's image (from base.json), the run.
    const listed = (await day11('layers', 'ls', '--cache', runCache)).stdout;
    expect(listed).toMatch(new RegExp(`${name}  [0-9: -]+  ok +day11 run --commit\n`));
    expect(listed).toMatch(/ ok +base [^?\s]+\n/);
  });

  it('imports a rootfs tarball, and refuses a hostile one naming the entry', async () => {
    const importCache = join(work, 'import-cache');
    const rootfs = join(work, 'rootfs');
    await Exec.run('sh', [
      '-c',
      `mkdir -p ${rootfs}/bin && cp /bin/busybox ${rootfs}/bin/ && ln -s busybox ${rootfs}/bin/sh`,
    ]);
    await Exec.run('tar', ['-C', rootfs, '--numeric-owner', '-czf', join(work, 'rootfs.tgz'), '.']);
    const ok = await day11(
      'import',
      '--cache',
      importCache,
      '--image',
      'mini:1',
      '--tarball',
      join(work, 'rootfs.tgz'),
    );
    expect(ok.exitCode, ok.stderr).toBe(0);
    expect(ok.stdout).toMatch(/^build-[0-9a-f]{12} {2}mini:1/);
    await Exec.run('sh', [
      '-c',
      `cd ${work} && mkdir -p evil && echo x > evil/x && tar -cf hostile.tar --absolute-names /etc/hostname evil/x`,
    ]);
    const bad = await day11(
      'import',
      '--cache',
      importCache,
      '--image',
      'evil:1',
      '--tarball',
      join(work, 'hostile.tar'),
    );
    expect(bad.exitCode).toBe(1);
    const [message, ...rest] = bad.stderr.trim().split('\n');
    expect(message).toMatch(/hostile\.tar/);
    expect(message).toMatch(/\/etc\/hostname/);
    expect(rest.length).toBeLessThanOrEqual(1);
    expect(rest.every((line) => line.startsWith('hint: '))).toBe(true);
  });

  it('recovers a cache', async () => {
    const r = await day11('recover', '--cache', cache, '--json');
    expect(r.exitCode, r.stderr).toBe(0);
    expect(JSON.parse(r.stdout)).toBeTypeOf('object');
  });

  it('puts back, and says so, a layer a killed gc set aside while a live process uses it', async () => {
    const own = join(work, 'aside-cache');
    const made = await day11('run', '--cache', own, '--commit', '--', 'true');
    expect(made.exitCode, made.stderr).toBe(0);
    const name = /committed .*(build-[0-9a-f]{12})/.exec(made.stderr)![1]!;
    const dir = join(own, name);
    const lease = await InUse.acquire({ osDir: own, dirs: [dir] });
    const aside = join(own, `${TempName.PREFIX}4999999-0a0b0c0d-${name}`); // a dead gc's rename
    try {
      await rename(dir, aside);
      const r = await day11('recover', '--cache', own);
      expect(r.exitCode, r.stderr).toBe(0);
      expect(r.stdout).toContain(
        '1 layers set aside by a killed gc put back (a live process uses them)',
      );
      expect(r.stdout).toContain(dir);
      expect(existsSync(join(dir, 'layer.json'))).toBe(true);
      expect(existsSync(aside)).toBe(false);
    } finally {
      if (existsSync(aside)) await rename(aside, dir);
      await lease.release();
    }
  });

  it('says clearly that it needs root, with no stack trace', async () => {
    await chmod(work, 0o755);
    const r = await Exec.run(
      'runuser',
      [
        '-u',
        'nobody',
        '--',
        process.execPath,
        BIN,
        'build',
        join(work, 'plan.json'),
        '--cache',
        join(tmpdir(), 'day11-nobody'),
      ],
      {
        allowNonZeroExit: true,
        cwd: '/',
      },
    );
    expect(r.exitCode).toBe(1);
    expect(r.stderr).toMatch(/needs root/);
    expect(r.stderr).not.toMatch(/\n\s+at /);
  });
});

describe('day11 --help', () => {
  it.each(['build', 'run', 'layers', 'export', 'import', 'recover', 'demo'])(
    'documents %s with an example',
    async (cmd) => {
      const r = await day11(cmd, '--help');
      expect(r.exitCode).toBe(0);
      expect(r.stdout).toMatch(/^Usage: day11 /);
      expect(r.stdout).toContain('Example');
    },
  );

  it('lists every command', async () => {
    const r = await day11('--help');
    for (const cmd of ['build', 'run', 'layers', 'export', 'import', 'recover', 'demo'])
      expect(r.stdout).toContain(`  ${cmd}`);
    expect((await day11('frobnicate')).exitCode).toBe(2);
  });
});
