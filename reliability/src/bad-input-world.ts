/**
 * The world the bad-input corpus attacks: a cache with a busybox base and two
 * committed layers, and an OCI layout holding an image of them, built as a
 * real user would (`Import.fromDirectory`, `Commit.commit`, `exportImage`)
 * afresh for each case, so no case can disturb the next. (Not copied from one
 * made once: a copy has new inodes, which invalidate the layers' blob caches.)
 */
import { OciSpec } from '@day11/container';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import {
  chmod,
  copyFile,
  lstat,
  mkdir,
  readdir,
  readFile,
  readlink,
  symlink,
  writeFile,
} from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Sys } from '@day11/exec';
import { Commit, Hash, Import, LayerDir, type Base } from '@day11/layer';
import { exportImage, Layout, MediaTypes, type OciManifest } from '@day11/oci-export';

/** The image name of the world's base. */
export const BASE_IMAGE = 'reliability-busybox';
/** The tag of the world's image. */
export const TAG = 'good';
/** Its runtime config (what `day11 export` gives by default, so the CLI re-exports it identically). */
/** What `day11 export` gives a layer no step made: PATH as containers have it, and a shell. */
export const CONFIG = { Env: [`PATH=${OciSpec.DEFAULT_PATH}`], Cmd: ['/bin/sh'] };

/** One world, rooted at `root`. */
export interface World {
  /** Holds everything below; checksummed whole before and after each case. */
  root: string;
  /** The layer cache. */
  osDir: string;
  /** The OCI image layout. */
  layout: string;
  /** Where a case puts its inputs (tarballs, plans, odd directories). */
  inputs: string;
  base: Base;
  /** The two committed layers' directories, bottom first. */
  layers: [string, string];
  /** Their hashes, in the same order. */
  hashes: [string, string];
}

const APPLETS = ['sh', 'true', 'cat', 'ls', 'echo'];

/** A tiny root filesystem: busybox-static and a few applets. */
async function makeRootfs(dir: string): Promise<void> {
  for (const sub of ['bin', 'etc', 'tmp', 'proc', 'dev', 'sys']) {
    await mkdir(join(dir, sub), { recursive: true });
  }
  await copyFile('/bin/busybox', join(dir, 'bin/busybox'));
  await chmod(join(dir, 'bin/busybox'), 0o755);
  for (const applet of APPLETS) await symlink('busybox', join(dir, 'bin', applet));
  await writeFile(join(dir, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
}

/** An upper as a build leaves it: new files, a changed file, a whiteout. */
async function makeUpper(dir: string, n: number): Promise<void> {
  await mkdir(join(dir, `opt/pkg${n}/lib`), { recursive: true });
  await writeFile(join(dir, `opt/pkg${n}/lib/v`), `version ${n}\n`);
  await writeFile(join(dir, `opt/pkg${n}/README`), 'x'.repeat(10_000 * n));
  await mkdir(join(dir, 'etc'));
  await writeFile(
    join(dir, 'etc/passwd'),
    `root:x:0:0:root:/root:/bin/sh\npkg${n}:x:${n}:${n}::/:/bin/false\n`,
  );
  if (n === 2) {
    // An overlay whiteout: the layer deletes /bin/echo.
    await mkdir(join(dir, 'bin'));
    Sys.mknod(join(dir, 'bin/echo'), Sys.S_IFCHR, 0, 0);
  }
}

/** Builds the pristine world under `root` (which must exist and be empty). */
export async function makeWorld(root: string): Promise<World> {
  const osDir = join(root, 'cache');
  const layout = join(root, 'oci');
  const inputs = join(root, 'inputs');
  await mkdir(inputs);
  await makeRootfs(join(inputs, 'rootfs'));
  const base = await Import.fromDirectory({
    osDir,
    dir: join(inputs, 'rootfs'),
    image: BASE_IMAGE,
  });
  const hashes: string[] = [];
  for (const n of [1, 2]) {
    const hash = Hash.layerHash({ baseHash: base.hash, depHashes: hashes, pkg: `pkg.${n}` });
    const upper = join(osDir, `.upper-${n}`);
    await mkdir(upper);
    await makeUpper(upper, n);
    await Commit.commit({
      osDir,
      hash,
      upper,
      meta: {
        exit_status: 0,
        parent_hashes: [...hashes],
        uid: 0,
        gid: 0,
        base_hash: base.hash,
        timing: [['build', 0.5]],
        failed_dep: null,
      },
      sidecars: { 'build.json': { pkg: `pkg.${n}`, deps: [...hashes] } },
    });
    hashes.push(hash);
  }
  const layers = hashes.map((hash) => LayerDir.path({ osDir, hash })) as [string, string];
  await exportImage({ layout, tag: TAG, base, layers, config: CONFIG });
  return { root, osDir, layout, inputs, base, layers, hashes: hashes as [string, string] };
}

/** The manifest of the world's image and the paths of its blobs. */
export async function imageBlobs(w: World): Promise<{
  manifest: string;
  config: string;
  /** Layer blobs, base first. */
  layers: string[];
}> {
  const [tagged] = await Layout.tags(w.layout);
  const d = { mediaType: MediaTypes.manifest, digest: tagged!.digest, size: tagged!.size };
  const m = JSON.parse(await readFile(Layout.blobPath(w.layout, d.digest), 'utf8')) as OciManifest;
  return {
    manifest: Layout.blobPath(w.layout, d.digest),
    config: Layout.blobPath(w.layout, m.config.digest),
    layers: m.layers.map((l) => Layout.blobPath(w.layout, l.digest)),
  };
}

// ---------------------------------------------------------------- checksums

/** Paths a checksum leaves out: lock directories come and go with every locked operation. */
const SKIPPED_DIRS = new Set(['.locks']);

/**
 * One line per entry under `root`, sorted: path, type, mode, owner; a file's
 * size and sha256, a symlink's target, a device's numbers. Left out: times (a
 * lock or lease file created and removed changes a directory's mtime, and
 * reading a layer touches `last_used`, which is its purpose) and `.locks/`
 * directories (locking creates them).
 */
export async function checksum(root: string): Promise<string[]> {
  const out: string[] = [];
  await walk(root, '', out);
  return out.sort();
}

async function walk(root: string, rel: string, out: string[]): Promise<void> {
  const names = await readdir(join(root, rel));
  for (const name of names) {
    const path = rel ? `${rel}/${name}` : name;
    if (SKIPPED_DIRS.has(name)) continue;
    out.push(await describe(join(root, path), path));
    if ((await lstat(join(root, path))).isDirectory()) await walk(root, path, out);
  }
}

async function describe(abs: string, path: string): Promise<string> {
  const st = await lstat(abs);
  const head = `${JSON.stringify(path)} ${(st.mode & 0o177777).toString(8)} ${st.uid}:${st.gid}`;
  if (st.isFile()) return `${head} ${st.size} ${await fileSha256(abs)}`;
  if (st.isSymbolicLink()) return `${head} -> ${JSON.stringify(await readlink(abs))}`;
  if (st.isCharacterDevice() || st.isBlockDevice()) return `${head} rdev ${st.rdev}`;
  return head;
}

async function fileSha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(path), hash);
  return hash.digest('hex');
}
