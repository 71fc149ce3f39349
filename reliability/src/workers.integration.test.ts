/**
 * Workers sharing layers through a real registry (Debian's docker-registry
 * on 127.0.0.1): `day11 build --cache-from REF --cache-to REF` in four
 * processes at once, each with its own cache, then a fifth that finds
 * everything built. The registry has no lock: two workers that miss the
 * same layer at the same moment would both build it, and claims
 * (`claim-<hash>`) make that rare. The runs are counted and duplicates
 * reported; the steps are reproducible (fixed mtimes), so a duplicate would
 * be the same layer, byte for byte.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { BuildEvent, StepEvent } from '@day11/build';
import { Exec, OverlayMarks } from '@day11/exec';
import { LayerDir, LayerMeta, treeDigest } from '@day11/layer';
import { DockerRegistry, haveDockerRegistry } from '@day11/testing';
import { day11 } from './fixtures/cli.js';
import { tempRoot } from './fixtures/layers.js';
import { makeRng } from './fixtures/random.js';

/** Real Debian package names, in an order where each can depend on earlier ones. */
const NAMES = [
  'gcc-12-base',
  'libc6',
  'libgcc-s1',
  'libstdc++6',
  'zlib1g',
  'libbz2-1.0',
  'liblzma5',
  'libzstd1',
  'libssl3',
  'libffi8',
  'libexpat1',
  'libuuid1',
  'libtinfo6',
  'libncursesw6',
  'libreadline8',
  'libsqlite3-0',
  'libdb5.3',
  'libgdbm6',
  'libmpdec3',
  'media-types',
  'libpython3.11-minimal',
  'python3.11-minimal',
  'libpython3.11-stdlib',
  'python3.11',
  'python3-minimal',
  'python3',
  'libpng16-16',
  'libfreetype6',
  'fonts-dejavu-core',
  'fontconfig-config',
  'libfontconfig1',
  'libjpeg62-turbo',
  'libtiff6',
  'liblcms2-2',
  'libwebp7',
  'libopenjp2-7',
  'python3-pil',
  'python3-numpy',
  'python3-dateutil',
  'python3-pyparsing',
  'python3-cycler',
  'python3-kiwisolver',
  'python3-matplotlib',
  'g++-12',
  'g++',
  'libxml2',
  'libxslt1.1',
  'python3-lxml',
] as const;

/** A step writes only under /opt/<id>/ and sets fixed times on what it wrote. */
function stepRun(id: string, deps: readonly string[], kib: number): string {
  const dir = `/opt/${id}`;
  return [
    'set -e',
    `mkdir -p '${dir}'`,
    `echo '${id}' > '${dir}/id'`,
    ...deps.map((d) => `cat '/opt/${d}/id' >> '${dir}/seen'`),
    `dd if=/dev/zero bs=1024 count=${kib} 2>/dev/null | tr '\\0' '${id.length % 10}' > '${dir}/data'`,
    `touch -d '2023-11-14 22:13:20' '${dir}'/* '${dir}' /opt /`,
  ].join('\n');
}

/** A seeded DAG over {@link NAMES}: each step on up to three earlier ones. */
function planOf(seed: number): { base: string; steps: unknown[] } {
  const rng = makeRng(seed);
  const steps = NAMES.map((id, i) => {
    const deps = new Set<string>();
    const want = i === 0 ? 0 : rng.int(1, 3);
    while (deps.size < Math.min(want, i)) deps.add(NAMES[rng.int(0, i - 1)]!);
    const list = [...deps].sort();
    return { id, deps: list, run: stepRun(id, list, rng.int(1, 256)) };
  });
  return { base: 'busybox', steps };
}

const isStep = (e: BuildEvent): e is StepEvent => e.type === 'step';
const ran = (events: BuildEvent[]): string[] =>
  events
    .filter(isStep)
    .filter((e) => e.status === 'running')
    .map((e) => e.id);

/**
 * The layers of a cache: full hash → digest of its files (names, modes,
 * times, contents, xattrs but overlayfs's bookkeeping, which a built layer
 * has and a pulled one does not).
 */
async function layersOf(osDir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const name of (await readdir(osDir)).filter((n) => LayerDir.isLayerName(n)).sort()) {
    const dir = join(osDir, name);
    const meta = await LayerMeta.load(dir);
    out.set(
      meta.hash ?? name,
      await treeDigest(join(dir, 'fs'), { xattr: (n) => !OverlayMarks.isBookkeepingXattr(n) }),
    );
  }
  return out;
}

async function tagsOf(host: string, repository: string): Promise<string[]> {
  const res = await fetch(`http://${host}/v2/${repository}/tags/list?n=10000`);
  expect(res.status).toBe(200);
  return ((await res.json()) as { tags: string[] }).tags;
}

/**
 * `day11 export` of `top` into a fresh layout: the digests of its layer
 * blobs, base first. (The image config's `created` is the newest layer's
 * creation time, which is the registry's only where the publish found the
 * layer there already: two workers that built it at the same moment each
 * keep their own.)
 */
async function exportedLayers(osDir: string, layout: string, top: string): Promise<string[]> {
  const r = await day11([
    'export',
    '--cache',
    osDir,
    '--oci',
    layout,
    '--tag',
    'top',
    top,
    '--json',
  ]);
  expect(r.code, r.stderr).toBe(0);
  return (JSON.parse(r.stdout) as { layers: { digest: string }[] }).layers.map((l) => l.digest);
}

describe.skipIf(!Exec.isRoot() || !haveDockerRegistry)('workers sharing a registry cache', () => {
  let work: string;
  let registry: DockerRegistry;
  const top = NAMES.at(-1)!;

  beforeAll(async () => {
    work = await tempRoot('workers');
    registry = await DockerRegistry.start(work);
  });

  afterAll(async () => {
    await registry?.stop();
    await rm(work, { recursive: true, force: true });
  });

  /** Runs `day11 build` in each cache at once; returns the events of each. */
  async function workers(
    plan: string,
    caches: readonly string[],
    extra: (i: number) => string[],
  ): Promise<BuildEvent[][]> {
    const results = await Promise.all(
      caches.map((cache, i) =>
        day11(['build', plan, '--cache', cache, '--jobs', '2', ...extra(i)], {
          json: true,
          timeoutMs: 600_000,
        }),
      ),
    );
    for (const r of results) {
      expect(r.code, r.stderr).toBe(0);
      // Reproducible steps: a duplicate build is the same blob, never a conflict.
      expect(r.stderr).not.toMatch(/warning/);
    }
    return results.map((r) => r.events);
  }

  it(
    'four workers on one plan and one repository: each layer once in the registry, the same caches and images; a fifth pulls everything',
    { timeout: 900_000 },
    async () => {
      const repository = 'ci/day11-cache';
      const ref = `${registry.host}/${repository}`;
      const plan = join(work, 'plan.json');
      await writeFile(plan, JSON.stringify(planOf(11)));
      const caches = [1, 2, 3, 4].map((k) => join(work, `worker-${k}`));
      for (const c of caches) await mkdir(c);

      const events = await workers(plan, caches, () => ['--cache-from', ref, '--cache-to', ref]);
      const runs = events.map(ran);
      const total = runs.reduce((n, r) => n + r.length, 0);
      const built = new Set(runs.flat());
      console.log(
        `4 workers, ${NAMES.length} steps: ${total} runs (${runs.map((r) => r.length).join(' + ')}), ` +
          `${total - built.size} duplicates; fetched ${events.map((e) => e.filter(isStep).filter((s) => s.status === 'fetched').length).join(' + ')}`,
      );
      expect(built.size).toBe(NAMES.length);

      // Every step and the base once under build-<hash>, every step's log under log-<hash>.
      const tags = await tagsOf(registry.host, repository);
      expect(tags.filter((t) => t.startsWith('build-'))).toHaveLength(NAMES.length + 1);
      expect(tags.filter((t) => t.startsWith('log-')).length).toBeGreaterThanOrEqual(NAMES.length);

      const trees = await Promise.all(caches.map(layersOf));
      expect(trees[0]!.size).toBe(NAMES.length + 1);
      for (const t of trees.slice(1)) expect([...t]).toEqual([...trees[0]!]);
      const exported = await Promise.all(
        caches.map((c, i) => exportedLayers(c, join(work, `oci-${i}`), top)),
      );
      for (const e of exported.slice(1)) expect(e).toEqual(exported[0]);

      // A fifth worker, started afterwards: nothing runs, everything is pulled.
      const fifth = join(work, 'worker-5');
      const [late] = await workers(plan, [fifth], () => ['--cache-from', ref]);
      expect(ran(late!)).toEqual([]);
      const summary = late!.find((e) => e.type === 'summary');
      expect(summary).toMatchObject({ built: 0, fetched: NAMES.length, failed: 0 });
      expect([...(await layersOf(fifth))]).toEqual([...trees[0]!]);
      expect(await exportedLayers(fifth, join(work, 'oci-5'), top)).toEqual(exported[0]);
    },
  );

  it(
    '--shard K/4: four workers split the plan; together they build every step; a fifth pulls everything',
    { timeout: 900_000 },
    async () => {
      const repository = 'ci/sharded';
      const ref = `${registry.host}/${repository}`;
      const plan = join(work, 'plan-sharded.json');
      await writeFile(plan, JSON.stringify(planOf(12)));
      const caches = [1, 2, 3, 4].map((k) => join(work, `shard-${k}`));
      for (const c of caches) await mkdir(c);

      const events = await workers(plan, caches, (i) => [
        '--cache-from',
        ref,
        '--cache-to',
        ref,
        '--shard',
        `${i + 1}/4`,
      ]);
      const runs = events.map(ran);
      const total = runs.reduce((n, r) => n + r.length, 0);
      const built = new Set(runs.flat());
      console.log(
        `4 sharded workers, ${NAMES.length} steps: ${total} runs (${runs.map((r) => r.length).join(' + ')}), ` +
          `${total - built.size} duplicates`,
      );
      expect(built.size).toBe(NAMES.length);
      // Every layer a shard built reached the registry (else the fifth would run it).
      const failedPublishes = events
        .flat()
        .filter((x) => x.type === 'publish' && (x as { status?: string }).status !== 'done');
      expect(failedPublishes).toEqual([]);
      // Each shard holds only the closure of its targets.
      for (const e of events) expect(e.filter(isStep).length).toBeLessThanOrEqual(NAMES.length * 3);

      const fifth = join(work, 'shard-5');
      const [late] = await workers(plan, [fifth], () => ['--cache-from', ref]);
      expect(ran(late!)).toEqual([]);
      expect(late!.find((e) => e.type === 'summary')).toMatchObject({
        built: 0,
        fetched: NAMES.length,
      });
      // What the fifth pulled is what each worker built or pulled.
      const all = await layersOf(fifth);
      for (const c of caches)
        for (const [hash, digest] of await layersOf(c)) expect(all.get(hash)).toBe(digest);
    },
  );

  it(
    'day11 push, pull, export --to docker://, import --image docker:// and a plan based on a registry image',
    { timeout: 600_000 },
    async () => {
      const ref = `${registry.host}/cmd/day11-cache`;
      const plan = join(work, 'plan-cmd.json');
      await writeFile(
        plan,
        JSON.stringify({ base: 'busybox', steps: planOf(13).steps.slice(0, 6) }),
      );
      const built = join(work, 'cmd-built');
      const b = await day11(['build', plan, '--cache', built], { json: true });
      expect(b.code, b.stderr).toBe(0);
      const top = b.events.filter(isStep).find((e) => e.id === NAMES[5])!;

      const push = await day11(['push', '--cache', built, '--to', ref, NAMES[5]]);
      expect(push.code, push.stderr).toBe(0);
      expect(push.stdout).toMatch(/published/);
      const again = await day11(['push', '--cache', built, '--to', ref, NAMES[5]]);
      expect(again.stdout).toMatch(/present +0 blobs uploaded/);

      const pulled = join(work, 'cmd-pulled');
      const pull = await day11(['pull', '--cache', pulled, '--from', ref, top.hash]);
      expect(pull.code, pull.stderr).toBe(0);
      expect((await layersOf(pulled)).get(top.hash)).toBe((await layersOf(built)).get(top.hash));
      const missing = await day11(['pull', '--cache', pulled, '--from', ref, 'f'.repeat(64)]);
      expect(missing.code).toBe(1);
      expect(missing.stdout).toMatch(/missing/);
      const bad = await day11(['pull', '--cache', pulled, '--from', ref, 'abc']);
      expect(bad.code).toBe(2);
      expect(bad.stderr).toMatch(/not a full 64-hex layer hash/);

      // Straight to a registry, blobs mounted from the cache repository.
      const image = `docker://${registry.host}/apps/top:1.0`;
      const exp = await day11(['export', '--cache', pulled, '--to', image, NAMES[5]]);
      expect(exp.code, exp.stderr).toBe(0);
      // Every layer blob is mounted from the cache repository; only the config goes up.
      const blobs = exp.stdout.trim().split('\n').slice(0, -1);
      for (const line of blobs.slice(0, -1)) expect(line).toMatch(/ mounted$/);
      const inspect = await Exec.run('skopeo', ['inspect', '--tls-verify=false', image]);
      expect((JSON.parse(inspect.stdout) as { Layers: string[] }).Layers).toHaveLength(
        blobs.length - 1,
      );

      // That image as the base of a plan, and imported by hand: the same base.
      const fresh = join(work, 'cmd-fresh');
      const onImage = join(work, 'plan-on-image.json');
      await writeFile(
        onImage,
        JSON.stringify({
          base: { image: image },
          steps: [{ id: 'probe', run: `test -s /opt/${NAMES[5]}/seen` }],
        }),
      );
      const built2 = await day11(['build', onImage, '--cache', fresh], { json: true });
      expect(built2.code, built2.stderr).toBe(0);
      const imp = await day11(['import', '--cache', fresh, '--image', image]);
      expect(imp.code, imp.stderr).toBe(0);
      expect(imp.stdout).toMatch(/oci-image@sha256:[0-9a-f]{64}.*already imported/);
    },
  );
});
