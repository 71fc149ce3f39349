/**
 * `layer.json`: the generic per-layer record, as every day11 implementation
 * writes it.
 * Keys stay snake_case so caches written by other day11 implementations read
 * back; keys this version does not know are kept through a load/save.
 */
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  errnoCode,
  LayerCodes,
  LayerError,
  messageOf,
  removeLayerHint,
  writeFileAtomic,
} from './errors.js';
import { FILES } from './layer-dir.js';

/** `[phase, seconds]` pairs, e.g. `[['mkdirs', 0.001], ..., ['runc_run', 2.5], ['total', 2.6]]`. */
export type Timing = Array<[string, number]>;

/**
 * The fields of `layer.json`, the record every layer directory has (keys in
 * snake_case, as every day11 implementation writes them).
 */
export interface LayerRecord {
  /**
   * The build command's exit status: 0 for a layer others can be built on,
   * non-zero for a recorded failure (its `layer.log` says why), -1 for a step
   * that was not run because a dependency failed (see `failed_dep`).
   */
  exit_status: number;
  /**
   * The full hashes of every layer this one was built on — all its
   * transitive dependencies, not only the direct ones — topmost first: the
   * lowers that were mounted above the base, in mount order. Empty for a
   * layer built on the base alone, and for a base. The layer's image is the
   * base, then these reversed, then the layer (`Lineage.stackOf`).
   */
  parent_hashes: string[];
  /** The user id the build ran as in the container. */
  uid: number;
  /** The group id the build ran as in the container. */
  gid: number;
  /** The full hash of the base layer at the bottom of the stack; a base records its own hash. */
  base_hash: string;
  /**
   * Bytes the layer's `fs/` takes on disk (`st_blocks × 512`, each hardlinked
   * inode once), measured by `Commit.commit` unless given.
   */
  disk_usage: number;
  /** How long each phase of the build took: `[phase, seconds]`, in the order they ran. */
  timing: Timing;
  /** When the layer was committed: ISO-8601 UTC, e.g. `2025-01-31T12:00:00.000Z`. */
  created_at: string;
  /**
   * For a step that was not run: the dependency whose failure stopped it
   * (the builder records the step id); `null` for every layer that ran.
   */
  failed_dep: string | null;
  /**
   * The layer's full hash (64 hex). The directory is named by its first 12
   * digits only, so a cache hit checks this. Recorded by `Commit.commit`
   * when given a full hash; absent in layers made by older versions.
   */
  hash?: string | undefined;
}

/** The names of the {@link LayerRecord} fields, in the order `layer.json` holds them. */
export const FIELDS = [
  'exit_status',
  'parent_hashes',
  'uid',
  'gid',
  'base_hash',
  'disk_usage',
  'timing',
  'created_at',
  'failed_dep',
  'hash',
] as const satisfies readonly (keyof LayerRecord)[];

// FIELDS and the documented record are one: a field added to either alone fails to compile.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const fieldsAreRecord: Same<(typeof FIELDS)[number], keyof LayerRecord> = true;
void fieldsAreRecord;

/**
 * A `layer.json` as read: its {@link LayerRecord} fields, and any other key
 * its writer added (another implementation, a newer version), which
 * {@link save} keeps.
 */
export type LayerMeta = LayerRecord & { [key: string]: unknown };

/** The `layer.json` path of a layer directory. */
export function file(dir: string): string {
  return join(dir, FILES.meta);
}

/**
 * Writes `layer.json` atomically. `created_at` is taken from `createdAt`, else
 * from `meta.created_at` when set, else the current time (ISO-8601 UTC).
 */
export async function save(
  dir: string,
  meta: Omit<LayerMeta, 'created_at'> & { created_at?: string },
  options: { createdAt?: string } = {},
): Promise<void> {
  const record = {
    ...meta,
    created_at: options.createdAt ?? (meta.created_at || new Date().toISOString()),
  };
  const parsed = validate(record);
  if (!parsed.success) {
    throw new LayerError(
      LayerCodes.BAD_ARGUMENT,
      `Refusing to write an invalid ${file(dir)}: ${parsed.error.message}`,
      { path: file(dir) },
    );
  }
  await writeFileAtomic(file(dir), text(parsed.data));
}

/**
 * The text of a `layer.json` as {@link save} writes it: a record that has
 * passed {@link validate} (its fields in {@link FIELDS} order), indented,
 * with a final newline.
 *
 * @example
 * ```ts
 * const parsed = validate(record);
 * if (parsed.success) await writeFile(file(dir), text(parsed.data));
 * ```
 */
export function text(meta: LayerMeta): string {
  return `${JSON.stringify(meta, null, 2)}\n`;
}

/** Parses the text of a `layer.json`; `path` is used in error messages. */
export function parse(text: string, path: string): LayerMeta {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw corrupt(path, `not valid JSON (${messageOf(cause)})`, cause);
  }
  const parsed = validate(json);
  if (!parsed.success) throw corrupt(path, parsed.error.message, parsed.error);
  return parsed.data;
}

/** One thing wrong with a record: where (`['timing', 0, 1]`; `[]` for the whole) and what. */
export interface RecordIssue {
  path: (string | number)[];
  message: string;
}

/** Why a record is not a valid `layer.json`: every {@link RecordIssue}, and them on one line as the message. */
export class InvalidRecord extends Error {
  constructor(readonly issues: RecordIssue[]) {
    super(describeIssues(issues));
    this.name = 'InvalidRecord';
  }
}

/** What {@link validate} returns. */
export type Validation =
  | { success: true; data: LayerMeta; error?: undefined }
  | { success: false; data?: undefined; error: InvalidRecord };

/**
 * Checks that `value` is a `layer.json` record: every {@link LayerRecord}
 * field of its type, other keys kept. The record comes back with its fields
 * first, in {@link FIELDS} order, then the other keys; one already in that
 * order (every record {@link save} wrote) comes back as is, checked in
 * about a microsecond.
 *
 * @example
 * ```ts
 * const r = validate(JSON.parse(text));
 * if (!r.success) console.error(r.error.issues); // [{ path: ['uid'], message: 'expected a whole number ≥ 0, got -1' }]
 * ```
 */
export function validate(value: unknown): Validation {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return invalid([{ path: [], message: `expected an object, got ${kindOf(value)}` }]);
  }
  const o = value as Record<string, unknown>;
  const issues: RecordIssue[] = [];
  for (const field of FIELDS) {
    const v = o[field];
    if (v === undefined) {
      if (field !== 'hash') issues.push({ path: [field], message: 'required' });
      continue;
    }
    CHECKS[field](v, [field], issues);
  }
  if (issues.length > 0) return invalid(issues);
  if (inFieldOrder(o)) return { success: true, data: o as LayerMeta };
  const data: Record<string, unknown> = {};
  for (const field of FIELDS) if (o[field] !== undefined) data[field] = o[field];
  for (const [key, v] of Object.entries(o)) if (!(key in data)) data[key] = v;
  return { success: true, data: data as LayerMeta };
}

function invalid(issues: RecordIssue[]): Validation {
  return { success: false, error: new InvalidRecord(issues) };
}

/** True when the fields `o` has come first, in FIELDS order, and `o` is a plain object. */
function inFieldOrder(o: Record<string, unknown>): boolean {
  if (Object.getPrototypeOf(o) !== Object.prototype) return false;
  const keys = Object.keys(o);
  let at = 0;
  for (const field of FIELDS) if (field in o && keys[at++] !== field) return false;
  return true;
}

type Check = (v: unknown, path: RecordIssue['path'], issues: RecordIssue[]) => void;

const FULL_HASH = /^[0-9a-f]{64}$/;

const isString: Check = (v, path, issues) => {
  if (typeof v !== 'string') issues.push({ path, message: `expected a string, got ${kindOf(v)}` });
};

const isInteger: Check = (v, path, issues) => {
  if (!Number.isSafeInteger(v))
    issues.push({ path, message: `expected a whole number, got ${kindOf(v)}` });
};

const isCount: Check = (v, path, issues) => {
  if (!Number.isSafeInteger(v) || (v as number) < 0)
    issues.push({ path, message: `expected a whole number ≥ 0, got ${kindOf(v)}` });
};

// Paths of elements are made only for an issue: a cache check validates
// every layer.json it reads, and these arrays were most of what that allocated.
const isStrings: Check = (v, path, issues) => {
  if (!Array.isArray(v))
    return void issues.push({ path, message: `expected an array of strings, got ${kindOf(v)}` });
  for (let i = 0; i < v.length; i++) {
    if (typeof v[i] !== 'string') isString(v[i], [...path, i], issues);
  }
};

const isTiming: Check = (v, path, issues) => {
  if (!Array.isArray(v))
    return void issues.push({ path, message: `expected [phase, seconds] pairs, got ${kindOf(v)}` });
  for (let i = 0; i < v.length; i++) {
    const t: unknown = v[i];
    if (!Array.isArray(t) || t.length !== 2) {
      issues.push({ path: [...path, i], message: `expected [phase, seconds], got ${kindOf(t)}` });
      continue;
    }
    if (typeof t[0] !== 'string') isString(t[0], [...path, i, 0], issues);
    if (typeof t[1] !== 'number' || !Number.isFinite(t[1]))
      issues.push({
        path: [...path, i, 1],
        message: `expected a number of seconds, got ${kindOf(t[1])}`,
      });
  }
};

const CHECKS: Record<(typeof FIELDS)[number], Check> = {
  exit_status: isInteger,
  parent_hashes: isStrings,
  uid: isCount,
  gid: isCount,
  base_hash: isString,
  disk_usage: isCount,
  timing: isTiming,
  created_at: isString,
  failed_dep: (v, path, issues) => {
    if (v !== null) isString(v, path, issues);
  },
  hash: (v, path, issues) => {
    if (typeof v !== 'string' || !FULL_HASH.test(v))
      issues.push({
        path,
        message: `expected a full sha256 hex hash (64 of 0-9a-f), got ${kindOf(v)}`,
      });
  },
};

/** A value as an issue shows it: short JSON, or its kind. */
function kindOf(v: unknown): string {
  if (v === undefined) return 'nothing';
  if (Array.isArray(v)) return v.length === 0 ? '[]' : `an array of ${v.length}`;
  if (typeof v === 'object' && v !== null) return 'an object';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 37)}...` : v);
  if (v === null || typeof v === 'number' || typeof v === 'boolean') return JSON.stringify(v);
  return `a ${typeof v}`; // bigint, function, symbol: not from JSON
}

/**
 * Reads `layer.json` of a layer directory.
 * @throws {LayerError} `LAYER_META_MISSING` when absent, `LAYER_META_CORRUPT` when unreadable.
 */
export async function load(dir: string): Promise<LayerMeta> {
  const meta = await find(dir);
  if (meta === undefined) throw missing(file(dir));
  return meta;
}

/**
 * Reads `layer.json`, or `undefined` when the layer has none. Corrupt files still throw.
 * (A missing file is the common answer of a cache check: it costs no error object.)
 */
export async function find(dir: string): Promise<LayerMeta | undefined> {
  const path = file(dir);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return undefined;
    throw corrupt(path, messageOf(cause), cause);
  }
  return parse(text, path);
}

/**
 * {@link find}, synchronously: for the builder's cache checks, where one
 * small read costs a fraction of a thread-pool round trip (four of them for
 * an asynchronous `readFile`).
 *
 * @example
 * ```ts
 * const meta = LayerMeta.findSync(LayerDir.path({ osDir, hash }));
 * if (meta?.exit_status === 0) console.log('cached');
 * ```
 * With `likelyMissing` (a layer about to be made), the file is looked for
 * before it is read: a missing one then costs no thrown `ENOENT`, which is
 * ~20 µs, five times the look; a present one costs the look more.
 *
 * @throws {LayerError} `LAYER_META_CORRUPT` when it is unreadable.
 */
export function findSync(
  dir: string,
  opts: { likelyMissing?: boolean } = {},
): LayerMeta | undefined {
  const path = file(dir);
  if (opts.likelyMissing === true && !mayExist(path)) return undefined;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return undefined;
    throw corrupt(path, messageOf(cause), cause);
  }
  return parse(text, path);
}

/** False only when `path` is certainly missing: any other answer (ENOTDIR, EACCES) is the read's to report. */
function mayExist(path: string): boolean {
  try {
    return statSync(path, { throwIfNoEntry: false }) !== undefined;
  } catch {
    return true;
  }
}

function missing(path: string): LayerError {
  return new LayerError(LayerCodes.META_MISSING, `No layer metadata at ${path}`, {
    path,
    hint: `It is not a committed layer (a commit writes layer.json last). ${removeLayerHint(dirname(path))}`,
  });
}

/** Issues on one line (`uid: expected ...; timing.0.1: ...`), as the CLI prints errors. */
function describeIssues(issues: RecordIssue[]): string {
  return issues
    .map((i) => `${i.path.map(String).join('.') || 'the record'}: ${i.message}`)
    .join('; ');
}

function corrupt(path: string, why: string, cause: unknown): LayerError {
  return new LayerError(LayerCodes.META_CORRUPT, `Corrupt layer metadata in ${path}: ${why}`, {
    path,
    cause,
    hint: `${removeLayerHint(dirname(path))}; other layers are unaffected`,
  });
}
