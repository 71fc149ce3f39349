/**
 * The survey of a cache on worker threads is exactly the survey on the
 * calling thread: a real cache of 300 layers with shared hardlinks, a link
 * from outside the cache, leases, never-used layers and a corrupt record.
 */
import { link, mkdir, rm, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from './fixtures/cache.js';
import { LEASE_DIR } from './in-use.js';
import { file as lastUsedFile } from './last-used.js';
import { path as layerPath } from './layer-dir.js';
import { save } from './layer-meta.js';
import { surveyLayers, type LayerSurvey } from './layer-survey.js';
import { names } from './scan.js';

let osDir: string;
beforeEach(async () => {
  osDir = await tempDir('survey');
});
afterEach(async () => {
  await rm(osDir, { recursive: true, force: true });
});

const hashOf = (n: number) => n.toString(16).padStart(12, '0') + 'e'.repeat(52);
const CREATED = '2025-01-02T03:04:05.000Z';

/** A cache of `count` layers, each standing on the one before it (and on layer 0, its base). */
async function makeCache(count: number): Promise<{ outside: string }> {
  const shared = join(osDir, 'shared-source');
  await writeFile(shared, 'x'.repeat(9000));
  const outside = join(osDir, 'outside-link');
  for (let n = 0; n < count; n++) {
    const dir = layerPath({ osDir, hash: hashOf(n) });
    await mkdir(join(dir, 'fs', 'usr', 'lib'), { recursive: true });
    await writeFile(join(dir, 'fs', 'usr', 'lib', `own${n}`), 'y'.repeat(100 * (n % 7)));
    await link(shared, join(dir, 'fs', 'usr', 'lib', 'shared'));
    if (n % 10 === 0) await link(shared, join(dir, 'fs', 'usr', 'lib', 'shared-again'));
    const parents = n > 1 ? [hashOf(n - 1)] : [];
    await save(dir, {
      hash: hashOf(n),
      exit_status: 0,
      parent_hashes: parents,
      uid: 0,
      gid: 0,
      base_hash: hashOf(0),
      disk_usage: 0,
      timing: [],
      failed_dep: null,
      created_at: CREATED,
    });
    if (n % 5 !== 0) {
      await writeFile(lastUsedFile(dir), '');
      await utimes(lastUsedFile(dir), n, 1_000_000 + n);
    }
    if (n % 50 === 3) await mkdir(join(dir, LEASE_DIR));
  }
  if (count > 8) {
    await writeFile(join(layerPath({ osDir, hash: hashOf(7) }), 'layer.json'), '{"broken":');
    await link(join(layerPath({ osDir, hash: hashOf(8) }), 'fs', 'usr', 'lib', 'own8'), outside);
  }
  await rm(shared);
  return { outside };
}

describe('surveyLayers', () => {
  it('gives the same survey on worker threads as on the calling thread', async () => {
    await makeCache(300);
    const found = await names(osDir);
    expect(found).toHaveLength(300);
    const here = await surveyLayers(osDir, found, 0);
    const threaded = await surveyLayers(osDir, found, 3);
    expect([...threaded.keys()].sort()).toEqual(found);
    expect(new Map([...threaded].sort())).toEqual(new Map([...here].sort()));

    const at = (n: number) => here.get(`build-${hashOf(n).slice(0, 12)}`) as LayerSurvey;
    // last_used's mtime; a never-used layer falls back to created_at.
    expect(at(1).lastUsed).toBe(1_000_001_000);
    expect(at(5).lastUsed).toBe(Date.parse(CREATED));
    // Parents then base, as 12-hex name hashes; a corrupt record stands on nothing.
    expect(at(9).parents).toBe(hashOf(8).slice(0, 12) + hashOf(0).slice(0, 12));
    expect(at(7).parents).toBe('');
    expect(at(3).leased).toBe(true);
    expect(at(4).leased).toBe(false);
    // The shared file: one inode in every layer, twice in every tenth.
    const [key, inode] = [...at(10).shared].find(([, i]) => i.bytes >= 9000)!;
    expect(inode).toMatchObject({ nlink: 300 + 30, links: 2 });
    expect(at(11).shared.get(key)).toMatchObject({ links: 1 });
    // A file also linked from outside the cache is shared, with its outside link counted.
    expect([...at(8).shared.values()].some((i) => i.nlink === 2 && i.links === 1)).toBe(true);
  });

  it('surveys a layer that vanished as empty, on a thread as here', async () => {
    await makeCache(4);
    const found = await names(osDir);
    await rm(join(osDir, found[2]!), { recursive: true });
    for (const threads of [0, 2]) {
      const gone = (await surveyLayers(osDir, found, threads)).get(found[2]!);
      expect(gone).toEqual({
        parents: '',
        lastUsed: 0,
        leased: false,
        ownBytes: 0,
        shared: new Map(),
      });
    }
  });
});
