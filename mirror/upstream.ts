// The client for one upstream registry: undici with keep-alive, Docker Hub's bearer-token flow
// (anonymous or with credentials, tokens cached per scope until they expire), Basic auth, and
// redirects to blob storage (credentials are never sent to another origin, and only the upstream's
// own origin may ask for them). An upstream with caFile trusts its CA besides the default roots, on
// every connection its client makes: the registry, its token service, the storage it redirects to.
import { getCACertificates } from 'node:tls';
import { Agent, request, type Dispatcher } from 'undici';
import { ExpiringMap } from '../common/expiring-map.ts';
import type { Logger } from '../common/logger.ts';
import type { UpstreamConfig } from './config.ts';

export interface UpstreamTimeouts {
  /** TCP/TLS connect. */
  connectMs: number;
  /** Until response headers arrive. */
  headersMs: number;
  /** Longest pause between two body chunks: a stalled transfer fails after this. */
  bodyIdleMs: number;
  /** Tag revalidation (HEAD) must be quick: past this the stored manifest is served. */
  revalidateMs: number;
}

/**
 * Sent with every upstream request. Without an Accept-Encoding a server may apply any content
 * coding (RFC 9110 12.5.3), and a digest is over the bytes as stored, not as compressed on the way.
 */
const REQUEST_HEADERS = { 'user-agent': 'regmirror', 'accept-encoding': 'identity' } as const;

export const DEFAULT_TIMEOUTS: UpstreamTimeouts = { connectMs: 5_000, headersMs: 30_000, bodyIdleMs: 30_000, revalidateMs: 5_000 };

export interface UpstreamResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Dispatcher.ResponseData['body'];
}

/** What send() got, and where from: fetch() takes a challenge only from the upstream's own origin. */
interface SentResponse extends UpstreamResponse {
  /** The URL that gave this answer, after any redirects. */
  url: URL;
  /** A redirect left the upstream's origin on the way (a return to it answers without our credentials). */
  leftOrigin: boolean;
}

interface Challenge {
  scheme: 'bearer' | 'basic';
  params: Record<string, string>;
}

export interface UpstreamObserver {
  /** Called for every upstream exchange with its outcome; used for metrics. */
  onResponse?(registry: string, method: string, status: number | 'error', seconds: number): void;
  onRateLimit?(registry: string, remaining: number): void;
}

const MAX_REDIRECTS = 5;
/**
 * Tokens kept at most, one a repository scope. A token lives minutes (Docker Hub: 5), and a mirror
 * does not pull thousands of repositories in that time; but every name a client asks for gets a
 * token, those the upstream does not have too, so without a cap clients could fill the memory.
 * A token dropped early only costs one more token request.
 */
export const MAX_CACHED_TOKENS = 2048;

export class UpstreamClient {
  readonly registry: string;
  readonly url: URL;
  readonly timeouts: UpstreamTimeouts;
  private readonly credentials: UpstreamConfig['credentials'];
  private readonly caFile: string | undefined;
  private readonly dispatcher: Dispatcher;
  private readonly logger: Logger;
  private readonly observer: UpstreamObserver;
  private readonly now: () => number;
  private readonly tokens: ExpiringMap<string>;
  private readonly pendingTokens = new Map<string, Promise<string>>();
  /** Set once the upstream has asked for Basic auth, so later requests send it at once. */
  private basicAuth = false;
  private challenge: Challenge | undefined;

  constructor(config: UpstreamConfig, options: { logger: Logger; timeouts?: Partial<UpstreamTimeouts>; observer?: UpstreamObserver; dispatcher?: Dispatcher; now?: () => number }) {
    this.registry = config.registry;
    this.now = options.now ?? Date.now;
    this.tokens = new ExpiringMap({ maxEntries: MAX_CACHED_TOKENS, now: this.now });
    this.url = config.url;
    this.credentials = config.credentials;
    this.caFile = config.ca?.file;
    this.timeouts = { ...DEFAULT_TIMEOUTS, ...options.timeouts };
    this.logger = options.logger.child({ upstream: config.registry });
    this.observer = options.observer ?? {};
    this.dispatcher =
      options.dispatcher ??
      new Agent({
        // Node's own default set (its bundled roots, NODE_EXTRA_CA_CERTS, the system store under
        // --use-system-ca) and the upstream's: `ca` replaces the default set, it does not add to it.
        // Each certificate of caFile is a trust anchor, root or not (allowPartialTrustChain), as Go
        // clients take a certs.d ca.crt: a file holding only the issuing CA is enough.
        connect: {
          timeout: this.timeouts.connectMs,
          ...(config.ca ? { ca: [...getCACertificates('default'), ...config.ca.certificates], allowPartialTrustChain: true } : {}),
        },
        headersTimeout: this.timeouts.headersMs,
        bodyTimeout: this.timeouts.bodyIdleMs,
        keepAliveTimeout: 30_000,
        connections: 64,
      });
  }

  /** Bearer tokens held, expired ones not yet swept included. */
  get cachedTokens(): number {
    return this.tokens.size;
  }

  /**
   * Sends GET or HEAD for `/v2/<name>/<path>`, authenticating as the upstream asks. The caller
   * must consume or dump the body of the returned response. `answerWithinMs` bounds the wait for
   * the answer's headers as a whole: the token requests on the way count against it too (a token
   * that comes later still lands in the cache for the next request).
   */
  async fetch(name: string, path: string, options: { method: 'GET' | 'HEAD'; accept?: string; answerWithinMs?: number; query?: Record<string, string> }): Promise<UpstreamResponse> {
    const target = new URL(`${this.url.pathname.replace(/\/$/, '')}/v2/${name}/${path}`, this.url);
    for (const [key, value] of Object.entries(options.query ?? {})) target.searchParams.set(key, value);
    const scope = `repository:${name}:pull`;
    const headers: Record<string, string> = { ...REQUEST_HEADERS };
    if (options.accept) headers.accept = options.accept;
    const deadline = options.answerWithinMs === undefined ? undefined : performance.now() + options.answerWithinMs;
    const left = (): number | undefined => (deadline === undefined ? undefined : Math.max(1, Math.ceil(deadline - performance.now())));
    const authorize = (afterChallenge: boolean): Promise<string | undefined> => within(this.authorizationFor(scope, afterChallenge), left(), options.answerWithinMs);

    let authorization = await authorize(false);
    for (let attempt = 0; ; attempt++) {
      const response = await this.send(target, options.method, { ...headers, ...(authorization ? { authorization } : {}) }, left());
      if (response.status !== 401) return response;
      const header = response.headers['www-authenticate'];
      await response.body.dump();
      // Blob storage (a CDN, S3) that refuses the redirected request has no say in how we
      // authenticate: its challenge would send our credentials, and every later token request, to
      // a realm of its choosing. Only the host that issued the challenge gets credentials, as in
      // containerd since CVE-2020-15157; here the request simply failed, like any upstream outage.
      if (response.leftOrigin) throw new Error(`the storage it redirected to (${response.url.host}) refused the request (HTTP 401)`);
      const challenge = parseChallenge(Array.isArray(header) ? header[0] : header);
      if (attempt > 0 || !challenge) throw new UpstreamAuthError(this.registry, `${name} answered 401 ${this.credentials ? 'with' : 'without'} credentials`);
      this.challenge = challenge;
      if (challenge.scheme === 'basic') this.basicAuth = true;
      authorization = await authorize(true);
      if (!authorization) throw new UpstreamAuthError(this.registry, `${name} asks for Basic credentials and none are configured`);
    }
  }

  /**
   * Follows redirects itself: blob storage lives on other origins that must not see our token, and
   * the answer says whether it came from one (such an origin cannot ask for credentials either).
   */
  private async send(target: URL, method: string, headers: Record<string, string>, headersTimeoutMs?: number): Promise<SentResponse> {
    let url = target;
    let currentHeaders = headers;
    let leftOrigin = false;
    for (let hop = 0; hop <= MAX_REDIRECTS; hop++) {
      const response = await this.request(url, method, currentHeaders, headersTimeoutMs);
      const remaining = parseRateLimit(response.headers['ratelimit-remaining']);
      if (remaining !== undefined) this.observer.onRateLimit?.(this.registry, remaining);
      const location = response.headers.location;
      if (response.statusCode >= 300 && response.statusCode < 400 && location && response.statusCode !== 304) {
        await response.body.dump();
        const next = new URL(Array.isArray(location) ? location[0]! : location, url);
        if (next.origin !== target.origin) {
          const { authorization: _dropped, ...rest } = currentHeaders;
          currentHeaders = rest;
          leftOrigin = true;
        }
        url = next;
        continue;
      }
      return { status: response.statusCode, headers: response.headers, body: response.body, url, leftOrigin };
    }
    throw new Error(`more than ${MAX_REDIRECTS} redirects from ${target.href}`);
  }

  /**
   * One exchange. A connection dropped before any answer (most often a pooled keep-alive
   * connection the upstream had just closed) is tried once more on a new one: GET and HEAD are
   * safe to repeat, and the client then never sees a blip. Timeouts are not repeated.
   */
  private async request(url: URL, method: string, headers: Record<string, string>, headersTimeoutMs: number | undefined): Promise<Dispatcher.ResponseData> {
    for (let attempt = 0; ; attempt++) {
      const started = performance.now();
      try {
        const response = await request(url, {
          method: method as Dispatcher.HttpMethod,
          headers,
          dispatcher: this.dispatcher,
          ...(headersTimeoutMs ? { headersTimeout: headersTimeoutMs } : {}),
        });
        this.observer.onResponse?.(this.registry, method, response.statusCode, (performance.now() - started) / 1000);
        return response;
      } catch (error) {
        this.observer.onResponse?.(this.registry, method, 'error', (performance.now() - started) / 1000);
        const untrusted = this.untrustedCertificate(error, url);
        if (untrusted) throw new UpstreamCertificateError(untrusted);
        if (attempt > 0 || !isConnectionDrop(error)) throw error;
        this.logger.debug({ url: url.pathname, err: error }, 'upstream dropped the connection before answering; trying once more');
      }
    }
  }

  private async authorizationFor(scope: string, afterChallenge: boolean): Promise<string | undefined> {
    if (this.basicAuth) return this.basicHeader();
    if (this.challenge?.scheme !== 'bearer') return undefined;
    const cached = afterChallenge ? undefined : this.tokens.get(scope);
    if (cached) return `Bearer ${cached}`;
    let pending = this.pendingTokens.get(scope);
    if (!pending) {
      pending = this.fetchToken(this.challenge.params, scope).finally(() => this.pendingTokens.delete(scope));
      this.pendingTokens.set(scope, pending);
    }
    return `Bearer ${await pending}`;
  }

  private basicHeader(): string | undefined {
    if (!this.credentials) return undefined;
    return `Basic ${Buffer.from(`${this.credentials.username}:${this.credentials.password}`).toString('base64')}`;
  }

  /** Docker's token flow: GET realm?service=...&scope=..., with Basic credentials when we have them. */
  private async fetchToken(params: Record<string, string>, scope: string): Promise<string> {
    const realm = params.realm;
    if (!realm) throw new Error('bearer challenge without a realm');
    const url = new URL(realm);
    if (params.service) url.searchParams.set('service', params.service);
    url.searchParams.set('scope', scope);
    const headers: Record<string, string> = { ...REQUEST_HEADERS };
    const basic = this.basicHeader();
    if (basic) {
      // The credentials of an https upstream are not sent in clear to a plain http realm, where
      // anyone on the path could read them (and the token bought with them). Anonymous token
      // requests still go: they carry nothing secret, and such a token pulls only what anyone may.
      if (this.url.protocol === 'https:' && url.protocol !== 'https:') throw new TokenServiceError(`its token service ${url.origin} is plain http, and the mirror does not send the credentials of an https upstream in clear`, {});
      headers.authorization = basic;
    }
    let response: Dispatcher.ResponseData;
    try {
      response = await request(url, { method: 'GET', headers, dispatcher: this.dispatcher });
    } catch (error) {
      const untrusted = this.untrustedCertificate(error, url);
      if (untrusted) throw new TokenServiceError(`its token service: ${untrusted}`, { cause: error });
      const code = (error as NodeJS.ErrnoException).code ?? (error as Error).message;
      throw new TokenServiceError(`its token service ${url.host} could not be reached (${code})`, { cause: error });
    }
    if (response.statusCode !== 200) {
      await response.body.dump();
      // Only a refusal is the client's answer; a token service that is down is an outage like any other.
      if (response.statusCode === 401 || response.statusCode === 403) throw new UpstreamAuthError(this.registry, `token server answered HTTP ${response.statusCode}`);
      const retryAfter = response.headers['retry-after'];
      throw new TokenServiceError(`its token service answered HTTP ${response.statusCode}`, { status: response.statusCode, retryAfter: Array.isArray(retryAfter) ? retryAfter[0] : retryAfter });
    }
    const body = (await response.body.json()) as { token?: string; access_token?: string; expires_in?: number; issued_at?: string };
    const token = body.token ?? body.access_token;
    if (!token) throw new UpstreamAuthError(this.registry, 'token server answered without a token');
    const issued = body.issued_at ? Date.parse(body.issued_at) : Number.NaN;
    // issued_at is wall-clock time: how old the token already is, counted on this client's clock
    const ageMs = Number.isNaN(issued) ? 0 : Math.max(0, Date.now() - issued);
    const lifetimeMs = Math.max(60, body.expires_in ?? 60) * 1000;
    // Renew a little early so a token never expires between our check and the upstream's.
    this.tokens.set(scope, token, this.now() - ageMs + lifetimeMs - 10_000);
    this.logger.debug({ scope, expiresInSec: lifetimeMs / 1000 }, 'upstream token issued');
    return token;
  }

  /**
   * What to tell the client when `error` is a certificate the mirror does not trust (a private CA,
   * a self-signed certificate), with what would make it trusted; undefined for other errors.
   */
  private untrustedCertificate(error: unknown, url: URL): string | undefined {
    const code = (error as NodeJS.ErrnoException).code ?? (error as { cause?: NodeJS.ErrnoException }).cause?.code ?? '';
    if (!UNTRUSTED_CERTIFICATE.has(code)) return undefined;
    const fix = this.caFile
      ? `it is not signed by a CA in this upstream's caFile ${this.caFile}, nor by one of the default roots`
      : "if a private CA signed it (or it is self-signed), set this upstream's caFile to that CA's PEM bundle (a RegistryMirror: spec.upstreams[].caSecretRef or caConfigMapRef)";
    return `the certificate of ${url.host} is not trusted (${code}): ${fix}`;
  }

  /**
   * Ends every upstream connection. Called after the HTTP server has finished (or cut) its client
   * responses, so what still runs is a fetch no client waits for: it is aborted (its fill fails
   * and stores nothing) rather than awaited, which could take as long as the transfer itself.
   */
  async close(): Promise<void> {
    await this.dispatcher.destroy();
  }
}

/**
 * `work`, or a TokenServiceError once `ms` have passed (`budgetMs` is the whole wait, for the
 * message). The work goes on: it is shared by concurrent requests, and a token it brings is cached.
 */
function within<T>(work: Promise<T>, ms: number | undefined, budgetMs: number | undefined): Promise<T> {
  if (ms === undefined) return work;
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new TokenServiceError(`its token service did not answer within ${budgetMs ?? ms} ms`, {})), ms);
  });
  return Promise.race([work, late]).finally(() => clearTimeout(timer));
}

/** The upstream (or its token server) refused us: wrong credentials, or none for a private repository. */
export class UpstreamAuthError extends Error {
  constructor(registry: string, why: string) {
    super(`upstream ${registry} refused access: ${why}`);
    this.name = 'UpstreamAuthError';
  }
}

/** OpenSSL's verdicts on a chain that ends in no trusted CA (not expiry or a wrong name, which caFile does not change). */
const UNTRUSTED_CERTIFICATE = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'CERT_UNTRUSTED',
]);

/**
 * The upstream (or the storage it redirected to) showed a certificate the mirror does not trust.
 * Its message is what the client is told; it carries no `code`, so it is said as written.
 */
export class UpstreamCertificateError extends Error {
  constructor(why: string) {
    super(why);
    this.name = 'UpstreamCertificateError';
  }
}

/**
 * The upstream's token service could not give a token: unreachable, answering 5xx, 429 or anything
 * but a refusal, or one we do not send credentials to (plain http for an https upstream).
 */
export class TokenServiceError extends Error {
  /** The token service's status, when it answered. */
  readonly status: number | undefined;
  readonly retryAfter: string | undefined;

  constructor(why: string, options: { status?: number; retryAfter?: string | undefined; cause?: unknown }) {
    super(why, { cause: options.cause });
    this.name = 'TokenServiceError';
    this.status = options.status;
    this.retryAfter = options.retryAfter;
  }
}

/** Parses `Bearer realm="...",service="...",scope="..."` (and `Basic realm="..."`). */
export function parseChallenge(header: string | undefined): Challenge | undefined {
  if (!header) return undefined;
  const match = /^\s*(Bearer|Basic)\s*(.*)$/i.exec(header);
  if (!match) return undefined;
  const params: Record<string, string> = {};
  const pair = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))/g;
  for (const part of match[2]!.matchAll(pair)) params[part[1]!.toLowerCase()] = part[2] !== undefined ? part[2].replace(/\\(.)/g, '$1') : part[3]!;
  return { scheme: match[1]!.toLowerCase() as Challenge['scheme'], params };
}

const CONNECTION_DROPS = new Set(['UND_ERR_SOCKET', 'ECONNRESET', 'EPIPE']);

function isConnectionDrop(error: unknown): boolean {
  const err = error as { code?: string; cause?: { code?: string } };
  return CONNECTION_DROPS.has(err.code ?? '') || CONNECTION_DROPS.has(err.cause?.code ?? '');
}

/** Docker Hub sends `ratelimit-remaining: 76;w=21600`. */
function parseRateLimit(header: string | string[] | undefined): number | undefined {
  const value = Array.isArray(header) ? header[0] : header;
  if (!value) return undefined;
  const remaining = Number.parseInt(value, 10);
  return Number.isFinite(remaining) ? remaining : undefined;
}
