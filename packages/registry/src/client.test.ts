/**
 * The distribution client against the in-process fake registry: what a real
 * docker-registry cannot be made to do (auth challenges, throttling, 413,
 * 202 mounts, cross-host redirects, small tag pages, lies).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { RegistryClient } from './client.js';
import { RegistryCodes, RegistryError } from './errors.js';
import { FakeRegistry, type FakeRegistryOptions } from './fixtures/fake-registry.js';
import { Transport } from './transport.js';

const REPO = 'ns/cache';
const running: { close: () => Promise<void> | void }[] = [];

afterEach(async () => {
  for (const r of running.splice(0)) await r.close();
});

async function fake(options: FakeRegistryOptions = {}): Promise<FakeRegistry> {
  const registry = await FakeRegistry.start(options);
  running.push(registry);
  return registry;
}

function client(
  registry: string,
  extra: Partial<ConstructorParameters<typeof RegistryClient>[0]> = {},
) {
  const c = new RegistryClient({ registry, backoffMs: 1, ...extra });
  running.push(c);
  return c;
}

const digestOf = (b: Buffer) => `sha256:${createHash('sha256').update(b).digest('hex')}`;
const blobOf = (bytes: Buffer) => ({
  digest: digestOf(bytes),
  size: bytes.length,
  open: (r?: { start: number; end: number }) => (r ? bytes.subarray(r.start, r.end) : bytes),
});

async function readAll(stream: AsyncIterable<unknown>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(chunk as Buffer);
  return Buffer.concat(parts);
}

async function failure(promise: Promise<unknown>): Promise<RegistryError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RegistryError);
  return err as RegistryError;
}

describe('authentication', () => {
  it('answers a Bearer challenge with a token, fetched once and reused', async () => {
    const registry = await fake({ bearer: {} });
    const c = client(registry.host);
    const bytes = randomBytes(1000);
    expect(await c.pushBlob(REPO, blobOf(bytes))).toBe('uploaded');
    for (let i = 0; i < 5; i++) expect(await c.blobSize(REPO, digestOf(bytes))).toBe(1000);
    // One token for pull (the first HEAD), one for push; the 401 round trip is paid once.
    expect(c.stats.tokenRequests).toBe(2);
    expect(
      registry.log.filter((r) => r.url.startsWith('/v2/') && !r.headers.authorization),
    ).toHaveLength(1);
  });

  it('sends credentials to the token server, and names the registry when they are wrong', async () => {
    const registry = await fake({ bearer: { username: 'ci', password: 'secret' } });
    const good = client(registry.host, { credentials: { username: 'ci', password: 'secret' } });
    expect(await good.blobSize(REPO, digestOf(Buffer.from('x')))).toBeUndefined();
    const bad = client(registry.host, { credentials: { username: 'ci', password: 'wrong' } });
    const err = await failure(bad.blobSize(REPO, digestOf(Buffer.from('x'))));
    expect(err.code).toBe(RegistryCodes.UNAUTHORIZED);
    expect(err.message).toContain(registry.host);
    expect(err.hint).toMatch(/docker login|DAY11_REGISTRY_USERNAME/);
  });

  it('trades an identity token for access tokens (OAuth2 refresh_token grant)', async () => {
    const registry = await fake({ bearer: { refreshToken: 'refresh-me' } });
    const good = client(registry.host, { credentials: { identityToken: 'refresh-me' } });
    expect(await good.pushBlob(REPO, blobOf(Buffer.from('oauth')))).toBe('uploaded');
    expect(registry.requests('POST', /^\/token/)).toHaveLength(2); // pull, then push
    const bad = client(registry.host, { credentials: { identityToken: 'stale' } });
    const err = await failure(bad.blobSize(REPO, digestOf(Buffer.from('oauth'))));
    expect(err.code).toBe(RegistryCodes.UNAUTHORIZED);
  });

  it('speaks plain http to a remote registry only when insecure is set', async () => {
    const registry = await fake();
    const port = registry.host.split(':')[1]!;
    // "localhost.localdomain" is not loopback by name: https unless insecure.
    const secure = client(`127.0.0.1.nip.invalid:${port}`, { retries: 0 });
    const err = await failure(secure.blobSize(REPO, digestOf(Buffer.from('x'))));
    expect(err.message).toContain(`127.0.0.1.nip.invalid:${port}`);
    expect(err.hint).toMatch(/https:\/\/127\.0\.0\.1\.nip\.invalid/);
    expect(new Transport({ registry: `reg.example:${port}`, insecure: true }).origin).toBe(
      `http://reg.example:${port}`,
    );
    expect(new Transport({ registry: 'reg.example' }).origin).toBe('https://reg.example');
    expect(new Transport({ registry: 'docker.io' }).origin).toBe('https://registry-1.docker.io');
  });

  it('uses Basic auth when challenged so, and fails clearly without credentials', async () => {
    const registry = await fake({ basic: { username: 'u', password: 'p' } });
    const good = client(registry.host, { credentials: { username: 'u', password: 'p' } });
    expect(await good.pushBlob(REPO, blobOf(Buffer.from('basic')))).toBe('uploaded');
    const anonymous = client(registry.host, { credentials: undefined });
    const err = await failure(anonymous.blobSize(REPO, digestOf(Buffer.from('basic'))));
    expect(err).toMatchObject({
      code: RegistryCodes.UNAUTHORIZED,
      status: 401,
      registry: registry.host,
    });
  });

  it('maps 403 to DENIED and a missing blob to NOT_FOUND, naming repository and digest', async () => {
    const registry = await fake();
    const digest = digestOf(Buffer.from('nope'));
    const err = await failure(client(registry.host).blob(REPO, { digest }));
    expect(err).toMatchObject({ code: RegistryCodes.NOT_FOUND, repository: REPO, digest });
    expect(err.message).toContain(digest);
    registry.intercepts.push((req, res) => {
      if (req.method !== 'POST') return false;
      res.writeHead(403).end('{"errors":[{"code":"DENIED","message":"no push for you"}]}');
      return true;
    });
    const denied = await failure(client(registry.host).pushBlob(REPO, blobOf(Buffer.from('d'))));
    expect(denied.code).toBe(RegistryCodes.DENIED);
    expect(denied.message).toContain('no push for you');
  });
});

describe('retries', () => {
  it('takes DIGEST_INVALID on a manifest put as a lost race: done when the manifest is there, else put once more', async () => {
    const registry = await fake();
    const bytes = Buffer.from('{"schemaVersion":2,"layers":[]}');
    const manifest = { bytes, mediaType: 'application/vnd.oci.image.manifest.v1+json' };
    const invalid = (res: import('node:http').ServerResponse): boolean => {
      res
        .writeHead(400, { 'content-type': 'application/json' })
        .end(
          '{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}',
        );
      return true;
    };
    const puts = (tag: string) =>
      registry.log.filter((r) => r.method === 'PUT' && r.url.endsWith(`/manifests/${tag}`)).length;

    // The other writer's identical put went in: nothing more to do.
    let refused = 0;
    registry.intercepts.push((req, res, body) => {
      if (req.method !== 'PUT' || !req.url!.endsWith('/manifests/raced') || refused++ > 0)
        return false;
      registry.putManifest(REPO, 'raced', body, manifest.mediaType);
      return invalid(res);
    });
    const c = client(registry.host);
    expect(await c.putManifest(REPO, 'raced', manifest)).toBe(digestOf(bytes));
    expect(puts('raced')).toBe(1);

    // Nothing went in: put once more.
    let refusedAgain = 0;
    registry.intercepts.push((req, res) => {
      if (req.method !== 'PUT' || !req.url!.endsWith('/manifests/again') || refusedAgain++ > 0)
        return false;
      return invalid(res);
    });
    expect(await c.putManifest(REPO, 'again', manifest)).toBe(digestOf(bytes));
    expect(puts('again')).toBe(2);
    expect(registry.manifests.get(REPO)?.get('again')?.bytes).toEqual(bytes);

    // Refused every time: the second refusal is the error.
    registry.intercepts.push((req, res) =>
      req.method === 'PUT' && req.url!.endsWith('/manifests/never') ? invalid(res) : false,
    );
    const err = await failure(c.putManifest(REPO, 'never', manifest));
    expect(err.status).toBe(400);
    expect(err.message).toContain('DIGEST_INVALID');
    expect(puts('never')).toBe(2);

    // Put by a digest the bytes do not have: refused once, not tried again.
    const other = digestOf(Buffer.from('other'));
    registry.intercepts.push((req, res) =>
      req.method === 'PUT' && req.url!.endsWith(`/manifests/${other}`) ? invalid(res) : false,
    );
    const wrong = await failure(c.putManifest(REPO, other, manifest));
    expect(wrong.status).toBe(400);
    expect(wrong.message).toContain('DIGEST_INVALID');
    expect(puts(other)).toBe(1);
  });

  it('waits as long as Retry-After says on 429, then succeeds', async () => {
    const registry = await fake();
    let throttled = 0;
    registry.intercepts.push((req, res) => {
      if (req.method !== 'HEAD' || throttled >= 2) return false;
      throttled++;
      res.writeHead(429, { 'retry-after': '1' }).end();
      return true;
    });
    const c = client(registry.host);
    const started = performance.now();
    expect(await c.blobSize(REPO, digestOf(Buffer.from('x')))).toBeUndefined();
    expect(performance.now() - started).toBeGreaterThanOrEqual(1900);
    expect(c.stats.retries).toBe(2);
  });

  it('fails at once when Retry-After asks for longer than maxRetryAfterMs', async () => {
    const registry = await fake();
    registry.intercepts.push((_req, res) => {
      res.writeHead(429, { 'retry-after': '3600' }).end();
      return true;
    });
    const err = await failure(client(registry.host).blobSize(REPO, digestOf(Buffer.from('x'))));
    expect(err.code).toBe(RegistryCodes.RATE_LIMITED);
    expect(err.message).toMatch(/wait 3600 s/);
  });

  it('retries 5xx with backoff and reports SERVER_ERROR when it persists', async () => {
    const registry = await fake();
    registry.intercepts.push((_req, res) => {
      res.writeHead(503).end('down for maintenance');
      return true;
    });
    const c = client(registry.host, { retries: 3 });
    const err = await failure(c.manifest(REPO, 'latest'));
    expect(err).toMatchObject({ code: RegistryCodes.SERVER_ERROR, status: 503 });
    expect(registry.log).toHaveLength(4);
  });

  it('reports a registry that is down as UNREACHABLE', async () => {
    const registry = await fake();
    const host = registry.host;
    await registry.close();
    const err = await failure(
      client(host, { retries: 1 }).blobSize(REPO, digestOf(Buffer.from('x'))),
    );
    expect(err.code).toBe(RegistryCodes.UNREACHABLE);
    expect(err.message).toMatch(/ECONNREFUSED/);
  });
});

describe('uploads', () => {
  it('falls back to chunked PATCHes when a monolithic PUT gets 413', async () => {
    const registry = await fake({ maxBodyBytes: 100_000 });
    const bytes = randomBytes(1_000_000);
    expect(await client(registry.host).pushBlob(REPO, blobOf(bytes))).toBe('uploaded');
    // Buffer.equals: a deep toEqual of a megabyte takes seconds.
    expect(registry.blobs.get(digestOf(bytes))?.equals(bytes)).toBe(true);
    const patches = registry.requests('PATCH', /uploads/);
    expect(patches.length).toBeGreaterThanOrEqual(10);
    expect(patches.at(-1)!.headers['content-range']).toBe(
      `${1_000_000 - Number(patches.at(-1)!.headers['content-length'])}-999999`,
    );
  });

  it('mounts a blob from another repository, and uploads into the session a 202 opens', async () => {
    const registry = await fake();
    const bytes = randomBytes(5000);
    const c = client(registry.host);
    await c.pushBlob('ns/other', blobOf(bytes));
    expect(await c.pushBlob(REPO, blobOf(bytes), { mountFrom: 'ns/other' })).toBe('mounted');

    const refusing = await fake({ refuseMounts: true });
    const r = client(refusing.host);
    await r.pushBlob('ns/other', blobOf(bytes));
    expect(await r.pushBlob(REPO, blobOf(bytes), { mountFrom: 'ns/other' })).toBe('uploaded');
    expect(refusing.requests('POST', new RegExp(`^/v2/${REPO}/`))).toHaveLength(1);
    expect(refusing.blobs.get(digestOf(bytes))).toEqual(bytes);
  });

  it('skips a blob the repository has (HEAD)', async () => {
    const registry = await fake();
    const bytes = randomBytes(100);
    const c = client(registry.host);
    await c.pushBlob(REPO, blobOf(bytes));
    expect(await c.pushBlob(REPO, blobOf(bytes))).toBe('present');
    expect(registry.requests('PUT', /uploads/)).toHaveLength(1);
  });
});

describe('redirects', () => {
  it('never sends Authorization to another host', async () => {
    const registry = await fake({ bearer: {} });
    const bytes = randomBytes(3000);
    registry.addBlob(REPO, bytes);
    const seen: IncomingHttpHeaders[] = [];
    const storage = createServer((req, res) => {
      seen.push(req.headers);
      res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
    });
    await new Promise<void>((resolve) => storage.listen(0, '127.0.0.1', resolve));
    running.push({ close: () => new Promise<void>((resolve) => storage.close(() => resolve())) });
    const port = (storage.address() as AddressInfo).port;
    registry.intercepts.push((req, res) => {
      if (req.method !== 'GET' || !req.url?.includes('/blobs/') || !req.headers.authorization)
        return false;
      res.writeHead(307, { location: `http://localhost:${port}/storage/blob?sig=1` }).end();
      return true;
    });
    const stream = await client(registry.host).blob(REPO, {
      digest: digestOf(bytes),
      size: bytes.length,
    });
    expect(await readAll(stream)).toEqual(bytes);
    expect(seen).toHaveLength(1);
    expect(seen[0]!.authorization).toBeUndefined();
    expect(registry.requests('GET', /\/blobs\//).at(-1)!.headers.authorization).toMatch(/^Bearer /);
  });
});

describe('tags', () => {
  it('follows Link pages, and stops at maxPages', async () => {
    const registry = await fake({ maxPageSize: 2 });
    for (const tag of ['a', 'b', 'c', 'd', 'e']) {
      registry.putManifest(REPO, tag, Buffer.from(`{"t":"${tag}"}`), 'application/json');
    }
    const c = client(registry.host);
    expect(await c.tags(REPO)).toEqual({
      tags: ['a', 'b', 'c', 'd', 'e'],
      complete: true,
      pages: 3,
    });
    expect(await c.tags(REPO, { maxPages: 2 })).toEqual({
      tags: ['a', 'b', 'c', 'd'],
      complete: false,
      pages: 2,
    });
    expect(await c.tags('ns/none')).toEqual({ tags: [], complete: true, pages: 1 });
  });
});

describe('a registry that lies', () => {
  it('sends bytes that do not match the digest: DIGEST_MISMATCH before the stream ends', async () => {
    const registry = await fake();
    const bytes = randomBytes(10_000);
    const digest = digestOf(bytes);
    registry.addBlob(REPO, randomBytes(10_000), digest);
    const stream = await client(registry.host).blob(REPO, { digest, size: 10_000 });
    const err = await failure(readAll(stream));
    expect(err).toMatchObject({ code: RegistryCodes.DIGEST_MISMATCH, digest, repository: REPO });
  });

  it('cuts a body short: TRUNCATED', async () => {
    const registry = await fake();
    const bytes = randomBytes(200_000);
    registry.intercepts.push((req, res) => {
      if (!req.url?.includes('/blobs/')) return false;
      res.writeHead(200, { 'content-length': bytes.length });
      res.write(bytes.subarray(0, 50_000), () => res.destroy());
      return true;
    });
    const stream = await client(registry.host, { retries: 0 }).blob(REPO, {
      digest: digestOf(bytes),
      size: bytes.length,
    });
    expect((await failure(readAll(stream))).code).toBe(RegistryCodes.TRUNCATED);
  });

  it('serves a manifest over 4 MiB, or one that does not match its digest', async () => {
    const registry = await fake();
    registry.putManifest(REPO, 'huge', Buffer.alloc(5 * 1024 * 1024, 0x20), 'application/json');
    const c = client(registry.host);
    expect((await failure(c.manifest(REPO, 'huge'))).code).toBe(RegistryCodes.MANIFEST_TOO_LARGE);
    registry.intercepts.push((req, res) => {
      if (!req.url?.includes('/manifests/')) return false;
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.manifest.v1+json',
        'docker-content-digest': digestOf(Buffer.from('other')),
      });
      res.end('{"schemaVersion":2}');
      return true;
    });
    expect((await failure(c.manifest(REPO, 'x'))).code).toBe(RegistryCodes.DIGEST_MISMATCH);
    const pinned = digestOf(Buffer.from('pinned'));
    expect((await failure(c.manifest(REPO, pinned))).code).toBe(RegistryCodes.DIGEST_MISMATCH);
  });

  it('answers a tag list that is not one: MANIFEST_INVALID', async () => {
    const registry = await fake();
    registry.intercepts.push((_req, res) => {
      res.writeHead(200).end('{"tags": "all of them"}');
      return true;
    });
    expect((await failure(client(registry.host).tags(REPO))).code).toBe(
      RegistryCodes.MANIFEST_INVALID,
    );
  });
});
