// CNCF distribution 2.8 (Debian's docker-registry) as an upstream registry, or with `proxy:` as the
// anchor pull-through cache that users run today. Requests are read back from its access log.
import { randomUUID } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freePort, httpRequest, isAddressInUse, makeTempDir, spawnServer, waitFor, type ServerProcess } from './process.ts';
import type { TestCertificate } from './tls.ts';
import type { TokenServer } from './token-server.ts';

export interface RegistryRequest {
  method: string;
  /** Request path without the query string. */
  path: string;
  /** The raw query string without '?', or ''. */
  query: string;
  status: number;
  bytes: number;
  userAgent: string;
}

export interface RequestFilter {
  method?: string;
  path?: RegExp;
  status?: number;
}

export interface RegistryServer {
  /** http://127.0.0.1:PORT */
  url: string;
  /** 127.0.0.1:PORT, the registry part of an image reference. */
  host: string;
  port: number;
  /** The certificate's CA file when started with tls. */
  caFile?: string;
  /** Temp dir holding config.yml, storage/ and registry.log. */
  dir: string;
  storageDir: string;
  configFile: string;
  /** `${host}/${name}:${tag}` */
  ref(name: string, tagOrDigest: string): string;
  stop(): Promise<void>;
  /** Starts again after stop(), on the same port and storage. */
  start(): Promise<void>;
  /** SIGKILL, as a crash would; start() brings it back. */
  kill9(): Promise<void>;
  /** Every request served since the first start, oldest first (all outputs across restarts). */
  requests(): Promise<RegistryRequest[]>;
  countRequests(filter: RequestFilter): Promise<number>;
  /** Forgets the requests seen so far (after fixtures are pushed, for example). */
  resetRequests(): Promise<void>;
  output(): string;
}

export interface StartRegistryOptions {
  tokenAuth?: TokenServer;
  /** Pull-through cache of another registry. distribution panics at start when remoteurl is down, so start that first. */
  proxy?: { remoteurl: string; username?: string; password?: string };
  port?: number;
  /** Storage directory to use instead of a fresh one (a second registry on the same bytes). */
  storageDir?: string;
  /** Serve https with this certificate (see tls.ts); url becomes https://127.0.0.1:PORT. */
  tls?: TestCertificate;
  /**
   * No access log and warnings only, for benchmarks where per-request logging would tax the
   * registry; requests() and countRequests() then throw.
   */
  quiet?: boolean;
}

// gorilla's CombinedLoggingHandler, which distribution wraps around everything, writes to stdout:
// 127.0.0.1 - - [28/Nov/2026:00:13:05 +0000] "GET /v2/ HTTP/1.1" 401 87 "" "skopeo/1.9.3"
const ACCESS_LINE = /^\S+ \S+ \S+ \[[^\]]+\] "([A-Z]+) (\S+) HTTP\/[\d.]+" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"/;
const SYNC_PATH = '/harness-sync/';

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<RegistryServer> {
  // a port from freePort can still be taken by another process before the registry binds it
  for (let attempt = 1; ; attempt++) {
    try {
      return await startRegistryOnce(opts);
    } catch (error) {
      if (opts.port !== undefined || attempt >= 3 || !isAddressInUse(error)) throw error;
    }
  }
}

async function startRegistryOnce(opts: StartRegistryOptions): Promise<RegistryServer> {
  const dir = await makeTempDir('registry');
  const port = opts.port ?? (await freePort());
  const storageDir = opts.storageDir ?? path.join(dir, 'storage');
  const configFile = path.join(dir, 'config.yml');
  const url = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const instance = randomUUID();
  const ca = opts.tls?.caPem;
  const config: Record<string, unknown> = {
    version: 0.1,
    log: { level: opts.quiet ? 'warn' : 'info', formatter: 'text', accesslog: { disabled: opts.quiet ?? false } },
    storage: {
      filesystem: { rootdirectory: storageDir },
      delete: { enabled: true },
      // no background upload purging: nothing happens in a test that the test did not ask for
      maintenance: { uploadpurging: { enabled: false } },
    },
    // a fixed secret: upload state stays valid across restart()
    http: {
      addr: `127.0.0.1:${port}`,
      secret: 'regmirror-test-harness',
      // tells this registry's answers from those of whatever else may hold the port
      headers: { 'X-Regmirror-Harness': [instance] },
      ...(opts.tls ? { tls: { certificate: opts.tls.certFile, key: opts.tls.keyFile } } : {}),
    },
  };
  if (opts.tokenAuth) {
    const t = opts.tokenAuth;
    config.auth = { token: { realm: t.realm, service: t.service, issuer: t.issuer, rootcertbundle: t.certFile } };
  }
  if (opts.proxy) config.proxy = opts.proxy;
  // JSON is YAML, and distribution's yaml.v2 reads it
  await writeFile(configFile, JSON.stringify(config, null, 2));

  let earlierOutput = '';
  let server: ServerProcess | undefined;
  let syncCount = 0;
  // parsed as lines arrive, so counts stay exact however much a long benchmark logs
  const parsed: RegistryRequest[] = [];
  const markersSeen = new Set<string>();
  const onLine = (line: string): void => {
    const m = ACCESS_LINE.exec(line);
    if (!m) return;
    const [pathname = '', query = ''] = m[2]!.split('?', 2);
    if (pathname.startsWith(SYNC_PATH)) {
      markersSeen.add(pathname);
      return;
    }
    parsed.push({ method: m[1]!, path: pathname, query, status: Number(m[3]), bytes: m[4] === '-' ? 0 : Number(m[4]), userAgent: m[5]! });
  };

  const start = async (): Promise<void> => {
    if (server && !server.exitStatus()) return;
    if (server) earlierOutput = (earlierOutput + server.output()).slice(-1_000_000);
    server = await spawnServer('docker-registry', ['serve', configFile], {
      logFile: path.join(dir, 'registry.log'),
      onLine,
      ready: async () => {
        const res = await httpRequest(`${url}/v2/`, { ca });
        return [200, 401].includes(res.status) && res.headers['x-regmirror-harness'] === instance;
      },
    });
  };

  const allOutput = (): string => earlierOutput + (server?.output() ?? '');

  const requests = async (): Promise<RegistryRequest[]> => {
    if (opts.quiet) throw new Error('startRegistry({ quiet: true }) keeps no access log to count requests from');
    // The access line is written after the response is sent, so a client can finish before its
    // line exists. A marker request, logged after everything before it, flushes that race.
    if (server && !server.exitStatus()) {
      const marker = `${SYNC_PATH}${++syncCount}`;
      await httpRequest(`${url}${marker}`, { ca }).catch(() => undefined);
      await waitFor(() => markersSeen.has(marker), { timeoutMs: 5_000, intervalMs: 5, what: 'registry access log' }).catch(() => undefined);
    }
    return [...parsed];
  };

  await start();

  return {
    url,
    host: `127.0.0.1:${port}`,
    port,
    dir,
    ...(opts.tls ? { caFile: opts.tls.caFile } : {}),
    storageDir,
    configFile,
    ref: (name, tagOrDigest) => `127.0.0.1:${port}/${name}${tagOrDigest.includes(':') ? '@' : ':'}${tagOrDigest}`,
    stop: async () => server?.stop(),
    start,
    kill9: async () => server?.kill9(),
    requests,
    countRequests: async (filter) =>
      (await requests()).filter(
        (r) =>
          (filter.method === undefined || r.method === filter.method) &&
          (filter.path === undefined || filter.path.test(r.path)) &&
          (filter.status === undefined || r.status === filter.status),
      ).length,
    resetRequests: async () => {
      await requests();
      parsed.length = 0;
    },
    output: allOutput,
  };
}
