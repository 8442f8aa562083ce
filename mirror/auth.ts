// Client authentication for /v2/: an htpasswd file of bcrypt entries, as distribution and nginx
// use. bcrypt is slow on purpose, so verified credentials are remembered for a while (keyed by a
// hash of the decoded user and password, never their text); the file is re-read when it changes
// (Secret rotation).
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import { ConfigError } from '../common/config-error.ts';
import { ExpiringMap } from '../common/expiring-map.ts';
import { RegistryError } from './errors.ts';

const REMEMBER_MS = 60_000;
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
    const users = new Map<string, string>();
    for (const [index, raw] of text.split('\n').entries()) {
      const line = raw.trim();
      if (!line || line.startsWith('#')) continue;
      const colon = line.indexOf(':');
      const hash = line.slice(colon + 1);
      if (colon <= 0 || !/^\$2[aby]\$\d\d\$/.test(hash)) throw new Error(`${this.file} line ${index + 1} is not user:bcrypt-hash (only bcrypt entries are accepted)`);
      users.set(line.slice(0, colon), hash);
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

  /** Throws UNAUTHORIZED unless the Authorization header carries valid Basic credentials. */
  async check(authorization: string | undefined): Promise<string> {
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
    if (this.verified.get(key) !== undefined) return user;
    const users = this.users;
    const hash = users.get(user);
    // An unknown user costs a bcrypt comparison too, so response times do not tell which users exist.
    const matches = await bcrypt.compare(decoded.slice(colon + 1), hash ?? this.decoy);
    if (!hash || !matches) throw unauthorized('invalid username or password');
    // not remembered when the file was reloaded while bcrypt ran: the user may have been removed
    if (users === this.users) this.verified.set(key, user, this.now() + REMEMBER_MS);
    return user;
  }
}

export function unauthorized(message: string): RegistryError {
  return new RegistryError('UNAUTHORIZED', 401, message, undefined, { 'www-authenticate': `Basic realm="${REALM}"` });
}

function fileIdentity(file: string): string {
  const info = statSync(file);
  return `${info.ino}:${info.size}:${info.mtimeMs}`;
}
