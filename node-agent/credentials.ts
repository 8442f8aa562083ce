// Node credentials for a mirror that requires auth: the Basic header containerd sends to it.
import path from 'node:path';
import { ConfigError } from '../common/config-error.ts';
import { isDirectory, readTextOrNull } from './node-files.ts';

export interface Credentials {
  username: string;
  password: string;
}

/** `username:password` on one line (the password may itself contain `:`). */
export function parseCredentialsLine(text: string): Credentials | undefined {
  const line = text.replace(/\r?\n$/, '');
  const colon = line.indexOf(':');
  if (colon <= 0 || line.includes('\n')) return undefined;
  return { username: line.slice(0, colon), password: line.slice(colon + 1) };
}

export function basicAuthorization(credentials: Credentials): string {
  return `Basic ${Buffer.from(`${credentials.username}:${credentials.password}`).toString('base64')}`;
}

const SOURCE = 'flag --credentials-file / environment REGMIRROR_CREDENTIALS_FILE';

/**
 * Reads the credentials each time it is called, so a rotated Secret reaches the node on the next
 * reconcile. A directory is a mounted basic-auth Secret (files `username` and `password`).
 */
export async function readCredentials(file: string): Promise<Credentials> {
  if (await isDirectory(file)) {
    const username = (await readTextOrNull(path.join(file, 'username')))?.replace(/\r?\n$/, '');
    const password = (await readTextOrNull(path.join(file, 'password')))?.replace(/\r?\n$/, '');
    if (!username || password === undefined) {
      throw new ConfigError(SOURCE, 'credentials-file', `directory ${file} must hold the files username and password`);
    }
    return { username, password };
  }
  const text = await readTextOrNull(file);
  if (text === null) throw new ConfigError(SOURCE, 'credentials-file', `${file} does not exist`);
  const credentials = parseCredentialsLine(text);
  if (!credentials) throw new ConfigError(SOURCE, 'credentials-file', `${file} must hold one line username:password`);
  return credentials;
}
