/**
 * Base images from a registry, an image layout and a docker archive, and
 * images pushed straight to a registry from an exported stack.
 */
import { execFileSync } from 'node:child_process';
import { lutimes, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LayerDir, LayerMeta, Sidecar, treeDigest } from '@day11/layer';
import { MediaTypes, exportImage } from '@day11/oci-export';
import { importBaseImage, pinnedName } from './base-image.js';
import { RegistryCache } from './cache.js';
import { RegistryClient } from './client.js';
import { RegistryCodes } from './errors.js';
import { DockerRegistry, haveDockerRegistry } from '@day11/testing';
import { cleanup, isRoot, tempDir } from './fixtures/layers.js';
import { makeStack, type TestStack } from './fixtures/stack.js';
import { baseOf } from './local.js';
import { exportToRegistry } from './push-image.js';

const CACHE = 'ns/day11-cache';
let registry: DockerRegistry;
let work: string;
let origin: string;
let stack: TestStack;
let client: RegistryClient;

async function exportedLocally(layout: string) {
  return exportImage({
    layout,
    tag: 'app',
    base: await baseOf(origin, stack.base.hash),
    layers: [stack.libs.dir, stack.app.dir],
  });
}

describe.skipIf(!isRoot || !haveDockerRegistry)('images in and out of registries', () => {
  beforeAll(async () => {
    registry = await DockerRegistry.start();
    work = await tempDir('images');
    origin = join(work, 'origin');
    stack = await makeStack(origin);
    client = new RegistryClient({ registry: registry.host });
    const cache = new RegistryCache({ ref: `${registry.host}/${CACHE}` });
    await cache.publish({ hash: stack.app.hash, osDir: origin }, {});
    await cache.close();
  });

  afterAll(async () => {
    client?.close();
    await registry?.stop();
    await cleanup();
  });

  it('pushes an exported stack as the local export, mounting layers from the cache repository', async () => {
    const local = await exportedLocally(join(work, 'local-layout'));
    const pushed = await exportToRegistry({
      ref: `docker://${registry.host}/apps/app:1`,
      base: await baseOf(origin, stack.base.hash),
      layers: [stack.libs.dir, stack.app.dir],
    });
    expect(pushed.manifestDigest).toBe(local.manifestDigest);
    expect(pushed.ref).toBe(`${registry.host}/apps/app@${local.manifestDigest}`);
    expect(pushed.blobs.map((b) => b.outcome)).toEqual([
      'mounted',
      'mounted',
      'mounted',
      'uploaded',
    ]);
    const again = await exportToRegistry({
      ref: `docker://${registry.host}/apps/app:1`,
      base: await baseOf(origin, stack.base.hash),
      layers: [stack.libs.dir, stack.app.dir],
    });
    expect(again.blobs.every((b) => b.outcome === 'present')).toBe(true);
  });

  it('imports a base from docker://, pinned by digest, applying whiteouts as umoci does', async () => {
    const osDir = join(work, 'bases');
    const base = await importBaseImage({ osDir, ref: `docker://${registry.host}/apps/app:1` });
    const local = await exportedLocally(join(work, 'local-layout'));
    expect(base).toMatchObject({
      digest: local.manifestDigest,
      image: pinnedName(local.manifestDigest),
      imported: true,
    });
    expect(await Sidecar.read(base.dir, 'base.json')).toMatchObject({
      kind: 'registry',
      digest: local.manifestDigest,
    });
    expect((await LayerMeta.load(base.dir)).base_hash).toBe(base.hash);

    const fs = join(base.dir, 'fs');
    expect(await readdir(join(fs, 'var/cache/old'))).toEqual(['z']);
    expect(await readdir(join(fs, 'usr/lib/libs'))).not.toContain('a.so.hard');

    // The reference: umoci's unpack of the same image. No archive carries the root's times.
    const bundle = join(work, 'umoci');
    execFileSync('umoci', ['unpack', '--image', `${join(work, 'local-layout')}:app`, bundle], {
      stdio: 'pipe',
    });
    const rootfs = join(bundle, 'rootfs');
    for (const root of [fs, rootfs]) await lutimes(root, 1_700_000_000, 1_700_000_000);
    expect(await treeDigest(fs)).toBe(await treeDigest(rootfs));
  });

  it('reuses an imported base: the same digest from a layout is the same base', async () => {
    const osDir = join(work, 'bases');
    const fromLayout = await importBaseImage({
      osDir,
      ref: `oci:${join(work, 'local-layout')}:app`,
    });
    expect(fromLayout.imported).toBe(false);
    const pinned = await importBaseImage({
      osDir,
      ref: `docker://${registry.host}/apps/app@${fromLayout.digest}`,
    });
    expect(pinned).toMatchObject({ hash: fromLayout.hash, imported: false });
  });

  it('makes a moved tag another base', async () => {
    const osDir = join(work, 'bases');
    const before = await importBaseImage({ osDir, ref: `docker://${registry.host}/apps/app:1` });
    await exportToRegistry({
      ref: `docker://${registry.host}/apps/app:1`,
      base: await baseOf(origin, stack.base.hash),
      layers: [stack.libs.dir],
    });
    const after = await importBaseImage({ osDir, ref: `docker://${registry.host}/apps/app:1` });
    expect(after.hash).not.toBe(before.hash);
    expect(after.imported).toBe(true);
    expect(await readdir(join(after.dir, 'fs/var/cache/old'))).toEqual(['x', 'y']);
  });

  it('imports through skopeo for other transports (docker-archive)', async () => {
    const archive = join(work, 'app.tar');
    execFileSync(
      'skopeo',
      ['copy', `oci:${join(work, 'local-layout')}:app`, `docker-archive:${archive}:app:1`],
      { stdio: 'pipe' },
    );
    const osDir = join(work, 'archive-bases');
    const base = await importBaseImage({ osDir, ref: `docker-archive:${archive}` });
    expect(base.imported).toBe(true);
    expect(await readdir(join(base.dir, 'fs/var/cache/old'))).toEqual(['z']);
    expect((await readdir(osDir)).filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
  });

  it('picks the platform from an index, and names what it offers when the platform is missing', async () => {
    const app = await client.manifest('apps/app', '1');
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaTypes.index,
        manifests: [
          {
            mediaType: MediaTypes.manifest,
            digest: app!.digest,
            size: app!.bytes.length,
            platform: { os: 'linux', architecture: 'amd64' },
          },
          {
            mediaType: MediaTypes.manifest,
            digest: app!.digest,
            size: app!.bytes.length,
            platform: { os: 'linux', architecture: 'arm64' },
          },
        ],
      }),
    );
    await client.putManifest('apps/app', 'multi', { bytes: index, mediaType: MediaTypes.index });
    const osDir = join(work, 'multi');
    const base = await importBaseImage({
      osDir,
      ref: `docker://${registry.host}/apps/app:multi`,
      platform: { architecture: 'arm64' },
    });
    expect(base.digest).toBe(app!.digest);
    const err = await importBaseImage({
      osDir,
      ref: `docker://${registry.host}/apps/app:multi`,
      platform: { architecture: 's390x' },
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: RegistryCodes.IMPORT_FAILED });
    expect((err as Error).message).toMatch(/linux\/s390x.*linux\/amd64, linux\/arm64/);
  });

  it('reports a missing image as NOT_FOUND, storing nothing', async () => {
    const osDir = join(work, 'none');
    const err = await importBaseImage({
      osDir,
      ref: `docker://${registry.host}/apps/none:1`,
    }).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: RegistryCodes.NOT_FOUND,
      registry: registry.host,
      repository: 'apps/none',
    });
    const names = await readdir(osDir).catch(() => []);
    expect(names.filter((n) => LayerDir.isLayerName(n) || n.startsWith('.day11-tmp-'))).toEqual([]);
  });
});
