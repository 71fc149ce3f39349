/**
 * A 140-layer image, the depth day10 documents Docker refusing ("max depth
 * exceeded"), built step by step on real overlayfs (one small layer per
 * step; a deletion, an opaque directory and hardlinks in the middle) and
 * exported with `maxLayers: 125`:
 *
 * - `umoci unpack` of it equals the overlay view of all 140 layers, path by path;
 * - Docker (a private dockerd) and Podman (a private storage) run it, loaded
 *   with `skopeo copy`;
 * - the unsquashed image fails in both, and the test shows how (or says that
 *   an engine took it).
 *
 * Needs root, overlayfs, busybox-static, umoci, skopeo, podman and docker.io.
 * About four minutes on two cores, most of it the engines loading 125 and
 * 140 layers (Docker takes ~0.4 s a layer here).
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Exec } from '@day11/exec';
import type { Base } from '@day11/layer';
import { exportImage, type ExportResult } from './export.js';
import {
  DockerDaemon,
  PodmanStore,
  mountsUnder,
  processesUsing,
  skopeoCopy,
} from './fixtures/engines.js';
import { cleanup, tempDir } from './fixtures/layers.js';
import { Mounts, buildStep, makeBusyboxBase, overlayView, unpacked } from './fixtures/overlay.js';
import * as Layout from './layout.js';
import { DOCKER_MAX_LAYERS } from './squash-plan.js';

const DEPTH = 140;
const FIRST_TINY = 62;
const LAST_TINY = FIRST_TINY + (DEPTH - DOCKER_MAX_LAYERS);

/**
 * Step `i` (1 … 139). Most steps write a few KiB; steps 62–77 are tiny: 16
 * layers, just what 140 → 125 must merge, so the plan merges exactly them,
 * and that is where the hard cases are.
 */
function stepCommand(i: number): string {
  const special: Record<number, string> = {
    62: 'mkdir -p /var/lib/pkg/old && echo a > /var/lib/pkg/old/a && echo doomed > /etc/doomed && echo tmp > /opt/tmpfile',
    64: 'rm /etc/doomed /bin/vi', // whiteouts: of a file made in the run, of a base file
    66: 'rm /opt/tmpfile', // made and deleted within the run
    68: 'rm -rf /var/lib/pkg && mkdir -p /var/lib/pkg && echo c > /var/lib/pkg/c', // opaque
    70: 'echo h > /opt/h && ln /opt/h /opt/h2', // a hardlink within the layer
    72: 'ln /opt/steps/s61 /opt/steps/s61.hard', // a hardlink to a lower file: copied up
    74: 'rm /var/lib/pkg/c && echo d > /var/lib/pkg/d', // a whiteout inside the opaque dir
    75: 'rm /opt/steps/s10', // deletes a file of a layer kept below the run
    100: 'rm /opt/steps/s63', // deletes a file of the merged run from above
  };
  const tiny = i >= FIRST_TINY && i <= LAST_TINY;
  const own = tiny ? `echo ${i} > /opt/steps/s${i}` : `seq ${i} 3 ${i + 9000} > /opt/steps/s${i}`;
  return ['mkdir -p /opt/steps', own, special[i]].filter(Boolean).join(' && ');
}

const RUN_CHECK = [
  'ls /opt/steps | wc -l',
  'cat /var/lib/pkg/d',
  'test ! -e /etc/doomed',
  'test ! -e /var/lib/pkg/old',
  'echo ok',
];

let root: string;
let osDir: string;
let layout: string;
let base: Base;
let layers: string[];
let squashed: ExportResult;
const mounts = new Mounts();
const FULL = 'deep';
const SQUASHED = 'deep-squashed';

beforeAll(async () => {
  if (!Exec.isRoot()) throw new Error('the integration tests mount overlayfs: run them as root');
  root = await tempDir('squash-deep');
  osDir = join(root, 'cache');
  layout = join(root, 'oci');
  await mkdir(osDir);
  base = await makeBusyboxBase(osDir);
  layers = [];
  for (let i = 1; i < DEPTH; i++) {
    layers.push(await buildStep({ osDir, base, deps: layers, run: stepCommand(i), mounts }));
  }
  const config = { Cmd: ['/bin/sh', '-c', RUN_CHECK.join(' && ')], Env: ['PATH=/bin'] };
  await exportImage({ layout, tag: FULL, base, layers, config });
  squashed = await exportImage({
    layout,
    tag: SQUASHED,
    base,
    layers,
    config,
    maxLayers: DOCKER_MAX_LAYERS,
  });
}, 300_000);

afterAll(async () => {
  mounts.close();
  await cleanup();
  // Only ours: other suites may be mounting their own day11 dirs right now.
  const count = (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    .filter((l) => l.includes(root)).length;
  expect(count).toBe(0);
});

/** Step numbers of the layers merged into runs. */
function mergedSteps(): number[] {
  const steps = new Map(layers.map((dir, i) => [dir, i + 1]));
  return squashed.layers.flatMap((l) => (l.squashed ?? []).map((d) => steps.get(d)!));
}

describe(`a ${DEPTH}-layer image squashed to ${DOCKER_MAX_LAYERS}`, () => {
  it('merges a run holding the deletions, the opaque directory and the hardlinks', () => {
    expect(squashed.layers).toHaveLength(DOCKER_MAX_LAYERS);
    const tiny = Array.from({ length: LAST_TINY - FIRST_TINY + 1 }, (_, i) => FIRST_TINY + i);
    expect(mergedSteps()).toEqual(tiny);
    expect(squashed.layers[0]!.dir).toBe(base.dir);
  });

  it('unpacks with umoci to exactly the overlay view of all the layers', async () => {
    const expected = await overlayView(mounts, join(root, 'view'), { base, layers });
    const actual = unpacked(`${layout}:${SQUASHED}`, join(root, 'bundle'));
    // Spot checks for a readable failure, then every path.
    expect(actual.paths['etc/doomed']).toBeUndefined();
    expect(actual.paths['bin/vi']).toBeUndefined();
    expect(actual.paths['opt/tmpfile']).toBeUndefined();
    expect(actual.paths['var/lib/pkg/old']).toBeUndefined();
    expect(actual.paths['var/lib/pkg/c']).toBeUndefined();
    expect(actual.paths['var/lib/pkg/d']).toMatchObject({ type: 'file' });
    expect(actual.paths['opt/steps/s10']).toBeUndefined();
    expect(actual.paths['opt/steps/s63']).toBeUndefined();
    expect(actual.hardlinks).toContainEqual(['opt/h', 'opt/h2']);
    expect(actual.hardlinks).toContainEqual(['opt/steps/s61', 'opt/steps/s61.hard']);
    expect(Object.keys(actual.paths).filter((p) => p.startsWith('opt/steps/s'))).toHaveLength(
      DEPTH - 1 - 2 + 1,
    );
    expect(actual).toEqual(expected);
    expect(await Layout.verify(layout)).toEqual([]);
    const validated = execFileSync(
      'oci-image-tool',
      ['validate', '--type', 'image', '--ref', `name=${SQUASHED}`, layout],
      { stdio: 'pipe' },
    ).toString();
    expect(validated).toContain('Validation succeeded');
  });

  it('runs in Docker; the unsquashed image does not load', async () => {
    const daemon = await DockerDaemon.start();
    try {
      const host = ['--dest-daemon-host', daemon.host];
      const copied = await skopeoCopy([
        ...host,
        `oci:${layout}:${SQUASHED}`,
        `docker-daemon:${SQUASHED}:latest`,
      ]);
      expect(copied.stderr).toBe('');
      const ran = await daemon.docker(['run', '--rm', '--network', 'none', `${SQUASHED}:latest`]);
      expect({ exit: ran.exitCode, out: ran.stdout, err: ran.stderr }).toEqual({
        exit: 0,
        out: `${DEPTH - 2}\nd\nok\n`,
        err: '',
      });

      // skopeo 1.9 reports success, but the daemon dropped the image: load it
      // with `docker load` to see why.
      const full = await skopeoCopy([
        ...host,
        `oci:${layout}:${FULL}`,
        `docker-daemon:${FULL}:latest`,
      ]);
      const present = await daemon.docker(['image', 'inspect', `${FULL}:latest`]);
      if (present.exitCode === 0) {
        console.warn(`Docker took the unsquashed ${DEPTH}-layer image on this machine`);
        return;
      }
      expect(full.exitCode).toBe(0);
      expect(present.stderr).toMatch(/No such image/);
      const archive = join(root, 'deep.tar');
      await skopeoCopy([`oci:${layout}:${FULL}`, `docker-archive:${archive}:${FULL}:latest`]);
      const loaded = await daemon.docker(['load', '--input', archive]);
      expect(loaded.exitCode).not.toBe(0);
      expect(loaded.stderr.trim()).toBe('max depth exceeded');
    } finally {
      await daemon.close();
    }
    expect(mountsUnder(daemon.dir)).toEqual([]);
    expect(processesUsing(daemon.dir)).toEqual([]);
    expect(existsSync(daemon.dir)).toBe(false);
  }, 600_000);

  it('runs in Podman; the unsquashed image does not', async () => {
    const store = await PodmanStore.create();
    try {
      for (const tag of [SQUASHED, FULL]) {
        const copied = await skopeoCopy([
          `oci:${layout}:${tag}`,
          store.ref(`localhost/${tag}:latest`),
        ]);
        expect(copied.exitCode, copied.stderr).toBe(0);
      }
      const ran = await store.run(`localhost/${SQUASHED}:latest`, []);
      expect({ exit: ran.exitCode, out: ran.stdout }, ran.stderr).toEqual({
        exit: 0,
        out: `${DEPTH - 2}\nd\nok\n`,
      });
      const full = await store.run(`localhost/${FULL}:latest`, []);
      if (full.exitCode === 0) {
        console.warn(`Podman ran the unsquashed ${DEPTH}-layer image on this machine`);
        return;
      }
      expect(full.stderr).toMatch(
        /^Error: mounting storage for container [0-9a-f]{64}: max depth exceeded$/m,
      );
    } finally {
      await store.close();
    }
    expect(mountsUnder(store.dir)).toEqual([]);
    expect(processesUsing(store.dir)).toEqual([]);
    expect(existsSync(store.dir)).toBe(false);
  }, 600_000);
});
