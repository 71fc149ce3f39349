/**
 * Publish and pull real layers through Debian's docker-registry: the round
 * trip is exact (tree digests, metadata, logs, sidecars, export bytes), a
 * second publish uploads nothing, the first writer wins, failed steps travel
 * too, lookups are cheap, and bad content is refused leaving nothing behind.
 */
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerDir, LayerMeta, Recover, Sidecar, treeDigest } from '@day11/layer';
import { LayerBlob, exportImage } from '@day11/oci-export';
import { buildTag } from './cache-image.js';
import { RegistryCache } from './cache.js';
import { RegistryCodes, RegistryError } from './errors.js';
import { pushCraftedBase, pushForeignImage, tarEntry, tarOf } from './fixtures/crafted.js';
import { DockerRegistry, haveDockerRegistry } from '@day11/testing';
import { busyboxBase, cleanup, commitLayer, isRoot, tempDir } from './fixtures/layers.js';
import { makeStack, type TestStack } from './fixtures/stack.js';
import { baseOf } from './local.js';
import type { RegistryWarning } from './publish.js';

const REPO = 'ns/day11-cache';
let registry: DockerRegistry;
let work: string;
let origin: string;
let stack: TestStack;
const caches: RegistryCache[] = [];

function cache(opts: { onWarning?: (w: RegistryWarning) => void } = {}): RegistryCache {
  const c = new RegistryCache({ ref: `${registry.host}/${REPO}`, ...opts });
  caches.push(c);
  return c;
}

/** Files and directories of `osDir` that are neither layers nor the cache's own bookkeeping. */
async function leftovers(osDir: string): Promise<string[]> {
  const names = await readdir(osDir).catch(() => []);
  return names.filter((n) => n.startsWith('.day11-tmp-'));
}

describe.skipIf(!isRoot || !haveDockerRegistry)('a cache repository on docker-registry', () => {
  beforeAll(async () => {
    registry = await DockerRegistry.start();
    work = await tempDir('it');
    origin = join(work, 'origin');
    stack = await makeStack(origin);
  });

  afterAll(async () => {
    for (const c of caches) await c.close();
    await registry?.stop();
    await cleanup();
  });

  it('round-trips a stack exactly: trees, metadata, logs, sidecars, export bytes', async () => {
    const published = await cache().push({ hash: stack.app.hash, osDir: origin });
    expect(published.status).toBe('published');
    const dest = join(work, 'pulled');
    const pulled = await cache().pull(stack.app.hash, { osDir: dest });
    expect(pulled).toMatchObject({ status: 'pulled' });
    expect(pulled.pulled).toEqual([stack.base.hash, stack.libs.hash, stack.app.hash]);

    for (const hash of [stack.base.hash, stack.libs.hash, stack.app.hash]) {
      const a = LayerDir.path({ osDir: origin, hash });
      const b = LayerDir.path({ osDir: dest, hash });
      expect(await treeDigest(join(b, 'fs'))).toBe(await treeDigest(join(a, 'fs')));
      expect(await LayerMeta.load(b)).toEqual(await LayerMeta.load(a));
      expect(await readFile(join(b, 'layer.log'))).toEqual(await readFile(join(a, 'layer.log')));
      const sidecars = async (dir: string) =>
        (await Sidecar.list(dir)).filter((n) => n !== 'registry.json');
      expect(await sidecars(b)).toEqual(await sidecars(a));
      for (const name of await sidecars(a)) {
        expect(await Sidecar.read(b, name)).toEqual(await Sidecar.read(a, name));
      }
    }

    const exportFrom = async (osDir: string, layout: string) =>
      exportImage({
        layout,
        tag: 'app',
        base: await baseOf(osDir, stack.base.hash),
        layers: [stack.libs.hash, stack.app.hash].map((hash) => LayerDir.path({ osDir, hash })),
      });
    const mine = await exportFrom(origin, join(work, 'oci-origin'));
    const theirs = await exportFrom(dest, join(work, 'oci-pulled'));
    expect(theirs.manifestDigest).toBe(mine.manifestDigest);
    expect(theirs.layers.every((l) => l.cached)).toBe(true); // nothing compressed after a pull

    // The tree itself is faithful: compressed afresh it gives the same blob.
    const appDir = LayerDir.path({ osDir: dest, hash: stack.app.hash });
    await rm(join(appDir, LayerBlob.CACHE_FILE));
    await rm(join(appDir, LayerBlob.DIGESTS_FILE));
    const again = await LayerBlob.ensure(appDir);
    expect(again).toMatchObject({ cached: false, digest: mine.layers.at(-1)!.digest });

    expect(await leftovers(dest)).toEqual([]);
    expect((await Recover.sweep(dest)).temps).toEqual([]);
  });

  it('publishes again with one request and no upload', async () => {
    const c = cache();
    const again = await c.push({ hash: stack.app.hash, osDir: origin });
    expect(again).toMatchObject({ status: 'present', uploaded: 0, uploadedBytes: 0 });
    expect(c.client.stats.requests).toBe(1);
    expect(c.client.stats.bytesSent).toBe(0);
  });

  it('publishes many layers at once, and republishes them with one tag listing', async () => {
    const many: string[] = [];
    for (let i = 0; i < 40; i++) {
      const layer = await commitLayer({
        osDir: origin,
        base: stack.base,
        pkg: `many-${i}`,
        fill: (u) => writeFile(join(u, `file-${i}`), `${i}\n`),
      });
      many.push(layer.hash);
    }
    const results = await cache().pushAll(many, { osDir: origin });
    expect(results.map((r) => r.status)).toEqual(many.map(() => 'published'));
    const again = cache();
    const noop = await again.pushAll(many, { osDir: origin });
    expect(noop.every((r) => r.status === 'present' && r.uploaded === 0)).toBe(true);
    expect(again.client.stats.requests).toBe(1); // the tag list, one page
  });

  it('keeps the first writer: a different blob for the same hash is reported, not pushed', async () => {
    const other = join(work, 'other');
    const base = await busyboxBase(other); // same image name: the same base hash
    const libs = await commitLayer({
      osDir: other,
      base,
      pkg: 'libs',
      fill: (u) => writeFile(join(u, 'different'), 'x'),
    });
    expect(libs.hash).toBe(stack.libs.hash);
    const before = await cache().client.headManifest(REPO, buildTag(libs.hash));
    const warnings: RegistryWarning[] = [];
    const result = await cache({ onWarning: (w) => warnings.push(w) }).push({
      hash: libs.hash,
      osDir: other,
    });
    expect(result.status).toBe('conflict');
    expect(warnings).toEqual([
      expect.objectContaining({ code: 'NOT_REPRODUCIBLE', hash: libs.hash }),
    ]);
    expect(warnings[0]!.message).toMatch(/not reproducible/);
    const after = await cache().client.headManifest(REPO, buildTag(libs.hash));
    expect(after?.digest).toBe(before?.digest);
  });

  it('publishes a failed step with a config no runtime runs, and fetches it as failed', async () => {
    const failed = await commitLayer({
      osDir: origin,
      base: stack.base,
      below: [stack.libs],
      pkg: 'broken',
      exitStatus: 2,
      log: 'make: *** [all] Error 2\n',
      fill: (u) => writeFile(join(u, 'partial.o'), 'x'),
    });
    await cache().publish({ hash: failed.hash, osDir: origin }, {});
    const fetched = await cache().client.manifest(REPO, buildTag(failed.hash));
    const manifest = JSON.parse(fetched!.bytes.toString()) as { config: { mediaType: string } };
    expect(manifest.config.mediaType).toBe('application/vnd.day11.failed-step.config.v1+json');
    const dest = join(work, 'failed-dest');
    const c = cache();
    expect(await c.lookup([failed.hash], {})).toEqual(new Set([failed.hash]));
    expect(await c.fetch(failed.hash, { osDir: dest })).toBe(true);
    const dir = LayerDir.path({ osDir: dest, hash: failed.hash });
    expect((await LayerMeta.load(dir)).exit_status).toBe(2);
    expect(await readFile(join(dir, 'layer.log'), 'utf8')).toBe('make: *** [all] Error 2\n');
  });

  it('looks up a stack from its target in one request, and many hashes from the tag list', async () => {
    const missing = 'f'.repeat(64);
    const c = cache();
    const few = await c.lookup([stack.app.hash, stack.libs.hash, stack.base.hash, missing], {});
    expect(few).toEqual(new Set([stack.app.hash, stack.libs.hash, stack.base.hash]));
    expect(c.client.stats.requests).toBe(2); // app's manifest (its stack), the miss

    const d = cache();
    const many = [
      stack.app.hash,
      ...Array.from({ length: 40 }, (_, i) => i.toString(16).padStart(64, 'a')),
    ];
    expect(await d.lookup(many, {})).toEqual(new Set([stack.app.hash]));
    expect(d.client.stats.requests).toBe(1); // one page of tags
  });

  it('resolves false for a layer the registry does not have', async () => {
    const dest = join(work, 'nothing');
    expect(await cache().fetch('e'.repeat(64), { osDir: dest })).toBe(false);
    expect(await leftovers(dest)).toEqual([]);
  });

  it('refuses a foreign image under a build- tag, storing nothing', async () => {
    const c = cache();
    const hash = 'c'.repeat(64);
    await pushForeignImage(c.client, REPO, hash);
    const dest = join(work, 'foreign');
    const err = await c.fetch(hash, { osDir: dest }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryError);
    expect(err).toMatchObject({
      code: RegistryCodes.FOREIGN_IMAGE,
      registry: registry.host,
      repository: REPO,
    });
    expect(await readdir(dest).catch(() => [])).toEqual([]);
  });

  it('refuses a layer tar with ../ paths, leaving no partial layer', async () => {
    const c = cache();
    const tar = tarOf([
      tarEntry('etc/', Buffer.alloc(0), '5'),
      tarEntry('../escaped', Buffer.from('pwned')),
    ]);
    const { hash, digest } = await pushCraftedBase(c.client, REPO, { image: 'hostile:1', tar });
    const dest = join(work, 'hostile');
    const err = await c.fetch(hash, { osDir: dest }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: RegistryCodes.UNSAFE_LAYER,
      registry: registry.host,
      repository: REPO,
      digest,
    });
    expect((err as Error).message).toContain('../escaped');
    expect(await readdir(work)).not.toContain('escaped');
    expect(
      (await readdir(dest)).filter((n) => n.startsWith('build-') || n.startsWith('.day11-tmp-')),
    ).toEqual([]);
  });
});
