/**
 * SIGKILL during publish and pull, at random moments: a publish never
 * leaves a tag pointing at missing blobs, a pull never leaves a partial
 * layer, and after `Recover.sweep` nothing of the killed process remains and
 * the operation succeeds when run again. The children run the built package
 * (`pnpm build` first), as separate Node processes.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerDir, LayerMeta, Recover, treeDigest } from '@day11/layer';
import { RegistryCache } from './cache.js';
import type { RegistryClient } from './client.js';
import { DockerRegistry, haveDockerRegistry } from '@day11/testing';
import { cleanup, commitLayer, isRoot, tempDir, type TestLayer } from './fixtures/layers.js';
import { makeStack, type TestStack } from './fixtures/stack.js';

const DIST = resolve(dirname(fileURLToPath(import.meta.url)), '../dist/index.js');
const TRIALS = Number(process.env['DAY11_FAULT_TRIALS'] ?? 6);

const CHILD = `
import { RegistryCache } from ${JSON.stringify(DIST)};
const [op, ref, osDir, hash] = process.argv.slice(2);
const cache = new RegistryCache({ ref });
process.stdout.write('start\\n');
if (op === 'publish') await cache.publish({ hash, osDir });
else await cache.fetch(hash, { osDir });
await cache.close();
process.stdout.write('done\\n');
`;

let registry: DockerRegistry;
let work: string;
let origin: string;
let stack: TestStack;
let big: TestLayer;
let script: string;
const caches: RegistryCache[] = [];

function cache(repo: string): RegistryCache {
  const c = new RegistryCache({ ref: `${registry.host}/${repo}` });
  caches.push(c);
  return c;
}

/** Runs the child; kills it `killAfterMs` after it started (never when undefined). Resolves with how it ended and how long it ran. */
async function child(
  args: string[],
  killAfterMs?: number,
): Promise<{ killed: boolean; ms: number }> {
  const proc = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  const started = await new Promise<number>((resolve) =>
    proc.stdout.once('data', () => resolve(performance.now())),
  );
  const timer =
    killAfterMs === undefined ? undefined : setTimeout(() => proc.kill('SIGKILL'), killAfterMs);
  const code = await new Promise<number | null>((resolve) => proc.once('exit', (c) => resolve(c)));
  clearTimeout(timer);
  const ms = performance.now() - started;
  if (proc.signalCode === 'SIGKILL') return { killed: true, ms };
  if (code !== 0) throw new Error(`child failed (${code}): ${stderr}`);
  return { killed: false, ms };
}

/** Every tag's manifest refers only to blobs the registry has. */
async function assertNoDanglingTags(client: RegistryClient, repo: string): Promise<number> {
  const { tags } = await client.tags(repo);
  for (const tag of tags) {
    const m = await client.manifest(repo, tag);
    const doc = JSON.parse(m!.bytes.toString()) as {
      config: { digest: string };
      layers: { digest: string }[];
    };
    for (const d of [doc.config, ...doc.layers]) {
      expect(await client.blobSize(repo, d.digest), `${tag} → ${d.digest}`).toBeDefined();
    }
  }
  return tags.length;
}

async function temps(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [])).filter((n) => n.startsWith('.day11-tmp-'));
}

describe.skipIf(!isRoot || !haveDockerRegistry)('SIGKILL during publish and pull', () => {
  let publishMs = 0;
  let pullMs = 0;
  const all = () => [stack.base, stack.libs, stack.app, big].map((l) => l.hash);

  beforeAll(async () => {
    if (!existsSync(DIST)) throw new Error(`${DIST} is missing: run \`pnpm build\` first`);
    registry = await DockerRegistry.start();
    work = await tempDir('crash');
    origin = join(work, 'origin');
    stack = await makeStack(origin);
    big = await commitLayer({
      osDir: origin,
      base: stack.base,
      below: [stack.libs, stack.app],
      pkg: 'big',
      fill: (u) => writeFile(join(u, 'big.bin'), randomBytes(48 * 1024 * 1024)),
    });
    script = join(work, 'child.mjs');
    await writeFile(script, CHILD);
    // Undisturbed runs set the kill windows: a publish (into the repository the pulls read; it
    // compresses), one more with the blobs cached (as the trials run), and a pull.
    await child(['publish', `${registry.host}/crash/full`, origin, big.hash]);
    publishMs = (await child(['publish', `${registry.host}/crash/window`, origin, big.hash])).ms;
    const whole = join(work, 'pulled-whole');
    pullMs = (await child(['pull', `${registry.host}/crash/full`, whole, big.hash])).ms;
  });

  afterAll(async () => {
    for (const c of caches) await c.close();
    await registry?.stop();
    await cleanup();
  });

  it(
    `publish: ${TRIALS} kills leave no tag pointing at missing blobs`,
    { timeout: 600_000 },
    async () => {
      let kills = 0;
      for (let trial = 0; trial < TRIALS; trial++) {
        const repo = `crash/p${trial}`;
        const delay = Math.round(((trial + Math.random()) / TRIALS) * publishMs);
        const where = `trial ${trial}, kill after ${delay} ms`;
        const args = ['publish', `${registry.host}/${repo}`, origin, big.hash];
        const { killed } = await child(args, delay);
        kills += killed ? 1 : 0;
        const c = cache(repo);
        const tags = await assertNoDanglingTags(c.client, repo);
        if (!killed) expect(tags, where).toBe(8); // build- and log- of four layers
        await Recover.sweep(origin);
        expect(await temps(origin), where).toEqual([]);
        // Publishing again completes what the kill interrupted.
        await c.publish({ hash: big.hash, osDir: origin }, {});
        expect(await assertNoDanglingTags(c.client, repo), where).toBe(8);
      }
      expect(kills).toBeGreaterThanOrEqual(TRIALS / 2);
    },
  );

  it(
    `pull: ${TRIALS} kills leave no partial layer; pulling again completes the stack`,
    { timeout: 600_000 },
    async () => {
      let kills = 0;
      for (let trial = 0; trial < TRIALS; trial++) {
        const dest = join(work, `pulled-${trial}`);
        const delay = Math.round(((trial + Math.random()) / TRIALS) * pullMs);
        const where = `trial ${trial}, kill after ${delay} ms`;
        const args = ['pull', `${registry.host}/crash/full`, dest, big.hash];
        const { killed } = await child(args, delay);
        kills += killed ? 1 : 0;
        const report = await Recover.sweep(dest);
        expect(report.incompleteLayers, where).toEqual([]);
        expect(await temps(dest), where).toEqual([]);
        // Whatever is committed is whole.
        for (const name of (await readdir(dest).catch(() => [])).filter(LayerDir.isLayerName)) {
          const meta = await LayerMeta.load(join(dest, name));
          const hash = typeof meta['hash'] === 'string' ? meta['hash'] : meta.base_hash;
          const originFs = join(LayerDir.path({ osDir: origin, hash }), 'fs');
          expect(await treeDigest(join(dest, name, 'fs')), where).toBe(await treeDigest(originFs));
        }
        expect(await cache('crash/full').fetch(big.hash, { osDir: dest })).toBe(true);
        for (const hash of all()) {
          expect(await LayerMeta.find(LayerDir.path({ osDir: dest, hash }))).toBeDefined();
        }
      }
      expect(kills).toBeGreaterThanOrEqual(TRIALS / 2);
    },
  );
});
