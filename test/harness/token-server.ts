// A token server that behaves like auth.docker.io for distribution's `auth: token:`: anonymous
// pull tokens for public repositories, Basic credentials for private ones and for push, ES256 JWTs
// whose x5c header carries a self-signed certificate that is also the registry's rootcertbundle.
import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { importPKCS8, SignJWT, type CryptoKey } from 'jose';
import { makeTempDir, runCommand } from './process.ts';

export interface TokenRequest {
  /** The user whose Basic credentials were accepted; undefined for anonymous requests. */
  account: string | undefined;
  method: 'GET' | 'POST';
  scopes: string[];
  /** What the token grants, as `repository:name:pull,push`. */
  granted: string[];
  status: number;
}

export interface TokenServer {
  /** http://127.0.0.1:PORT/token, what the registry names in WWW-Authenticate. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM certificate for the registry's rootcertbundle. */
  certFile: string;
  url: string;
  port: number;
  tokensIssued(): number;
  requests(): TokenRequest[];
  /** Adds a user or changes a password (credential rotation); undefined removes the user. */
  setUser(name: string, password: string | undefined): void;
  stop(): Promise<void>;
  /** Listens again on the same port after stop() (an auth service that went down and came back). */
  start(): Promise<void>;
}

export interface StartTokenServerOptions {
  /** username -> password */
  users?: Record<string, string>;
  /** Repository names (`library/secret`) or prefixes (`team/*`) that need credentials to pull. */
  privateRepos?: string[];
  expiresInSec?: number;
  service?: string;
  issuer?: string;
}

interface Access {
  type: string;
  name: string;
  actions: string[];
}

function parseScope(scope: string): Access | undefined {
  // type:name:actions, where name may itself hold a port (host:5000/repo) in rare cases
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last === first) return undefined;
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions: scope.slice(last + 1).split(',').filter(Boolean) };
}

function basicCredentials(header: string | undefined): { user: string; password: string } | undefined {
  if (!header?.toLowerCase().startsWith('basic ')) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString();
  const colon = decoded.indexOf(':');
  if (colon < 0) return undefined;
  return { user: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

function pemBody(pem: string): string {
  return pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
}

export async function startTokenServer(opts: StartTokenServerOptions = {}): Promise<TokenServer> {
  const dir = await makeTempDir('token');
  const keyFile = path.join(dir, 'token.key');
  const certFile = path.join(dir, 'token.crt');
  // A self-signed cert is its own chain: distribution verifies x5c[0] against rootcertbundle.
  const made = await runCommand('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=regmirror test token issuer',
  ]);
  if (made.code !== 0) throw new Error(`openssl could not make the token signing cert:\n${made.stderr}`);
  const certPem = await readFile(certFile, 'utf8');
  new X509Certificate(certPem); // fail here, not in the registry, if openssl wrote something odd
  const key: CryptoKey = await importPKCS8(await readFile(keyFile, 'utf8'), 'ES256');
  const x5c = [pemBody(certPem)];

  const users: Record<string, string> = { ...opts.users };
  const privateRepos = opts.privateRepos ?? [];
  const expiresInSec = opts.expiresInSec ?? 300;
  const service = opts.service ?? 'regmirror-test-registry';
  const issuer = opts.issuer ?? 'regmirror-test-token-issuer';
  let url = ''; // known once the server listens on the port the kernel picks
  const log: TokenRequest[] = [];
  let issued = 0;

  const isPrivate = (name: string): boolean =>
    privateRepos.some((p) => (p.endsWith('*') ? name.startsWith(p.slice(0, -1)) : name === p));

  const grant = (access: Access, account: string | undefined): Access => {
    const allowed = access.actions.filter((action) => {
      if (account !== undefined) return true; // every known user may do everything, like an owner
      return access.type === 'repository' && action === 'pull' && !isPrivate(access.name);
    });
    return { ...access, actions: allowed };
  };

  const sign = async (account: string | undefined, access: Access[]): Promise<string> => {
    const now = Math.floor(Date.now() / 1000);
    return new SignJWT({ access })
      .setProtectedHeader({ alg: 'ES256', typ: 'JWT', x5c })
      .setIssuer(issuer)
      .setSubject(account ?? '')
      .setAudience(service) // distribution 2.8 reads `aud` as a string, not an array
      .setIssuedAt(now)
      .setNotBefore(now)
      .setExpirationTime(now + expiresInSec)
      .setJti(`${now}-${++issued}`)
      .sign(key);
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const requestUrl = new URL(req.url ?? '/', url);
    const reply = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (requestUrl.pathname !== '/token' || (req.method !== 'GET' && req.method !== 'POST')) {
      reply(404, { details: 'not found' });
      return;
    }
    let params = requestUrl.searchParams;
    let presented = basicCredentials(req.headers.authorization);
    if (req.method === 'POST') {
      // OAuth2 password grant, which containerd tries first when it has credentials
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      params = new URLSearchParams(Buffer.concat(chunks).toString());
      if (params.get('grant_type') === 'password') presented = { user: params.get('username') ?? '', password: params.get('password') ?? '' };
      else if (params.get('grant_type') === 'refresh_token') {
        const [user, password] = (params.get('refresh_token') ?? '').split(':', 2);
        presented = { user: user ?? '', password: password ?? '' };
      }
    }
    const scopes = params.getAll('scope').flatMap((s) => s.split(' ')).filter(Boolean);
    const entry: TokenRequest = { account: undefined, method: req.method, scopes, granted: [], status: 200 };
    log.push(entry);
    if (params.get('service') && params.get('service') !== service) {
      entry.status = 400;
      reply(400, { details: `unknown service ${params.get('service')}` });
      return;
    }
    if (presented) {
      if (users[presented.user] === undefined || users[presented.user] !== presented.password) {
        entry.status = 401;
        reply(401, { details: 'incorrect username or password' });
        return;
      }
      entry.account = presented.user;
    }
    const access = scopes.map(parseScope).filter((a): a is Access => a !== undefined).map((a) => grant(a, entry.account));
    entry.granted = access.filter((a) => a.actions.length > 0).map((a) => `${a.type}:${a.name}:${a.actions.join(',')}`);
    const token = await sign(entry.account, access);
    const body: Record<string, unknown> = { token, access_token: token, expires_in: expiresInSec, issued_at: new Date().toISOString() };
    // a refresh token lets OAuth clients come back without the password (test-only encoding)
    if (req.method === 'POST' && entry.account !== undefined) body.refresh_token = `${entry.account}:${users[entry.account]}`;
    reply(200, body);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ details: String(error) }));
    });
  });
  const listen = (port: number): Promise<void> =>
    new Promise<void>((resolve, reject) =>
      server.once('error', reject).listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        server.unref(); // a test that forgets stop() still exits
        resolve();
      }),
    );
  await listen(0);
  const port = (server.address() as AddressInfo).port;
  url = `http://127.0.0.1:${port}`;

  return {
    realm: `${url}/token`,
    service,
    issuer,
    certFile,
    url,
    port,
    tokensIssued: () => issued,
    requests: () => [...log],
    setUser(name, password) {
      if (password === undefined) delete users[name];
      else users[name] = password;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        if (!server.listening) return resolve();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
    start: async () => {
      if (!server.listening) await listen(port);
    },
  };
}
