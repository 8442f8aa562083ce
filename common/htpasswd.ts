// The htpasswd files the mirror accepts (mirror/auth.ts): `user:bcrypt-hash` lines, blank lines and
// `#` comments. One rule, so the operator refuses exactly the files the mirror would not start
// with, before it rolls the mirror onto one.

/** A line that is not `user:bcrypt-hash`; the message gives its number, never its text. */
export class HtpasswdLineError extends Error {
  readonly line: number;
  constructor(line: number) {
    super(`line ${line} is not user:bcrypt-hash (only bcrypt entries are accepted; create them with: htpasswd -B)`);
    this.name = 'HtpasswdLineError';
    this.line = line;
  }
}

/** The entries of an htpasswd file, user to bcrypt hash; throws HtpasswdLineError at the first line that is not one. */
export function parseHtpasswd(text: string): Map<string, string> {
  const users = new Map<string, string>();
  for (const [index, raw] of text.split('\n').entries()) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    const hash = line.slice(colon + 1);
    if (colon <= 0 || !/^\$2[aby]\$\d\d\$/.test(hash)) throw new HtpasswdLineError(index + 1);
    users.set(line.slice(0, colon), hash);
  }
  return users;
}
