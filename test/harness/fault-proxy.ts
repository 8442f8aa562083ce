// An HTTP proxy in front of a registry that makes it misbehave on demand: slow, rate-limited
// (429), failing (5xx), hanging, resetting connections, cutting or corrupting bodies, or down.
// The upstream failures a mirror must survive, without touching the registry itself.
import http from 'node:http';
import type net from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import { sleep } from './process.ts';

export interface FaultRule {
  method?: string;
  /** Tested against the request path without its query string. */
  path?: RegExp;
  /** Answer with this status instead of forwarding (a registry error body unless `body` is given). */
  status?: number;
  headers?: Record<string, string>;
  body?: string;
  /** Wait this long before forwarding or answering. */
  delayMs?: number;
  /** Never answer; the connection stays open until the client gives up or the proxy stops. */
  hang?: boolean;
  /** Destroy the connection without any response. */
  reset?: boolean;
  /** Forward, but destroy the connection after this many body bytes (headers promise them all). */
  truncateAfterBytes?: number;
  /** Forward this many body bytes, then send nothing more and keep the connection open (a stalled transfer). */
  stallAfterBytes?: number;
  /** Forward, flipping the bits of the body byte at this offset (same length, wrong digest). */
  corruptByteAt?: number;
  /**
   * Forward with the body gzip-compressed (Content-Encoding: gzip, no Content-Length), whatever
   * the request's Accept-Encoding: a proxy on the way that compresses unasked.
   */
  gzipBody?: boolean;
  /** Forward with the body throttled to this rate. */
  bytesPerSecond?: number;
  /** Apply to this many matching requests, then stop matching (default: every one). */
  times?: number;
}

export interface ProxiedRequest {
  method: string;
  path: string;
  query: string;
  status: number;
  /** The request's Accept-Encoding header, if it sent one. */
  acceptEncoding?: string;
  /** Which fault was applied, if any ('status', 'reset', 'hang', 'truncate', 'stall', 'corrupt', 'gzip', 'down'). */
  fault?: string;
}

export interface RuleHandle {
  /** Requests this rule has applied to. */
  hits(): number;
  remove(): void;
}

export interface FaultProxy {
  /** http://127.0.0.1:PORT, to use as an upstream url. */
  url: string;
  host: string;
  port: number;
  target: string;
  /** Rules are tried in the order added; the first that matches (and has `times` left) applies. */
  addRule(rule: FaultRule): RuleHandle;
  clearRules(): void;
  /** 'refuse': nothing listens on the port; 'reset': connections are accepted and dropped; false: back up. */
  setDown(mode: 'refuse' | 'reset' | false): Promise<void>;
  requests(): ProxiedRequest[];
  countRequests(filter: { method?: string; path?: RegExp; status?: number; fault?: string }): number;
  resetRequests(): void;
  stop(): Promise<void>;
}

export interface StartFaultProxyOptions {
  /** Base URL of the real server, e.g. a RegistryServer's url. */
  target: string;
  /** Added to every request, like a round trip to a far-away registry. */
  latencyMs?: number;
  /** Throttles every response body, like a slow link. */
  bytesPerSecond?: number;
  port?: number;
}

const ERROR_CODES: Record<number, string> = { 401: 'UNAUTHORIZED', 403: 'DENIED', 404: 'NOT_FOUND', 429: 'TOOMANYREQUESTS', 503: 'UNAVAILABLE' };

/** Passes bytes on at most `rate` bytes per second, measured from the first byte. */
function throttle(rate: number): Transform {
  let sent = 0;
  let startedAt = 0;
  return new Transform({
    async transform(chunk: Buffer, _enc, done: TransformCallback) {
      if (!startedAt) startedAt = Date.now();
      const slice = Math.max(1024, Math.floor(rate / 20)); // about 20 writes a second
      for (let offset = 0; offset < chunk.length; offset += slice) {
        const part = chunk.subarray(offset, offset + slice);
        sent += part.length;
        const due = startedAt + (sent / rate) * 1000;
        const wait = due - Date.now();
        if (wait > 0) await sleep(wait);
        this.push(part);
      }
      done();
    },
  });
}

function corrupt(at: number): Transform {
  let seen = 0;
  return new Transform({
    transform(chunk: Buffer, _enc, done: TransformCallback) {
      if (at >= seen && at < seen + chunk.length) {
        const copy = Buffer.from(chunk);
        copy[at - seen] = copy[at - seen]! ^ 0xff;
        chunk = copy;
      }
      seen += chunk.length;
      done(null, chunk);
    },
  });
}

export async function startFaultProxy(opts: StartFaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(opts.target);
  let port = opts.port ?? 0; // 0: the kernel picks at the first listen, later listens reuse it
  const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });
  const rules: { rule: FaultRule; hits: number }[] = [];
  let log: ProxiedRequest[] = [];
  let down: 'refuse' | 'reset' | false = false;
  const sockets = new Set<net.Socket>();

  const match = (req: http.IncomingMessage, pathname: string): { rule: FaultRule; hits: number } | undefined =>
    rules.find(
      (r) =>
        (r.rule.times === undefined || r.hits < r.rule.times) &&
        (r.rule.method === undefined || r.rule.method === req.method) &&
        (r.rule.path === undefined || r.rule.path.test(pathname)),
    );

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const [pathname = '/', query = ''] = (req.url ?? '/').split('?', 2);
    const entry: ProxiedRequest = { method: req.method ?? 'GET', path: pathname, query, status: 0, ...(req.headers['accept-encoding'] ? { acceptEncoding: req.headers['accept-encoding'] } : {}) };
    log.push(entry);
    if (down === 'reset') {
      entry.fault = 'down';
      req.socket.destroy();
      return;
    }
    const found = match(req, pathname);
    if (found) found.hits++;
    const rule = found?.rule ?? {};
    const delay = (opts.latencyMs ?? 0) + (rule.delayMs ?? 0);
    if (delay > 0) await sleep(delay);
    if (rule.reset) {
      entry.fault = 'reset';
      req.socket.destroy();
      return;
    }
    if (rule.hang) {
      entry.fault = 'hang';
      return;
    }
    if (rule.status !== undefined) {
      entry.fault = 'status';
      entry.status = rule.status;
      const code = ERROR_CODES[rule.status] ?? 'UNKNOWN';
      const body = rule.body ?? JSON.stringify({ errors: [{ code, message: `fault proxy: ${rule.status}`, detail: null }] });
      res.writeHead(rule.status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...rule.headers });
      res.end(req.method === 'HEAD' ? undefined : body);
      return;
    }

    const upstreamReq = http.request({
      host: target.hostname,
      port: target.port || 80,
      method: req.method,
      path: req.url,
      headers: req.headers, // Host included: distribution builds Location URLs from it
      agent,
    });
    req.pipe(upstreamReq);
    let upstreamRes: http.IncomingMessage;
    try {
      upstreamRes = await new Promise<http.IncomingMessage>((resolve, reject) => {
        upstreamReq.once('response', resolve);
        upstreamReq.once('error', reject);
      });
    } catch (error) {
      entry.status = 502;
      if (!res.headersSent) res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`fault proxy: ${(error as Error).message}`);
      return;
    }
    entry.status = upstreamRes.statusCode ?? 0;
    const headers = { ...upstreamRes.headers, ...rule.headers };
    const stages: NodeJS.ReadWriteStream[] = [];
    if (rule.gzipBody) {
      entry.fault = 'gzip';
      delete headers['content-length'];
      headers['content-encoding'] = 'gzip';
      stages.push(createGzip());
    }
    res.writeHead(entry.status, headers);
    const rate = rule.bytesPerSecond ?? opts.bytesPerSecond;
    if (rule.corruptByteAt !== undefined) {
      entry.fault = 'corrupt';
      stages.push(corrupt(rule.corruptByteAt));
    }
    if (rate) stages.push(throttle(rate));
    if (rule.truncateAfterBytes !== undefined) {
      entry.fault = 'truncate';
      let left = rule.truncateAfterBytes;
      stages.push(
        new Transform({
          transform(chunk: Buffer, _enc, done: TransformCallback) {
            if (left <= 0) return done();
            const part = chunk.subarray(0, left);
            left -= part.length;
            this.push(part);
            done();
          },
        }),
      );
    }
    if (rule.stallAfterBytes !== undefined) {
      entry.fault = 'stall';
      let left = rule.stallAfterBytes;
      stages.push(
        new Transform({
          transform(chunk: Buffer, _enc, done: TransformCallback) {
            const part = chunk.subarray(0, Math.max(0, left));
            left -= part.length;
            if (part.length > 0) this.push(part);
            // past the limit the callback is never called: backpressure holds the upstream, no timer runs
            if (left > 0) done();
          },
        }),
      );
    }
    try {
      await pipeline([upstreamRes, ...stages, res]);
      // cut only once the bytes before the cut have reached the client: destroying the socket right
      // after the transform could drop them still buffered, headers included, which is a reset instead
      if (entry.fault === 'truncate') req.socket.destroy();
    } catch {
      // the client went away or the connection was cut on purpose
      upstreamRes.destroy();
    }
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch(() => req.socket.destroy());
  });
  server.keepAliveTimeout = 30_000;
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      port = (server.address() as net.AddressInfo).port;
      resolve();
    }));
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      if (!server.listening) return resolve();
      server.close(() => resolve());
      for (const socket of sockets) socket.destroy();
    });
  await listen();
  server.unref(); // a test that forgets stop() still exits

  return {
    url: `http://127.0.0.1:${port}`,
    host: `127.0.0.1:${port}`,
    port,
    target: opts.target,
    addRule(rule) {
      const entry = { rule, hits: 0 };
      rules.push(entry);
      return {
        hits: () => entry.hits,
        remove: () => {
          const i = rules.indexOf(entry);
          if (i >= 0) rules.splice(i, 1);
        },
      };
    },
    clearRules: () => {
      rules.length = 0;
    },
    async setDown(mode) {
      down = mode;
      if (mode === 'refuse') await close();
      else if (!server.listening) {
        await listen();
        server.unref();
      }
      if (mode === 'reset') for (const socket of sockets) socket.destroy();
    },
    requests: () => [...log],
    countRequests: (filter) =>
      log.filter(
        (r) =>
          (filter.method === undefined || r.method === filter.method) &&
          (filter.path === undefined || filter.path.test(r.path)) &&
          (filter.status === undefined || r.status === filter.status) &&
          (filter.fault === undefined || r.fault === filter.fault),
      ).length,
    resetRequests: () => {
      log = [];
    },
    async stop() {
      await close();
      agent.destroy();
    },
  };
}
