/**
 * The bad-input corpus: every case damages one thing or hands over one bad
 * argument, and says how the library and the CLI must refuse it. The runner
 * (`bad-input.integration.test.ts`) checksums the world around each case.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rename, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { expect } from 'vitest';
import { BuildCodes, loadPlan } from '@day11/build';
import { ContainerCodes, ContainerError, Overlay } from '@day11/container';
import { Exec } from '@day11/exec';
import {
  Commit,
  Gc,
  Import,
  LayerCodes,
  LayerDir,
  LayerMeta,
  LayerSymlinks,
  Scan,
  Sidecar,
} from '@day11/layer';
import { Layout, OciExportCodes, exportImage } from '@day11/oci-export';
import { BIN, rejectsTyped, throwsTyped, type Case } from './bad-input-case.js';
import { HARMLESS, tarball, type Entry } from './bad-input-tar.js';
import { CONFIG, TAG, imageBlobs, type World } from './bad-input-world.js';

/** Replaces `path` with `bytes` under a new inode, so a hardlinked twin (the layer's blob cache) is untouched. */
async function replace(path: string, bytes: string | Buffer): Promise<void> {
  await writeFile(`${path}.new`, bytes);
  await rename(`${path}.new`, path);
}

/** The JSON of a file, changed by `edit`. */
async function edited(
  path: string,
  edit: (json: Record<string, unknown>) => void,
): Promise<string> {
  const json = JSON.parse(await readFile(path, 'utf8')) as Record<string, unknown>;
  edit(json);
  return JSON.stringify(json);
}

/** The first half of a file's bytes. */
async function firstHalf(path: string): Promise<Buffer> {
  const bytes = await readFile(path);
  return bytes.subarray(0, Math.floor(bytes.length / 2));
}

// ---------------------------------------------------------------- layer.json

function metaCase(
  name: string,
  damage: (file: string) => Promise<void>,
  code: string = LayerCodes.META_CORRUPT,
): Case {
  return {
    name: `layer.json ${name}`,
    arrange: async (w) => {
      const file = LayerMeta.file(w.layers[1]);
      await damage(file);
      return file;
    },
    lib: async (w, file) => {
      await rejectsTyped(LayerMeta.load(w.layers[1]), code, file);
      // A scan lists the layer with the reason, and still reads the others.
      const scanned = await Scan.layers(w.osDir);
      const bad = scanned.find((l) => l.dir === w.layers[1]);
      expect(bad?.metaError?.code).toBe(code);
      expect(bad?.metaError?.message).toContain(file);
      expect(scanned.filter((l) => l.meta !== undefined)).toHaveLength(2);
      // `layers ls` lists it as unreadable rather than failing.
      const ls = await Exec.run(process.execPath, [BIN, 'layers', 'ls', '--cache', w.osDir]);
      expect(ls.stdout).toContain(`unreadable (${code})`);
    },
    cli: (w) => ['layers', 'show', w.hashes[1], '--cache', w.osDir],
  };
}

const META_CASES: Case[] = [
  metaCase('missing', (f) => rm(f), LayerCodes.META_MISSING),
  metaCase('not JSON', (f) => writeFile(f, '{"exit_status": 0,,}')),
  metaCase('truncated', async (f) => writeFile(f, await firstHalf(f))),
  metaCase('empty', (f) => truncate(f, 0)),
  metaCase('with wrong types', async (f) =>
    writeFile(
      f,
      await edited(f, (j) => {
        j['exit_status'] = 'zero';
        j['uid'] = -1;
      }),
    ),
  ),
  metaCase('not an object', (f) => writeFile(f, '[0, [], "x"]')),
  metaCase('binary garbage', (f) => writeFile(f, randomBytes(300))),
  metaCase('a directory', async (f) => {
    await rm(f);
    await mkdir(f);
  }),
  {
    name: 'layer.json corrupt, exported with `day11 export`',
    arrange: async (w) => {
      const file = LayerMeta.file(w.layers[1]);
      await writeFile(file, '{"exit_status":');
      return file;
    },
    cli: (w) => exportArgs(w, TAG, w.hashes[1]),
  },
];

// ---------------------------------------------------------------- sidecars

function sidecarCase(name: string, bytes: string | Buffer): Case {
  return {
    name: `sidecar ${name}`,
    arrange: async (w) => {
      const file = join(w.layers[1], 'build.json');
      await writeFile(file, bytes);
      return file;
    },
    lib: async (w, file) => {
      await rejectsTyped(Sidecar.read(w.layers[1], 'build.json'), LayerCodes.SIDECAR_CORRUPT, file);
      // The layer itself is still listed with its metadata and its sidecars.
      const scanned = (await Scan.layers(w.osDir)).find((l) => l.dir === w.layers[1]);
      expect(scanned?.meta?.exit_status).toBe(0);
      expect(scanned?.sidecars).toEqual(['build.json']);
    },
    cli: (w) => ['layers', 'show', w.hashes[1], '--cache', w.osDir],
  };
}

const SIDECAR_CASES: Case[] = [
  sidecarCase('an array', '[{"pkg": "pkg.2"}]'),
  sidecarCase('a number', '42'),
  sidecarCase('null', 'null'),
  sidecarCase('a string', '"pkg.2"'),
  sidecarCase('truncated', '{"pkg": "pk'),
  sidecarCase('binary garbage', randomBytes(200)),
  {
    name: 'base.json sidecar not an object, exported with `day11 export`',
    arrange: async (w) => {
      const file = join(w.base.dir, 'base.json');
      await writeFile(file, '["busybox"]');
      return file;
    },
    cli: (w) => exportArgs(w, TAG, w.hashes[1]),
  },
  {
    name: 'sidecar name that climbs out of the layer',
    arrange: () => '../../../etc/passwd.json',
    lib: async (w, name) => {
      await rejectsTyped(Sidecar.read(w.layers[1], name), LayerCodes.SIDECAR_INVALID, name);
      await rejectsTyped(Sidecar.write(w.layers[1], name, {}), LayerCodes.SIDECAR_INVALID, name);
    },
  },
];

// ---------------------------------------------------------------- blobs

function exportArgs(w: World, tag: string, ...hashes: string[]): string[] {
  // --tag=TAG: a tag beginning with "-" must reach the tag check, not the option parser.
  return ['export', '--cache', w.osDir, '--oci', w.layout, `--tag=${tag}`, ...hashes];
}

/** Re-exporting the world's image into its layout. */
function reexport(w: World, tag = TAG) {
  return exportImage({ layout: w.layout, tag, base: w.base, layers: w.layers, config: CONFIG });
}

/** Expects Layout.verify to report exactly one problem, about `file`. */
async function verifyBlames(w: World, file: string, message: RegExp): Promise<void> {
  const problems = await Layout.verify(w.layout);
  expect(problems).toHaveLength(1);
  expect(problems[0]!.path).toBe(file);
  expect(problems[0]!.message).toMatch(message);
}

const BLOB_CASES: Case[] = [
  {
    name: 'layer blob garbled (same size)',
    arrange: async (w) => {
      const file = (await imageBlobs(w)).layers[0]!;
      const bytes = await readFile(file);
      bytes.fill(0x55, bytes.length >> 2, bytes.length >> 1);
      await replace(file, bytes);
      return file;
    },
    lib: async (w, file) => {
      await verifyBlames(w, file, /content hashes to sha256:/);
      // Layout.gc reads manifests and configs only: it keeps the blob and removes nothing.
      expect((await Layout.gc(w.layout)).removed).toEqual([]);
    },
  },
  {
    name: 'layer blob truncated (a re-export puts it back from the cache)',
    arrange: async (w) => {
      const file = (await imageBlobs(w)).layers[1]!;
      await replace(file, await firstHalf(file));
      return file;
    },
    lib: async (w, file) => {
      await verifyBlames(w, file, /^size \d+, the descriptor says \d+$/);
      const result = await reexport(w);
      expect(result.layers.every((l) => l.cached)).toBe(true);
      expect(await Layout.verify(w.layout)).toEqual([]);
    },
    after: 'pristine',
  },
  {
    name: 'layer blob missing (`day11 export` puts it back)',
    arrange: async (w) => {
      const file = (await imageBlobs(w)).layers[0]!;
      await rm(file);
      return file;
    },
    lib: (w, file) => verifyBlames(w, file, /^missing blob$/),
    cli: (w) => exportArgs(w, TAG, ...w.hashes),
    exit: 0,
    after: 'pristine',
  },
  {
    name: 'manifest blob garbled',
    arrange: async (w) => {
      const file = (await imageBlobs(w)).manifest;
      const bytes = await readFile(file);
      await replace(file, Buffer.from('{'.padEnd(bytes.length, ' ')));
      return file;
    },
    lib: async (w, file) => {
      await verifyBlames(w, file, /content hashes to sha256:/);
      // gc cannot know what the manifest referenced: it must delete nothing.
      await rejectsTyped(Layout.gc(w.layout), OciExportCodes.BLOB_CORRUPT, file);
    },
  },
  {
    name: 'config blob missing',
    arrange: async (w) => {
      const file = (await imageBlobs(w)).config;
      await rm(file);
      return file;
    },
    lib: (w, file) => verifyBlames(w, file, /^missing blob$/),
  },
];

// ---------------------------------------------------------------- index.json and oci-layout

function layoutFileCase(
  name: string,
  file: 'index.json' | 'oci-layout',
  damage: (path: string) => Promise<void>,
  code: string,
): Case {
  return {
    name: `${file} ${name}`,
    arrange: async (w) => {
      const path = join(w.layout, file);
      await damage(path);
      return path;
    },
    lib: async (w, path) => {
      // Another image (the base and one layer), so the export has new blobs to write.
      const other = { layout: w.layout, tag: 'other', base: w.base, layers: [w.layers[0]] };
      await rejectsTyped(exportImage(other), code, path);
      expect((await Layout.verify(w.layout)).map((p) => p.path)).toContain(path);
    },
    cli: (w) => exportArgs(w, 'other', w.hashes[0]),
  };
}

const LAYOUT_CASES: Case[] = [
  layoutFileCase(
    'garbage',
    'index.json',
    (f) => writeFile(f, '}}garbage{{'),
    OciExportCodes.INDEX_CORRUPT,
  ),
  layoutFileCase(
    'truncated',
    'index.json',
    async (f) => writeFile(f, await firstHalf(f)),
    OciExportCodes.INDEX_CORRUPT,
  ),
  layoutFileCase('an array', 'index.json', (f) => writeFile(f, '[]'), OciExportCodes.INDEX_CORRUPT),
  layoutFileCase('null', 'index.json', (f) => writeFile(f, 'null'), OciExportCodes.INDEX_CORRUPT),
  layoutFileCase(
    'with a digest that climbs out of blobs/',
    'index.json',
    async (f) =>
      writeFile(
        f,
        await edited(f, (j) => {
          (j['manifests'] as { digest: string }[])[0]!.digest = 'sha256:../../../../etc/passwd';
        }),
      ),
    OciExportCodes.INDEX_CORRUPT,
  ),
  layoutFileCase('missing', 'oci-layout', (f) => rm(f), OciExportCodes.LAYOUT_INVALID),
  layoutFileCase(
    'garbage',
    'oci-layout',
    (f) => writeFile(f, 'oci'),
    OciExportCodes.LAYOUT_INVALID,
  ),
  layoutFileCase(
    'of an unknown version',
    'oci-layout',
    (f) => writeFile(f, '{"imageLayoutVersion":"9.9.9"}'),
    OciExportCodes.LAYOUT_INVALID,
  ),
];

// ---------------------------------------------------------------- tarballs

function tarCase(
  name: string,
  bytes: ((w: World) => Buffer) | undefined,
  code: string = LayerCodes.IMPORT_UNSAFE_PATH,
): Case {
  return {
    name: `tarball ${name}`,
    arrange: async (w) => {
      const file = join(w.inputs, 'rootfs.tar');
      // A file the hostile entries aim at: it must come out untouched.
      await writeFile(join(w.inputs, 'victim'), 'precious\n');
      if (bytes) await writeFile(file, bytes(w));
      return file;
    },
    lib: async (w, file) => {
      await rejectsTyped(
        Import.fromTarball({ osDir: w.osDir, tarball: file, image: 'hostile' }),
        code,
        file,
      );
      expect(await Import.find({ osDir: w.osDir, image: 'hostile' })).toBeUndefined();
    },
    cli: (w, file) => ['import', '--cache', w.osDir, '--image', 'hostile', '--tarball', file],
  };
}

const hostile =
  (...entries: Entry[]) =>
  (): Buffer =>
    tarball([...HARMLESS, ...entries]);

const TAR_CASES: Case[] = [
  tarCase('with ../ in a name', hostile({ name: '../../inputs/planted', body: 'x' })),
  tarCase(
    'with ../ in a long (PAX) name',
    hostile({ name: `${'d/'.repeat(150)}${'../'.repeat(160)}planted`, body: 'x' }),
  ),
  tarCase('with an absolute name', (w) =>
    tarball([...HARMLESS, { name: join(w.inputs, 'planted'), body: 'x' }]),
  ),
  tarCase('with a write through an absolute symlink', (w) =>
    tarball([
      ...HARMLESS,
      { name: 'escape', kind: 'symlink', linkname: w.inputs },
      { name: 'escape/victim', body: 'overwritten' },
    ]),
  ),
  tarCase(
    'with a write through a relative symlink',
    hostile(
      { name: 'etc/escape', kind: 'symlink', linkname: '../../../inputs' },
      { name: 'etc/escape/victim', body: 'overwritten' },
    ),
  ),
  tarCase(
    'with a hardlink to ../',
    hostile({ name: 'etc/h', kind: 'hardlink', linkname: '../../inputs/victim' }),
  ),
  tarCase('with a hardlink to an absolute path', (w) =>
    tarball([...HARMLESS, { name: 'h', kind: 'hardlink', linkname: join(w.inputs, 'victim') }]),
  ),
  tarCase('with a hardlink through a symlink', (w) =>
    tarball([
      ...HARMLESS,
      { name: 'escape', kind: 'symlink', linkname: w.inputs },
      { name: 'h', kind: 'hardlink', linkname: 'escape/victim' },
    ]),
  ),
  tarCase(
    'gzip, truncated',
    () => tarball(HARMLESS, { gzip: true }).subarray(0, 40),
    LayerCodes.IMPORT_FAILED,
  ),
  tarCase(
    'gzip, garbled',
    () => {
      const gz = gzipSync(Buffer.concat([tarball(HARMLESS), randomBytes(4096)]));
      gz.fill(0xff, 20, 60);
      return gz;
    },
    LayerCodes.IMPORT_FAILED,
  ),
  tarCase(
    'truncated in an entry',
    () => tarball([...HARMLESS, { name: 'big', body: 'y'.repeat(5000) }]).subarray(0, 2048),
    LayerCodes.IMPORT_FAILED,
  ),
  tarCase(
    'that is not a tar',
    () => Buffer.from('hello, this is not an archive\n'.repeat(100)),
    LayerCodes.IMPORT_FAILED,
  ),
  tarCase('that is empty', () => Buffer.alloc(0), LayerCodes.IMPORT_FAILED),
  tarCase('that does not exist', undefined, LayerCodes.IMPORT_FAILED),
];

// ---------------------------------------------------------------- tags

function tagCase(tag: string, viaCli: boolean): Case {
  return {
    name: `tag ${JSON.stringify(tag)}`,
    arrange: () => JSON.stringify(tag),
    lib: async (w, names) => {
      await rejectsTyped(reexport(w, tag), OciExportCodes.BAD_TAG, names);
      await rejectsTyped(Layout.removeTag(w.layout, tag), OciExportCodes.BAD_TAG, names);
    },
    ...(viaCli && { cli: (w: World) => exportArgs(w, tag, ...w.hashes) }),
  };
}

const TAG_CASES: Case[] = [
  tagCase('bad tag', true),
  tagCase('-leading-dash', true),
  tagCase('a//b', true),
  tagCase('../../etc/passwd', true),
  tagCase('line\nbreak', true),
  tagCase('', false),
  tagCase(':colon-first', false),
  tagCase('trailing/', false),
  tagCase('é', false),
];

// ---------------------------------------------------------------- overlay paths

/**
 * A lower (and upper, work, target) whose path holds `char`: every strategy
 * available here either mounts it correctly or refuses it with BAD_PATH
 * naming it; either way no mount is left.
 */
function overlayCase(label: string, char: string): Case {
  return {
    name: `overlay paths with ${label}`,
    arrange: async (w) => {
      const lower = join(w.inputs, `lo${char}wer`);
      await mkdir(lower);
      await writeFile(join(lower, 'from-lower'), 'lower\n');
      await mkdir(join(w.inputs, 'plain'));
      await writeFile(join(w.inputs, 'plain', 'from-plain'), 'plain\n');
      return lower;
    },
    lib: async (w, lower, scratch) => {
      const { strategies } = await Overlay.capabilities();
      expect(strategies.length).toBeGreaterThan(0);
      for (const strategy of strategies) {
        const dir = join(scratch.dir, `${strategy}${char}stack`);
        const [upper, work, target] = ['up', 'wo', 'mnt'].map((n) => join(dir, `${n}${char}`)) as [
          string,
          string,
          string,
        ];
        for (const d of [upper, work, target]) await mkdir(d, { recursive: true });
        const lowers = [lower, join(w.inputs, 'plain')];
        await mountOrRefuse({ lowers, upper, work, target, strategy });
      }
      expect(await Overlay.listMounts(scratch.dir)).toEqual([]);
    },
  };
}

async function mountOrRefuse(opts: Overlay.MountOptions): Promise<void> {
  let mounted: Overlay.OverlayMount;
  try {
    mounted = await Overlay.mount(opts);
  } catch (err) {
    expect(err, `${opts.strategy}: ${String(err)}`).toBeInstanceOf(ContainerError);
    expect((err as ContainerError).code).toBe(ContainerCodes.BAD_PATH);
    // It names the path it cannot pass, as it is or JSON-escaped (a newline).
    const { message } = err as ContainerError;
    const paths = [...opts.lowers, opts.upper!, opts.work!];
    const named = paths.flatMap((p) => [p, JSON.stringify(p).slice(1, -1)]);
    expect(
      named.some((p) => message.includes(p)),
      message,
    ).toBe(true);
    return;
  }
  try {
    expect(await readFile(join(opts.target, 'from-lower'), 'utf8')).toBe('lower\n');
    expect(await readFile(join(opts.target, 'from-plain'), 'utf8')).toBe('plain\n');
    await writeFile(join(opts.target, 'new'), 'upper\n');
    expect(await readFile(join(opts.upper!, 'new'), 'utf8')).toBe('upper\n');
  } finally {
    await mounted.unmount();
  }
}

const OVERLAY_CASES: Case[] = [
  overlayCase('a colon', ':'),
  overlayCase('a comma', ','),
  overlayCase('a backslash', '\\'),
  overlayCase('a newline', '\n'),
  overlayCase('a space and a quote', ' "'),
];

// ---------------------------------------------------------------- plans

const STEP = { id: 'a', run: 'true' };

function planCase(name: string, plan: unknown, names: (file: string) => string = (f) => f): Case {
  return {
    name: `plan ${name}`,
    arrange: async (w) => {
      const file = join(w.inputs, 'plan.json');
      if (plan !== undefined)
        await writeFile(file, typeof plan === 'string' ? plan : JSON.stringify(plan));
      return file;
    },
    lib: async (_w, file) => {
      await rejectsTyped(loadPlan(file), BuildCodes.BAD_PLAN, names(file));
    },
    cli: (w, file) => ['build', file, '--cache', w.osDir],
  };
}

const PLAN_CASES: Case[] = [
  planCase('with a cycle', {
    base: 'busybox',
    steps: [
      { id: 'a', deps: ['c'], run: 'true' },
      { id: 'b', deps: ['a'], run: 'true' },
      { id: 'c', deps: ['b'], run: 'true' },
    ],
  }),
  planCase('with a step that depends on itself', {
    base: 'busybox',
    steps: [{ ...STEP, deps: ['a'] }],
  }),
  planCase('with an unknown dep', { base: 'busybox', steps: [{ ...STEP, deps: ['nope'] }] }),
  planCase('with no base', { steps: [STEP] }),
  planCase('with duplicate ids', { base: 'busybox', steps: [STEP, STEP] }),
  planCase('with no steps', { base: 'busybox', steps: [] }),
  planCase('with user 1e12', { base: 'busybox', steps: [{ ...STEP, user: 1e12 }] }),
  planCase('with user "-1"', { base: 'busybox', steps: [{ ...STEP, user: '-1' }] }),
  planCase('with an id that is a path', { base: 'busybox', steps: [{ ...STEP, id: '../x' }] }),
  planCase('with "=" in an env name', {
    base: 'busybox',
    steps: [{ ...STEP, env: { 'A=B': '1' } }],
  }),
  planCase('that is not JSON', '{"base": "busybox", "steps": ['),
  planCase('that is an array', '[]'),
  planCase('that does not exist', undefined),
];

// ---------------------------------------------------------------- absurd numbers

function usageCase(name: string, args: (w: World) => string[], names: string): Case {
  return {
    name,
    arrange: async (w) => {
      await writeFile(
        join(w.inputs, 'plan.json'),
        JSON.stringify({ base: 'busybox', steps: [STEP] }),
      );
      return names;
    },
    cli: args,
    exit: 2,
  };
}

const plan = (w: World) => join(w.inputs, 'plan.json');

const NUMBER_CASES: Case[] = [
  usageCase(
    'build --jobs 1e9',
    (w) => ['build', plan(w), '--cache', w.osDir, '--jobs', '1e9'],
    '--jobs',
  ),
  usageCase(
    'build --jobs 0',
    (w) => ['build', plan(w), '--cache', w.osDir, '--jobs', '0'],
    '--jobs',
  ),
  usageCase(
    'build --jobs 2.5',
    (w) => ['build', plan(w), '--cache', w.osDir, '--jobs', '2.5'],
    '--jobs',
  ),
  usageCase(
    'build --timeout -1',
    (w) => ['build', plan(w), '--cache', w.osDir, '--timeout=-1'],
    '--timeout',
  ),
  usageCase(
    'layers gc --keep-bytes -5',
    (w) => ['layers', 'gc', '--cache', w.osDir, '--keep-bytes=-5'],
    '--keep-bytes',
  ),
  usageCase(
    'layers gc --keep-bytes 1e400',
    (w) => ['layers', 'gc', '--cache', w.osDir, '--keep-bytes', '1e400'],
    '--keep-bytes',
  ),
  usageCase(
    'layers gc --keep-bytes 99999999999T',
    (w) => ['layers', 'gc', '--cache', w.osDir, '--keep-bytes', '99999999999T'],
    '--keep-bytes',
  ),
  usageCase(
    'layers gc --before NaN',
    (w) => ['layers', 'gc', '--cache', w.osDir, '--before', 'NaN'],
    '--before',
  ),
  usageCase(
    'layers gc --before 1e400',
    (w) => ['layers', 'gc', '--cache', w.osDir, '--before', '1e400'],
    '--before',
  ),
  {
    name: 'Gc.plan with keepBytes -5, NaN, Infinity and an invalid date',
    arrange: () => 'Invalid garbage-collection options',
    lib: async (w, names) => {
      for (const bad of [
        { keepBytes: -5 },
        { keepBytes: NaN },
        { keepBytes: Infinity },
        { before: new Date('x') },
        { before: NaN },
        {},
      ]) {
        await rejectsTyped(Gc.plan({ osDir: w.osDir, ...bad }), LayerCodes.BAD_ARGUMENT, names);
        await rejectsTyped(Gc.prune({ osDir: w.osDir, ...bad }), LayerCodes.BAD_ARGUMENT, names);
      }
    },
  },
];

// ---------------------------------------------------------------- hashes, ids, caches

const NAME_CASES: Case[] = [
  {
    name: 'layers show with a hash that is not hex',
    arrange: () => '"zz"',
    cli: (w) => ['layers', 'show', 'zz', '--cache', w.osDir],
  },
  {
    name: 'layers show with a path for a hash',
    arrange: () => '"../../etc"',
    cli: (w) => ['layers', 'show', '../../etc', '--cache', w.osDir],
  },
  {
    name: 'export of a layer that does not exist',
    arrange: (w) => w.osDir,
    cli: (w) => exportArgs(w, 'missing', '0123456789ab'),
  },
  {
    name: 'malformed hashes through the library',
    arrange: () => 'Malformed layer hash',
    lib: async (w, names, scratch) => {
      for (const hash of ['zz', '../../../tmp/x', 'ABCDEF0123456789', '']) {
        await throwsTyped(
          () => LayerDir.path({ osDir: w.osDir, hash }),
          LayerCodes.BAD_HASH,
          names,
        );
        const upper = join(scratch.dir, 'upper');
        await mkdir(upper, { recursive: true });
        const meta = {
          exit_status: 0,
          parent_hashes: [],
          uid: 0,
          gid: 0,
          base_hash: w.base.hash,
          timing: [],
          failed_dep: null,
        };
        await rejectsTyped(
          Commit.commit({ osDir: w.osDir, hash, upper, meta }),
          LayerCodes.BAD_HASH,
          names,
        );
      }
    },
  },
  {
    name: 'registry ids that are paths',
    arrange: () => '',
    lib: async (w) => {
      for (const id of ['../x', 'a/b', '..', '', 'x\0y']) {
        await rejectsTyped(
          LayerSymlinks.ensure({
            packagesDir: join(w.osDir, 'packages'),
            id,
            layerName: LayerDir.name(w.hashes[1]),
          }),
          LayerCodes.BAD_ID,
          JSON.stringify(id),
        );
      }
    },
  },
  {
    name: 'missing cache directory',
    arrange: (w) => join(w.inputs, 'no-cache'),
    lib: async (_w, missing) => {
      // A maybe-exists lookup: no cache, no layers.
      expect(await Scan.layers(missing)).toEqual([]);
    },
    cli: (_w, missing) => ['layers', 'ls', '--cache', missing],
  },
  {
    name: 'missing cache directory for export',
    arrange: (w) => join(w.inputs, 'no-cache'),
    cli: (w, missing) => [
      'export',
      '--cache',
      missing,
      '--oci',
      w.layout,
      '--tag',
      'x',
      w.hashes[0],
    ],
  },
  {
    name: 'cache that is a file',
    arrange: async (w) => {
      const file = join(w.inputs, 'cache-file');
      await writeFile(file, 'not a directory\n');
      return file;
    },
    lib: async (_w, file) => {
      await rejectsTyped(Scan.layers(file), LayerCodes.BAD_ARGUMENT, file);
      await rejectsTyped(Gc.plan({ osDir: file, keepBytes: 0 }), LayerCodes.GC_FAILED, file);
    },
    cli: (_w, file) => ['layers', 'gc', '--cache', file, '--keep-bytes', '0'],
  },
];

/** Every case, by group. */
export const CASES: Readonly<Record<string, Case[]>> = {
  'layer.json': META_CASES,
  sidecars: SIDECAR_CASES,
  blobs: BLOB_CASES,
  layout: LAYOUT_CASES,
  tarballs: TAR_CASES,
  tags: TAG_CASES,
  'overlay paths': OVERLAY_CASES,
  plans: PLAN_CASES,
  numbers: NUMBER_CASES,
  names: NAME_CASES,
};
