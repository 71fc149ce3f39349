/** What several suites make their data with: a seeded generator and hand-made layer directories. */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Hash, LayerDir, LayerMeta } from '@day11/layer';

export { seeded } from './table.js';

/** A layer directory made by hand. */
export interface Layer {
  hash: string;
  dir: string;
}

/** A layer directory `build-<hash of name>` in `osDir` whose `fs/` is filled by `fill`. */
export async function makeLayer(
  osDir: string,
  name: string,
  fill: (fs: string) => Promise<void>,
): Promise<Layer> {
  const hash = Hash.baseHash({ image: name });
  const dir = LayerDir.path({ osDir, hash });
  await mkdir(join(dir, 'fs'), { recursive: true });
  await fill(join(dir, 'fs'));
  await LayerMeta.save(dir, {
    exit_status: 0,
    parent_hashes: [],
    uid: 0,
    gid: 0,
    base_hash: hash,
    disk_usage: 0,
    timing: [],
    failed_dep: null,
  });
  return { hash, dir };
}
