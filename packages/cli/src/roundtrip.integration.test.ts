/**
 * The export round trip, end to end with the real runtime and the `day11`
 * command: a DAG built by `day11 build --oci` that creates, modifies and
 * deletes files, replaces a directory (opaque) and makes hardlinks and
 * symlinks; then `day11 export TOP` alone (the top layer's recorded stack
 * comes with it); `umoci unpack` of it must equal the merged overlay view
 * the last build saw, path by path. oci-image-tool and skopeo must accept
 * the layouts.
 */
import { createHash } from 'node:crypto';
import { lstatSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Overlay } from '@day11/container';
import { Exec } from '@day11/exec';
import { LayerDir, LayerMeta } from '@day11/layer';
import { Layout } from '@day11/oci-export';

const BIN = resolve(import.meta.dirname, '../dist/bin/day11.js');

const PLAN = {
  base: 'busybox',
  steps: [
    {
      id: 'libs',
      run: 'mkdir -p /opt/lib/old /usr/share/doc && echo v1 > /opt/lib/a && echo keep > /opt/lib/old/x && echo doc > /usr/share/doc/readme && chmod 640 /opt/lib/a',
    },
    {
      id: 'tools',
      run: 'mkdir -p /opt/tools && echo t > /opt/tools/t && ln /opt/tools/t /opt/tools/t2 && ln -s ../tools/t /opt/tools/link && mkfifo /opt/tools/fifo',
    },
    {
      id: 'app',
      deps: ['libs', 'tools'],
      // modify, delete (lower and base files), replace a directory, hardlink across a lower file
      run: [
        'echo v2 >> /opt/lib/a',
        'rm /usr/share/doc/readme /etc/group',
        'rm -rf /opt/lib/old && mkdir /opt/lib/old && echo new > /opt/lib/old/y',
        'ln /opt/tools/t /opt/tools/t3',
        'chown 1234:5678 /opt/lib/a',
        'ln -s /nowhere /opt/dangling',
      ].join(' && '),
    },
  ],
};

let work: string;
let cache: string;
let layout: string;
let exported: string;

beforeAll(async () => {
  work = await mkdtemp(join(tmpdir(), 'day11-roundtrip-'));
  cache = join(work, 'cache');
  layout = join(work, 'oci');
  exported = join(work, 'exported');
  await writeFile(join(work, 'plan.json'), JSON.stringify(PLAN));
  const day11 = (...args: string[]) =>
    Exec.run(process.execPath, [BIN, ...args], { timeoutMs: 120_000 });
  const built = await day11(
    'build',
    join(work, 'plan.json'),
    '--cache',
    cache,
    '--jobs',
    '2',
    '--oci',
    layout,
  );
  expect(built.stdout).toMatch(/Summary: 3 built, 0 cached, 0 failed/);
  await day11('export', '--cache', cache, '--oci', exported, '--tag', 'app', 'app');
}, 120_000);

afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

interface Entry {
  type: string;
  mode: number;
  uid: number;
  gid: number;
  size?: number;
  sha256?: string;
  target?: string;
}

/** Every path under `root`: type, mode, owner, size, content hash, link target; plus hardlink groups. */
function describeTree(root: string): { entries: Map<string, Entry>; links: string[][] } {
  const entries = new Map<string, Entry>();
  const inodes = new Map<number, string[]>();
  const walk = (rel: string): void => {
    for (const name of readdirSync(join(root, rel)).sort()) {
      const path = rel ? `${rel}/${name}` : name;
      const st = lstatSync(join(root, path));
      const type = st.isDirectory()
        ? 'dir'
        : st.isSymbolicLink()
          ? 'symlink'
          : st.isFIFO()
            ? 'fifo'
            : st.isFile()
              ? 'file'
              : 'other';
      const entry: Entry = { type, mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (type === 'file') {
        entry.size = st.size;
        entry.sha256 = createHash('sha256')
          .update(readFileSync(join(root, path)))
          .digest('hex');
        if (st.nlink > 1) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), path]);
      }
      if (type === 'symlink') entry.target = readlinkSync(join(root, path));
      entries.set(path, entry);
      if (type === 'dir') walk(path);
    }
  };
  walk('');
  const links = [...inodes.values()]
    .filter((g) => g.length > 1)
    .map((g) => g.sort())
    .sort();
  return { entries, links };
}

describe('export round trip: day11 export TOP alone', () => {
  it('umoci unpack gives exactly the merged view the last build saw', async () => {
    const dirOf = (id: string): string => {
      const step = readdirSync(cache).find((n) => {
        try {
          return (
            (JSON.parse(readFileSync(join(cache, n, 'step.json'), 'utf8')) as { id: string }).id ===
            id
          );
        } catch {
          return false;
        }
      });
      return join(cache, step!);
    };
    const baseDir = readdirSync(cache)
      .filter((n) => LayerDir.isLayerName(n))
      .map((n) => join(cache, n))
      .find((d) => {
        try {
          readFileSync(join(d, 'base.json'));
          return true;
        } catch {
          return false;
        }
      })!;
    // The view the app step saw, plus its own writes: all layers, topmost first, read-only.
    // The stack the app step ran on, as recorded in its layer.json, topmost first.
    const app = dirOf('app');
    const recorded = (await LayerMeta.load(app)).parent_hashes;
    const lowers = [app, ...recorded.map((h) => LayerDir.path({ osDir: cache, hash: h }))].map(
      (d) => join(d, 'fs'),
    );
    const merged = join(work, 'merged');
    await mkdir(merged);
    const mount = await Overlay.mount({ lowers: [...lowers, join(baseDir, 'fs')], target: merged });
    let expected;
    try {
      expected = describeTree(merged);
    } finally {
      await mount.unmount();
    }
    const bundle = join(work, 'bundle');
    await Exec.run('umoci', ['unpack', '--image', `${exported}:app`, bundle]);
    const actual = describeTree(join(bundle, 'rootfs'));
    expect([...actual.entries.keys()]).toEqual([...expected.entries.keys()]);
    for (const [path, entry] of expected.entries)
      expect({ path, ...actual.entries.get(path) }).toEqual({ path, ...entry });
    expect(actual.links).toEqual(expected.links);
    // The changes really happened (so the comparison is not vacuous).
    expect(expected.entries.get('opt/lib/a')).toMatchObject({ uid: 1234, gid: 5678, mode: 0o640 });
    expect(expected.entries.has('etc/group')).toBe(false);
    expect(expected.entries.has('opt/lib/old/x')).toBe(false);
    expect(expected.entries.get('opt/tools/fifo')?.type).toBe('fifo');
    // `ln t t3` in app copied t up (index=off): t and t3 share an inode in app's
    // layer, while t2 stays tools' inode. The image must show the same split.
    expect(expected.links).toEqual([['opt/tools/t', 'opt/tools/t3']]);
  });

  it('is the very image the build exported for that step', async () => {
    const [a, b] = await Promise.all([Layout.tags(layout), Layout.tags(exported)]);
    expect(b.find((t) => t.tag === 'app')!.digest).toBe(a.find((t) => t.tag === 'app')!.digest);
  });

  it('passes Layout.verify, oci-image-tool, skopeo inspect and skopeo copy', async () => {
    expect(await Layout.verify(exported)).toEqual([]);
    expect(await Layout.verify(layout)).toEqual([]);
    const validated = await Exec.run('oci-image-tool', ['validate', '--type', 'image', layout]);
    expect(validated.stdout + validated.stderr).toContain('Validation succeeded');
    const inspect = JSON.parse(
      (await Exec.run('skopeo', ['inspect', `oci:${layout}:app`])).stdout,
    ) as { Layers: string[] };
    expect(inspect.Layers).toHaveLength(4);
    await Exec.run('skopeo', ['copy', `oci:${layout}:app`, `oci:${join(work, 'copy')}:app`]);
    expect(await Layout.verify(join(work, 'copy'))).toEqual([]);
  });

  it('shares the blobs of shared layers between images', async () => {
    const manifests = await Promise.all(
      ['libs', 'tools', 'app'].map(async (tag) => {
        const { stdout } = await Exec.run('skopeo', ['inspect', '--raw', `oci:${layout}:${tag}`]);
        return (JSON.parse(stdout) as { layers: { digest: string }[] }).layers.map((l) => l.digest);
      }),
    );
    const [libs, tools, app] = manifests as [string[], string[], string[]];
    expect(app[0]).toBe(libs[0]); // the base
    expect(app).toEqual(expect.arrayContaining([libs[1], tools[1]]));
  });
});
