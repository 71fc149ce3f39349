/**
 * Credentials for a registry, looked up the way Docker, Podman and skopeo do:
 * an explicit option, then `DAY11_REGISTRY_USERNAME` / `DAY11_REGISTRY_PASSWORD`,
 * then `REGISTRY_AUTH_FILE`, then `$DOCKER_CONFIG/config.json` (default
 * `~/.docker/config.json`), including its `credHelpers` and `credsStore`
 * (`docker-credential-<name> get`). They are read when a registry first asks
 * for them (a 401), never before.
 */
import { readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { Exec } from '@day11/exec';
import { z } from 'zod';
import { RegistryCodes, RegistryError, errnoCode, messageOf } from './errors.js';
import { DOCKER_HUB } from './reference.js';

/** What to authenticate with. */
export type Credentials =
  | { username: string; password: string }
  /** An OAuth2 refresh token (`identitytoken` of `docker login` with some registries). */
  | { identityToken: string };

/** Environment variables read by {@link findCredentials}. */
export const ENV = {
  username: 'DAY11_REGISTRY_USERNAME',
  password: 'DAY11_REGISTRY_PASSWORD',
  authFile: 'REGISTRY_AUTH_FILE',
  dockerConfig: 'DOCKER_CONFIG',
} as const;

const AuthEntrySchema = z.looseObject({
  auth: z.string().optional(),
  username: z.string().optional(),
  password: z.string().optional(),
  identitytoken: z.string().optional(),
});

const AuthFileSchema = z.looseObject({
  auths: z.record(z.string(), AuthEntrySchema).optional(),
  credHelpers: z.record(z.string(), z.string()).optional(),
  credsStore: z.string().optional(),
});

type AuthFile = z.infer<typeof AuthFileSchema>;

/** Where {@link findCredentials} looks; tests and callers may override each. */
export interface CredentialSources {
  env?: Readonly<Record<string, string | undefined>> | undefined;
  /** Home directory for `~/.docker/config.json`. */
  home?: string | undefined;
}

/**
 * The credentials configured for `registry` (`host[:port]`), or `undefined`
 * for anonymous access.
 *
 * @example
 * ```ts
 * const creds = await findCredentials('ghcr.io'); // from ~/.docker/config.json after `docker login ghcr.io`
 * ```
 * @throws {RegistryError} `REGISTRY_AUTH_CONFIG` for an unreadable or malformed
 *   credentials file, or a credential helper that fails.
 */
export async function findCredentials(
  registry: string,
  sources: CredentialSources = {},
): Promise<Credentials | undefined> {
  const env = sources.env ?? process.env;
  const username = env[ENV.username];
  const password = env[ENV.password];
  if (username !== undefined && password !== undefined) return { username, password };
  const files = [
    env[ENV.authFile],
    join(env[ENV.dockerConfig] ?? join(sources.home ?? homedir(), '.docker'), 'config.json'),
  ].filter((f): f is string => f !== undefined && f !== '');
  for (const file of files) {
    const config = await readAuthFile(file);
    if (!config) continue;
    const found = await fromAuthFile({ config, file, registry });
    if (found) return found;
  }
  return undefined;
}

async function readAuthFile(file: string): Promise<AuthFile | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (cause) {
    if (errnoCode(cause) === 'ENOENT') return undefined;
    throw configError(file, messageOf(cause), cause);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (cause) {
    throw configError(file, `not valid JSON (${messageOf(cause)})`, cause);
  }
  const parsed = AuthFileSchema.safeParse(json);
  if (!parsed.success) throw configError(file, 'not a Docker/containers auth file', parsed.error);
  return parsed.data;
}

/** The keys under which `docker login HOST` may have stored HOST's entry. */
function keysFor(registry: string): string[] {
  if (registry === DOCKER_HUB)
    return ['https://index.docker.io/v1/', 'docker.io', 'index.docker.io'];
  return [registry, `https://${registry}`, `http://${registry}`, `https://${registry}/v1/`];
}

async function fromAuthFile(opts: {
  config: AuthFile;
  file: string;
  registry: string;
}): Promise<Credentials | undefined> {
  const { config, file, registry } = opts;
  const keys = keysFor(registry);
  const helper = keys.map((k) => config.credHelpers?.[k]).find((h) => h !== undefined);
  if (helper !== undefined) return fromHelper({ helper, registry, file });
  const entry = keys.map((k) => config.auths?.[k]).find((e) => e !== undefined);
  if (entry) return fromEntry({ entry, file, registry });
  if (config.credsStore !== undefined) {
    return fromHelper({ helper: config.credsStore, registry, file });
  }
  return undefined;
}

function fromEntry(opts: {
  entry: z.infer<typeof AuthEntrySchema>;
  file: string;
  registry: string;
}): Credentials | undefined {
  const { entry } = opts;
  if (entry.identitytoken) return { identityToken: entry.identitytoken };
  if (entry.username !== undefined && entry.password !== undefined) {
    return { username: entry.username, password: entry.password };
  }
  if (entry.auth === undefined || entry.auth === '') return undefined;
  const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon < 0) {
    throw configError(
      opts.file,
      `the "auth" of ${opts.registry} is not base64 of user:password`,
      undefined,
    );
  }
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

const HelperAnswer = z.looseObject({ Username: z.string(), Secret: z.string() });

async function fromHelper(opts: {
  helper: string;
  registry: string;
  file: string;
}): Promise<Credentials | undefined> {
  const command = `docker-credential-${opts.helper}`;
  let stdout: string;
  try {
    ({ stdout } = await Exec.run(command, ['get'], { input: opts.registry, timeoutMs: 30_000 }));
  } catch (cause) {
    // Helpers answer "credentials not found" with a non-zero exit: anonymous then.
    if (/not found/i.test(messageOf(cause))) return undefined;
    throw configError(opts.file, `the credential helper ${command} failed`, cause);
  }
  const parsed = HelperAnswer.safeParse(safeJson(stdout));
  if (!parsed.success) throw configError(opts.file, `${command} gave no credentials`, undefined);
  const { Username, Secret } = parsed.data;
  return Username === '<token>'
    ? { identityToken: Secret }
    : { username: Username, password: Secret };
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function configError(file: string, why: string, cause: unknown): RegistryError {
  return new RegistryError(
    RegistryCodes.AUTH_CONFIG,
    `Cannot read registry credentials from ${file}: ${why}`,
    {
      path: file,
      cause,
      hint: 'Fix or remove the file (`docker login` / `podman login` rewrite it), or set DAY11_REGISTRY_USERNAME and DAY11_REGISTRY_PASSWORD',
    },
  );
}
