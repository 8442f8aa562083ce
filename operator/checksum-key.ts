// The key of the pod templates' checksums (keyedChecksum in desired/inputs.ts). It is made once per
// RegistryMirror and kept in the owned Secret, like the nodes' password: a new key on every
// reconcile would change the checksums and roll the mirror and the agents for nothing.
import { randomBytes } from 'node:crypto';
import { CHECKSUM_KEY_KEY } from './desired/secret.ts';

/** 32 random bytes, in base64url: 43 characters. */
const KEY_BYTES = 32;
const KEY_LENGTH = Math.ceil((KEY_BYTES * 4) / 3);

/** Keeps the key stored in the owned Secret (data as the API returns it), or makes a new one. */
export function checksumKey(ownedSecretData: Record<string, string> | undefined): string {
  const stored = ownedSecretData?.[CHECKSUM_KEY_KEY];
  const key = stored === undefined ? undefined : Buffer.from(stored, 'base64').toString('utf8');
  // One cut short (edited by hand) is not kept: it would make the checksums guessable again.
  return key !== undefined && key.length >= KEY_LENGTH ? key : randomBytes(KEY_BYTES).toString('base64url');
}
