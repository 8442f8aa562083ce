// How the DaemonSet learns that a node is configured: GET /readyz (the readinessProbe) answers 200
// once the node's runtimes use the mirror (apply) or are clean (remove), 503 with the reasons
// otherwise. /healthz says the agent's loop is alive; /status is the last pass as JSON.
// Optionally a ready file exists exactly while the node is ready (for an exec probe).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { NodeStatus } from './reconcile.ts';
import { removeFile, writeFileAtomic } from './node-files.ts';

export interface ReadinessReporter {
  update(status: NodeStatus): Promise<void>;
  /** host:port the endpoint listens on (the real port when 0 was asked for); undefined when off. */
  address(): string | undefined;
  close(): Promise<void>;
}

export async function startReadiness(opts: { listen: string; readyFile: string | undefined; aliveWithinMs: number }): Promise<ReadinessReporter> {
  let last: NodeStatus | undefined;
  let lastAt = 0;
  let server: http.Server | undefined;

  if (opts.listen !== '') {
    const match = /^(.*):(\d+)$/.exec(opts.listen)!;
    const host = match[1]!.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1';
    server = http.createServer((req, res) => {
      const url = (req.url ?? '/').split('?')[0];
      const send = (code: number, body: unknown): void => {
        res.writeHead(code, { 'content-type': 'application/json' });
        res.end(`${JSON.stringify(body)}\n`);
      };
      if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, { error: 'method not allowed' });
      if (url === '/readyz') {
        if (last?.ready) return send(200, { ready: true, mode: last.mode });
        return send(503, { ready: false, problems: last?.problems ?? ['first reconcile has not finished'] });
      }
      if (url === '/healthz') {
        // alive while passes keep finishing; a pass stuck on a hung filesystem shows here
        const alive = last === undefined || Date.now() - lastAt < opts.aliveWithinMs;
        return send(alive ? 200 : 503, { alive });
      }
      if (url === '/status') return send(200, last ?? { ready: false, problems: ['first reconcile has not finished'] });
      return send(404, { error: 'not found' });
    });
    await new Promise<void>((resolve, reject) => {
      server!.once('error', reject);
      server!.listen(Number(match[2]), host, () => {
        server!.off('error', reject);
        resolve();
      });
    });
  }

  let fileReady = false;
  return {
    async update(status) {
      last = status;
      lastAt = Date.now();
      if (!opts.readyFile) return;
      if (status.ready && !fileReady) {
        await writeFileAtomic(opts.readyFile, `${new Date().toISOString()} ${status.mode}\n`, { keepMode: false });
        fileReady = true;
      } else if (!status.ready && fileReady) {
        await removeFile(opts.readyFile);
        fileReady = false;
      }
    },
    address() {
      if (!server) return undefined;
      const a = server.address() as AddressInfo;
      return `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
    },
    async close() {
      if (opts.readyFile) await removeFile(opts.readyFile);
      if (server) {
        server.closeAllConnections();
        await new Promise<void>((resolve) => server!.close(() => resolve()));
      }
    },
  };
}
