/**
 * Benchmark: `@day11/registry` against Debian's docker-registry on loopback.
 *
 * - publish and pull of a ~300 MB stack (five layers copied from this
 *   machine's /usr, blobs already cached, as after a build) against
 *   `skopeo copy` of the same image, from the same blobs, to and from a
 *   registry of its own (a fresh one per round for each variant, so nothing
 *   is known there yet and skopeo's blob cache cannot turn uploads into
 *   mounts); target: at least skopeo's speed (time ratio ≤ 1). Pulling also
 *   extracts and commits the layers, which `skopeo copy` to a layout does
 *   not: a reference row adds `umoci raw unpack` to skopeo's copy.
 * - lookup of a 1,000-step plan (50 chains of 20 real published layers),
 *   cold (nothing published) and warm (all published), in requests and
 *   time, against one HEAD per step; target warm: at most 2 requests per
 *   target (the 50 chain tops). Also the per-hash path (tag list off).
 * - no-op republish of those 1,000 layers by a fresh cache object: target ≤ 2 s.
 * - peak RSS of a process pulling (and one publishing) a layer holding one
 *   2 GiB incompressible file: target < 150 MB.
 *
 * Rounds run the variants in a seeded shuffled order; medians are compared.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, writeSync } from 'node:fs';
import { mkdir, mkdtemp, open, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Exec, mapLimit } from '@day11/exec';
import { Hash, LayerDir, LayerMeta, Sidecar } from '@day11/layer';
import { exportImage } from '@day11/oci-export';
import { RegistryCache, RegistryClient, buildTag, lookupLayers } from '@day11/registry';
import { DockerRegistry } from '@day11/testing';
import { median, peakRssKiB, seeded, shuffled, toMarkdown, type BenchRow } from './table.js';

const ROUNDS = 5;
/** Rounds run first and not counted: every variant's first run pays for cold caches (and ours for the JIT). */
const WARMUP_ROUNDS = 1;
const LOOKUP_ROUNDS = 5;
const TREES = [
  '/usr/include',
  '/usr/lib/python3.11',
  '/usr/libexec',
  '/usr/lib/python3',
  '/usr/share/perl',
];
const CHAINS = 50;
const CHAIN_LENGTH = 20;
const BIG_FILE_BYTES = 2 * 1024 ** 3;
const REPO = 'bench/day11-cache';

interface Layer {
  hash: string;
  dir: string;
}

/** A committed-looking layer in `osDir` built on `below` (bottom to top; the first is the base). */
async function makeLayer(
  osDir: string,
  o: { key: string; below: readonly Layer[]; fill: (fs: string) => Promise<void> },
): Promise<Layer> {
  const base = o.below[0];
  const hash = base
    ? Hash.layerHash({
        baseHash: base.hash,
        depHashes: o.below.slice(1).map((l) => l.hash),
        pkg: o.key,
      })
    : Hash.baseHash({ image: o.key });
  const dir = LayerDir.path({ osDir, hash });
  await mkdir(join(dir, 'fs'), { recursive: true });
  await o.fill(join(dir, 'fs'));
  await writeFile(join(dir, 'layer.log'), `built ${o.key}\n`);
  if (!base)
    await Sidecar.write(dir, 'base.json', { image: o.key, source: o.key, kind: 'directory' });
  await LayerMeta.save(dir, {
    hash,
    exit_status: 0,
    parent_hashes: o.below
      .slice(1)
      .map((l) => l.hash)
      .reverse(),
    uid: 0,
    gid: 0,
    base_hash: base?.hash ?? hash,
    disk_usage: 0,
    timing: [],
    failed_dep: null,
    created_at: '2025-01-02T03:04:05.000Z',
  });
  return { hash, dir };
}

async function time(fn: () => Promise<unknown>): Promise<number> {
  await Exec.run('sync');
  const started = performance.now();
  await fn();
  return performance.now() - started;
}

const skopeo = (from: string, to: string) =>
  Exec.run('skopeo', [
    'copy',
    '--quiet',
    '--src-tls-verify=false',
    '--dest-tls-verify=false',
    from,
    to,
  ]);

// ------------------------------------------------------------- stack: MB/s

async function stackRows(work: string): Promise<BenchRow[]> {
  const osDir = join(work, 'stack-cache');
  const layers: Layer[] = [];
  for (const tree of TREES.filter((t) => existsSync(t))) {
    layers.push(
      await makeLayer(osDir, {
        key: `bench-stack:${tree}`,
        below: layers,
        fill: (fs) => Exec.run('cp', ['-a', `${tree}/.`, fs]).then(() => undefined),
      }),
    );
  }
  const top = layers.at(-1)!;
  // The blobs are cached (as after a build) and laid out for skopeo.
  const layout = join(work, 'stack-layout');
  const [base, ...rest] = layers as [Layer, ...Layer[]];
  const exported = await exportImage({
    layout,
    tag: 'stack',
    base: { hash: base.hash, dir: base.dir, image: `bench-stack:${TREES[0]}` },
    layers: rest.map((l) => l.dir),
  });
  const mb = exported.layers.reduce((n, l) => n + l.size, 0) / 1e6;

  const samples = {
    pubOurs: [] as number[],
    pubSkopeo: [] as number[],
    pullOurs: [] as number[],
    pullTransfer: [] as number[],
    pullSkopeo: [] as number[],
    pullUmoci: [] as number[],
  };
  const blobs = exported.layers.map((l) => ({ digest: l.digest, size: l.size }));
  const random = seeded(20261201);
  for (let round = 0; round < WARMUP_ROUNDS + ROUNDS; round++) {
    if (round === WARMUP_ROUNDS) for (const list of Object.values(samples)) list.length = 0;
    const ours = await DockerRegistry.start(work);
    const theirs = await DockerRegistry.start(work);
    try {
      const publishes = {
        ours: async () => {
          // A fresh registry may reuse an old one's port: forget what earlier rounds published.
          await Promise.all(layers.map((l) => rm(join(l.dir, 'registry.json'), { force: true })));
          const cache = new RegistryCache({ ref: `${ours.host}/${REPO}` });
          samples.pubOurs.push(await time(() => cache.publish({ hash: top.hash, osDir }, {})));
          await cache.close();
        },
        skopeo: async () => {
          samples.pubSkopeo.push(
            await time(() =>
              skopeo(`oci:${layout}:stack`, `docker://${theirs.host}/${REPO}:stack`),
            ),
          );
        },
      };
      for (const variant of shuffled(Object.values(publishes), random)) await variant();
      const pulls = {
        ours: async () => {
          const dest = await mkdtemp(join(work, 'pull-'));
          const cache = new RegistryCache({ ref: `${ours.host}/${REPO}` });
          samples.pullOurs.push(await time(() => cache.fetch(top.hash, { osDir: dest })));
          await cache.close();
          await rm(dest, { recursive: true });
        },
        transfer: async () => {
          const dest = await mkdtemp(join(work, 'transfer-'));
          const client = new RegistryClient({ registry: ours.host });
          samples.pullTransfer.push(
            await time(() =>
              mapLimit(blobs, 8, async (b) => {
                const file = await open(join(dest, b.digest.slice(7)), 'wx');
                try {
                  await client.blobTo(REPO, b, (piece) => {
                    for (let at = 0; at < piece.length;) at += writeSync(file.fd, piece, at);
                  });
                  await file.sync();
                } finally {
                  await file.close();
                }
              }),
            ),
          );
          client.close();
          await rm(dest, { recursive: true });
        },
        skopeo: async () => {
          const dest = await mkdtemp(join(work, 'skopeo-'));
          samples.pullSkopeo.push(
            await time(() => skopeo(`docker://${theirs.host}/${REPO}:stack`, `oci:${dest}:stack`)),
          );
          await rm(dest, { recursive: true });
        },
        umoci: async () => {
          const dest = await mkdtemp(join(work, 'umoci-'));
          samples.pullUmoci.push(
            await time(async () => {
              await skopeo(`docker://${theirs.host}/${REPO}:stack`, `oci:${dest}/layout:stack`);
              await Exec.run('umoci', [
                'raw',
                'unpack',
                '--image',
                `${dest}/layout:stack`,
                `${dest}/rootfs`,
              ]);
            }),
          );
          await rm(dest, { recursive: true });
        },
      };
      for (const variant of shuffled(Object.values(pulls), random)) await variant();
    } finally {
      await ours.stop();
      await theirs.stop();
    }
  }
  const rate = (ms: number) => `${(mb / (ms / 1000)).toFixed(0)} MB/s`;
  const m = Object.fromEntries(Object.entries(samples).map(([k, v]) => [k, median(v)])) as Record<
    keyof typeof samples,
    number
  >;
  return [
    {
      name: `publish, ${layers.length}-layer stack, ${mb.toFixed(0)} MB of blobs (${rate(m.pubOurs)})`,
      value: m.pubOurs,
      baselineName: `skopeo copy oci: → docker:// (${rate(m.pubSkopeo)})`,
      baseline: m.pubSkopeo,
      target: 1,
    },
    {
      // Reference only: skopeo's copy to a layout leaves the blobs compressed; the next rows compare like with like.
      name: `pull + extract + commit, same stack (${rate(m.pullOurs)})`,
      value: m.pullOurs,
      baselineName: `skopeo copy docker:// → oci:, which does not extract (${rate(m.pullSkopeo)})`,
      baseline: m.pullSkopeo,
    },
    {
      name: `pull, transfer only: blobs verified to disk and synced, 8 at once (${rate(m.pullTransfer)})`,
      value: m.pullTransfer,
      baselineName: `skopeo copy docker:// → oci: (${rate(m.pullSkopeo)})`,
      baseline: m.pullSkopeo,
      target: 1,
    },
    {
      name: 'pull + extract + commit, same stack',
      value: m.pullOurs,
      baselineName: `skopeo copy + umoci raw unpack (${rate(m.pullUmoci)})`,
      baseline: m.pullUmoci,
      target: 1,
    },
  ];
}

// ----------------------------------------------- 1,000 layers: lookup, no-op

interface Plan {
  osDir: string;
  /** Targets first: the chain tops, then the rest top-down. */
  hashes: string[];
  targets: number;
}

async function makePlan(work: string): Promise<Plan> {
  const osDir = join(work, 'plan-cache');
  const base = await makeLayer(osDir, {
    key: 'bench-plan-base',
    below: [],
    fill: (fs) => writeFile(join(fs, 'base'), 'base\n'),
  });
  const chains: Layer[][] = [];
  for (let c = 0; c < CHAINS; c++) {
    const chain: Layer[] = [];
    for (let i = 0; i < CHAIN_LENGTH; i++) {
      chain.push(
        await makeLayer(osDir, {
          key: `pkg-${c}.${i}`,
          below: [base, ...chain],
          fill: async (fs) => {
            await mkdir(join(fs, 'opt', `pkg-${c}`), { recursive: true });
            await writeFile(
              join(fs, 'opt', `pkg-${c}`, `file-${i}`),
              `package ${c} step ${i}\n`.repeat(20),
            );
          },
        }),
      );
    }
    chains.push(chain);
  }
  const tops = chains.map((c) => c.at(-1)!.hash);
  const rest = chains.flatMap((c) =>
    c
      .slice(0, -1)
      .reverse()
      .map((l) => l.hash),
  );
  return { osDir, hashes: [...tops, ...rest], targets: tops.length };
}

/** One HEAD per hash, as many at once as the cache uses: the naive lookup. */
async function headEach(client: RegistryClient, hashes: readonly string[]): Promise<number> {
  const found = await mapLimit(
    hashes,
    8,
    async (h) => (await client.headManifest(REPO, buildTag(h))) !== undefined,
  );
  return found.filter(Boolean).length;
}

async function planRows(work: string): Promise<BenchRow[]> {
  const plan = await makePlan(work);
  const registry = await DockerRegistry.start(work);
  try {
    const lookup = async (tagList: boolean) => {
      const client = new RegistryClient({ registry: registry.host });
      const started = performance.now();
      const found = await lookupLayers({
        client,
        repository: REPO,
        hashes: plan.hashes,
        hits: new Set(),
        tagList,
      });
      const ms = performance.now() - started;
      client.close();
      return { ms, requests: client.stats.requests, found: found.size };
    };
    const naive = async () => {
      const client = new RegistryClient({ registry: registry.host });
      const started = performance.now();
      const found = await headEach(client, plan.hashes);
      const ms = performance.now() - started;
      client.close();
      return { ms, requests: client.stats.requests, found };
    };
    const measure = async () => {
      const runs = { list: [] as number[], manifests: [] as number[], naive: [] as number[] };
      const last = { list: 0, manifests: 0, naive: 0 };
      const random = seeded(7);
      for (let round = 0; round < LOOKUP_ROUNDS; round++) {
        const variants = {
          list: async () => {
            const r = await lookup(true);
            runs.list.push(r.ms);
            last.list = r.requests;
          },
          manifests: async () => {
            const r = await lookup(false);
            runs.manifests.push(r.ms);
            last.manifests = r.requests;
          },
          naive: async () => {
            const r = await naive();
            runs.naive.push(r.ms);
            last.naive = r.requests;
          },
        };
        for (const v of shuffled(Object.values(variants), random)) await v();
      }
      return {
        ms: {
          list: median(runs.list),
          manifests: median(runs.manifests),
          naive: median(runs.naive),
        },
        requests: last,
      };
    };

    const cold = await measure();
    const publisher = new RegistryCache({ ref: `${registry.host}/${REPO}` });
    const first = await time(() => publisher.pushAll(plan.hashes, { osDir: plan.osDir }));
    await publisher.close();
    const warm = await measure();
    if ((await lookup(true)).found !== plan.hashes.length)
      throw new Error('warm lookup missed layers');

    const republisher = new RegistryCache({ ref: `${registry.host}/${REPO}` });
    const noop = await time(() => republisher.pushAll(plan.hashes, { osDir: plan.osDir }));
    const noopRequests = republisher.client.stats.requests;
    await republisher.close();

    const steps = plan.hashes.length.toLocaleString('en');
    const perTarget = (n: number) => n / plan.targets;
    return [
      {
        name: `lookup, ${steps}-step plan, cold (nothing published): requests`,
        value: cold.requests.list,
        unit: 'req',
        baselineName: 'one HEAD per step',
        baseline: cold.requests.naive,
      },
      {
        name: `lookup, ${steps}-step plan, cold: time`,
        value: cold.ms.list,
        baselineName: 'one HEAD per step (8 at once)',
        baseline: cold.ms.naive,
      },
      {
        name: `lookup, warm (all published): requests per target (${plan.targets} targets)`,
        value: perTarget(warm.requests.list),
        unit: 'req',
        baselineName: 'target: 2 per target',
        baseline: 2,
        target: 1,
      },
      {
        name: `lookup, warm: time`,
        value: warm.ms.list,
        baselineName: 'one HEAD per step (8 at once)',
        baseline: warm.ms.naive,
      },
      {
        name: `lookup, warm, tag list off (a GET per unknown target): requests per target`,
        value: perTarget(warm.requests.manifests),
        unit: 'req',
        baselineName: 'target: 2 per target',
        baseline: 2,
        target: 1,
      },
      {
        name: `lookup, warm, tag list off: time`,
        value: warm.ms.manifests,
        baselineName: 'one HEAD per step (8 at once)',
        baseline: warm.ms.naive,
      },
      {
        name: `no-op republish of ${steps} layers (${noopRequests} requests)`,
        value: noop,
        baselineName: `target 2 s (first publish: ${(first / 1000).toFixed(0)} s)`,
        baseline: 2000,
        target: 1,
      },
    ];
  } finally {
    await registry.stop();
  }
}

// --------------------------------------------------------------- peak RSS

async function writeBigFile(path: string): Promise<void> {
  const block = randomBytes(64 * 1024 ** 2);
  const handle = await open(path, 'w');
  try {
    for (let done = 0; done < BIG_FILE_BYTES; done += block.length) {
      await handle.write(block, 0, Math.min(block.length, BIG_FILE_BYTES - done));
    }
  } finally {
    await handle.close();
  }
}

/** Peak RSS (MB) of a child process doing `op` on layer `hash`. */
async function childRss(args: string[]): Promise<number> {
  const self = new URL(import.meta.url).pathname;
  const { stdout } = await Exec.run('node', [self, '--rss-child', ...args]);
  return (Number(stdout.trim()) * 1024) / 1e6;
}

async function rssChild([op, ref, osDir, hash]: string[]): Promise<void> {
  const cache = new RegistryCache({ ref: ref! });
  if (op === 'publish') await cache.publish({ hash: hash!, osDir: osDir! }, {});
  else if (!(await cache.fetch(hash!, { osDir: osDir! }))) throw new Error('not found');
  await cache.close();
  console.log(peakRssKiB());
}

async function rssRows(work: string): Promise<BenchRow[]> {
  const osDir = join(work, 'big-cache');
  const base = await makeLayer(osDir, {
    key: 'bench-big-base',
    below: [],
    fill: (fs) => writeFile(join(fs, 'base'), 'b'),
  });
  const big = await makeLayer(osDir, {
    key: 'big',
    below: [base],
    fill: (fs) => writeBigFile(join(fs, 'big')),
  });
  const registry = await DockerRegistry.start(work);
  try {
    const ref = `${registry.host}/${REPO}`;
    const publishMb = await childRss(['publish', ref, osDir, big.hash]);
    const dest = join(work, 'big-pulled');
    const pullMb = await childRss(['pull', ref, dest, big.hash]);
    const size = `${(BIG_FILE_BYTES / 1024 ** 3).toFixed(0)} GiB`;
    return [
      {
        name: `peak RSS, pull of a layer with a ${size} file`,
        value: pullMb,
        unit: 'MB',
        baselineName: 'limit',
        baseline: 150,
        target: 1,
      },
      {
        name: `peak RSS, publish of that layer (compression included)`,
        value: publishMb,
        unit: 'MB',
        baselineName: 'limit',
        baseline: 150,
      },
    ];
  } finally {
    await registry.stop();
  }
}

/** Runs the benchmark; returns its rows. */
export async function run(): Promise<BenchRow[]> {
  if (!existsSync('/usr/bin/docker-registry')) {
    throw new Error('docker-registry is not installed: apt-get install docker-registry');
  }
  const work = await mkdtemp(join(tmpdir(), 'day11-bench-registry-'));
  // DAY11_BENCH_REGISTRY=stack,plan,rss runs only those parts (default: all).
  const parts = (process.env['DAY11_BENCH_REGISTRY'] ?? 'stack,plan,rss').split(',');
  const chosen = { stack: stackRows, plan: planRows, rss: rssRows };
  try {
    const rows: BenchRow[] = [];
    for (const [name, part] of Object.entries(chosen)) {
      if (parts.includes(name)) rows.push(...(await part(work)));
    }
    return rows;
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

if (process.argv[2] === '--rss-child') {
  await rssChild(process.argv.slice(3));
} else if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  console.log(toMarkdown(await run()));
}
