// With auth on, nodes pull from the mirror like any other user: an htpasswd entry of their own.
// The password is made once and kept in the owned Secret; its bcrypt line is kept beside it, since
// a new salt on every reconcile would change the checksum and roll the mirror for nothing.
import { randomBytes } from 'node:crypto';
import bcrypt from 'bcryptjs';
import type { NodeCredentials } from './desired/inputs.ts';

export const NODE_USERNAME = 'regmirror-node';
const BCRYPT_ROUNDS = 10;

const decode = (value: string | undefined) => (value === undefined ? undefined : Buffer.from(value, 'base64').toString('utf8'));

/** Keeps the credentials stored in the owned Secret (data as the API returns it), or makes new ones. */
export async function nodeCredentials(ownedSecretData: Record<string, string> | undefined): Promise<NodeCredentials> {
  const username = decode(ownedSecretData?.['node-username']);
  const password = decode(ownedSecretData?.['node-password']);
  const htpasswd = decode(ownedSecretData?.htpasswd) ?? '';
  if (username === NODE_USERNAME && password) {
    const line = htpasswd.split('\n').find((l) => l.startsWith(`${NODE_USERNAME}:`));
    if (line && (await bcrypt.compare(password, line.slice(NODE_USERNAME.length + 1)))) {
      return { username, password, htpasswdLine: line };
    }
    return { username, password, htpasswdLine: `${NODE_USERNAME}:${await bcrypt.hash(password, BCRYPT_ROUNDS)}` };
  }
  const fresh = randomBytes(24).toString('base64url');
  return { username: NODE_USERNAME, password: fresh, htpasswdLine: `${NODE_USERNAME}:${await bcrypt.hash(fresh, BCRYPT_ROUNDS)}` };
}
