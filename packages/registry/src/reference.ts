/**
 * References: where a repository or an image is. The distribution-spec
 * grammar for repository names, tags and digests; `docker://` and `oci:`
 * transports as skopeo writes them; Docker Hub's implicit host and `library/`.
 */
import { RegistryCodes, RegistryError } from './errors.js';

/** A repository on a registry. */
export interface RepositoryRef {
  /** The registry as written, lowercased: `host[:port]` (`127.0.0.1:5000`, `ghcr.io`). */
  registry: string;
  /** The repository path, e.g. `ns/day11-cache`. */
  repository: string;
}

/** An image in a repository, by tag and/or digest. */
export interface ImageRef extends RepositoryRef {
  tag?: string | undefined;
  digest?: string | undefined;
}

/** Where a base image comes from. */
export type ImageSource =
  | { transport: 'docker'; image: ImageRef }
  | { transport: 'oci'; dir: string; reference: string | undefined }
  /** Any other skopeo transport (`docker-archive:`, `oci-archive:`, `docker-daemon:`, ...). */
  | { transport: 'skopeo'; ref: string };

const COMPONENT = '[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*';
/** The distribution-spec grammar of a repository name. */
export const REPOSITORY_RE = new RegExp(`^${COMPONENT}(?:/${COMPONENT})*$`);
/** The distribution-spec grammar of a tag. */
export const TAG_RE = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
/** A sha256 digest, the only algorithm day11 verifies. */
export const DIGEST_RE = /^sha256:[0-9a-f]{64}$/;

const HOST_RE =
  /^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])(?::\d{1,5})?$/;

/** Docker Hub: how references name it, and where its API is. */
export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_API = 'registry-1.docker.io';

/**
 * Parses a repository reference such as `127.0.0.1:5000/ns/day11-cache`
 * (a leading `docker://` is accepted). The registry host must be explicit.
 *
 * @example
 * ```ts
 * parseRepository('127.0.0.1:5000/ns/day11-cache'); // { registry: '127.0.0.1:5000', repository: 'ns/day11-cache' }
 * ```
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE`.
 */
export function parseRepository(ref: string): RepositoryRef {
  const text = stripDocker(ref);
  const slash = text.indexOf('/');
  const host = slash < 0 ? '' : text.slice(0, slash).toLowerCase();
  const repository = text.slice(slash + 1);
  if (slash < 0 || !looksLikeHost(host) || !HOST_RE.test(host)) {
    throw bad(
      ref,
      'it does not start with a registry host',
      'Write HOST[:PORT]/REPOSITORY, e.g. 127.0.0.1:5000/ns/day11-cache or ghcr.io/acme/day11-cache',
    );
  }
  if (/[:@]/.test(repository)) {
    throw bad(ref, 'a cache repository takes no tag or digest', 'Drop the :tag or @digest');
  }
  assertRepository(ref, repository);
  return { registry: host, repository };
}

/**
 * Parses an image reference `[HOST/]REPO[:TAG][@DIGEST]` (a leading
 * `docker://` is accepted). Without a host it is Docker Hub's, and a
 * one-component name is in `library/`; without tag and digest the tag is `latest`.
 *
 * @example
 * ```ts
 * parseImage('docker://127.0.0.1:5000/busybox:1.36'); // { registry: '127.0.0.1:5000', repository: 'busybox', tag: '1.36' }
 * parseImage('debian:12'); // { registry: 'docker.io', repository: 'library/debian', tag: '12' }
 * ```
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE`.
 */
export function parseImage(ref: string): ImageRef {
  let text = stripDocker(ref);
  let digest: string | undefined;
  const at = text.indexOf('@');
  if (at >= 0) {
    digest = text.slice(at + 1);
    text = text.slice(0, at);
    if (!DIGEST_RE.test(digest)) {
      throw bad(ref, `${JSON.stringify(digest)} is not a sha256 digest`, 'Write @sha256:<64 hex>');
    }
  }
  const slash = text.indexOf('/');
  const first = slash < 0 ? '' : text.slice(0, slash).toLowerCase();
  const explicitHost = looksLikeHost(first) && HOST_RE.test(first);
  const registry = explicitHost ? first : DOCKER_HUB;
  let rest = explicitHost ? text.slice(slash + 1) : text;
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_RE.test(tag)) throw bad(ref, `${JSON.stringify(tag)} is not a valid tag`, TAG_HINT);
  }
  const repository = registry === DOCKER_HUB && !rest.includes('/') ? `library/${rest}` : rest;
  assertRepository(ref, repository);
  return { registry, repository, tag: tag ?? (digest ? undefined : 'latest'), digest };
}

/**
 * Parses a base image source: `docker://[HOST/]REPO[:TAG][@DIGEST]`,
 * `oci:DIR[:TAG]` (an OCI image layout on disk, as skopeo writes it), or any
 * other skopeo transport (`docker-archive:FILE`, `oci-archive:FILE`,
 * `docker-daemon:IMAGE`, ...), which is copied through skopeo.
 *
 * @example
 * ```ts
 * parseImageSource('oci:/srv/images:busybox'); // { transport: 'oci', dir: '/srv/images', reference: 'busybox' }
 * ```
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE`.
 */
export function parseImageSource(ref: string): ImageSource {
  if (ref.startsWith('docker://')) return { transport: 'docker', image: parseImage(ref) };
  if (ref.startsWith('oci:')) {
    const rest = ref.slice('oci:'.length);
    const colon = rest.indexOf(':');
    const dir = colon < 0 ? rest : rest.slice(0, colon);
    const reference = colon < 0 ? undefined : rest.slice(colon + 1);
    if (dir === '' || reference === '') {
      throw bad(ref, 'the layout directory or the tag is empty', 'Write oci:DIR or oci:DIR:TAG');
    }
    return { transport: 'oci', dir, reference };
  }
  if (/^[a-z][a-z0-9-]*:/.test(ref)) return { transport: 'skopeo', ref };
  throw bad(
    ref,
    'it names no transport',
    'Write docker://HOST/REPO:TAG, oci:DIR:TAG, or another skopeo transport such as docker-archive:FILE',
  );
}

/** `host[:port]` → the host whose API to call (Docker Hub's API is on another name). */
export function apiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/**
 * True when the registry is this machine (`localhost`, `127.0.0.0/8`, `[::1]`):
 * spoken to over plain http, as every OCI tool does.
 *
 * @example
 * ```ts
 * isLoopback('127.0.0.1:5000'); // true
 * ```
 */
export function isLoopback(registry: string): boolean {
  const host = registry.replace(/:\d+$/, '');
  return host === 'localhost' || host === '[::1]' || /^127(?:\.\d{1,3}){3}$/.test(host);
}

/** `REGISTRY/REPOSITORY[:TAG][@DIGEST]`, the way skopeo writes it after `docker://`. */
export function formatImage(ref: ImageRef): string {
  const tag = ref.tag === undefined ? '' : `:${ref.tag}`;
  const digest = ref.digest === undefined ? '' : `@${ref.digest}`;
  return `${ref.registry}/${ref.repository}${tag}${digest}`;
}

/**
 * Throws unless `tag` is a valid tag.
 * @throws {RegistryError} `REGISTRY_BAD_REFERENCE`.
 */
export function assertTag(tag: string): void {
  if (!TAG_RE.test(tag)) throw bad(tag, 'it is not a valid tag', TAG_HINT);
}

const TAG_HINT = 'A tag is 1-128 letters, digits, _ . - and does not start with . or -';

function stripDocker(ref: string): string {
  if (typeof ref !== 'string') throw bad(String(ref), 'it is not a string', 'Pass a string');
  return ref.startsWith('docker://') ? ref.slice('docker://'.length) : ref;
}

/** Docker's rule: the first component is a host when it has a `.` or `:` or is `localhost`. */
function looksLikeHost(first: string): boolean {
  return first.includes('.') || first.includes(':') || first === 'localhost';
}

function assertRepository(ref: string, repository: string): void {
  if (REPOSITORY_RE.test(repository) && repository.length <= 255) return;
  throw bad(
    ref,
    `${JSON.stringify(repository)} is not a valid repository name`,
    'Repository names are lowercase letters and digits, separated by . _ __ - and /',
  );
}

function bad(ref: string, why: string, hint: string): RegistryError {
  return new RegistryError(
    RegistryCodes.BAD_REFERENCE,
    `Invalid reference ${JSON.stringify(ref)}: ${why}`,
    { hint },
  );
}
