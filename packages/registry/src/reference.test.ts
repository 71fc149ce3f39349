import { describe, expect, it } from 'vitest';
import { parseChallenges, scopeOf, scopeStrings, mergeScopes } from './auth.js';
import { RegistryCodes } from './errors.js';
import {
  apiHost,
  formatImage,
  isLoopback,
  parseImage,
  parseImageSource,
  parseRepository,
} from './reference.js';
import { retryAfterMs } from './transport.js';
import { nextLink } from './client.js';

const D = `sha256:${'a'.repeat(64)}`;

describe('references', () => {
  it('parse a cache repository with an explicit host', () => {
    expect(parseRepository('127.0.0.1:5000/ns/day11-cache')).toEqual({
      registry: '127.0.0.1:5000',
      repository: 'ns/day11-cache',
    });
    expect(parseRepository('docker://GHCR.io/acme/cache')).toEqual({
      registry: 'ghcr.io',
      repository: 'acme/cache',
    });
    expect(parseRepository('localhost/c')).toEqual({ registry: 'localhost', repository: 'c' });
  });

  it.each([
    ['ns/day11-cache', /registry host/],
    ['127.0.0.1:5000/ns/cache:tag', /no tag or digest/],
    ['127.0.0.1:5000/NS/Cache', /not a valid repository/],
    ['127.0.0.1:5000/a//b', /not a valid repository/],
    ['127.0.0.1:5000/', /not a valid repository/],
  ])('refuse the repository %s', (ref, why) => {
    expect(() => parseRepository(ref)).toThrow(why);
    try {
      parseRepository(ref);
    } catch (err) {
      expect(err).toMatchObject({ code: RegistryCodes.BAD_REFERENCE });
    }
  });

  it('parse images: Docker Hub defaults, ports, tags, digests', () => {
    expect(parseImage('debian:12')).toEqual({
      registry: 'docker.io',
      repository: 'library/debian',
      tag: '12',
      digest: undefined,
    });
    expect(parseImage('docker://127.0.0.1:5000/a/b')).toMatchObject({ tag: 'latest' });
    expect(parseImage(`127.0.0.1:5000/a/b:1.0@${D}`)).toEqual({
      registry: '127.0.0.1:5000',
      repository: 'a/b',
      tag: '1.0',
      digest: D,
    });
    expect(parseImage(`localhost:5000/x@${D}`)).toMatchObject({ tag: undefined, digest: D });
    expect(formatImage(parseImage(`127.0.0.1:5000/a/b:1.0@${D}`))).toBe(
      `127.0.0.1:5000/a/b:1.0@${D}`,
    );
    expect(() => parseImage('a/b@md5:00')).toThrow(/sha256/);
    expect(() => parseImage('a/b:-bad')).toThrow(/valid tag/);
    expect(apiHost('docker.io')).toBe('registry-1.docker.io');
  });

  it('parse image sources', () => {
    expect(parseImageSource('oci:/srv/layout:busybox')).toEqual({
      transport: 'oci',
      dir: '/srv/layout',
      reference: 'busybox',
    });
    expect(parseImageSource('oci:/srv/layout')).toMatchObject({ reference: undefined });
    expect(parseImageSource('docker-archive:/tmp/x.tar')).toEqual({
      transport: 'skopeo',
      ref: 'docker-archive:/tmp/x.tar',
    });
    expect(parseImageSource('docker://h.io/a:1')).toMatchObject({ transport: 'docker' });
    expect(() => parseImageSource('/just/a/path')).toThrow(/no transport/);
    expect(() => parseImageSource('oci::tag')).toThrow(/empty/);
  });

  it('speak plain http to this machine only', () => {
    for (const host of ['127.0.0.1:5000', 'localhost', '127.1.2.3', '[::1]:5000']) {
      expect(isLoopback(host)).toBe(true);
    }
    for (const host of ['ghcr.io', '10.0.0.1:5000', '127.0.0.1.nip.io']) {
      expect(isLoopback(host)).toBe(false);
    }
  });
});

describe('HTTP details', () => {
  it('parse WWW-Authenticate challenges, quoted commas included', () => {
    expect(
      parseChallenges(
        'Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push", Basic realm="x"',
      ),
    ).toEqual([
      {
        scheme: 'bearer',
        params: {
          realm: 'https://auth.example/token',
          service: 'reg',
          scope: 'repository:a/b:pull,push',
        },
      },
      { scheme: 'basic', params: { realm: 'x' } },
    ]);
    expect(parseChallenges('Basic realm=plain')).toEqual([
      { scheme: 'basic', params: { realm: 'plain' } },
    ]);
    expect(parseChallenges('')).toEqual([]);
  });

  it('write scopes the way token servers read them', () => {
    const scope = mergeScopes(scopeOf('ns/cache', 'push'), scopeOf('ns/other', 'pull'));
    expect(scopeStrings(scope)).toEqual([
      'repository:ns/cache:pull,push',
      'repository:ns/other:pull',
    ]);
  });

  it('read Retry-After as seconds or a date, and Link next pages', () => {
    expect(retryAfterMs('3')).toBe(3000);
    expect(retryAfterMs(null)).toBeUndefined();
    expect(retryAfterMs('soon')).toBeUndefined();
    const later = retryAfterMs(new Date(Date.now() + 5000).toUTCString())!;
    expect(later).toBeGreaterThan(3000);
    expect(later).toBeLessThanOrEqual(5000);
    expect(nextLink('</v2/a/tags/list?n=2&last=b>; rel="next"')).toBe('/v2/a/tags/list?n=2&last=b');
    expect(nextLink(null)).toBeUndefined();
  });
});
