/**
 * Publish and pull against a registry that fails or lies (the in-process
 * fake): every fault is a typed RegistryError naming registry, repository
 * and digest or tag; nothing half-written stays in the cache, nothing is
 * published under the tag.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readlink } from 'node:fs/promises';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildTag } from './cache-image.js';
import { RegistryCache } from './cache.js';
import { RegistryCodes, RegistryError, type RegistryCode } from './errors.js';
import { FakeRegistry } from './fixtures/fake-registry.js';
import { cleanup, commitLayer, isRoot, tempDir } from './fixtures/layers.js';
import { makeStack, type TestStack } from './fixtures/stack.js';

const REPO = 'ns/day11-cache';
let work: string;
let origin: string;
let stack: TestStack;
let good: FakeRegistry;
const open: { close: () => Promise<void> | void }[] = [];

/** A registry holding the published stack, whose answers `intercept` may change. */
async function registryWithStack(): Promise<FakeRegistry> {
  const registry = await FakeRegistry.start();
  open.push(registry);
  for (const [digest, bytes] of good.blobs) registry.addBlob(REPO, bytes, digest);
  for (const [ref, m] of good.manifests.get(REPO)!)
    registry.putManifest(REPO, ref, m.bytes, m.mediaType);
  return registry;
}

function cacheOf(registry: FakeRegistry, extra: object = {}): RegistryCache {
  const c = new RegistryCache({
    ref: `${registry.host}/${REPO}`,
    backoffMs: 1,
    retries: 2,
    ...extra,
  });
  open.push(c);
  return c;
}

async function expectFault(
  promise: Promise<unknown>,
  code: RegistryCode,
  registry: string,
): Promise<RegistryError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RegistryError);
  expect(err).toMatchObject({ code, registry, repository: REPO });
  expect((err as RegistryError).digest).toMatch(/^(sha256:[0-9a-f]{64}|build-[0-9a-f]{64})$/);
  return err as RegistryError;
}

/** Nothing but committed layers, if any: no partial layer, no temporary file. */
async function expectNothingStored(osDir: string): Promise<void> {
  const names = await readdir(osDir).catch(() => [] as string[]);
  expect(names.filter((n) => n.startsWith('build-') || n.startsWith('.day11-tmp-'))).toEqual([]);
}

const intercept = (
  registry: FakeRegistry,
  when: (req: IncomingMessage) => boolean,
  answer: (res: ServerResponse, req: IncomingMessage) => void,
) =>
  registry.intercepts.push((req, res) => {
    if (!when(req)) return false;
    answer(res, req);
    return true;
  });

const isBlobOf = (digest: string) => (req: IncomingMessage) =>
  req.method === 'GET' && req.url === `/v2/${REPO}/blobs/${digest}`;

describe.skipIf(!isRoot)('faults, publishing and pulling through a fake registry', () => {
  beforeAll(async () => {
    work = await tempDir('faults');
    origin = join(work, 'origin');
    stack = await makeStack(origin);
    good = await FakeRegistry.start();
    await cacheOf(good).publish({ hash: stack.app.hash, osDir: origin }, {});
  });

  afterEach(async () => {
    for (const o of open.splice(0)) await o.close();
  });

  afterAll(async () => {
    await good?.close();
    await cleanup();
  });

  const appBlob = () => {
    const manifest = good.manifests.get(REPO)!.get(buildTag(stack.app.hash))!;
    return (
      JSON.parse(manifest.bytes.toString()) as { layers: { digest: string; size: number }[] }
    ).layers.at(-1)!;
  };

  it('pull: a blob whose bytes do not match its digest', async () => {
    const registry = await registryWithStack();
    const { digest, size } = appBlob();
    registry.addBlob(REPO, randomBytes(size), digest);
    const dest = join(work, 'wrong-bytes');
    const err = await expectFault(
      cacheOf(registry).fetch(stack.app.hash, { osDir: dest }),
      RegistryCodes.DIGEST_MISMATCH,
      registry.host,
    );
    expect(err.digest).toBe(digest);
    // The stack below was pulled whole; the layer with wrong bytes is not there at all.
    expect((await readdir(dest)).filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
    expect(await readdir(dest)).not.toContain(`build-${stack.app.hash.slice(0, 12)}`);
  });

  it('pull: a layer whose stack lost a tag is missing, and is not committed', async () => {
    const registry = await registryWithStack();
    registry.manifests.get(REPO)!.delete(buildTag(stack.libs.hash));
    const dest = join(work, 'lost-tag');
    expect(await cacheOf(registry).fetch(stack.app.hash, { osDir: dest })).toBe(false);
    const names = await readdir(dest);
    expect(names).toContain(`build-${stack.base.hash.slice(0, 12)}`); // complete, so kept
    expect(names).not.toContain(`build-${stack.app.hash.slice(0, 12)}`);
    expect(names.filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
  });

  /** A registry whose app layer is `bytes` under their own digest: a blob that is what its manifest says. */
  async function registryWithAppBlob(bytes: Buffer): Promise<FakeRegistry> {
    const registry = await registryWithStack();
    const tag = buildTag(stack.app.hash);
    const { bytes: json, mediaType } = good.manifests.get(REPO)!.get(tag)!;
    const manifest = JSON.parse(json.toString()) as { layers: { digest: string; size: number }[] };
    Object.assign(manifest.layers.at(-1)!, {
      digest: registry.addBlob(REPO, bytes),
      size: bytes.length,
    });
    registry.putManifest(REPO, tag, Buffer.from(JSON.stringify(manifest)), mediaType);
    return registry;
  }

  it('pull: a layer whose blob is its digest but garbled gzip, or not its diff_id', async () => {
    const original = good.blobs.get(appBlob().digest)!;
    const garbled = Buffer.from(original);
    for (let i = 20; i < garbled.length - 8; i += 7) garbled[i]! ^= 0x5a;
    const otherTar = gzipSync(Buffer.alloc(10240)); // an empty tar: valid, but not this layer
    const cases = [
      { name: 'garbled', bytes: garbled, code: RegistryCodes.UNSAFE_LAYER },
      { name: 'other-tar', bytes: otherTar, code: RegistryCodes.DIGEST_MISMATCH },
    ];
    for (const c of cases) {
      const registry = await registryWithAppBlob(c.bytes);
      const dest = join(work, `lying-${c.name}`);
      const err = await expectFault(
        cacheOf(registry).fetch(stack.app.hash, { osDir: dest }),
        c.code,
        registry.host,
      );
      expect(err.message, c.name).toContain(stack.app.hash);
      await expectNothingStoredAbove(dest, stack.app.hash);
      // The downloaded blob is closed too: gunzip failing mid-write once left it
      // open until garbage collection (a short wait: GC would close it too).
      await expect.poll(() => openFilesUnder(dest), { timeout: 500 }).toEqual([]);
    }
  });

  /** The files under `dir` this process holds open (deleted ones included). */
  async function openFilesUnder(dir: string): Promise<string[]> {
    const fds = await readdir('/proc/self/fd');
    const targets = await Promise.all(
      fds.map((fd) => readlink(`/proc/self/fd/${fd}`).catch(() => '')),
    );
    return targets.filter((t) => t.startsWith(`${dir}/`));
  }

  /** The layer `hash` is not in `osDir`, and no temporary file is left. */
  async function expectNothingStoredAbove(osDir: string, hash: string): Promise<void> {
    const names = await readdir(osDir);
    expect(names).not.toContain(`build-${hash.slice(0, 12)}`);
    expect(names.filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
  }

  it('pull: a truncated download', async () => {
    const registry = await registryWithStack();
    const { digest, size } = appBlob();
    const bytes = good.blobs.get(digest)!;
    intercept(registry, isBlobOf(digest), (res) => {
      res.writeHead(200, { 'content-length': size });
      res.write(bytes.subarray(0, Math.floor(size / 2)), () => res.destroy());
    });
    const dest = join(work, 'truncated');
    const c = cacheOf(registry, { retries: 0 });
    await expectFault(
      c.fetch(stack.app.hash, { osDir: dest }),
      RegistryCodes.TRUNCATED,
      registry.host,
    );
    expect(await readdir(dest)).not.toContain(`build-${stack.app.hash.slice(0, 12)}`);
    expect((await readdir(dest)).filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
  });

  it('pull: a manifest over 4 MiB, and a malformed one', async () => {
    const registry = await registryWithStack();
    registry.putManifest(
      REPO,
      buildTag(stack.app.hash),
      Buffer.alloc(5 * 1024 * 1024, 0x20),
      'application/vnd.oci.image.manifest.v1+json',
    );
    const dest = join(work, 'huge');
    await expectFault(
      cacheOf(registry).fetch(stack.app.hash, { osDir: dest }),
      RegistryCodes.MANIFEST_TOO_LARGE,
      registry.host,
    );
    registry.putManifest(
      REPO,
      buildTag(stack.app.hash),
      Buffer.from('{"schemaVersion": 2, "layers": '),
      'application/vnd.oci.image.manifest.v1+json',
    );
    await expectFault(
      cacheOf(registry).fetch(stack.app.hash, { osDir: dest }),
      RegistryCodes.MANIFEST_INVALID,
      registry.host,
    );
    await expectNothingStored(dest);
  });

  it('pull: 404 of a blob the manifest names, 401 without credentials, 500 that persists', async () => {
    for (const [status, code] of [
      [404, RegistryCodes.NOT_FOUND],
      [401, RegistryCodes.UNAUTHORIZED],
      [403, RegistryCodes.DENIED],
      [500, RegistryCodes.SERVER_ERROR],
      [429, RegistryCodes.RATE_LIMITED],
    ] as const) {
      const registry = await registryWithStack();
      intercept(
        registry,
        (req) => req.method === 'GET' && req.url?.includes('/blobs/') === true,
        (res) =>
          res
            .writeHead(status, status === 401 ? { 'www-authenticate': 'Basic realm="x"' } : {})
            .end(),
      );
      const dest = join(work, `status-${status}`);
      await expectFault(
        cacheOf(registry, { credentials: undefined }).fetch(stack.app.hash, { osDir: dest }),
        code,
        registry.host,
      );
      await expectNothingStored(dest);
    }
  });

  it('publish: a failing upload or manifest PUT publishes nothing under the tag', async () => {
    for (const [what, status, code] of [
      ['PUT', 500, RegistryCodes.SERVER_ERROR],
      ['POST', 403, RegistryCodes.DENIED],
      ['MANIFEST', 401, RegistryCodes.UNAUTHORIZED],
    ] as const) {
      const registry = await FakeRegistry.start();
      open.push(registry);
      intercept(
        registry,
        (req) =>
          what === 'MANIFEST'
            ? req.method === 'PUT' &&
              req.url === `/v2/${REPO}/manifests/${buildTag(stack.app.hash)}`
            : req.method === what && req.url?.includes('/blobs/uploads') === true,
        (res) =>
          res
            .writeHead(status, status === 401 ? { 'www-authenticate': 'Basic realm="x"' } : {})
            .end(),
      );
      await expectFault(
        cacheOf(registry).publish({ hash: stack.app.hash, osDir: origin }, {}),
        code,
        registry.host,
      );
      expect(registry.manifests.get(REPO)?.has(buildTag(stack.app.hash)) ?? false).toBe(false);
      expect((await readdir(origin)).filter((n) => n.startsWith('.day11-tmp-'))).toEqual([]);
    }
  });

  it('publish: a layer whose stack is not in the cache names the missing layer', async () => {
    const registry = await FakeRegistry.start();
    open.push(registry);
    const ghost = { hash: 'ab'.repeat(32), dir: join(work, 'nowhere') };
    const orphan = await commitLayer({
      osDir: origin,
      base: stack.base,
      below: [ghost],
      pkg: 'orphan',
      fill: () => undefined,
    });
    const err = await cacheOf(registry)
      .publish({ hash: orphan.hash, osDir: origin }, {})
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: RegistryCodes.LAYER_MISSING });
    expect((err as Error).message).toContain(ghost.hash);
    expect(registry.manifests.size).toBe(0);
  });

  it('publish and pull: a registry that is down', async () => {
    const registry = await FakeRegistry.start();
    const host = registry.host;
    await registry.close();
    const c = new RegistryCache({ ref: `${host}/${REPO}`, retries: 1, backoffMs: 1 });
    open.push(c);
    await expectFault(
      c.publish({ hash: stack.app.hash, osDir: origin }, {}),
      RegistryCodes.UNREACHABLE,
      host,
    );
    await expect(c.lookup([stack.app.hash], {})).rejects.toMatchObject({
      code: RegistryCodes.UNREACHABLE,
    });
    const dest = join(work, 'down');
    await expectFault(c.fetch(stack.app.hash, { osDir: dest }), RegistryCodes.UNREACHABLE, host);
    await expectNothingStored(dest);
  });

  it('publish: a 413 on the monolithic upload falls back to chunks', async () => {
    const registry = await FakeRegistry.start({ maxBodyBytes: 1024 * 1024 });
    open.push(registry);
    const result = await cacheOf(registry).push({ hash: stack.app.hash, osDir: origin });
    expect(result.status).toBe('published');
    expect(registry.requests('PATCH', /uploads/).length).toBeGreaterThan(1);
    const dest = join(work, 'after-413');
    expect(await cacheOf(registry).fetch(stack.app.hash, { osDir: dest })).toBe(true);
  });
});
