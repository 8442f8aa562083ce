// A small Kubernetes API client for the whole-system test and its pod runner: JSON over HTTPS with
// the admin kubeconfig's client certificate. Just enough verbs; no watches (the runner polls).
import { request } from 'node:https';
import { readFileSync } from 'node:fs';
import { parse } from 'yaml';

interface Kubeconfig {
  clusters: { cluster: { server: string; 'certificate-authority-data': string } }[];
  users: { user: { 'client-certificate-data': string; 'client-key-data': string } }[];
}

export class ApiError extends Error {
  readonly status: number;
  constructor(method: string, path: string, status: number, body: string) {
    super(`${method} ${path}: ${status} ${body.slice(0, 500)}`);
    this.status = status;
  }
}

export type Json = Record<string, any>;

export class ApiClient {
  readonly server: string;
  readonly ca: Buffer;
  private readonly cert: Buffer;
  private readonly key: Buffer;

  constructor(kubeconfigFile: string) {
    const config = parse(readFileSync(kubeconfigFile, 'utf8')) as Kubeconfig;
    const cluster = config.clusters[0]!.cluster;
    const user = config.users[0]!.user;
    this.server = cluster.server;
    this.ca = Buffer.from(cluster['certificate-authority-data'], 'base64');
    this.cert = Buffer.from(user['client-certificate-data'], 'base64');
    this.key = Buffer.from(user['client-key-data'], 'base64');
  }

  request(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<Json> {
    const url = new URL(path, this.server);
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const req = request(
        url,
        {
          method,
          ca: this.ca,
          cert: this.cert,
          key: this.key,
          agent: false,
          timeout: 15_000,
          headers: { accept: 'application/json', ...(payload ? { 'content-type': contentType, 'content-length': payload.length } : {}) },
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (status < 200 || status >= 300) return reject(new ApiError(method, path, status, text));
            resolve(text ? (JSON.parse(text) as Json) : {});
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  get(path: string): Promise<Json> {
    return this.request('GET', path);
  }

  /** GET that answers undefined for 404. */
  async find(path: string): Promise<Json | undefined> {
    try {
      return await this.get(path);
    } catch (error) {
      if (error instanceof ApiError && error.status === 404) return undefined;
      throw error;
    }
  }

  post(path: string, body: unknown): Promise<Json> {
    return this.request('POST', path, body);
  }

  mergePatch(path: string, body: unknown): Promise<Json> {
    return this.request('PATCH', path, body, 'application/merge-patch+json');
  }

  delete(path: string, body?: unknown): Promise<Json> {
    return this.request('DELETE', path, body);
  }
}
