/**
 * `layer.json`: the generic per-layer record, as every day11 implementation
 * writes it.
 * Keys stay snake_case so caches written by other day11 implementations read
 * back; keys this version does not know are kept through a load/save.
 */
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { z } from 'zod';
import {
  errnoCode,
  LayerCodes,
  LayerError,
  messageOf,
  removeLayerHint,
  writeFileAtomic,
} from './errors.js';
import { FILES } from './layer-dir.js';

/** `[phase, seconds]` pairs, in the order the phases ran. */
export const TimingSchema = z.array(z.tuple([z.string(), z.number()]));

/** `[phase, seconds]` pairs, e.g. `[['mkdirs', 0.001], ..., ['runc_run', 2.5], ['total', 2.6]]`. */
export type Timing = z.infer<typeof TimingSchema>;

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

/** Schema of `layer.json`: the {@link LayerRecord} fields; unknown keys pass through. */
export const Schema = z.looseObject({
  exit_status: z.number().int(),
  parent_hashes: z.array(z.string()),
  uid: z.number().int().nonnegative(),
  gid: z.number().int().nonnegative(),
  base_hash: z.string(),
  disk_usage: z.number().int().nonnegative(),
  timing: TimingSchema,
  created_at: z.string(),
  failed_dep: z.string().nullable(),
  hash: z
    .string()
    .regex(/^[0-9a-f]{64}$/, 'a full sha256 hex hash')
    .optional(),
});

/** The names of the {@link LayerRecord} fields. */
export const FIELDS = Object.keys(Schema.shape) as readonly (keyof LayerRecord)[];

/**
 * A `layer.json` as read: its {@link LayerRecord} fields, and any other key
 * its writer added (another implementation, a newer version), which
 * {@link save} keeps.
 */
export type LayerMeta = LayerRecord & { [key: string]: unknown };

// The schema and the documented record are one: a change to either without the other fails to compile.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const schemaIsRecord: Same<z.infer<typeof Schema>, LayerMeta> = true;
void schemaIsRecord;

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
      `Refusing to write an invalid ${file(dir)}: ${describeIssues(parsed.error)}`,
      { path: file(dir) },
    );
  }
  await writeFileAtomic(file(dir), text(parsed.data));
}

/**
 * The text of a `layer.json` as {@link save} writes it: a record that has
 * passed {@link Schema} (its keys in the schema's order), indented, with a
 * final newline.
 *
 * @example
 * ```ts
 * const parsed = Schema.safeParse(record);
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
  if (!parsed.success) throw corrupt(path, describeIssues(parsed.error), parsed.error);
  return parsed.data;
}

/**
 * `Schema.safeParse`, with the same result, in about a microsecond for a
 * record that is already valid and in the schema's key order (every record
 * `save` wrote): zod takes ~50 µs, and a run over 50 layers reads 50
 * records. Anything else goes through zod, for its result and its errors.
 */
export function validate(value: unknown): ReturnType<typeof Schema.safeParse> {
  if (isCanonical(value)) return { success: true, data: value };
  return Schema.safeParse(value);
}

/** True for a valid record whose known fields come first, in the schema's order (as zod outputs them). */
function isCanonical(value: unknown): value is LayerMeta {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return false;
  const o = value as Record<string, unknown>;
  const valid =
    Number.isSafeInteger(o.exit_status) &&
    isStrings(o.parent_hashes) &&
    isCount(o.uid) &&
    isCount(o.gid) &&
    typeof o.base_hash === 'string' &&
    isCount(o.disk_usage) &&
    isTiming(o.timing) &&
    typeof o.created_at === 'string' &&
    (o.failed_dep === null || typeof o.failed_dep === 'string') &&
    (!('hash' in o) || (typeof o.hash === 'string' && FULL_HASH.test(o.hash)));
  if (!valid || Object.getPrototypeOf(o) !== Object.prototype) return false;
  const keys = Object.keys(o);
  let at = 0;
  for (const field of FIELDS) if (field in o && keys[at++] !== field) return false;
  return true;
}

const FULL_HASH = /^[0-9a-f]{64}$/;

function isCount(v: unknown): boolean {
  return Number.isSafeInteger(v) && (v as number) >= 0;
}

function isStrings(v: unknown): boolean {
  return Array.isArray(v) && v.every((s) => typeof s === 'string');
}

function isTiming(v: unknown): boolean {
  return (
    Array.isArray(v) &&
    v.every(
      (t) =>
        Array.isArray(t) &&
        t.length === 2 &&
        typeof t[0] === 'string' &&
        typeof t[1] === 'number' &&
        Number.isFinite(t[1]),
    )
  );
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
 * @throws {LayerError} `LAYER_META_CORRUPT` when it is unreadable.
 */
export function findSync(dir: string): LayerMeta | undefined {
  const path = file(dir);
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return undefined;
    throw corrupt(path, messageOf(cause), cause);
  }
  return parse(text, path);
}

function missing(path: string): LayerError {
  return new LayerError(LayerCodes.META_MISSING, `No layer metadata at ${path}`, {
    path,
    hint: `It is not a committed layer (a commit writes layer.json last). ${removeLayerHint(dirname(path))}`,
  });
}

/** A zod error on one line (`uid: Too small: ...; timing: ...`), as the CLI prints errors. */
function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.map(String).join('.') || 'the top level'}: ${i.message}`)
    .join('; ');
}

function corrupt(path: string, why: string, cause: unknown): LayerError {
  return new LayerError(LayerCodes.META_CORRUPT, `Corrupt layer metadata in ${path}: ${why}`, {
    path,
    cause,
    hint: `${removeLayerHint(dirname(path))}; other layers are unaffected`,
  });
}
