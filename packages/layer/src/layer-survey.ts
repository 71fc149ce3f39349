/**
 * What garbage collection needs of every layer of a cache: its record (what
 * it stands on, when it was last used, whether it may be in use) and its
 * real disk usage. That is one `lstat` per file of the cache, tens of
 * thousands of system calls bound by the CPU, not the disk: on several
 * cores, worker threads share the layers (on 2 cores here, 10,000 layers:
 * ~2.5 s against ~2.8 s on one thread and ~1.9 s for `du -s`).
 */
import { lstatSync, readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import { workerFile } from '@day11/exec';
import { readdirUnlessVanished, walk, type InodeVisit } from './disk-usage.js';
import { errnoCode, messageOf } from './errors.js';
import { LEASE_DIR } from './in-use.js';
import { FILES, NAME_HASH_LENGTH } from './layer-dir.js';
import * as LayerMeta from './layer-meta.js';

/** An inode with several links, met in one layer. */
export interface SharedInode {
  /** Allocated bytes. */
  bytes: number;
  /** Its hardlink count (links inside and outside the cache). */
  nlink: number;
  /** Its links met in this layer. */
  links: number;
}

/** One layer, surveyed. */
export interface LayerSurvey {
  /**
   * The name hashes (12 hex each, concatenated) of `parent_hashes` then
   * `base_hash` of its `layer.json`; empty when that cannot be read.
   */
  parents: string;
  /** Its LRU time (epoch ms): `last_used`, else `created_at`, else the directory's mtime, else 0. */
  lastUsed: number;
  /** Whether it has a lease directory (only then can it be in use). */
  leased: boolean;
  /** Bytes of its inodes with one link (every directory, most files). */
  ownBytes: number;
  /** Its inodes with several links, by `dev:ino`: only they can be shared between layers. */
  shared: Map<string, SharedInode>;
}

/**
 * A thread's surveys as it posts them: a few flat arrays rather than an
 * object per layer and per parent, which cost more to clone across threads
 * than the survey itself.
 */
interface Packed {
  /** Per layer: ownBytes, lastUsed, leased (0/1), how many shared inodes. */
  numbers: Float64Array<ArrayBuffer>;
  /** Per layer: {@link LayerSurvey.parents}. */
  parents: string[];
  /** Every layer's shared inodes in order: `dev:ino`. */
  sharedKeys: string[];
  /** Per shared inode: bytes, nlink, links. */
  sharedNumbers: Float64Array<ArrayBuffer>;
  /** Layers that failed, by index. */
  failures: [number, SurveyFailure][];
}

const LAYER_FIELDS = 4;
const SHARED_FIELDS = 3;

/** Why a layer could not be surveyed, as a thread sends it. */
export interface SurveyFailure {
  error: { message: string; code: string | undefined };
}

/** Below this many layers, starting threads costs more than it saves. */
const THREADS_FROM_LAYERS = 256;
const MAX_THREADS = 4;

/** How many threads {@link surveyLayers} uses for `layers` layers. */
export function defaultThreads(layers: number): number {
  if (layers < THREADS_FROM_LAYERS) return 0;
  const cores = availableParallelism();
  return cores < 2 ? 0 : Math.min(MAX_THREADS, cores);
}

/**
 * Surveys the layers `names` of `osDir` on `threads` worker threads (0: on
 * this one; a thread that fails is replaced by this one). Resolves with
 * each layer's survey, or why it failed, by name (a layer that vanished
 * meanwhile surveys as empty).
 *
 * @example
 * ```ts
 * const names = await Scan.names(osDir);
 * const surveys = await surveyLayers(osDir, names, defaultThreads(names.length));
 * ```
 */
export async function surveyLayers(
  osDir: string,
  names: readonly string[],
  threads: number,
): Promise<Map<string, LayerSurvey | SurveyFailure>> {
  if (threads <= 0) return surveyAll(osDir, names);
  const shares = Array.from({ length: threads }, (_, t) =>
    names.filter((_, i) => i % threads === t),
  );
  const parts = await Promise.all(
    shares.map((share) =>
      onThread(osDir, share).then(
        (packed) => unpack(share, packed),
        // A thread that cannot start or dies (its script missing from a bundle, no
        // memory for it): the same survey, here.
        async () => [...(await surveyAll(osDir, share))],
      ),
    ),
  );
  return new Map(parts.flat());
}

/** What a worker posts for the layers `names` of `osDir`. */
export async function surveyPacked(osDir: string, names: readonly string[]): Promise<Packed> {
  const surveys = [...(await surveyAll(osDir, names)).values()];
  const sharedCount = surveys.reduce((n, s) => n + ('error' in s ? 0 : s.shared.size), 0);
  const packed: Packed = {
    numbers: new Float64Array(surveys.length * LAYER_FIELDS),
    parents: [],
    sharedKeys: [],
    sharedNumbers: new Float64Array(sharedCount * SHARED_FIELDS),
    failures: [],
  };
  surveys.forEach((s, i) => {
    if ('error' in s) {
      packed.failures.push([i, s]);
      packed.parents.push('');
      return;
    }
    packed.numbers.set([s.ownBytes, s.lastUsed, s.leased ? 1 : 0, s.shared.size], i * LAYER_FIELDS);
    packed.parents.push(s.parents);
    for (const [key, inode] of s.shared) {
      packed.sharedNumbers.set(
        [inode.bytes, inode.nlink, inode.links],
        packed.sharedKeys.length * SHARED_FIELDS,
      );
      packed.sharedKeys.push(key);
    }
  });
  return packed;
}

function unpack(names: readonly string[], p: Packed): [string, LayerSurvey | SurveyFailure][] {
  const failed = new Map(p.failures);
  let next = 0;
  return names.map((name, i) => {
    const failure = failed.get(i);
    if (failure) return [name, failure];
    const [ownBytes, lastUsed, leased, count] = p.numbers.subarray(i * LAYER_FIELDS);
    const shared = new Map<string, SharedInode>();
    for (const end = next + count!; next < end; next++) {
      const [bytes, nlink, links] = p.sharedNumbers.subarray(next * SHARED_FIELDS);
      shared.set(p.sharedKeys[next]!, { bytes: bytes!, nlink: nlink!, links: links! });
    }
    const survey = { parents: p.parents[i]!, lastUsed: lastUsed!, leased: leased === 1 };
    return [name, { ...survey, ownBytes: ownBytes!, shared }];
  });
}

/** The surveys of `names`, on the calling thread (also a worker's whole job). */
export async function surveyAll(
  osDir: string,
  names: readonly string[],
): Promise<Map<string, LayerSurvey | SurveyFailure>> {
  const out = new Map<string, LayerSurvey | SurveyFailure>();
  for (const name of names) {
    try {
      out.set(name, await surveyOne(join(osDir, name)));
    } catch (err) {
      out.set(name, { error: { message: messageOf(err), code: errnoCode(err) } });
    }
  }
  return out;
}

/**
 * One read of the layer directory: its entries (the lease directory),
 * `layer.json`, and the walk, whose `lstat` of `last_used` gives its mtime.
 */
async function surveyOne(dir: string): Promise<LayerSurvey> {
  const survey: LayerSurvey = {
    parents: '',
    lastUsed: 0,
    leased: false,
    ownBytes: 0,
    shared: new Map(),
  };
  let lastUsed: number | undefined;
  const visitor = (entry: InodeVisit): void => {
    if (entry.nlink <= 1) {
      survey.ownBytes += entry.bytes;
      return;
    }
    const key = entry.key;
    const seen = survey.shared.get(key);
    if (seen) seen.links++;
    else survey.shared.set(key, { bytes: entry.bytes, nlink: entry.nlink, links: 1 });
  };
  const top = lstatSync(dir, { throwIfNoEntry: false });
  if (!top?.isDirectory()) return survey; // vanished meanwhile (collected)
  survey.ownBytes += top.blocks * 512;
  for (const name of readdirUnlessVanished(dir)) {
    if (name === LEASE_DIR) survey.leased = true;
    const isLastUsed = name === FILES.lastUsed;
    let first = true;
    await walk(`${dir}/${name}`, (entry) => {
      if (isLastUsed && first) lastUsed = entry.mtimeMs;
      first = false;
      visitor(entry);
    });
  }
  const meta = readMeta(dir);
  if (meta) {
    survey.parents = [...meta.parent_hashes, meta.base_hash]
      .map((h) => h.slice(0, NAME_HASH_LENGTH))
      .join('');
  }
  survey.lastUsed = lastUsed ?? lruFallback(dir, meta);
  return survey;
}

/** The layer's record, or `undefined` when it is missing or corrupt (`layers ls` says why). */
function readMeta(dir: string): LayerMeta.LayerMeta | undefined {
  const path = LayerMeta.file(dir);
  try {
    return LayerMeta.parse(readFileSync(path, 'utf8'), path);
  } catch {
    return undefined;
  }
}

/** A layer never used: when it was made, else its directory's mtime, else 0. */
function lruFallback(dir: string, meta: LayerMeta.LayerMeta | undefined): number {
  const created = meta ? Date.parse(meta.created_at) : NaN;
  if (Number.isFinite(created)) return created;
  try {
    return statSync(dir).mtimeMs;
  } catch {
    return 0;
  }
}

function onThread(osDir: string, names: readonly string[]): Promise<Packed> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerFile('survey-worker.js', import.meta.url), {
      workerData: { osDir, names },
    });
    let result: Packed | undefined;
    worker.once('message', (m: Packed) => {
      result = m;
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (result) resolve(result);
      else reject(new Error(`a disk-usage thread exited (code ${code}) without a result`));
    });
  });
}
