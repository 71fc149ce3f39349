/**
 * A realistic layer cache for the suites that read a whole cache (scan, gc,
 * cli): one imported base and `layers` package layers made as a builder
 * makes them — `layer.json` with the full hash and the transitive parents
 * (packages come in families of chains, each family standing on a few
 * layers of a shared core, so the graph matters to a collection), a
 * `step.json` sidecar, `layer.log`, `last_used` spread over a year (some
 * never used), a few recorded failures and skipped dependents, the registry
 * link `packages/<id>/build-*`, and a small `fs/` tree (a package directory
 * of four files, one hardlinked into every layer as merges and imports leave
 * them, and a directory of small files in some).
 *
 * Written with synchronous calls and plain writes (no fsync): the fixture's
 * bytes are what matters, not its durability.
 */
import { linkSync, mkdirSync, rmSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Hash, LastUsed, LayerDir, LayerMeta } from '@day11/layer';
import { seeded } from './table.js';

/** What {@link makeLayerCache} made. */
export interface LayerCache {
  /** The layer count, base included. */
  layers: number;
  /** Files under the layers' `fs/` trees (hardlinks counted per link). */
  files: number;
}

/** Layers per family: a chain, each standing on the one before it. */
const FAMILY = 40;
/** The first layers, which every family's first layer builds on. */
const CORE = 20;

interface Made {
  id: string;
  hash: string;
  /** Its recorded parents, topmost first. */
  parents: string[];
}

function writeMeta(dir: string, record: Record<string, unknown>): void {
  writeFileSync(LayerMeta.file(dir), `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
}

/**
 * Makes `layers` layers (the base and `layers - 1` packages) in `osDir`,
 * deterministically from `seed`.
 */
export function makeLayerCache(
  osDir: string,
  { layers, seed = 17 }: { layers: number; seed?: number },
): LayerCache {
  const random = seeded(seed);
  const now = Date.now();
  mkdirSync(join(osDir, 'packages'), { recursive: true, mode: 0o700 });
  const shared = join(osDir, '.shared-LICENSE');
  writeFileSync(shared, 'Permission is hereby granted, free of charge...\n'.repeat(40));
  let files = 0;

  const image = 'debian:bookworm-slim';
  const baseHash = Hash.baseHash({ image });
  const baseDir = LayerDir.path({ osDir, hash: baseHash });
  mkdirSync(join(baseDir, 'fs', 'etc'), { recursive: true, mode: 0o700 });
  for (const name of ['passwd', 'group', 'hosts', 'os-release']) {
    writeFileSync(join(baseDir, 'fs', 'etc', name), `${name}\n`.repeat(20));
    files++;
  }
  writeMeta(baseDir, {
    exit_status: 0,
    parent_hashes: [],
    uid: 0,
    gid: 0,
    base_hash: baseHash,
    disk_usage: 16384,
    timing: [['import', 2.5]],
    created_at: new Date(now - 400 * 86_400_000).toISOString(),
    failed_dep: null,
    hash: baseHash,
  });
  writeFileSync(join(baseDir, 'base.json'), JSON.stringify({ image }));
  writeFileSync(LastUsed.file(baseDir), '');

  const made: Made[] = [];
  const failed = new Set<string>();
  for (let i = 0; i < layers - 1; i++) {
    const id = `pkg${i}.1.${i % 7}`;
    const position = i < CORE ? i : (i - CORE) % FAMILY;
    const deps: Made[] = [];
    if (i > 0 && position > 0) deps.push(made[i - 1]!);
    if (i >= CORE && position === 0) deps.push(made[Math.floor(random() * CORE)]!);
    if (i >= CORE && random() < 0.3) deps.push(made[Math.floor(random() * CORE)]!);
    const parents = [...new Set(deps.flatMap((d) => [d.hash, ...d.parents]))];
    const hash = Hash.layerHash({ baseHash, depHashes: deps.map((d) => d.hash), pkg: id });
    made.push({ id, hash, parents });
    const dir = LayerDir.path({ osDir, hash });
    const pkg = join(dir, 'fs', 'usr', 'lib', 'ocaml', id);
    mkdirSync(pkg, { recursive: true, mode: 0o700 });
    writeFileSync(join(pkg, 'META'), `version = "1.${i % 7}"\n`);
    writeFileSync(join(pkg, `${id}.ml`), `let x = ${i}\n`.repeat(1 + (i % 200)));
    writeFileSync(join(pkg, `${id}.cmx`), Buffer.alloc(4096 * (1 + (i % 4)), i % 256));
    linkSync(shared, join(pkg, 'LICENSE'));
    files += 4;
    if (i % 10 === 0) {
      const doc = join(dir, 'fs', 'usr', 'share', 'doc', id);
      mkdirSync(doc, { recursive: true, mode: 0o700 });
      for (let k = 0; k < 8; k++) writeFileSync(join(doc, `page${k}.html`), `<p>${id} ${k}</p>\n`);
      files += 8;
    }
    const depFailed = deps.find((d) => failed.has(d.hash));
    const exitStatus = depFailed ? -1 : random() < 0.01 ? 1 : 0;
    if (exitStatus !== 0) failed.add(hash);
    const created = now - Math.floor(random() * 365) * 86_400_000;
    writeMeta(dir, {
      exit_status: exitStatus,
      parent_hashes: parents,
      uid: 1000,
      gid: 1000,
      base_hash: baseHash,
      disk_usage: 8192 * (1 + (i % 4)),
      timing: [
        ['mkdirs', 0.001],
        ['mount', 0.004],
        ['runc_run', 1.25 + (i % 13) / 10],
        ['commit', 0.02],
        ['total', 1.3 + (i % 13) / 10],
      ],
      created_at: new Date(created).toISOString(),
      failed_dep: depFailed ? depFailed.id : null,
      hash,
    });
    writeFileSync(join(dir, 'layer.log'), exitStatus > 0 ? `build of ${id} failed\n` : '');
    writeFileSync(
      join(dir, 'step.json'),
      JSON.stringify({ id, plan: 'plan.json', command: ['sh', '-c', `make install ${id}`] }),
    );
    if (random() < 0.9) {
      const used = (created + Math.floor(random() * (now - created))) / 1000;
      writeFileSync(LastUsed.file(dir), '');
      utimesSync(LastUsed.file(dir), used, used);
    }
    const links = join(osDir, 'packages', id);
    mkdirSync(links, { mode: 0o700 });
    symlinkSync(join('..', '..', LayerDir.name(hash)), join(links, LayerDir.name(hash)));
  }
  // Only the layers hold it now, as after a merge whose source was collected.
  rmSync(shared);
  return { layers, files };
}
