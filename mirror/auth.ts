// Client authentication for /v2/: an htpasswd file of bcrypt entries, as distribution and nginx
// use. bcrypt is slow on purpose, so a verified Authorization header is remembered for a while
// (keyed by its hash, never its text); the file is re-read when it changes (Secret rotation).
import { createHash } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import bcrypt from 'bcryptjs';
import { ConfigError } from '../common/config-error.ts';
import { RegistryError } from './errors.ts';

const REMEMBER_MS = 60_000;
const RECHECK_FILE_MS = 5_000;
export const REALM = 'regmirror';

export class HtpasswdAuth {
  private readonly file: string;
  private users = new Map<string, string>();
  private mtimeMs = 0;
  private checkedFileAt = 0;
  private readonly verified = new Map<string, number>();
  private readonly now: () => number;

  constructor(file: string, options: { configSource: string; now?: () => number }) {
    this.file = file;
    this.now = options.now ?? Date.now;
    try {
      this.load();
    } catch (error) {
      throw new ConfigError(options.configSource, 'auth.htpasswd', (error as Error).message);
    }
    if (this.users.size === 0) throw new ConfigError(options.configSource, 'auth.htpasswd', `${file} has no bcrypt entries (create one with: htpasswd -B -n USER)`);
  }

  private load(): void {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
      this.mtimeMs = statSync(this.file).mtimeMs;
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
    this.users = users;
    this.verified.clear();
  }

  private reloadIfChanged(): void {
    const now = this.now();
    if (now - this.checkedFileAt < RECHECK_FILE_MS) return;
    this.checkedFileAt = now;
    try {
      if (statSync(this.file).mtimeMs !== this.mtimeMs) this.load();
    } catch {
      // Keep the users we have while the file is being replaced.
    }
  }

  /** Throws UNAUTHORIZED unless the Authorization header carries valid Basic credentials. */
  async check(authorization: string | undefined): Promise<string> {
    this.reloadIfChanged();
    if (!authorization?.startsWith('Basic ')) throw unauthorized('authentication required');
    const key = createHash('sha256').update(authorization).digest('hex');
    const decoded = Buffer.from(authorization.slice(6), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const user = colon > 0 ? decoded.slice(0, colon) : '';
    const until = this.verified.get(key);
    if (until && until > this.now()) return user;
    const hash = this.users.get(user);
    if (!hash || !(await bcrypt.compare(decoded.slice(colon + 1), hash))) throw unauthorized('invalid username or password');
    this.verified.set(key, this.now() + REMEMBER_MS);
    return user;
  }
}

export function unauthorized(message: string): RegistryError {
  return new RegistryError('UNAUTHORIZED', 401, message, undefined, { 'www-authenticate': `Basic realm="${REALM}"` });
}
