import { describe, expect, it } from 'vitest';
import { MediaTypes } from '@day11/oci-export';
import {
  Annotations,
  CacheMediaTypes,
  buildManifest,
  parseManifest,
  stackHashes,
  type ManifestParts,
} from './cache-image.js';
import { RegistryCodes, RegistryError } from './errors.js';

const h = (c: string) => c.repeat(64);
const d = (c: string) => `sha256:${c.repeat(64)}`;
const origin = { registry: '127.0.0.1:5000', repository: 'ns/cache', reference: `build-${h('c')}` };

const parts: ManifestParts = {
  config: { mediaType: MediaTypes.config, digest: d('1'), size: 100 },
  stack: [
    { digest: d('a'), size: 10, hash: h('a') },
    { digest: d('b'), size: 20, hash: h('b') },
    { digest: d('c'), size: 30, hash: h('c') },
  ],
  meta: {
    hash: h('c'),
    exit_status: 0,
    parent_hashes: [h('b')],
    uid: 0,
    gid: 0,
    base_hash: h('a'),
    disk_usage: 4096,
    timing: [['build', 1.5]],
    created_at: '2025-01-02T03:04:05.000Z',
    failed_dep: null,
  },
  sidecars: { 'step.json': { id: 'c', run: 'make' } },
  log: { digest: d('2'), size: 12 },
  blob: { diffId: d('3'), tarSize: 1024, format: 1, level: 6, chunkSize: 1 << 20 },
  fsRoot: { mode: 0o755, uid: 0, gid: 0, mtime: '1700000000.5' },
  baseImage: 'busybox-static:1',
};

const parse = (bytes: Buffer, hash = h('c')) =>
  parseManifest(bytes, { hash, digest: d('9'), origin });

function refused(bytes: Buffer, code: string, why: RegExp, hash?: string): void {
  let err: unknown;
  try {
    parse(bytes, hash);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(RegistryError);
  expect(err).toMatchObject({ code, registry: origin.registry, repository: origin.repository });
  expect((err as Error).message).toMatch(why);
}

const edit = (change: (m: Record<string, unknown>) => void): Buffer => {
  const m = JSON.parse(buildManifest(parts).toString()) as Record<string, unknown>;
  change(m);
  return Buffer.from(JSON.stringify(m));
};
const annotations = (m: Record<string, unknown>) => m['annotations'] as Record<string, string>;

describe('cache image manifests', () => {
  it('read back what was written', () => {
    const image = parse(buildManifest(parts));
    expect(image).toMatchObject({
      hash: h('c'),
      failed: false,
      stack: parts.stack,
      meta: parts.meta,
      sidecars: parts.sidecars,
      log: parts.log,
      blob: parts.blob,
      fsRoot: parts.fsRoot,
      baseImage: 'busybox-static:1',
    });
    expect(stackHashes(buildManifest(parts))).toEqual([h('a'), h('b'), h('c')]);
  });

  it('are deterministic, and mark failed steps by their config', () => {
    expect(buildManifest(parts)).toEqual(buildManifest({ ...parts }));
    const failed = buildManifest({
      ...parts,
      config: { ...parts.config, mediaType: CacheMediaTypes.failedConfig },
    });
    expect(parse(failed).failed).toBe(true);
  });

  it('refuse foreign images: no day11 annotations, other hash, other schema, Docker manifests', () => {
    const F = RegistryCodes.FOREIGN_IMAGE;
    refused(
      edit((m) => delete m['annotations']),
      F,
      /no day11 annotations/,
    );
    refused(buildManifest(parts), F, /image of layer c+, not d+/, h('d'));
    refused(
      edit((m) => (annotations(m)[Annotations.schema] = '2')),
      F,
      /schema 2/,
    );
    refused(
      edit((m) => (m['mediaType'] = MediaTypes.dockerManifest)),
      F,
      /not an OCI image manifest/,
    );
    refused(
      edit((m) => ((m['config'] as { mediaType: string }).mediaType = 'application/x-other')),
      F,
      /config/,
    );
    refused(Buffer.from('{"manifests": []}'), F, /not an OCI image manifest/);
    expect(stackHashes(edit((m) => delete m['annotations']))).toBeUndefined();
  });

  it('refuse damaged ones: bad JSON, layers without hashes, broken annotations', () => {
    const M = RegistryCodes.MANIFEST_INVALID;
    refused(Buffer.from('{"schemaVersion": 2, "lay'), M, /not JSON/);
    refused(
      edit((m) => ((m['layers'] as { annotations?: unknown }[])[1]!.annotations = {})),
      M,
      /layers/,
    );
    refused(
      edit((m) => (annotations(m)[Annotations.layerJson] = '{"exit_status": "zero"}')),
      M,
      /layer\.json/,
    );
    refused(
      edit((m) => (annotations(m)[Annotations.blob] = 'not json')),
      M,
      /dev\.day11\.blob/,
    );
    refused(
      edit((m) => (annotations(m)[Annotations.fsRoot] = '{"mode": 99999}')),
      M,
      /fs\.root/,
    );
    refused(
      edit((m) => (annotations(m)[Annotations.sidecars] = '{"../x.json": {}}')),
      M,
      /sidecars/,
    );
  });
});
