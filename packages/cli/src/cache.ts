/** The cache directory and the layers in it, as the command line names them. */
import { stat } from 'node:fs/promises';
import { resolve } from 'node:path';
import { LayerDir, LayerMeta, Sidecar, type Base } from '@day11/layer';
import { usage } from './args.js';
import { CliCodes, CliError } from './errors.js';

/** `--cache DIR`, else `$DAY11_CACHE`. */
export function cacheDir(command: string, value: string | undefined): string {
  const dir = value ?? process.env['DAY11_CACHE'];
  if (!dir) throw usage(command, '--cache DIR is required (or set DAY11_CACHE)');
  return resolve(dir);
}

/** Throws a clear error unless `dir` is an existing directory. */
export async function assertCacheExists(dir: string): Promise<void> {
  const st = await stat(dir).catch(() => undefined);
  if (!st?.isDirectory()) {
    throw new CliError(CliCodes.BAD_CACHE, `No cache directory at ${dir}`, {
      path: dir,
      hint: 'Pass the directory given to `day11 build --cache`',
    });
  }
}

/** The directory of a layer named by hash (≥ 12 hex), hash prefix, or `build-` name; it must exist. */
export async function layerDirOf(osDir: string, name: string): Promise<string> {
  const hex = name.startsWith(LayerDir.PREFIX) ? name.slice(LayerDir.PREFIX.length) : name;
  if (!/^[0-9a-f]{12,64}$/.test(hex)) {
    throw new CliError(CliCodes.NO_SUCH_LAYER, `${JSON.stringify(name)} is not a layer hash`, {
      hint: 'Name a layer by its hash, its first 12 hex characters, or its build-xxxxxxxxxxxx directory (see `day11 layers ls`)',
    });
  }
  const dir = LayerDir.path({ osDir, hash: hex });
  const meta = await LayerMeta.find(dir).catch(() => undefined);
  if (!meta && !(await stat(dir).catch(() => undefined))) {
    throw new CliError(CliCodes.NO_SUCH_LAYER, `No layer ${LayerDir.name(hex)} in ${osDir}`, {
      path: dir,
      hint: 'List the layers with `day11 layers ls --cache DIR`',
    });
  }
  return dir;
}

/** The base layer a layer was built on (or the layer itself, when it is a base). */
export async function baseOf(osDir: string, layerDir: string): Promise<Base> {
  const meta = await LayerMeta.load(layerDir);
  const dir = LayerDir.path({ osDir, hash: meta.base_hash });
  const sidecar = await Sidecar.read(dir, 'base.json');
  if (!sidecar) {
    throw new CliError(
      CliCodes.NO_SUCH_LAYER,
      `The base layer ${LayerDir.name(meta.base_hash)} of ${layerDir} is missing`,
      {
        path: dir,
        hint: 'Re-import the base (`day11 import`) or rebuild the plan',
      },
    );
  }
  return { hash: meta.base_hash, dir, image: String(sidecar['image']) };
}
