/**
 * Sidecars: JSON objects beside `layer.json`, owned by domain code
 * (`build.json`, `doc.json`, ...). A layer's kind is which sidecars it has.
 * This module reads and writes any of them without knowing their schema.
 */
import { readdir, readFile } from 'node:fs/promises';
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

/** A sidecar's content: a JSON object. */
export type SidecarValue = Record<string, unknown>;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]*\.json$/;

/** True when `name` is a sidecar file name: `*.json`, not `layer.json`. */
export function isSidecarName(name: string): boolean {
  return name !== FILES.meta && NAME_RE.test(name);
}

/** Throws unless `name` is a plain `*.json` file name other than `layer.json`. */
export function assertName(name: string): void {
  if (!NAME_RE.test(name) || name === FILES.meta) {
    throw new LayerError(
      LayerCodes.SIDECAR_INVALID,
      `Invalid sidecar name ${JSON.stringify(name)}`,
      {
        hint: 'A sidecar is a file name ending in .json (letters, digits, . _ -), not layer.json',
      },
    );
  }
}

function isObject(value: unknown): value is SidecarValue {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * Reads sidecar `name` of layer `dir`, or `undefined` when the layer has none.
 * @throws {LayerError} `LAYER_SIDECAR_CORRUPT` when it is not a JSON object.
 */
export async function read(dir: string, name: string): Promise<SidecarValue | undefined> {
  assertName(name);
  const path = join(dir, name);
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return undefined;
    throw corrupt(path, messageOf(cause), cause);
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (cause) {
    throw corrupt(path, `not valid JSON (${messageOf(cause)})`, cause);
  }
  if (!isObject(value)) throw corrupt(path, 'the top level is not a JSON object', undefined);
  return value;
}

/** Writes sidecar `name` atomically. `value` must be a JSON object. */
export async function write(dir: string, name: string, value: unknown): Promise<void> {
  const path = join(dir, name);
  await writeFileAtomic(path, text(name, value, path));
}

/**
 * The text of sidecar `name` holding `value`, as {@link write} writes it;
 * errors name it as `path`.
 *
 * @example
 * ```ts
 * const json = Sidecar.text('build.json', { pkg: 'hello.1.0' });
 * ```
 * @throws {LayerError} `LAYER_SIDECAR_INVALID` for a bad name, a value that is
 *   not a JSON object, or one that cannot be serialised.
 */
export function text(name: string, value: unknown, path: string = name): string {
  assertName(name);
  if (!isObject(value)) {
    throw new LayerError(LayerCodes.SIDECAR_INVALID, `Sidecar ${path} must be a JSON object`, {
      path,
      hint: 'Wrap the value in an object, e.g. { "value": ... }',
    });
  }
  try {
    return `${JSON.stringify(value, null, 2)}\n`;
  } catch (cause) {
    throw new LayerError(
      LayerCodes.SIDECAR_INVALID,
      `Sidecar ${path} is not serialisable: ${messageOf(cause)}`,
      {
        path,
        cause,
      },
    );
  }
}

/** Names of the sidecars in layer `dir`, sorted (every `*.json` but `layer.json`). */
export async function list(dir: string): Promise<string[]> {
  const names = await readdir(dir);
  return names.filter(isSidecarName).sort();
}

function corrupt(path: string, why: string, cause: unknown): LayerError {
  return new LayerError(LayerCodes.SIDECAR_CORRUPT, `Corrupt sidecar ${path}: ${why}`, {
    path,
    cause,
    hint: removeLayerHint(dirname(path)),
  });
}
