/**
 * Registry authentication (distribution "token authentication"): a request
 * answered 401 carries a `WWW-Authenticate` challenge; for `Bearer` a token
 * for the request's scope is fetched from the challenge's realm (with the
 * credentials, when there are some) and cached until it expires; for `Basic`
 * the credentials go with every request. Once the registry's scheme is known,
 * a token for a new scope is fetched before the request, so only the first
 * request of a client pays the 401 round trip.
 */
import { z } from 'zod';
import type { Credentials } from './credentials.js';
import { RegistryCodes, RegistryError } from './errors.js';

/** One challenge of a `WWW-Authenticate` header. */
export interface Challenge {
  /** Lowercase scheme: `bearer`, `basic`, ... */
  scheme: string;
  /** Its parameters, keys lowercased: `realm`, `service`, `scope`, `error`. */
  params: Record<string, string>;
}

/**
 * Parses a `WWW-Authenticate` header into its challenges (RFC 7235: several
 * challenges, comma-separated, each with `key=value` or `key="quoted"` parameters).
 *
 * @example
 * ```ts
 * parseChallenges('Bearer realm="https://auth.example/token",service="registry",scope="repository:a:pull"');
 * // [{ scheme: 'bearer', params: { realm: 'https://auth.example/token', service: 'registry', scope: 'repository:a:pull' } }]
 * ```
 */
export function parseChallenges(header: string): Challenge[] {
  const out: Challenge[] = [];
  const token = /\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*/y;
  let at = 0;
  let current: Challenge | undefined;
  while (at < header.length) {
    token.lastIndex = at;
    const name = token.exec(header);
    if (!name) {
      at++; // stray comma or space
      continue;
    }
    at = token.lastIndex;
    if (header[at] === '=') {
      const { value, next } = paramValue(header, at + 1);
      at = next;
      if (current) current.params[name[1]!.toLowerCase()] = value;
    } else {
      current = { scheme: name[1]!.toLowerCase(), params: {} };
      out.push(current);
    }
  }
  return out;
}

function paramValue(header: string, start: number): { value: string; next: number } {
  let at = start;
  while (header[at] === ' ') at++;
  if (header[at] !== '"') {
    const end = header.indexOf(',', at);
    const stop = end < 0 ? header.length : end;
    return { value: header.slice(at, stop).trim(), next: stop };
  }
  let value = '';
  for (at++; at < header.length && header[at] !== '"'; at++) {
    if (header[at] === '\\') at++;
    value += header[at] ?? '';
  }
  return { value, next: at + 1 };
}

/** Repository access a request needs: repository → actions (`pull`, `push`). */
export type Scope = ReadonlyMap<string, ReadonlySet<string>>;

/**
 * The scope of one repository.
 *
 * @example
 * ```ts
 * scopeOf('ns/cache', 'push'); // repository:ns/cache:pull,push
 * ```
 */
export function scopeOf(repository: string, access: 'pull' | 'push'): Scope {
  return new Map([[repository, new Set(access === 'push' ? ['pull', 'push'] : ['pull'])]]);
}

/** The `scope` query values of a scope, as the token server wants them. */
export function scopeStrings(scope: Scope): string[] {
  return [...scope].map(([repo, actions]) => `repository:${repo}:${[...actions].sort().join(',')}`);
}

/** Adds `extra`'s repositories and actions to `scope`. */
export function mergeScopes(scope: Scope, extra: Scope): Scope {
  const out = new Map([...scope].map(([r, a]) => [r, new Set(a)]));
  for (const [repo, actions] of extra) {
    const set = out.get(repo) ?? new Set<string>();
    for (const a of actions) set.add(a);
    out.set(repo, set);
  }
  return out;
}

function covers(have: Scope, want: Scope): boolean {
  for (const [repo, actions] of want) {
    const got = have.get(repo);
    if (!got) return false;
    for (const a of actions) if (!got.has(a)) return false;
  }
  return true;
}

const TokenAnswer = z.looseObject({
  token: z.string().optional(),
  access_token: z.string().optional(),
  expires_in: z.number().optional(),
});

interface CachedToken {
  scope: Scope;
  token: string;
  /** epoch ms after which it is not used. */
  expires: number;
}

/** How {@link Authenticator} reaches a token server. */
export interface TokenFetcher {
  (
    url: string,
    init: { method: string; headers: Record<string, string>; body?: string },
  ): Promise<{
    status: number;
    text: string;
  }>;
}

/** Options of an {@link Authenticator}. */
export interface AuthenticatorOptions {
  /** The registry, for error messages. */
  registry: string;
  /** Looked up on the first challenge (and only then). */
  credentials: () => Promise<Credentials | undefined>;
  /** Makes the token request (through the client's transport: retries, stats). */
  fetchToken: TokenFetcher;
  /** True when a plain-http realm may receive credentials (loopback or `insecure`). */
  allowHttpRealm: (url: URL) => boolean;
}

/** Seconds a token is assumed valid when the server does not say (the distribution default). */
const DEFAULT_TOKEN_SECONDS = 60;
/** Tokens are renewed this long before they expire. */
const EXPIRY_MARGIN_MS = 10_000;

/**
 * The authentication state of one client: the registry's scheme once known,
 * the credentials once read, and the tokens per scope.
 */
export class Authenticator {
  private bearer: { realm: string; service: string | undefined } | undefined;
  private basic = false;
  private credentials: Promise<Credentials | undefined> | undefined;
  private readonly tokens: CachedToken[] = [];
  /** Token requests in flight, by scope string: concurrent requests share one. */
  private readonly pending = new Map<string, Promise<string>>();

  constructor(private readonly opts: AuthenticatorOptions) {}

  /** The `Authorization` header for a request needing `scope`, fetching a token first when the scheme is known. */
  async header(scope: Scope): Promise<string | undefined> {
    if (this.basic) return this.basicHeader();
    if (!this.bearer) return undefined;
    const now = Date.now();
    const cached = this.tokens.find((t) => t.expires > now && covers(t.scope, scope));
    if (cached) return `Bearer ${cached.token}`;
    return `Bearer ${await this.token(scope)}`;
  }

  /**
   * Learns from a 401 answer's challenge. Resolves true when a retry may now
   * succeed (a token was fetched, or Basic credentials are at hand).
   * @throws {RegistryError} `REGISTRY_UNAUTHORIZED` when the token server refuses the credentials.
   */
  async challenged(wwwAuthenticate: string | null, scope: Scope): Promise<boolean> {
    const challenges = parseChallenges(wwwAuthenticate ?? '');
    const bearer = challenges.find((c) => c.scheme === 'bearer');
    if (bearer?.params['realm']) {
      this.bearer = { realm: bearer.params['realm'], service: bearer.params['service'] };
      // A token that was just refused (revoked, or too narrow) is not used again.
      for (let i = this.tokens.length - 1; i >= 0; i--) {
        if (covers(this.tokens[i]!.scope, scope)) this.tokens.splice(i, 1);
      }
      await this.token(scope);
      return true;
    }
    if (challenges.some((c) => c.scheme === 'basic')) {
      const wasBasic = this.basic;
      this.basic = true;
      return !wasBasic && (await this.basicHeader()) !== undefined;
    }
    return false;
  }

  private async readCredentials(): Promise<Credentials | undefined> {
    this.credentials ??= this.opts.credentials();
    return this.credentials;
  }

  private async basicHeader(): Promise<string | undefined> {
    const creds = await this.readCredentials();
    if (!creds || !('username' in creds)) return undefined;
    return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
  }

  private token(scope: Scope): Promise<string> {
    const key = scopeStrings(scope).join(' ');
    let pending = this.pending.get(key);
    if (!pending) {
      pending = this.fetchToken(scope).finally(() => this.pending.delete(key));
      this.pending.set(key, pending);
    }
    return pending;
  }

  private async fetchToken(scope: Scope): Promise<string> {
    const { realm, service } = this.bearer!;
    const url = this.realmUrl(realm);
    const creds = await this.readCredentials();
    const scopes = scopeStrings(scope);
    let answer: { status: number; text: string };
    if (creds && 'identityToken' in creds) {
      const form = new URLSearchParams({ grant_type: 'refresh_token', client_id: 'day11' });
      form.set('refresh_token', creds.identityToken);
      if (service) form.set('service', service);
      form.set('scope', scopes.join(' '));
      answer = await this.opts.fetchToken(url.href, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: form.toString(),
      });
    } else {
      if (service) url.searchParams.set('service', service);
      for (const s of scopes) url.searchParams.append('scope', s);
      const headers: Record<string, string> = {};
      const basic = await this.basicHeader();
      if (basic) headers['authorization'] = basic;
      answer = await this.opts.fetchToken(url.href, { method: 'GET', headers });
    }
    return this.remember(scope, answer, creds !== undefined);
  }

  private realmUrl(realm: string): URL {
    let url: URL;
    try {
      url = new URL(realm);
    } catch (cause) {
      throw this.error(`its token realm ${JSON.stringify(realm)} is not a URL`, cause);
    }
    if (url.protocol === 'https:' || (url.protocol === 'http:' && this.opts.allowHttpRealm(url))) {
      return url;
    }
    throw this.error(
      `its token realm ${realm} is not https; credentials are not sent there`,
      undefined,
      'Use an https realm, or pass insecure: true for a registry you trust on a private network',
    );
  }

  private remember(scope: Scope, answer: { status: number; text: string }, hadCreds: boolean) {
    if (answer.status === 401 || answer.status === 403) {
      throw this.error(
        hadCreds
          ? `its token server refused the credentials (HTTP ${answer.status})`
          : `its token server wants credentials (HTTP ${answer.status})`,
        undefined,
        hadCreds
          ? 'Check the user name and password (or token): `docker login`, REGISTRY_AUTH_FILE, or DAY11_REGISTRY_USERNAME/PASSWORD'
          : 'Log in (`docker login HOST`), or set DAY11_REGISTRY_USERNAME and DAY11_REGISTRY_PASSWORD',
      );
    }
    let json: unknown;
    try {
      json = JSON.parse(answer.text);
    } catch {
      json = undefined;
    }
    const parsed = TokenAnswer.safeParse(json);
    const token = parsed.success ? (parsed.data.token ?? parsed.data.access_token) : undefined;
    if (answer.status !== 200 || !token) {
      throw new RegistryError(
        RegistryCodes.PROTOCOL,
        `The token server of ${this.opts.registry} answered HTTP ${answer.status} without a token`,
        {
          registry: this.opts.registry,
          status: answer.status,
          hint: 'Check the registry; its auth service may be down',
        },
      );
    }
    const lifetimeMs = (parsed.data?.expires_in ?? DEFAULT_TOKEN_SECONDS) * 1000;
    const usableMs = Math.max(lifetimeMs - EXPIRY_MARGIN_MS, lifetimeMs / 2);
    this.tokens.push({ scope, token, expires: Date.now() + usableMs });
    if (this.tokens.length > 64) this.tokens.shift();
    return token;
  }

  private error(why: string, cause: unknown, hint?: string): RegistryError {
    return new RegistryError(
      RegistryCodes.UNAUTHORIZED,
      `Cannot authenticate to ${this.opts.registry}: ${why}`,
      {
        registry: this.opts.registry,
        cause,
        hint:
          hint ??
          'Check the registry address and credentials (`docker login`, REGISTRY_AUTH_FILE, DAY11_REGISTRY_USERNAME/PASSWORD)',
      },
    );
  }
}
