/**
 * The whole round trip on real overlayfs and real OCI tools: a DAG of layers
 * is built by running shell commands (busybox, chroot) on overlay mounts of
 * its dependencies; each upper is committed as a layer; the top image is
 * exported; then `umoci unpack` of the tag must give exactly the merged view
 * the last build saw, and oci-image-tool and skopeo must accept the layout.
 *
 * The builds here stand in for `runInLayers` (@day11/runner), which this
 * package may not depend on: the same mounts (`lowerdir+` per layer,
 * redirect_dir=off, metacopy=off), the same commit. A runInLayers-based version
 * of this test belongs with the runner or the CLI.
 */
import { execFileSync } from 'node:child_process';
import { lstatSync } from 'node:fs';
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Exec, Sys, type Day11Error } from '@day11/exec';
import { LayerDir, type Base } from '@day11/layer';
import { cleanup, tempDir } from './fixtures/layers.js';
import { Mounts, buildStep, makeBusyboxBase, overlayView, unpacked } from './fixtures/overlay.js';
import { exportImage } from './export.js';
import * as Layout from './layout.js';

interface Step {
  id: string;
  deps: string[];
  run: string;
}

/** Steps in install order; each one's dependencies come before it. */
const PLAN: Step[] = [
  {
    id: 'libs',
    deps: [],
    run: [
      'mkdir -p /usr/lib/libs /opt/shared /var/cache/old',
      'echo one > /usr/lib/libs/a.so && echo two > /usr/lib/libs/b.so',
      'ln /usr/lib/libs/a.so /usr/lib/libs/a.so.hard && ln -s a.so /usr/lib/libs/a.so.1',
      'echo x > /var/cache/old/x && echo y > /var/cache/old/y',
      'mkfifo /opt/shared/fifo && chmod 4755 /usr/lib/libs/b.so && chown 1000:1000 /opt/shared',
      `mkdir -p /opt/${'d'.repeat(120)} && echo long > /opt/${'d'.repeat(120)}/${'f'.repeat(150)}`,
      "echo unicode > '/opt/shared/données-文件.txt'",
      'echo file > /opt/filedir',
    ].join(' && '),
  },
  {
    id: 'tools',
    deps: [],
    run: [
      'mkdir -p /opt/tools && printf "#!/bin/sh\\necho tool\\n" > /opt/tools/t && chmod 755 /opt/tools/t',
      'chown 3000000:3000001 /opt/tools/t && rm /etc/issue',
    ].join(' && '),
  },
  {
    id: 'app',
    deps: ['libs', 'tools'],
    run: [
      'echo changed >> /usr/lib/libs/b.so', // modify a lower file (copy-up)
      'rm /usr/lib/libs/a.so.hard', // delete: a whiteout
      'rm -rf /var/cache/old && mkdir /var/cache/old && echo new > /var/cache/old/z', // opaque dir
      'mkdir -p /opt/app && echo app > /opt/app/main',
      'ln /opt/app/main /opt/app/main2 && ln /opt/app/main /opt/app/main3', // hardlinks
      'ln -s /opt/app/main /opt/app/link && ln -s ../tools/t /opt/app/tool', // symlinks
      'rm /opt/tools/t && echo replaced > /opt/tools/t', // a file of another layer replaced
      'mknod /opt/app/null c 1 3',
      'rm /bin/vi /bin/less /bin/more', // several whiteouts (overlayfs may share one inode)
    ].join(' && '),
  },
  {
    id: 'final',
    deps: ['app'],
    run: [
      'rm -rf /opt/shared && echo final > /opt/final && ln -s /opt/final /opt/final.link',
      'rm /usr/lib/libs/a.so.1 && mkdir -p /usr/lib/libs/sub && touch /usr/lib/libs/sub/new',
      'ln /usr/lib/libs/b.so /usr/lib/libs/b.so.hard', // a hardlink to a lower file: copied up, then linked
      'rm -rf /opt/tools && echo now-a-file > /opt/tools', // a directory replaced by a file
      'rm /opt/filedir && mkdir /opt/filedir && echo g > /opt/filedir/file', // a file replaced by a directory
      'chmod 700 /root && chown 42:43 /opt/app/main',
    ].join(' && '),
  },
];

const TAG = 'dag.final';

let osDir: string;
let base: Base;
const built = new Map<string, string>(); // step id → layer dir
const mounts = new Mounts();

/** Layer dirs of every transitive dependency of `step`, in install order (bottom first). */
function stackOf(step: Step): string[] {
  const seen = new Set<string>();
  const visit = (s: Step) => {
    for (const id of s.deps) {
      if (!seen.has(id)) {
        seen.add(id);
        visit(PLAN.find((p) => p.id === id)!);
      }
    }
  };
  visit(step);
  return PLAN.filter((p) => seen.has(p.id)).map((p) => built.get(p.id)!);
}

async function build(step: Step): Promise<void> {
  built.set(step.id, await buildStep({ osDir, base, deps: stackOf(step), run: step.run, mounts }));
}

describe.skipIf(!Exec.isRoot())('export of a DAG built on overlayfs', () => {
  let root: string;
  let layout: string;
  let layers: string[];

  beforeAll(async () => {
    root = await tempDir('dag');
    osDir = join(root, 'cache');
    layout = join(root, 'oci');
    await mkdir(osDir);
    base = await makeBusyboxBase(osDir);
    for (const step of PLAN) await build(step);
    layers = PLAN.map((s) => built.get(s.id)!);
    await exportImage({
      layout,
      tag: TAG,
      base,
      layers,
      config: { Cmd: ['/bin/sh'], Env: ['PATH=/bin'] },
    });
  }, 120_000);

  afterAll(async () => {
    mounts.close();
    await cleanup();
    // Only ours: other test files (the squash engines' test) may hold day11 mounts right now.
    const count = (await readFile('/proc/mounts', 'utf8'))
      .split('\n')
      .filter((l) => l.includes(root)).length;
    expect(count).toBe(0);
  });

  it('umoci unpack gives exactly the merged overlay view the last build saw', async () => {
    // The last build's view: all its lowers and its own (now committed) upper, read-only.
    const expected = await overlayView(mounts, join(root, 'view'), { base, layers });
    const actual = unpacked(`${layout}:${TAG}`, join(root, 'bundle'));

    // Spot checks first, for a readable failure; then everything.
    expect(actual.paths['var/cache/old/x']).toBeUndefined();
    expect(actual.paths['var/cache/old/z']).toMatchObject({ type: 'file' });
    expect(actual.paths['opt/tools']).toMatchObject({ type: 'file' });
    expect(actual.paths['opt/filedir']).toMatchObject({ type: 'dir' });
    expect(actual.paths['bin/vi']).toBeUndefined();
    expect(actual.paths['opt/app/null']).toMatchObject({ type: 'char' });
    // final's chown copied main up alone: overlayfs (without index=on) breaks that link.
    expect(actual.hardlinks).toContainEqual(['opt/app/main2', 'opt/app/main3']);
    expect(actual.hardlinks).toContainEqual(['usr/lib/libs/b.so', 'usr/lib/libs/b.so.hard']);
    expect(actual).toEqual(expected);
  });

  it('passes oci-image-tool validate', () => {
    const out = execFileSync(
      'oci-image-tool',
      ['validate', '--type', 'image', '--ref', `name=${TAG}`, layout],
      {
        stdio: 'pipe',
      },
    ).toString();
    expect(out).toContain('Validation succeeded');
  });

  it('passes skopeo inspect and skopeo copy to another layout', async () => {
    const info = JSON.parse(
      execFileSync('skopeo', ['inspect', `oci:${layout}:${TAG}`]).toString(),
    ) as {
      Layers: string[];
      Os: string;
    };
    expect(info.Layers).toHaveLength(PLAN.length + 1);
    expect(info.Os).toBe('linux');
    const other = join(root, 'copy');
    execFileSync('skopeo', ['copy', `oci:${layout}:${TAG}`, `oci:${other}:${TAG}`], {
      stdio: 'pipe',
    });
    expect(await Layout.verify(other)).toEqual([]);
    expect((await Layout.tags(other)).map((t) => t.tag)).toEqual([TAG]);
  });

  it('had real overlay whiteouts and an opaque directory to convert', async () => {
    const app = join(built.get('app')!, 'fs');
    const vi = lstatSync(join(app, 'bin/vi'));
    expect(vi.isCharacterDevice() && vi.rdev === 0).toBe(true);
    // Since Linux 5.8 overlayfs links one whiteout inode for many deletions; the tar must not.
    expect(lstatSync(join(app, 'bin/less')).ino).toBe(vi.ino);
    expect(Sys.getXattrSync(join(app, 'var/cache/old'), 'trusted.overlay.opaque')?.toString()).toBe(
      'y',
    );
  });

  it('agrees with umoci on a layout without index.json (an export stopped before tagging), and an export repairs it', async () => {
    const umociLs = (dir: string) =>
      Exec.run('umoci', ['ls', '--layout', dir], { allowNonZeroExit: true });
    const empty = join(root, 'empty');
    await Layout.init(empty);
    expect(await Layout.verify(empty)).toEqual([]);
    expect((await umociLs(empty)).exitCode).toBe(0);

    const stopped = join(root, 'stopped');
    execFileSync('cp', ['-a', layout, stopped]);
    await rm(join(stopped, 'index.json'));
    expect((await umociLs(stopped)).exitCode).not.toBe(0);
    const problems = await Layout.verify(stopped);
    expect(problems.map((p) => p.path)).toEqual([join(stopped, 'index.json')]);
    expect(problems[0]!.message).toMatch(/index\.json is missing/);
    const err = await Layout.tags(stopped).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'OCI_LAYOUT_INVALID', path: join(stopped, 'index.json') });
    expect((err as Day11Error).hint).toContain(`day11 export --oci ${stopped}`);

    await exportImage({ layout: stopped, tag: TAG, base, layers });
    expect(await Layout.verify(stopped)).toEqual([]);
    expect((await umociLs(stopped)).stdout.trim()).toBe(TAG);
  });

  it('verifies, and the layer dirs are proper layers', async () => {
    expect(await Layout.verify(layout)).toEqual([]);
    for (const dir of layers) expect(LayerDir.isLayerName(dir.split('/').pop()!)).toBe(true);
  });
});
