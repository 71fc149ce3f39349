/**
 * exportImage with a layer budget: merged runs unpack to exactly what the
 * whole stack unpacks to (random stacks with whiteouts, opaque directories,
 * hardlinks, replaced files and directories, for every strategy), are cached
 * as layers of their own and shared, leased while used, collected by the GC,
 * and byte-for-byte deterministic.
 */
import { existsSync, mkdirSync, linkSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { readdir, readFile, rm } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { OverlayMarks, Sys } from '@day11/exec';
import { Gc, InUse, Scan, Sidecar } from '@day11/layer';
import { OciExportCodes } from './errors.js';
import { exportImage, type ExportProgress } from './export.js';
import { applyImage } from './fixtures/apply.js';
import { seeded as random } from './fixtures/random.js';
import { asBase, cleanup, isRoot, makeLayer, tempDir, type TestLayer } from './fixtures/layers.js';
import * as Layout from './layout.js';
import { ManifestSchema, REF_NAME } from './oci.js';
import * as SquashLayer from './squash-layer.js';
import type { SquashStrategy } from './squash-plan.js';
import { LAYERS_ANNOTATION } from './squash-value.js';

afterAll(cleanup);

type Node =
  | { kind: 'dir'; opaque: boolean }
  | { kind: 'file'; content: string; mode: number }
  | { kind: 'whiteout' }
  | { kind: 'symlink'; target: string }
  | { kind: 'hardlink'; to: string };

/** A small universe of paths, so that layers overlap a lot. */
const PATHS = ['a', 'b', 'c', 'a/x', 'a/y', 'b/x', 'a/x/p', 'a/x/q', 'b/x/p', 'a/y/r'];

/** One random layer: a consistent upper (parents are directories, no child under a non-directory). */
function randomLayer(rand: () => number, id: number): Map<string, Node> {
  const nodes = new Map<string, Node>();
  const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
  const ops = 1 + Math.floor(rand() * 4);
  for (let op = 0; op < ops; op++) {
    const path = pick(PATHS);
    const parents = ancestors(path);
    if (parents.some((p) => nodes.has(p) && nodes.get(p)!.kind !== 'dir')) continue;
    for (const p of parents) if (!nodes.has(p)) nodes.set(p, { kind: 'dir', opaque: false });
    const roll = rand();
    const files = [...nodes].filter(([p, n]) => n.kind === 'file' && p !== path).map(([p]) => p);
    let node: Node;
    if (roll < 0.3)
      node = { kind: 'file', content: `${id}:${path}:${op}`, mode: pick([0o644, 0o600]) };
    else if (roll < 0.5) node = { kind: 'whiteout' };
    else if (roll < 0.7) node = { kind: 'dir', opaque: rand() < 0.6 };
    else if (roll < 0.8) node = { kind: 'symlink', target: `../t${id}` };
    else if (files.length > 0) node = { kind: 'hardlink', to: pick(files) };
    else node = { kind: 'file', content: `${id}:${path}`, mode: 0o644 };
    if (node.kind !== 'dir') {
      for (const p of [...nodes.keys()]) if (p.startsWith(`${path}/`)) nodes.delete(p);
    }
    nodes.set(path, node);
  }
  // A hardlink's source must still be a file of this layer.
  for (const [p, n] of [...nodes]) {
    if (n.kind === 'hardlink' && nodes.get(n.to)?.kind !== 'file') nodes.delete(p);
  }
  return nodes;
}

function ancestors(path: string): string[] {
  const parts = path.split('/');
  return parts.slice(0, -1).map((_, i) => parts.slice(0, i + 1).join('/'));
}

function materialise(fs: string, nodes: Map<string, Node>): void {
  const sorted = [...nodes].sort(([a], [b]) => (a < b ? -1 : 1));
  for (const [path, node] of sorted) {
    const abs = join(fs, path);
    mkdirSync(dirname(abs), { recursive: true });
    if (node.kind === 'dir') {
      mkdirSync(abs, { recursive: true });
      if (node.opaque) Sys.setXattrSync(abs, OverlayMarks.OPAQUE_XATTR, 'y');
    } else if (node.kind === 'file') writeFileSync(abs, node.content, { mode: node.mode });
    else if (node.kind === 'whiteout') Sys.mknod(abs, Sys.S_IFCHR, 0, 0);
    else if (node.kind === 'symlink') symlinkSync(node.target, abs);
  }
  for (const [path, node] of sorted) {
    if (node.kind === 'hardlink') linkSync(join(fs, node.to), join(fs, path));
  }
}

async function randomStack(osDir: string, seed: number, count: number): Promise<TestLayer[]> {
  const rand = random(seed);
  const layers: TestLayer[] = [];
  for (let i = 0; i < count; i++) {
    const nodes = i === 0 ? baseNodes() : randomLayer(rand, i);
    layers.push(await makeLayer(osDir, `s${seed}-l${i}`, (fs) => materialise(fs, nodes)));
  }
  return layers;
}

/** A base with something at every path the random layers touch. */
function baseNodes(): Map<string, Node> {
  const nodes = new Map<string, Node>();
  for (const path of PATHS) {
    const leaf = !PATHS.some((p) => p.startsWith(`${path}/`));
    nodes.set(
      path,
      leaf
        ? { kind: 'file', content: `base:${path}`, mode: 0o644 }
        : { kind: 'dir', opaque: false },
    );
  }
  return nodes;
}

async function manifestOf(layout: string, tag: string) {
  const entry = (await Layout.readIndex(layout)).manifests.find(
    (m) => m.annotations?.[REF_NAME] === tag,
  )!;
  return Layout.readJsonBlob(layout, entry, ManifestSchema);
}

describe('exportImage with maxLayers', () => {
  it.skipIf(!isRoot)(
    'unpacks merged runs exactly as the whole stack, on random overlapping stacks',
    async () => {
      const root = await tempDir('squash-random');
      const osDir = join(root, 'cache');
      const strategies: SquashStrategy[] = ['value', 'suffix', 'flatten'];
      for (let seed = 1; seed <= 24; seed++) {
        const stack = await randomStack(osDir, seed, 6 + (seed % 7));
        const [base, ...layers] = stack;
        const layout = join(root, `oci-${seed}`);
        const dirs = layers.map((l) => l.dir);
        await exportImage({ layout, tag: 'full', base: asBase(base!), layers: dirs });
        const expected = await applyImage(layout, 'full');
        const maxLayers = 2 + (seed % (stack.length - 2));
        const squashStrategy = strategies[seed % 3]!;
        const result = await exportImage({
          layout,
          tag: 'squashed',
          base: asBase(base!),
          layers: dirs,
          maxLayers,
          squashStrategy,
        });
        expect(result.layers.length, `seed ${seed}`).toBeLessThanOrEqual(maxLayers);
        expect(
          result.layers.some((l) => l.squashed),
          `seed ${seed}`,
        ).toBe(true);
        expect(await applyImage(layout, 'squashed'), `seed ${seed} ${squashStrategy}`).toEqual(
          expected,
        );
        expect(await Layout.verify(layout)).toEqual([]);
      }
    },
    120_000,
  );

  it.skipIf(!isRoot)(
    'drops whiteouts that only hide files of the run, keeps those that hide lower files',
    async () => {
      const root = await tempDir('squash-whiteouts');
      const osDir = join(root, 'cache');
      const base = await makeLayer(osDir, 'base', (fs) => {
        mkdirSync(join(fs, 'etc'));
        writeFileSync(join(fs, 'etc/passwd'), 'root\n');
      });
      const one = await makeLayer(osDir, 'one', (fs) => {
        mkdirSync(join(fs, 'opt'));
        Sys.setXattrSync(join(fs, 'opt'), OverlayMarks.OPAQUE_XATTR, 'y');
        writeFileSync(join(fs, 'opt/tmp'), 'scratch');
        writeFileSync(join(fs, 'opt/keep'), 'keep');
      });
      const two = await makeLayer(osDir, 'two', (fs) => {
        mkdirSync(join(fs, 'opt'));
        mkdirSync(join(fs, 'etc'));
        Sys.mknod(join(fs, 'opt/tmp'), Sys.S_IFCHR, 0, 0); // deleted within the run
        Sys.mknod(join(fs, 'etc/passwd'), Sys.S_IFCHR, 0, 0); // deletes a lower file
      });
      const three = await makeLayer(osDir, 'three', (fs) => writeFileSync(join(fs, 'top'), 't'));
      const layout = join(root, 'oci');
      const result = await exportImage({
        layout,
        tag: 'img',
        base: asBase(base),
        layers: [one.dir, two.dir, three.dir],
        maxLayers: 2,
      });
      expect(result.layers).toHaveLength(2);
      const run = result.layers[1]!;
      expect(run.squashed).toEqual([one.dir, two.dir, three.dir]);
      const fs = join(run.dir, 'fs');
      expect(existsSync(join(fs, 'opt/tmp'))).toBe(false);
      expect(Sys.getXattrSync(join(fs, 'opt'), OverlayMarks.OPAQUE_XATTR)?.toString()).toBe('y');
      expect((await readdir(join(fs, 'etc'))).sort()).toEqual(['passwd']);
      const applied = await applyImage(layout, 'img');
      expect(Object.keys(applied.paths).sort()).toEqual(['etc', 'opt', 'opt/keep', 'top']);
    },
  );

  it.skipIf(!isRoot)('keeps an opaque root lower in the run, hiding what lies below', async () => {
    const root = await tempDir('squash-opaque-root');
    const osDir = join(root, 'cache');
    const base = await makeLayer(osDir, 'base', (fs) => writeFileSync(join(fs, 'x'), 'x'));
    const under = await makeLayer(osDir, 'under', (fs) => writeFileSync(join(fs, 'u'), 'u'));
    const one = await makeLayer(osDir, 'one', (fs) => {
      Sys.setXattrSync(fs, OverlayMarks.OPAQUE_XATTR, 'y');
      writeFileSync(join(fs, 'y'), 'y');
    });
    const two = await makeLayer(osDir, 'two', (fs) => writeFileSync(join(fs, 'z'), 'z'));
    const three = await makeLayer(osDir, 'three', (fs) => writeFileSync(join(fs, 'w'), 'w'));
    const layout = join(root, 'oci');
    const args = { layout, base: asBase(base), layers: [under.dir, one.dir, two.dir, three.dir] };
    await exportImage({ ...args, tag: 'full' });
    // suffix at 3: base, under, then one+two+three merged (the opaque root at its bottom).
    const squashed = await exportImage({
      ...args,
      tag: 'squashed',
      maxLayers: 3,
      squashStrategy: 'suffix',
    });
    expect(squashed.layers[2]!.squashed).toEqual([one.dir, two.dir, three.dir]);
    const applied = await applyImage(layout, 'squashed');
    expect(Object.keys(applied.paths).sort()).toEqual(['w', 'y', 'z']);
    expect(applied).toEqual(await applyImage(layout, 'full'));
  });

  it.skipIf(!isRoot)('keeps hardlinks within a layer and breaks none across layers', async () => {
    const root = await tempDir('squash-links');
    const osDir = join(root, 'cache');
    const base = await makeLayer(osDir, 'base', (fs) => writeFileSync(join(fs, 'b'), 'b'));
    const one = await makeLayer(osDir, 'one', (fs) => {
      writeFileSync(join(fs, 't'), 'tool');
      linkSync(join(fs, 't'), join(fs, 't2'));
    });
    const two = await makeLayer(osDir, 'two', (fs) => {
      // t copied up and linked again, as overlayfs does for `ln t t3`
      writeFileSync(join(fs, 't'), 'tool');
      linkSync(join(fs, 't'), join(fs, 't3'));
    });
    const layout = join(root, 'oci');
    const args = { layout, base: asBase(base), layers: [one.dir, two.dir] };
    await exportImage({ ...args, tag: 'full' });
    await exportImage({ ...args, tag: 'squashed', maxLayers: 2 });
    const squashed = await applyImage(layout, 'squashed');
    expect(squashed.hardlinks).toEqual([['t', 't3']]);
    expect(squashed).toEqual(await applyImage(layout, 'full'));
  });

  it('caches a merged run as a layer of its own, shares it, leases it only while exporting', async () => {
    const root = await tempDir('squash-cache');
    const osDir = join(root, 'cache');
    const stack = await Promise.all(
      Array.from({ length: 8 }, (_, i) =>
        makeLayer(osDir, `c${i}`, (fs) => writeFileSync(join(fs, `f${i}`), `layer ${i}\n`)),
      ),
    );
    const [base, ...layers] = stack;
    const layout = join(root, 'oci');
    const events: ExportProgress[] = [];
    const args = {
      layout,
      base: asBase(base!),
      layers: layers.map((l) => l.dir),
      maxLayers: 4,
      squashStrategy: 'suffix' as const,
    };
    const first = await exportImage({ ...args, tag: 'one', onProgress: (e) => events.push(e) });
    expect(first.layers.map((l) => l.squashed?.length ?? 1)).toEqual([1, 1, 1, 5]);
    const run = first.layers[3]!;
    expect(events).toContainEqual({
      phase: 'squash',
      index: 3,
      dir: run.dir,
      layers: 5,
      built: true,
    });
    expect(await Sidecar.read(run.dir, SquashLayer.SIDECAR)).toEqual({
      format: SquashLayer.FORMAT,
      layers: stack.slice(3).map((l) => l.dir.split('/').pop()),
    });
    expect(run.dir).toBe(join(osDir, `build-${SquashLayer.hashOf(run.squashed!).slice(0, 12)}`));
    const scanned = (await Scan.layers(osDir)).find((l) => l.dir === run.dir);
    expect(scanned?.sidecars).toEqual([SquashLayer.SIDECAR]);
    expect(await InUse.holders(run.dir)).toEqual([]);

    // A second image squashing the same run shares its blob; nothing is merged again.
    events.length = 0;
    const second = await exportImage({ ...args, tag: 'two', onProgress: (e) => events.push(e) });
    expect(second.layers[3]).toMatchObject({ dir: run.dir, digest: run.digest, cached: true });
    expect(events.find((e) => e.phase === 'squash')).toMatchObject({ built: false });
    expect(second.manifestDigest).toBe(first.manifestDigest);

    // Every descriptor names its day11 layers.
    const manifest = await manifestOf(layout, 'one');
    expect(manifest.layers.map((d) => d.annotations?.[LAYERS_ANNOTATION])).toEqual([
      ...stack.slice(0, 3).map((l) => l.dir.split('/').pop()),
      stack
        .slice(3)
        .map((l) => l.dir.split('/').pop())
        .join(','),
    ]);

    // Unleased, it is an ordinary layer to the GC.
    const pruned = await Gc.prune({ osDir, keepBytes: 0 });
    expect(pruned.deletions.map((d) => d.dir)).toContain(run.dir);
    expect(existsSync(run.dir)).toBe(false);
  });

  it('is deterministic: the same stack and budget give the same bytes, merged afresh', async () => {
    const root = await tempDir('squash-determinism');
    const osDir = join(root, 'cache');
    const stack = await Promise.all(
      Array.from({ length: 12 }, (_, i) =>
        makeLayer(osDir, `d${i}`, (fs) => {
          mkdirSync(join(fs, 'usr/share'), { recursive: true });
          writeFileSync(join(fs, `usr/share/f${i}`), `layer ${i}\n`.repeat(i * 50 + 1));
        }),
      ),
    );
    const [base, ...layers] = stack;
    const args = { base: asBase(base!), layers: layers.map((l) => l.dir), maxLayers: 5 };
    const first = await exportImage({ ...args, layout: join(root, 'a'), tag: 'img' });
    // Forget every merged run, so the second export merges and compresses them again.
    for (const l of first.layers.filter((x) => x.squashed)) await rm(l.dir, { recursive: true });
    const second = await exportImage({ ...args, layout: join(root, 'b'), tag: 'img' });
    expect(second.layers.filter((l) => l.squashed).every((l) => !l.cached)).toBe(true);
    expect(second.manifestDigest).toBe(first.manifestDigest);
    expect(second.layers.map((l) => l.digest)).toEqual(first.layers.map((l) => l.digest));
    const blobs = async (layout: string) => {
      const dir = join(layout, 'blobs/sha256');
      const names = (await readdir(dir)).sort();
      return Promise.all(names.map(async (n) => [n, await readFile(join(dir, n))] as const));
    };
    expect(await blobs(join(root, 'b'))).toEqual(await blobs(join(root, 'a')));
  });

  it('values sharing: keeps the layers other images have, by layout or by siblings', async () => {
    const root = await tempDir('squash-value');
    const osDir = join(root, 'cache');
    // Equal sizes; only sharing tells the layers apart. Fixed times: a tar
    // header's mtime digits would otherwise make the compressed sizes differ.
    const make = (name: string) =>
      makeLayer(osDir, name, (fs) => {
        writeFileSync(join(fs, name), name.padEnd(64, '.'));
        utimesSync(join(fs, name), 1_700_000_000, 1_700_000_000);
        utimesSync(fs, 1_700_000_000, 1_700_000_000);
      });
    const base = await make('base');
    const [o1, o2, o3, o4] = await Promise.all(['o1', 'o2', 'o3', 'o4'].map(make));
    const [s1, s2, x1] = await Promise.all(['s1', 's2', 'x1'].map(make));
    // The image: base o1 o2 s1 o3 o4 s2, into 5 layers.
    const mine = [o1!, o2!, s1!, o3!, o4!, s2!].map((l) => l.dir);
    const layout = join(root, 'oci');
    const tagged = async (tag: string, layers: string[]) =>
      exportImage({ layout, tag, base: asBase(base), layers });
    await tagged('other1', [s1!.dir, s2!.dir, x1!.dir]);
    await tagged('other2', [s1!.dir, s2!.dir]);
    const args = { tag: 'mine', base: asBase(base), layers: mine, maxLayers: 5 };
    const kept = (r: Awaited<ReturnType<typeof exportImage>>) =>
      r.layers.filter((l) => !l.squashed).map((l) => l.dir);
    // base, run(o1 o2), s1, run(o3 o4), s2: the two layers three images have.
    expect(kept(await exportImage({ ...args, layout }))).toEqual([base.dir, s1!.dir, s2!.dir]);

    // Siblings instead of the layout: only s2 is shared, so o1 and o2 are worth more than s1.
    const siblings = [
      [base.dir, s2!.dir],
      [base.dir, s2!.dir, x1!.dir],
    ];
    const bySiblings = await exportImage({ ...args, layout: join(root, 'oci2'), siblings });
    // Two of the o layers (equal value: which two depends on a byte of gzip), never s1.
    const bySib = kept(bySiblings);
    expect(bySib).toHaveLength(4);
    expect(bySib[0]).toBe(base.dir);
    expect(bySib.at(-1)).toBe(s2!.dir);
    expect(bySib).not.toContain(s1!.dir);
  });

  it('changes nothing without maxLayers, and annotates a stack that fits', async () => {
    const root = await tempDir('squash-none');
    const osDir = join(root, 'cache');
    const base = await makeLayer(osDir, 'base', (fs) => writeFileSync(join(fs, 'b'), 'b'));
    const app = await makeLayer(osDir, 'app', (fs) => writeFileSync(join(fs, 'a'), 'a'));
    const layout = join(root, 'oci');
    const plain = await exportImage({
      layout,
      tag: 'plain',
      base: asBase(base),
      layers: [app.dir],
    });
    expect(plain.layers.every((l) => l.squashed === undefined)).toBe(true);
    expect((await manifestOf(layout, 'plain')).layers.every((d) => !d.annotations)).toBe(true);
    const fits = await exportImage({
      layout,
      tag: 'fits',
      base: asBase(base),
      layers: [app.dir],
      maxLayers: 125,
    });
    expect(fits.layers.map((l) => l.digest)).toEqual(plain.layers.map((l) => l.digest));
    expect((await manifestOf(layout, 'fits')).layers[1]?.annotations).toEqual({
      [LAYERS_ANNOTATION]: app.dir.split('/').pop(),
    });
  });

  it('names the merged layer whose squash.json lists other layers; skips unreadable manifests', async () => {
    const root = await tempDir('squash-corrupt');
    const osDir = join(root, 'cache');
    const stack = await Promise.all(
      Array.from({ length: 5 }, (_, i) =>
        makeLayer(osDir, `k${i}`, (fs) => writeFileSync(join(fs, `f${i}`), `${i}`)),
      ),
    );
    const [base, ...layers] = stack;
    const layout = join(root, 'oci');
    const args = { layout, base: asBase(base!), layers: layers.map((l) => l.dir), maxLayers: 3 };
    const first = await exportImage({ ...args, tag: 'one', squashStrategy: 'suffix' });
    const run = first.layers.find((l) => l.squashed)!;
    await Sidecar.write(run.dir, SquashLayer.SIDECAR, {
      format: 1,
      layers: ['build-000000000000'],
    });
    await expect(
      exportImage({ ...args, tag: 'two', squashStrategy: 'suffix' }),
    ).rejects.toMatchObject({ code: OciExportCodes.LAYER_CHANGED, path: run.dir });
    expect((await Layout.tags(layout)).map((t) => t.tag)).toEqual(['one']);

    // Another image's manifest gone: it no longer counts, the export goes on.
    await rm(run.dir, { recursive: true });
    const tagged = (await Layout.tags(layout))[0]!;
    await rm(Layout.blobPath(layout, tagged.digest));
    const again = await exportImage({ ...args, tag: 'three' });
    expect(again.layers).toHaveLength(3);
  });

  it('refuses a bad budget, strategy or siblings before touching anything', async () => {
    const root = await tempDir('squash-bad');
    const osDir = join(root, 'cache');
    const base = await makeLayer(osDir, 'base', (fs) => writeFileSync(join(fs, 'b'), 'b'));
    const layout = join(root, 'oci');
    const args = { layout, tag: 'x', base: asBase(base), layers: [] };
    const bad = { code: OciExportCodes.BAD_ARGUMENT };
    await expect(exportImage({ ...args, maxLayers: 1 })).rejects.toMatchObject(bad);
    await expect(
      exportImage({ ...args, maxLayers: 3, squashStrategy: 'best' as SquashStrategy }),
    ).rejects.toMatchObject(bad);
    await expect(
      exportImage({ ...args, maxLayers: 3, siblings: 'x' as unknown as string[][] }),
    ).rejects.toMatchObject(bad);
    expect(existsSync(layout)).toBe(false);
    expect(existsSync(join(base.dir, 'layer.tar.gz'))).toBe(false);
  });
});
