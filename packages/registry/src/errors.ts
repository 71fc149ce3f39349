/**
 * Errors of `@day11/registry`. Every one is a {@link RegistryError}: a
 * `Day11Error` with a stable code from {@link RegistryCodes}, the registry,
 * repository and digest (or tag) involved, and a hint saying what to do.
 */
import { Day11Error, type Day11ErrorOptions, errnoCode, messageOf } from '@day11/exec';

/** Stable codes of the errors thrown by `@day11/registry`. */
export const RegistryCodes = {
  /** A reference (`HOST/REPO[:TAG|@DIGEST]`, `docker://…`, `oci:DIR:TAG`) does not parse. */
  BAD_REFERENCE: 'REGISTRY_BAD_REFERENCE',
  /** An option or argument is out of range or malformed. */
  BAD_ARGUMENT: 'REGISTRY_BAD_ARGUMENT',
  /** The registry cannot be reached: connection refused, DNS, reset, TLS. */
  UNREACHABLE: 'REGISTRY_UNREACHABLE',
  /** 401: no credentials, or the registry (or its token server) refused them. */
  UNAUTHORIZED: 'REGISTRY_UNAUTHORIZED',
  /** 403: the credentials are valid but may not do this. */
  DENIED: 'REGISTRY_DENIED',
  /** 404 for something that must exist (a blob a manifest names, a base image). */
  NOT_FOUND: 'REGISTRY_NOT_FOUND',
  /** 429 still after the retries. */
  RATE_LIMITED: 'REGISTRY_RATE_LIMITED',
  /** 5xx still after the retries. */
  SERVER_ERROR: 'REGISTRY_SERVER_ERROR',
  /** 413 even for the smallest chunk of a chunked upload. */
  TOO_LARGE: 'REGISTRY_TOO_LARGE',
  /** Any other unexpected answer (status, missing header, redirect loop). */
  PROTOCOL: 'REGISTRY_PROTOCOL',
  /** Downloaded bytes do not match their digest (or a layer's tar its diff_id). */
  DIGEST_MISMATCH: 'REGISTRY_DIGEST_MISMATCH',
  /** A download ended before its announced size. */
  TRUNCATED: 'REGISTRY_TRUNCATED',
  /** A manifest is larger than 4 MiB. */
  MANIFEST_TOO_LARGE: 'REGISTRY_MANIFEST_TOO_LARGE',
  /** A manifest, index, config or token answer is not valid JSON of the expected shape. */
  MANIFEST_INVALID: 'REGISTRY_MANIFEST_INVALID',
  /** A `build-<hash>` tag holds an image day11 did not publish (or for another hash). */
  FOREIGN_IMAGE: 'REGISTRY_FOREIGN_IMAGE',
  /** A layer's tar is hostile (`../`, absolute paths, writes through symlinks) or corrupt. */
  UNSAFE_LAYER: 'REGISTRY_UNSAFE_LAYER',
  /** A layer to publish (or one of its stack) is not committed in the local cache. */
  LAYER_MISSING: 'REGISTRY_LAYER_MISSING',
  /** The credentials file (`~/.docker/config.json`, `REGISTRY_AUTH_FILE`) is unreadable. */
  AUTH_CONFIG: 'REGISTRY_AUTH_CONFIG',
  /** Writing into the local cache failed (extraction, commit, blob cache). */
  WRITE_FAILED: 'REGISTRY_WRITE_FAILED',
  /** Importing a base image failed for a reason not covered above (skopeo, media type). */
  IMPORT_FAILED: 'REGISTRY_IMPORT_FAILED',
} as const;

/** A stable code from {@link RegistryCodes}. */
export type RegistryCode = (typeof RegistryCodes)[keyof typeof RegistryCodes];

/** Options of a {@link RegistryError}: the Day11Error ones plus what on the registry it concerns. */
export interface RegistryErrorOptions extends Day11ErrorOptions {
  /** The registry host, e.g. `127.0.0.1:5000` or `ghcr.io`. */
  registry?: string | undefined;
  /** The repository, e.g. `ns/day11-cache`. */
  repository?: string | undefined;
  /** The blob or manifest digest, or the tag, the operation was about. */
  digest?: string | undefined;
  /** The HTTP status, when the registry answered. */
  status?: number | undefined;
}

/**
 * Any error thrown by `@day11/registry` (lock and lease errors of
 * `@day11/layer` and aborts pass through unchanged).
 *
 * @example
 * ```ts
 * try {
 *   await cache.publish({ hash, osDir }, {});
 * } catch (err) {
 *   if (err instanceof RegistryError && err.code === RegistryCodes.UNAUTHORIZED) console.error(err.hint);
 * }
 * ```
 */
export class RegistryError extends Day11Error {
  override name = 'RegistryError';
  declare readonly code: RegistryCode;
  /** The registry host. */
  readonly registry: string | undefined;
  /** The repository. */
  readonly repository: string | undefined;
  /** The digest or tag. */
  readonly digest: string | undefined;
  /** The HTTP status, when there was an answer. */
  readonly status: number | undefined;

  constructor(code: RegistryCode, message: string, options: RegistryErrorOptions = {}) {
    super(code, withWhere(message, options), options);
    this.registry = options.registry;
    this.repository = options.repository;
    this.digest = options.digest;
    this.status = options.status;
  }
}

/** Appends ` (registry R, repository P, digest D)` for what the message does not name yet. */
function withWhere(message: string, o: RegistryErrorOptions): string {
  const parts = [
    o.registry !== undefined && !message.includes(o.registry) ? `registry ${o.registry}` : '',
    o.repository !== undefined && !message.includes(o.repository)
      ? `repository ${o.repository}`
      : '',
    o.digest !== undefined && !message.includes(o.digest) ? o.digest : '',
  ].filter(Boolean);
  return parts.length > 0 ? `${message} (${parts.join(', ')})` : message;
}

/** True when `err` is a {@link RegistryError}, optionally with the given code. */
export function isRegistryError(err: unknown, code?: RegistryCode): err is RegistryError {
  return err instanceof RegistryError && (code === undefined || err.code === code);
}

/**
 * Whether `err` is the registry's answer `status` naming error code `code`
 * of the distribution spec (`BLOB_UNKNOWN`, `DIGEST_INVALID`, ...).
 *
 * @example
 * ```ts
 * if (answered(err, 400, 'BLOB_UNKNOWN')) await pushBlobs();
 * ```
 */
export function answered(err: unknown, status: number, code: string): boolean {
  return err instanceof RegistryError && err.status === status && err.message.includes(code);
}

/** True when `err` is an abort (a signal's reason or an `AbortError`). */
export function isAbort(err: unknown, signal?: AbortSignal): boolean {
  if (signal?.aborted && err === signal.reason) return true;
  const name = (err as { name?: unknown } | null)?.name;
  return name === 'AbortError' || name === 'TimeoutError';
}

/** The first {@link RegistryError} in `err`'s cause chain (extraction wraps stream errors). */
export function registryCause(err: unknown): RegistryError | undefined {
  let at: unknown = err;
  for (let depth = 0; depth < 8 && at instanceof Error; depth++) {
    if (at instanceof RegistryError) return at;
    at = at.cause;
  }
  return undefined;
}

export { messageOf, errnoCode };
