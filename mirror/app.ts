// Wires one mirror together: config -> store, upstream clients, cache, metrics, HTTP server.
// Tests build mirrors through this in-process; `regmirror mirror` (main.ts) does the same.
import { readFileSync, statSync, watch } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { access, constants, mkdir, writeFile, unlink } from 'node:fs/promises';
import type { AddressInfo, Socket } from 'node:net';
import { ConfigError } from '../common/config-error.ts';
import { join } from 'node:path';
import Fastify, { type FastifyInstance } from 'fastify';
import type { Logger } from '../common/logger.ts';
import { HtpasswdAuth } from './auth.ts';
import { SEND_TIMEOUT_MS } from './blob-sender.ts';
import { PullThroughCache } from './cache.ts';
import { Evictor } from './eviction.ts';
import { Prefetcher } from './prefetch.ts';
import type { MirrorConfig } from './config.ts';
import { RegistryError } from './errors.ts';
import { MirrorMetrics } from './metrics.ts';
import { closeIfIdle, frameworkErrorHandler, registerRoutes } from './routes.ts';
import { ContentStore, HEARTBEAT_MS, type RemovedInstance } from './store.ts';
import { UpstreamClient, type UpstreamTimeouts } from './upstream.ts';

export interface MirrorOptions {
  logger: Logger;
  /** Injected clock for tag TTLs, upstream tokens and remembered client credentials (tests). */
  now?: () => number;
  timeouts?: Partial<UpstreamTimeouts>;
  /** How long after content was removed repository links are pruned (tests; a minute by default). */
  linksPruneDelayMs?: number;
  /** Tag records kept in memory (tests; 20k by default, tag-memory.ts). */
  tagMemoryLimit?: number;
  /** How long a blob response may take no bytes while some wait for it before it is cut (tests; SEND_TIMEOUT_MS, 60 s, by default). */
  sendTimeoutMs?: number;
  /** How often the store's heartbeat is touched and other processes' temporary files looked at (tests; HEARTBEAT_MS, 30 s, by default). */
  heartbeatMs?: number;
}

export interface Mirror {
  app: FastifyInstance;
  store: ContentStore;
  cache: PullThroughCache;
  metrics: MirrorMetrics;
  evictor: Evictor;
  prefetcher: Prefetcher;
  /** One client a mirrored registry, by its name. */
  upstreams: ReadonlyMap<string, { client: UpstreamClient; tagTTLMs: number }>;
  /** Client authentication, when auth.htpasswd is set. */
  auth: HtpasswdAuth | undefined;
  /** Resolves once the store index is built (eviction works from then on). */
  indexed: Promise<void>;
  /** Starts listening; resolves with the URL clients use. */
  listen(): Promise<string>;
  /** From now on /readyz answers 503 (the first step of shutting down); everything else is served as before. */
  drain(): void;
  /** Stops accepting, lets in-flight responses finish (up to graceMs), each closing its connection, then closes upstream connections. */
  close(graceMs?: number): Promise<void>;
}

/** Node's parser rejects huge or malformed requests before any route runs: answer those as a registry would too. */
function clientErrorResponse(status: number, message: string): string {
  const body = JSON.stringify(new RegistryError('UNSUPPORTED', status, message).toJSON());
  const reason = status === 431 ? 'Request Header Fields Too Large' : 'Bad Request';
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
}

export async function createMirror(config: MirrorConfig, options: MirrorOptions): Promise<Mirror> {
  const { logger } = options;
  const store = new ContentStore(config.storage.path);
  let swept: Awaited<ReturnType<ContentStore['init']>>;
  try {
    swept = await store.init();
  } catch (error) {
    // not a directory, not writable, a read-only volume: the config names a place that cannot hold the store
    throw new ConfigError(config.source, 'storage.path', `${config.storage.path} cannot hold the store: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}`);
  }
  logSwept(logger, swept);
  if (swept.liveInstances > 0) logger.info({ instance: store.instance, others: swept.liveInstances }, 'other mirror processes use this store (replicas on a shared volume, or a rolling update): their downloads in progress are left alone');

  const metrics = new MirrorMetrics();
  const observer = {
    onResponse: (registry: string, method: string, status: number | 'error', seconds: number) =>
      metrics.upstreamRequests.observe({ upstream: registry, method, status: String(status) }, seconds),
    onRateLimit: (registry: string, remaining: number) => metrics.rateLimitRemaining.set({ upstream: registry }, remaining),
  };
  const upstreams = new Map(
    config.upstreams.map((upstream) => [
      upstream.registry,
      { client: new UpstreamClient(upstream, { logger, observer, timeouts: { ...config.upstreamTimeouts, ...options.timeouts }, ...(options.now ? { now: options.now } : {}) }), tagTTLMs: upstream.tagTTLMs },
    ]),
  );
  // A download waiting for room under maxSize does not read its upstream response meanwhile: it goes
  // ahead without a reservation before the upstream's idle timeout would cut it.
  const reserveWaitMs = ({ ...config.upstreamTimeouts, ...options.timeouts }.bodyIdleMs ?? 30_000) / 2;
  const evictor = new Evictor({ store, policy: config.storage, logger, metrics, reserveWaitMs, ...(options.now ? { now: options.now } : {}) });
  const cache = new PullThroughCache({
    store,
    logger,
    metrics,
    ...(options.now ? { now: options.now } : {}),
    ...(options.linksPruneDelayMs !== undefined ? { linksPruneDelayMs: options.linksPruneDelayMs } : {}),
    ...(options.tagMemoryLimit !== undefined ? { tagMemoryLimit: options.tagMemoryLimit } : {}),
    hooks: {
      onAccess: (kind, digest, size) => evictor.recordAccess(kind, digest, size),
      onStream: (digest) => evictor.pin(digest),
      onRemoved: (kind, digest) => evictor.forget(kind, digest),
      onStoreFull: (bytes) => void evictor.makeRoom(bytes).catch((error: unknown) => logger.error({ err: error }, 'making room in the store failed')),
      reserve: (bytes, digest) => evictor.reserve(bytes, digest),
      isStored: (digest) => evictor.holds(digest),
    },
  });
  evictor.onRemoved = (kind, digest) => cache.contentRemoved(kind, digest);
  const prefetcher = new Prefetcher({ cache, upstreams, defaultRegistry: config.defaultRegistry, references: config.prefetch, platforms: config.prefetchPlatforms, logger, metrics, configSource: config.source });
  const auth = config.auth.htpasswd ? new HtpasswdAuth(config.auth.htpasswd, { configSource: config.source, logger, ...(options.now ? { now: options.now } : {}) }) : undefined;

  const tls = config.tls ? { cert: readTlsFile(config, 'cert'), key: readTlsFile(config, 'key') } : undefined;
  if (tls) {
    // not PEM, or a certificate that does not match its key: said now, naming the keys, not by the server's first handshake
    try {
      createSecureContext(tls);
    } catch (error) {
      throw new ConfigError(config.source, 'tls.cert, tls.key', `${config.tls!.cert} and ${config.tls!.key} are not a PEM certificate and its key: ${(error as Error).message}`);
    }
  }
  // shutting down: /readyz fails from SIGTERM on (drain), no connection is kept alive once the listener closes (close)
  let draining = false;
  let closing = false;
  const app = Fastify({
    logger: false,
    exposeHeadRoutes: false,
    // Requests already on a kept-alive connection when SIGTERM arrives are still served (within the grace).
    return503OnClosing: false,
    forceCloseConnections: 'idle',
    ...(tls ? { https: tls } : {}),
    frameworkErrors: frameworkErrorHandler(metrics, () => closing),
    clientErrorHandler: (error: NodeJS.ErrnoException, socket: Socket) => {
      // A TLS connection that never finished its handshake (timed out, refused) cannot carry an
      // HTTP answer: ending it with one left it open for good, its descriptor held and the exit
      // waiting on it.
      if (error.code?.startsWith('ERR_TLS_')) {
        socket.destroy();
        return;
      }
      const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
      if (socket.writable) socket.end(clientErrorResponse(tooLarge ? 431 : 400, tooLarge ? 'request header fields too large' : 'malformed HTTP request'));
      else socket.destroy();
    },
  } as Parameters<typeof Fastify>[0]) as unknown as FastifyInstance;

  // Node's own closeIdleConnections (server.close() calls it, so does fastify's forceCloseConnections)
  // destroys every connection between requests, sparing only responses not yet ended: one whose
  // response has ended but whose last bytes still wait in its buffer (up to 2 MiB of a blob for a
  // client reading slower than the mirror writes) was cut short. This one closes only connections
  // with no response on them, and only once their bytes are out (closeIfIdle).
  const connections = new Set<Socket>();
  app.server.on(tls ? 'secureConnection' : 'connection', (socket: Socket) => {
    connections.add(socket);
    socket.once('close', () => connections.delete(socket));
  });
  // Under TLS, a connection still in its handshake is in neither list: every TCP connection is cut
  // at the grace deadline with the rest, so one that never finishes its handshake cannot hold the exit.
  const tcpConnections = new Set<Socket>();
  if (tls) {
    app.server.on('connection', (socket: Socket) => {
      tcpConnections.add(socket);
      socket.once('close', () => tcpConnections.delete(socket));
    });
  }
  app.server.closeIdleConnections = () => {
    for (const socket of connections) closeIfIdle(socket);
  };

  // in this process's own temporary directory: replicas sharing the store do not remove each other's probe
  const probe = join(store.temporaryDirectory, '.readyz');
  registerRoutes(app, {
    now: options.now ?? Date.now,
    draining: () => draining,
    closing: () => closing,
    sendTimeoutMs: options.sendTimeoutMs ?? SEND_TIMEOUT_MS,
    cache,
    upstreams,
    defaultRegistry: config.defaultRegistry,
    auth,
    metrics,
    logger,
    storeWritable: async () => {
      try {
        await access(config.storage.path, constants.W_OK);
        await mkdir(store.temporaryDirectory, { recursive: true });
        await writeFile(probe, 'ok');
        return true;
      } catch (error) {
        // A full volume still serves everything stored: stay in the Service, and say why fills fail.
        if ((error as NodeJS.ErrnoException).code === 'ENOSPC') {
          logger.warn({ store: config.storage.path }, 'store volume is full: stored content is served, new content cannot be kept (set storage.maxSize below the volume size)');
          return true;
        }
        return false;
      } finally {
        await unlink(probe).catch(() => undefined);
      }
    },
  });

  let watchers: { close(): void }[] = [];
  if (config.tls) watchers = watchTls(config, app, logger);

  // Keeps this process's heartbeat, and removes what processes gone since left in tmp/. The
  // heartbeat is touched on every tick whatever the sweep and the store walk take: a walk of a
  // large store (a network volume, many files) must not make this live process look gone to the
  // others, which would remove its downloads in progress.
  let housekeeping: Promise<void> | undefined;
  let others = swept.liveInstances;
  const touchHeartbeat = async () => {
    if (await store.heartbeat()) logger.warn({ instance: store.instance, directory: store.temporaryDirectory }, "this process's temporary directory was removed (another process saw no heartbeat for 2 minutes: this one was frozen, or it was removed by hand): made again; downloads that were writing there failed");
  };
  const tidyStore = async () => {
    const swept = await store.sweepTemporary();
    logSwept(logger, swept);
    if (swept.liveInstances !== others) logger.info({ instance: store.instance, others: swept.liveInstances }, swept.liveInstances > 0 ? 'other mirror processes use this store: it is walked again every heartbeat, so storage.maxSize and storage.ttl hold for the store as a whole' : 'no other mirror process uses this store any more');
    others = swept.liveInstances;
    // others store, read and evict content this process's index would not know of
    if (others > 0) await evictor.rescan();
  };
  let beating: Promise<void> = Promise.resolve();
  const heartbeatTimer = setInterval(() => {
    beating = beating.then(touchHeartbeat).catch((error: unknown) => logger.warn({ err: error }, 'store heartbeat failed; the next one tries again'));
    // one sweep and walk at a time: a tick that finds the last one still running skips it
    housekeeping ??= tidyStore()
      .catch((error: unknown) => logger.warn({ err: error }, 'temporary file sweep or store walk failed; the next one tries again'))
      .finally(() => (housekeeping = undefined));
  }, options.heartbeatMs ?? HEARTBEAT_MS);
  heartbeatTimer.unref();

  // The index is built while the mirror already serves: a large store must not delay readiness.
  const indexed = evictor.buildIndex().then(
    () => {
      evictor.start();
      void cache.sweepTagRecordsLogged();
    },
    (error: unknown) => logger.error({ err: error }, 'could not index the store; eviction is off until restart'),
  );

  return {
    app,
    store,
    cache,
    metrics,
    evictor,
    prefetcher,
    upstreams,
    auth,
    indexed,
    async listen() {
      const { host: wanted, port } = config.listen;
      if (wanted !== undefined) {
        await app.listen({ host: wanted, port });
      } else {
        // `:port`: every interface. '::' takes IPv4 too (dual stack); a node without IPv6 gets 0.0.0.0.
        try {
          await app.listen({ host: '::', port });
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code !== 'EAFNOSUPPORT' && code !== 'EADDRNOTAVAIL') throw error;
          await app.listen({ host: '0.0.0.0', port });
        }
      }
      const address = app.server.address() as AddressInfo;
      const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
      const url = `${tls ? 'https' : 'http'}://${host}:${address.port}`;
      logger.info({ url, store: config.storage.path, upstreams: config.upstreams.map((u) => `${u.registry}=${u.url.href}`), default: config.defaultRegistry, auth: auth ? 'htpasswd' : 'none' }, 'mirror listening');
      prefetcher.start(config.prefetchIntervalMs);
      return url;
    },
    drain() {
      draining = true;
    },
    async close(graceMs = 25_000) {
      draining = true;
      for (const watcher of watchers) watcher.close();
      evictor.stop();
      clearInterval(heartbeatTimer);
      prefetcher.stop();
      const timer = setTimeout(() => {
        app.server.closeAllConnections?.();
        for (const socket of tcpConnections) socket.destroy();
      }, graceMs);
      // before the listener closes: a response that finishes from now on ends its connection (routes.ts)
      closing = true;
      try {
        await app.close();
      } finally {
        clearTimeout(timer);
        await Promise.all([...upstreams.values()].map((u) => u.client.close()));
        await beating;
        await housekeeping;
        // fills no client waits for were aborted with the upstream connections: nothing of this process's is left to finish
        await store.removeTemporaryDirectory().catch((error: unknown) => logger.warn({ err: error, directory: store.temporaryDirectory }, 'could not remove this process\'s temporary directory; another process (or the next start) removes it'));
      }
    },
  };
}

/** Logs what a sweep of tmp/ removed: other processes' unfinished downloads, once they are gone. */
function logSwept(logger: Logger, swept: { removed: RemovedInstance[]; removedLoose: number }): void {
  for (const { instance, files, why, idleMs } of swept.removed) {
    logger.info({ instance, files, why, heartbeatAgeMs: Math.round(idleMs) }, why === 'exited' ? 'removed unfinished downloads of a mirror process that exited on this host' : 'removed unfinished downloads of a mirror process whose heartbeat stopped');
  }
  if (swept.removedLoose > 0) logger.info({ files: swept.removedLoose }, 'removed unfinished downloads left by a previous run (an older version, unchanged for 2 minutes)');
}

function readTlsFile(config: MirrorConfig, which: 'cert' | 'key'): Buffer {
  try {
    return readFileSync(config.tls![which]);
  } catch (error) {
    throw new ConfigError(config.source, `tls.${which}`, `cannot read ${config.tls![which]}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** How often the certificate files themselves are checked, for changes a directory watch cannot see. */
const TLS_POLL_MS = 10_000;

/**
 * Kubernetes rotates a Secret by swapping a symlink: watch the directories and reload on any
 * change. The files are also checked every few seconds (inode, size, mtime through symlinks),
 * which catches a certificate linked from a directory nobody watches, and keeps rotation working
 * where inotify is exhausted (a busy node) instead of failing the start.
 */
function watchTls(config: MirrorConfig, app: FastifyInstance, logger: Logger): { close(): void }[] {
  const files = [config.tls!.cert, config.tls!.key];
  const identity = () => files.map((file) => {
    const info = statSync(file);
    return `${info.ino}:${info.size}:${info.mtimeMs}`;
  }).join(' ');
  let loaded = identity();
  let timer: NodeJS.Timeout | undefined;
  const reload = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      try {
        const seen = identity();
        (app.server as unknown as { setSecureContext(options: { cert: Buffer; key: Buffer }): void }).setSecureContext({ cert: readFileSync(config.tls!.cert), key: readFileSync(config.tls!.key) });
        loaded = seen;
        logger.info('TLS certificate reloaded');
      } catch (error) {
        logger.error({ err: error }, 'TLS certificate reload failed; keeping the previous one');
      }
    }, 200);
  };
  const watchers: { close(): void }[] = [];
  for (const dir of new Set(files.map((file) => join(file, '..')))) {
    try {
      // an error event without a listener would take the whole mirror down
      watchers.push(watch(dir, reload).on('error', (error) => logger.warn({ err: error, dir }, 'TLS directory watch failed; the files are still checked every few seconds')));
    } catch (error) {
      logger.warn({ err: error, dir }, 'cannot watch the TLS directory (inotify limits?); checking the files every few seconds instead');
    }
  }
  const poll = setInterval(() => {
    try {
      if (identity() !== loaded) reload();
    } catch {
      // in the middle of a swap: the next check or the directory watch will see the result
    }
  }, TLS_POLL_MS).unref();
  // close() is all the caller uses of a watcher: the poll and a pending reload stop with the rest
  watchers.push({ close: () => { clearInterval(poll); clearTimeout(timer); } });
  return watchers;
}
