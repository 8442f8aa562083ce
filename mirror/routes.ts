// The HTTP layer: the OCI distribution read API on fastify. It parses and checks what the client
// sent, picks the upstream (containerd's ?ns=, else the default), asks the cache, and writes the
// response exactly as a registry would. It holds no caching logic of its own.
import type { Socket } from 'node:net';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from '../common/logger.ts';
import type { HtpasswdAuth } from './auth.ts';
import { MANIFEST_MEDIA_TYPES, type PullThroughCache, type Repository } from './cache.ts';
import { RegistryError, isVolumeFull, nameUnknown, rangeInvalid, storeFull, storeUnwritable, unsupported } from './errors.ts';
import { StoreWriteError } from './fill.ts';
import { LogThrottle } from './log-throttle.ts';
import type { MirrorMetrics } from './metrics.ts';
import { fileSource, sendRange, type ByteSource } from './blob-sender.ts';
import { isDigestReference, normaliseName, parseDigest, validateName, validateTag } from './reference.ts';
import { registryFromPathComponent } from '../common/registry-path.ts';
import type { UpstreamClient } from './upstream.ts';

export interface RouteContext {
  cache: PullThroughCache;
  upstreams: Map<string, { client: UpstreamClient; tagTTLMs: number }>;
  defaultRegistry: string;
  auth: HtpasswdAuth | undefined;
  metrics: MirrorMetrics;
  logger: Logger;
  /** Whether the store is writable (readiness). */
  storeWritable(): Promise<boolean>;
  /** Set once shutdown began: the pod is to leave the Service's endpoints. */
  draining(): boolean;
  /** Set once the mirror stopped accepting connections: no connection is kept alive from then on. */
  closing(): boolean;
  /** How long a blob response may take no bytes while some wait for it before it is cut (SEND_TIMEOUT_MS unless a test shortens it). */
  sendTimeoutMs: number;
  /** The clock (tests move it). */
  now: () => number;
}

const API_VERSION = { 'docker-distribution-api-version': 'registry/2.0' };
const CONTENT_PATH = /^\/v2\/(.+)\/(manifests|blobs)\/([^/]+)$/;
const TAGS_PATH = /^\/v2\/(.+)\/tags\/list$/;
const REFERRERS_PATH = /^\/v2\/(.+)\/referrers\/([^/]+)$/;
const UPLOADS_PATH = /^\/v2\/.+\/blobs\/uploads(?:\/.*)?$/;

type Route = 'base' | 'manifest' | 'blob' | 'tags' | 'referrers' | 'other';

export function registerRoutes(app: FastifyInstance, context: RouteContext): void {
  const { metrics } = context;

  // Requests with bodies (pushes) are refused without reading the body.
  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => done(null, undefined));

  // an upstream that is down fails every request alike: one warning a kind every LOG_WINDOW_MS
  const upstreamFailures = new LogThrottle(context.now);
  app.setErrorHandler((error: unknown, request, reply) => {
    const registryError = toRegistryError(error);
    if (isVolumeFull(error)) context.logger.error({ err: error, url: request.url }, 'the store is full: request failed and nothing was stored');
    else if (!(error instanceof RegistryError)) context.logger.error({ err: error, url: request.url }, 'request failed');
    else if (registryError.status >= 500 || registryError.upstreamRefusal) {
      const heldBack = upstreamFailures.take(`${registryError.code} ${registryError.message}`);
      if (heldBack !== undefined) context.logger.warn({ code: registryError.code, reason: registryError.message, url: request.url, ...(heldBack > 0 ? { heldBack } : {}) }, 'request failed upstream');
    } else context.logger.debug({ code: registryError.code, url: request.url }, 'request refused');
    void reply.code(registryError.status).headers({ ...API_VERSION, ...registryError.headers }).type('application/json').send(registryError.toJSON());
  });
  app.setNotFoundHandler((request, reply) => {
    void reply.code(404).headers(API_VERSION).send(new RegistryError('UNSUPPORTED', 404, `no such endpoint: ${request.method} ${request.url.split('?')[0]!.slice(0, 200)}`).toJSON());
  });

  // Each request is counted once: when its response finishes (fastify's onResponse); when the
  // answer is ready but the client has gone (onSend: a slow upstream, a client that gave up); or,
  // for a blob transfer that never finishes (cut mid-body), when it closes (serveBlob). The status
  // is the one sent ('none' when none was). Hooks, not a listener per response: the manifest path
  // is the busiest.
  //
  // Once the mirror is closing, the same hooks end each connection with its response, so the exit
  // waits for the responses in flight and not for the grace deadline: the listener's close only
  // closed the connections idle at that moment, and fastify says Connection: close only to
  // requests that arrive after it.
  app.addHook('onResponse', async (request, reply) => {
    countRequest(metrics, request, String(reply.statusCode));
    markAnswered(request.raw.socket);
    // A response whose headers went out with keep-alive before the close leaves its connection
    // idle: closed now, after its last bytes. A connection with a request on it is not idle, and
    // that request is answered with Connection: close. Deferred past this turn's I/O so that an
    // answer queued behind this one (a pipelined request) is on the connection first.
    if (context.closing()) {
      const socket = request.raw.socket;
      setImmediate(() => closeIfIdle(socket));
    }
  });
  app.addHook('onSend', (request, reply, payload, done) => {
    if (reply.raw.destroyed) countRequest(metrics, request, 'none');
    // a request that came before the close and is answered after it
    else if (context.closing()) reply.header('connection', 'close');
    done(null, payload);
  });

  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_request, reply) => {
    if (context.draining()) return reply.code(503).send({ shuttingDown: true });
    const writable = await context.storeWritable();
    return reply.code(writable ? 200 : 503).send({ store: writable ? 'writable' : 'not writable' });
  });
  app.get('/metrics', async (_request, reply) => {
    return reply.type(metrics.registry.contentType).send(await metrics.registry.metrics());
  });

  // The base endpoint without its slash: sent on, as distribution does, to /v2/.
  app.route({ method: ['GET', 'HEAD'], url: '/v2', handler: async (_request, reply) => reply.headers(API_VERSION).redirect('/v2/', 301) });

  app.route({
    method: ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE'],
    url: '/v2/*',
    handler: async (request, reply) => {
      reply.headers(API_VERSION);
      if (context.auth) await context.auth.check(request.headers.authorization, request.socket.remoteAddress);
      const path = request.url.split('?')[0]!;
      if (path === '/v2/') {
        if (request.method !== 'GET' && request.method !== 'HEAD') throw unsupported(`${request.method} /v2/`);
        return reply.type('application/json').send('{}');
      }
      if (UPLOADS_PATH.test(path) || (request.method !== 'GET' && request.method !== 'HEAD')) throw unsupported(`${request.method} (push, delete and uploads)`);
      const head = request.method === 'HEAD';
      const query = request.query as Record<string, string | string[] | undefined>;

      const content = CONTENT_PATH.exec(path);
      if (content) {
        const repo = repositoryFor(context, content[1]!, query.ns);
        return content[2] === 'manifests'
          ? serveManifest(context, repo, content[3]!, head, request, reply)
          : serveBlob(context, repo, content[3]!, head, request, reply);
      }
      const tags = TAGS_PATH.exec(path);
      if (tags) {
        const repo = repositoryFor(context, tags[1]!, query.ns);
        const params: Record<string, string> = {};
        for (const key of ['n', 'last'] as const) if (typeof query[key] === 'string') params[key] = query[key];
        const { body, link } = await context.cache.listTags(repo, params);
        const next = link ? nextPageLink(link, tags[1]!, query.ns, 'tags/list') : undefined;
        if (next) reply.header('link', next);
        return reply.type('application/json').send(body);
      }
      const referrers = REFERRERS_PATH.exec(path);
      if (referrers) {
        const repo = repositoryFor(context, referrers[1]!, query.ns);
        const digest = parseDigest(referrers[2]!);
        const params: Record<string, string> = {};
        // a parameter given twice: its first value (the spec names one artifactType per request)
        for (const [key, value] of Object.entries(query)) if (key !== 'ns' && value !== undefined) params[key] = Array.isArray(value) ? value[0]! : value;
        const answer = await context.cache.referrers(repo, digest, params);
        const next = answer.link ? nextPageLink(answer.link, referrers[1]!, query.ns, `referrers/${digest.text}`) : undefined;
        if (next) reply.header('link', next);
        if (answer.filtersApplied) reply.header('oci-filters-applied', answer.filtersApplied);
        reply.headers({ 'content-type': answer.mediaType, 'content-length': String(answer.bytes.length) });
        return head ? reply.send() : reply.send(answer.bytes);
      }
      // Not NAME_UNKNOWN: clients read that as "no such repository" (oras-go does, and then skips
      // its fallbacks), where the repository may well exist.
      throw new RegistryError('UNSUPPORTED', 404, 'not an OCI distribution endpoint this mirror serves');
    },
  });

}

/**
 * Closes a connection that has no response on it (Node's `_httpMessage`: set from the moment a
 * request is read until its response has gone to the kernel) and no request arriving on it (bytes
 * read since its last response ended), after whatever is still buffered:
 * destroySoon ends the socket once it is flushed. A connection still answering is left alone; its
 * own response closes it when it ends (the onResponse hook, or Connection: close).
 */
export function closeIfIdle(socket: Socket): void {
  const state = socket as Socket & { _httpMessage?: unknown; [READ_WHEN_ANSWERED]?: number };
  // bytes since the last answer: a request whose headers are still arriving, answered once it is in
  const requestArriving = socket.bytesRead !== (state[READ_WHEN_ANSWERED] ?? 0);
  if (!socket.destroyed && !state._httpMessage && !requestArriving) socket.destroySoon();
}

const READ_WHEN_ANSWERED = Symbol('bytes read when the last response ended');

/** Notes what the connection had read when a response on it ended (closeIfIdle). */
function markAnswered(socket: Socket): void {
  (socket as Socket & { [READ_WHEN_ANSWERED]?: number })[READ_WHEN_ANSWERED] = socket.bytesRead;
}

/**
 * Fastify's own refusals, made before any route runs (a URL whose percent-encoding does not
 * decode): the registry's error JSON and headers too, not fastify's, so a client reads them as it
 * reads every other error, and counted as every other request is. Given to Fastify as `frameworkErrors` (app.ts).
 */
export function frameworkErrorHandler(metrics: MirrorMetrics, closing: () => boolean) {
  return (error: Error & { statusCode?: number }, request: FastifyRequest, reply: FastifyReply): void => {
    const status = error.statusCode ?? 400;
    const what = (error as NodeJS.ErrnoException).code === 'FST_ERR_BAD_URL' ? 'its percent-encoding does not decode' : error.message.slice(0, 200);
    // no route ran, so neither did the onResponse hook that counts the others
    countRequest(metrics, request, String(status));
    // nor the onSend hook that ends connections once the mirror is closing (nor fastify's own Connection: close)
    if (closing()) reply.header('connection', 'close');
    void reply.code(status).headers(API_VERSION).type('application/json').send(new RegistryError('UNSUPPORTED', status, `malformed request URL: ${what}`).toJSON());
  };
}

/**
 * Picks the upstream: containerd names it with ?ns=. Clients that cannot (Docker, CRI-O, skopeo
 * with a registries.conf prefix) may put it first in the path, /v2/ghcr.io/org/app/... or, with a
 * port, /v2/registry.example.com__5000/org/app/... (common/registry-path.ts); a Docker Hub name
 * never starts with such a component, so that cannot be mistaken. Else the default.
 */
function repositoryFor(context: RouteContext, rawName: string, ns: string | string[] | undefined): Repository {
  let registry = typeof ns === 'string' && ns !== '' ? ns : undefined;
  let name = rawName;
  if (!registry) {
    const slash = rawName.indexOf('/');
    const named = slash > 0 ? registryFromPathComponent(rawName.slice(0, slash)) : undefined;
    if (named !== undefined && context.upstreams.has(named)) {
      registry = named;
      name = rawName.slice(slash + 1);
    }
  }
  registry ??= context.defaultRegistry;
  const upstream = context.upstreams.get(registry);
  if (!upstream) throw nameUnknown(rawName.slice(0, 255), `registry "${registry.slice(0, 255)}" is not mirrored here (configured: ${[...context.upstreams.keys()].join(', ')})`);
  return { upstream: upstream.client, name: normaliseName(registry, validateName(name)), tagTTLMs: upstream.tagTTLMs };
}

async function serveManifest(context: RouteContext, repo: Repository, reference: string, head: boolean, request: FastifyRequest, reply: FastifyReply) {
  const byDigest = isDigestReference(reference);
  let manifest = byDigest ? await context.cache.manifestByDigest(repo, parseDigest(reference)) : await context.cache.manifestByTag(repo, validateTag(reference));
  const accept = request.headers.accept;
  if (!acceptsManifest(accept, manifest.mediaType)) {
    const refused = () => new RegistryError('MANIFEST_UNKNOWN', 404, `${manifest.mediaType} found, but the Accept header does not include it`, { reference, mediaType: manifest.mediaType });
    if (!DOCKER_MANIFEST_TYPES.includes(manifest.mediaType)) throw refused();
    // Docker's own types, as distribution answers them: by digest the bytes that digest names, as
    // they are; a manifest list by tag, to a client that does not list it, the linux/amd64
    // image's manifest (scripts asking for schema 2 alone get a single image, as from Docker Hub).
    if (!byDigest) {
      const platform = defaultPlatformManifest(manifest.bytes);
      if (platform === undefined) throw refused();
      const image = await context.cache.manifestByDigest(repo, parseDigest(platform));
      if (!acceptsManifest(accept, image.mediaType)) throw refused();
      manifest = image;
    }
  }
  if (noneMatch(request.headers['if-none-match'], manifest.digest)) return notModified(reply, manifest.digest);
  reply.headers({
    'content-type': manifest.mediaType,
    'content-length': String(manifest.bytes.length),
    'docker-content-digest': manifest.digest,
    etag: `"${manifest.digest}"`,
  });
  return head ? reply.send() : reply.send(manifest.bytes);
}

async function serveBlob(context: RouteContext, repo: Repository, reference: string, head: boolean, request: FastifyRequest, reply: FastifyReply) {
  // A response that closes unfinished is not seen by onResponse: counted here (only for blobs, so
  // the manifest path, the busiest, carries no extra listener).
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished) countRequest(context.metrics, request, reply.raw.headersSent ? String(reply.raw.statusCode) : 'none');
  });
  const digest = parseDigest(reference);
  const condition = noneMatch(request.headers['if-none-match'], digest.text);
  const common = { 'content-type': 'application/octet-stream', 'docker-content-digest': digest.text, etag: `"${digest.text}"`, 'accept-ranges': 'bytes' };
  if (head || condition) {
    // HEAD and If-None-Match never start a download: the store answers for a repository that has
    // the blob, else the upstream's own HEAD (a client naming the ETag holds these very bytes).
    const size = await context.cache.blobSize(repo, digest);
    if (condition) return notModified(reply, digest.text);
    reply.headers({ ...common, ...(size !== undefined ? { 'content-length': String(size) } : {}) });
    return reply.send();
  }
  const blob = await context.cache.blob(repo, digest);
  let source: ByteSource;
  let close: () => Promise<void> | void;
  let from = blob.source;
  let size = blob.size;
  let verified: Promise<void> | undefined;
  const file = blob.source === 'store' ? await blob.openFile() : undefined;
  if (file) {
    source = fileSource(file.handle);
    close = file.close;
  } else {
    // a miss, or a stored blob that eviction took since the lookup: fetched like a miss (same bytes, same size)
    const fetched = blob.source === 'upstream' ? blob : await context.cache.blobFromUpstream(repo, digest);
    source = fetched.reader;
    close = () => fetched.reader.close();
    from = 'upstream';
    size = fetched.size;
    verified = fetched.verified;
  }
  const range = size !== undefined ? parseRange(request.headers.range, size) : undefined;
  if (range === 'unsatisfiable') {
    await close();
    throw rangeInvalid(size!);
  }
  if (range && verified) {
    // A fill checks the digest at its end and holds back only the last byte until then, so a range
    // short of it would be a complete 206 of bytes nobody checked: it waits for the whole blob to
    // be verified (and is answered with the registry error if it is not).
    try {
      await verified;
    } catch (error) {
      await close();
      throw error;
    }
  }
  const length = range ? range.end - range.start + 1 : size;
  const status = range ? 206 : 200;
  const headers: Record<string, string> = { ...API_VERSION, ...common };
  if (length !== undefined) headers['content-length'] = String(length);
  if (range) headers['content-range'] = `bytes ${range.start}-${range.end}/${size}`;
  // The bytes bypass fastify's stream handling (see blob-sender.ts); the request is counted when
  // the response closes, cut or not. Until the first bytes are at hand the reply is still
  // fastify's: a failure before then (the upstream cut, the store full) is answered with registry
  // error JSON by the error handler.
  const begin = () => {
    reply.hijack();
    // written by hand, past the onSend hook: the same Connection: close once the mirror is closing
    if (context.closing()) headers.connection = 'close';
    reply.raw.writeHead(status, headers);
  };
  try {
    const end = range ? range.end : size !== undefined ? size - 1 : Infinity;
    const sent = await sendRange(reply.raw, source, range?.start ?? 0, end, begin, {
      timeoutMs: context.sendTimeoutMs,
      // counted by the close listener above, with the status it began with
      onTimeout: (bytesSent) => context.logger.info({ upstream: repo.upstream.registry, repository: repo.name, digest: digest.text, bytesSent, timeoutMs: context.sendTimeoutMs }, 'client took no bytes for the send timeout: blob response cut'),
    });
    context.metrics.bytesServed.inc({ source: from }, sent);
  } finally {
    await close();
  }
  return reply;
}

/**
 * What If-None-Match (RFC 9110 13.1.2) says of content whose ETag is `"<digest>"`: 'match' when it
 * lists that entity-tag (compared weakly, as the RFC asks: W/ aside), 'any' for `*` (a match if the
 * content exists), else undefined: the request goes on as if it had none.
 */
export function noneMatch(header: string | undefined, digest: string): 'match' | 'any' | undefined {
  if (header === undefined) return undefined;
  if (header.trim() === '*') return 'any';
  for (const tag of header.matchAll(/(?:W\/)?"([^"]*)"/g)) if (tag[1] === digest) return 'match';
  return undefined;
}

/** 304 Not Modified: no body, the validators a 200 would carry. */
function notModified(reply: FastifyReply, digest: string) {
  return reply.code(304).headers({ 'docker-content-digest': digest, etag: `"${digest}"` }).send();
}

/** Docker's old signed manifests: never served here, but a client that lists only these reads nothing else. */
const SCHEMA1_MEDIA_TYPES = ['application/vnd.docker.distribution.manifest.v1+json', 'application/vnd.docker.distribution.manifest.v1+prettyjws'];

/** Docker's manifest types: distribution serves these by digest whatever the Accept, and turns a list by tag into its linux/amd64 image. */
const DOCKER_MANIFEST_TYPES: readonly string[] = ['application/vnd.docker.distribution.manifest.v2+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];

/** The digest of a Docker manifest list's linux/amd64 entry (the first), or undefined. */
function defaultPlatformManifest(list: Buffer): string | undefined {
  try {
    const { manifests } = JSON.parse(list.toString('utf8')) as { manifests?: { digest?: unknown; platform?: { os?: unknown; architecture?: unknown } }[] };
    const entry = (Array.isArray(manifests) ? manifests : []).find((m) => m?.platform?.os === 'linux' && m.platform.architecture === 'amd64');
    return typeof entry?.digest === 'string' && isDigestReference(entry.digest) ? entry.digest : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a client's Accept allows a manifest of `mediaType`. Clients list the manifest types they
 * can read (containerd, Docker and skopeo list all four); one that lists some but not this one
 * cannot use it, and gets 404 as from distribution, not a document it would misread (except for
 * Docker's own types, see serveManifest). No Accept, a wildcard, or a list naming no manifest type
 * at all (plain `application/json`) takes any.
 */
export function acceptsManifest(accept: string | undefined, mediaType: string): boolean {
  if (!accept) return true;
  const listed = accept.split(',').map((part) => part.split(';')[0]!.trim().toLowerCase());
  if (listed.some((type) => type === '*/*' || type === 'application/*')) return true;
  const manifestTypes = listed.filter((type) => (MANIFEST_MEDIA_TYPES as readonly string[]).includes(type) || SCHEMA1_MEDIA_TYPES.includes(type));
  return manifestTypes.length === 0 || manifestTypes.includes(mediaType);
}

/**
 * The upstream's `Link: <...>; rel="next"` for tags/list or referrers, pointed back at this mirror
 * as the client asked: the client's own repository path (a registry prefix, Docker Hub's short
 * name) and its ?ns=, with the upstream's paging parameters (tags/list: n and last; referrers:
 * whatever the upstream put there, passed on again). Passed on as it was, the next page would name
 * the upstream's path without ?ns= and so reach the default registry. Undefined when it is not one.
 */
export function nextPageLink(link: string, clientName: string, ns: string | string[] | undefined, endpoint: 'tags/list' | `referrers/${string}`): string | undefined {
  // Only the next page is taken from the upstream's header, and rebuilt: other links it may carry
  // (to anywhere), and its other parameters, are not passed on.
  if (link.length > MAX_LINK_LENGTH) return undefined;
  const match = /^\s*<([^>]*)>([^,]*)/.exec(link);
  if (!match || !/;\s*rel="?next"?\s*(?:;|$)/i.test(match[2]!)) return undefined;
  let upstream: URL;
  try {
    upstream = new URL(match[1]!, 'http://upstream.invalid');
  } catch {
    return undefined;
  }
  const params = new URLSearchParams();
  if (endpoint === 'tags/list') {
    for (const key of ['n', 'last']) {
      const value = upstream.searchParams.get(key);
      if (value !== null) params.set(key, value);
    }
  } else {
    for (const [key, value] of upstream.searchParams) if (key !== 'ns') params.append(key, value);
  }
  if (typeof ns === 'string' && ns !== '') params.set('ns', ns);
  return `</v2/${clientName}/${endpoint}?${params.toString()}>; rel="next"`;
}

/** An upstream's next-page Link longer than this is not passed on (a page's parameters fit easily). */
const MAX_LINK_LENGTH = 4096;

/** A single `bytes=` range; anything else (several ranges, other units, bad syntax) is ignored, as RFC 9110 allows. */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  if (!header) return undefined;
  const match = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!match || (match[1] === '' && match[2] === '')) return undefined;
  let start: number;
  let end: number;
  if (match[1] === '') {
    const suffix = Number(match[2]);
    if (suffix === 0) return 'unsatisfiable';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(match[1]);
    end = match[2] === '' ? size - 1 : Math.min(Number(match[2]), size - 1);
    if (match[2] !== '' && Number(match[2]) < start) return undefined;
  }
  if (start >= size) return 'unsatisfiable';
  return { start, end };
}

const COUNTED = Symbol('regmirror.counted');

/** Counts a request in regmirror_http_requests_total, once whichever of the paths above sees it. */
function countRequest(metrics: MirrorMetrics, request: FastifyRequest, status: string): void {
  const raw = request.raw as { [COUNTED]?: true };
  if (raw[COUNTED]) return;
  raw[COUNTED] = true;
  metrics.requests.inc({ route: routeOf(request), method: request.method, status });
}

function routeOf(request: FastifyRequest): Route {
  const path = request.url.split('?')[0]!;
  if (path === '/v2/' || path === '/v2') return 'base';
  if (path.includes('/manifests/')) return 'manifest';
  if (path.includes('/blobs/')) return 'blob';
  if (path.endsWith('/tags/list')) return 'tags';
  if (path.includes('/referrers/')) return 'referrers';
  return 'other';
}

function toRegistryError(error: unknown): RegistryError {
  if (error instanceof RegistryError) return error;
  if (isVolumeFull(error)) return storeFull((error as NodeJS.ErrnoException).code!);
  if (error instanceof StoreWriteError) return storeUnwritable(error.code);
  const status = (error as { statusCode?: number }).statusCode;
  if (status && status >= 400 && status < 500) return new RegistryError('UNSUPPORTED', status, (error as Error).message);
  return new RegistryError('UNKNOWN', 500, 'internal error');
}
