// Client authentication for /v2/: an htpasswd file of bcrypt entries, as distribution and nginx
// use. bcrypt is slow on purpose, so verified credentials are remembered while they are in use
// (keyed by a hash of the decoded user and password, never their text); the file is re-read when
// it changes (Secret rotation), which forgets them all.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import bcrypt from 'bcryptjs';
import type { CompareAnswer, CompareRequest } from './bcrypt-worker.ts';
import { ConfigError } from '../common/config-error.ts';
import { ExpiringMap } from '../common/expiring-map.ts';
import { HtpasswdLineError, parseHtpasswd } from '../common/htpasswd.ts';
import { RegistryError } from './errors.ts';

/**
 * How long verified credentials are remembered after their last use. Every use renews it: a node
 * that pulls now and then never needs bcrypt again, so made-up credentials filling the comparisons
 * (below) cannot lock it out once its entry would have run out. A changed file forgets them all.
 */
const REMEMBER_MS = 60_000;
/**
 * bcrypt comparisons handed to the worker at once (bcrypt-worker.ts: off the main thread), at
 * most, and how many more requests may wait for one. Past that a request is refused at once with
 * 429 (containerd then pulls from the upstream): made-up credentials, which anyone can send, cannot
 * queue up without end or take more than the worker's one thread.
 */
const MAX_COMPARING = 2;
const MAX_WAITING = 16;
/**
 * Comparisons one client address may have running or waiting at once; past that its request is
 * refused with 429. One client sending made-up credentials then holds a share of the slots, not
 * all of them, and a node logging in for the first time from another address still gets checked.
 */
export const MAX_COMPARING_PER_CLIENT = 4;
const RECHECK_FILE_MS = 5_000;
export const REALM = 'regmirror';
/**
 * Credentials remembered at most. Only ones that checked out are kept, normally one a user of the
 * file; but bcrypt reads only a password's first 72 bytes, so a long password checks out with any
 * tail after those, and each tail would be another entry.
 */
export const MAX_REMEMBERED = 1024;
/**
 * Standard base64, padded or not: what encoders write. Node's decoder skips any other character
 * and takes any padding, so `dXNl.cjpwYXNz==` would read as `dXNlcjpwYXNz`; a registry refuses
 * such a header (distribution's Go decoder, nginx's), and so does the mirror.
 */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}(?:==)?|[A-Za-z0-9+/]{3}=?)?$/;
/** Per bcrypt cost, a hash of random bytes nobody kept (made once per process). */
const decoys = new Map<number, string>();

/**
 * What an unknown user's password is compared against: a hash of the highest cost among the
 * file's entries (`htpasswd -B` writes cost 5), so the comparison takes as long as a known user's
 * and response times do not tell which users exist.
 */
export function unknownUserHash(users: ReadonlyMap<string, string>): string {
  const cost = Math.max(...[...users.values()].map((hash) => bcrypt.getRounds(hash)));
  let decoy = decoys.get(cost);
  if (!decoy) {
    decoy = bcrypt.hashSync(randomBytes(18).toString('base64'), cost);
    decoys.set(cost, decoy);
  }
  return decoy;
}

/** Where reloads are reported (the mirror's logger). */
export interface AuthLog {
  info(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

export class HtpasswdAuth {
  private readonly file: string;
  private users = new Map<string, string>();
  /** What unknown users' passwords are compared against, for the loaded users (unknownUserHash). */
  private decoy = '';
  /** What the loaded file was (inode, size, mtime): a Secret rotation or `cp -p` changes at least one. */
  private identity = '';
  private checkedFileAt = 0;
  /** User names by a hash of the credentials that checked out, until they must be checked again. */
  private readonly verified: ExpiringMap<string>;
  private readonly now: () => number;
  private readonly log: AuthLog | undefined;
  private comparing = 0;
  /** Requests waiting for a comparison slot, oldest first. */
  private readonly waiting: (() => void)[] = [];
  /** Comparisons running or waiting, by client address (MAX_COMPARING_PER_CLIENT). */
  private readonly perClient = new Map<string, number>();
  /**
   * Comparisons under way, by credentials key and the hash compared against: a node's first
   * requests after a start come several at once with the same credentials (layers pulled in
   * parallel), and they share one comparison.
   */
  private readonly checking = new Map<string, Promise<boolean>>();

  constructor(file: string, options: { configSource: string; now?: () => number; logger?: AuthLog }) {
    this.file = file;
    this.now = options.now ?? Date.now;
    this.verified = new ExpiringMap({ maxEntries: MAX_REMEMBERED, now: this.now });
    this.log = options.logger;
    let loaded: { users: Map<string, string>; identity: string };
    try {
      loaded = this.read();
    } catch (error) {
      throw new ConfigError(options.configSource, 'auth.htpasswd', (error as Error).message);
    }
    this.users = loaded.users;
    this.decoy = unknownUserHash(loaded.users);
    this.identity = loaded.identity;
  }

  /** Parses the file; throws when it cannot be read, has a line that is not bcrypt, or has no users. */
  private read(): { users: Map<string, string>; identity: string } {
    let text: string;
    let identity: string;
    try {
      // identity first: a file replaced between the two calls is then read again at the next check
      identity = fileIdentity(this.file);
      text = readFileSync(this.file, 'utf8');
    } catch (error) {
      throw new Error(`cannot read ${this.file}: ${(error as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    let users: Map<string, string>;
    try {
      users = parseHtpasswd(text);
    } catch (error) {
      if (error instanceof HtpasswdLineError) throw new Error(`${this.file} ${error.message}`);
      throw error;
    }
    if (users.size === 0) throw new Error(`${this.file} has no bcrypt entries (create one with: htpasswd -B -n USER)`);
    return { users, identity };
  }

  private reloadIfChanged(): void {
    const now = this.now();
    if (now - this.checkedFileAt < RECHECK_FILE_MS) return;
    this.checkedFileAt = now;
    let identity: string;
    try {
      identity = fileIdentity(this.file);
    } catch {
      return; // being replaced: keep the users we have and look again at the next check
    }
    if (identity === this.identity) return;
    try {
      const loaded = this.read();
      this.users = loaded.users;
      this.decoy = unknownUserHash(loaded.users);
      this.identity = loaded.identity;
      this.verified.clear();
      this.log?.info({ file: this.file, users: loaded.users.size }, 'htpasswd file reloaded');
    } catch (error) {
      // A broken or empty update must not lock every client (and every node) out: keep the old users.
      this.identity = identity;
      this.log?.error({ err: error, file: this.file }, 'htpasswd file changed but cannot be used; keeping the previous users');
    }
  }

  /** Credentials remembered now, expired ones not yet swept included. */
  get rememberedCredentials(): number {
    return this.verified.size;
  }

  /**
   * Throws UNAUTHORIZED unless the Authorization header carries valid Basic credentials.
   * `client`: the request's address, for each address's share of the bcrypt comparisons.
   */
  async check(authorization: string | undefined, client?: string): Promise<string> {
    this.reloadIfChanged();
    // The scheme name is case-insensitive (RFC 9110 11.1); some clients send "basic".
    const match = authorization ? /^basic[ ]+(\S+)\s*$/i.exec(authorization) : null;
    if (!match) throw unauthorized('authentication required');
    if (!BASE64.test(match[1]!)) throw unauthorized('Basic credentials are not base64');
    const decoded = Buffer.from(match[1]!, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const user = colon > 0 ? decoded.slice(0, colon) : '';
    // Keyed by what was decoded, not by how it was spelled (padding or not, the spare bits of the
    // last character): one credential is one entry however a client writes it.
    const key = createHash('sha256').update(decoded).digest('hex');
    if (this.verified.get(key) !== undefined) {
      this.verified.set(key, user, this.now() + REMEMBER_MS);
      return user;
    }
    const users = this.users;
    const hash = users.get(user);
    // An unknown user costs a bcrypt comparison too, so response times do not tell which users exist.
    // the same credentials against the same entry (a reload may have changed it meanwhile)
    const against = hash ?? this.decoy;
    const comparison = `${key} ${against}`;
    let checking = this.checking.get(comparison);
    if (!checking) {
      checking = this.compare(decoded.slice(colon + 1), against, client).finally(() => this.checking.delete(comparison));
      this.checking.set(comparison, checking);
    }
    const matches = await checking;
    if (!hash || !matches) throw unauthorized('invalid username or password');
    // not remembered when the file was reloaded while bcrypt ran: the user may have been removed
    if (users === this.users) this.verified.set(key, user, this.now() + REMEMBER_MS);
    return user;
  }

  /**
   * One bcrypt comparison, within MAX_COMPARING at once, MAX_WAITING waiting and
   * MAX_COMPARING_PER_CLIENT for one client (else 429 at once).
   */
  private async compare(password: string, hash: string, client: string | undefined): Promise<boolean> {
    const held = client === undefined ? 0 : this.perClient.get(client) ?? 0;
    if (held >= MAX_COMPARING_PER_CLIENT) throw tooManyLogins();
    if (this.comparing >= MAX_COMPARING && this.waiting.length >= MAX_WAITING) throw tooManyLogins();
    if (client !== undefined) this.perClient.set(client, held + 1);
    try {
      if (this.comparing >= MAX_COMPARING) {
        // the slot is handed over by the comparison that ends (the count stays)
        await new Promise<void>((resolve) => this.waiting.push(resolve));
      } else {
        this.comparing++;
      }
      try {
        return await compareOffThread(password, hash);
      } finally {
        const next = this.waiting.shift();
        if (next) next();
        else this.comparing--;
      }
    } finally {
      if (client !== undefined) {
        const left = this.perClient.get(client)! - 1;
        if (left === 0) this.perClient.delete(client);
        else this.perClient.set(client, left);
      }
    }
  }
}

/**
 * One worker for the process, started with the first comparison (a mirror without auth never
 * starts it; it costs about 18 MB), and again after it died.
 */
let worker: { thread: Worker; pending: Map<number, { resolve(matches: boolean): void; reject(error: Error): void }> } | undefined;
let nextId = 0;

function compareOffThread(password: string, hash: string): Promise<boolean> {
  if (!worker) {
    // the worker's file sits next to this one: .ts from the sources, .js once compiled
    const extension = import.meta.url.endsWith('.ts') ? '.ts' : '.js';
    const thread = new Worker(new URL(`./bcrypt-worker${extension}`, import.meta.url));
    const started = { thread, pending: new Map<number, { resolve(matches: boolean): void; reject(error: Error): void }>() };
    thread.on('message', ({ id, matches }: CompareAnswer) => {
      started.pending.get(id)?.resolve(matches);
      started.pending.delete(id);
      if (started.pending.size === 0) thread.unref();
    });
    const fail = (error: Error) => {
      if (worker === started) worker = undefined;
      for (const waiter of started.pending.values()) waiter.reject(error);
      started.pending.clear();
    };
    thread.on('error', fail);
    thread.on('exit', (code) => fail(new Error(`the bcrypt worker exited (${code})`)));
    worker = started;
  }
  const { thread, pending } = worker;
  const id = nextId++;
  return new Promise<boolean>((resolve, reject) => {
    // held only while a comparison is under way: an idle worker never keeps the process running
    if (pending.size === 0) thread.ref();
    pending.set(id, { resolve, reject });
    thread.postMessage({ id, password, hash } satisfies CompareRequest);
  });
}

function tooManyLogins(): RegistryError {
  return new RegistryError('TOOMANYREQUESTS', 429, 'too many logins are being checked at once; try again shortly', undefined, { 'retry-after': '1' });
}

export function unauthorized(message: string): RegistryError {
  return new RegistryError('UNAUTHORIZED', 401, message, undefined, { 'www-authenticate': `Basic realm="${REALM}"` });
}

function fileIdentity(file: string): string {
  const info = statSync(file);
  return `${info.ino}:${info.size}:${info.mtimeMs}`;
}
