// The owned Secret: upstream passwords normalised from the user's Secrets, the htpasswd file the
// mirror checks (the user's entries plus the nodes' own), the nodes' pull credentials, and the key
// of the pod templates' checksums (which goes nowhere else).
import { metadata, names, upstreamSecretKeys, type DesiredInputs } from './inputs.ts';

export const NODE_USERNAME_KEY = 'node-username';
export const NODE_PASSWORD_KEY = 'node-password';
export const HTPASSWD_KEY = 'htpasswd';
export const CHECKSUM_KEY_KEY = 'checksum-key';

export function desiredSecret(inputs: DesiredInputs) {
  const { mirror } = inputs;
  const data: Record<string, string> = { [CHECKSUM_KEY_KEY]: inputs.checksumKey };
  mirror.spec.upstreams.forEach((upstream, index) => {
    const credentials = inputs.upstreamCredentials.get(upstream.registry);
    if (!upstream.credentialsSecretRef || !credentials) return;
    const keys = upstreamSecretKeys(index);
    data[keys.username] = credentials.username;
    data[keys.password] = credentials.password;
  });
  if (mirror.spec.auth?.htpasswdSecretRef) {
    const lines = (inputs.htpasswd ?? '').split(/\r?\n/).filter((line) => line.trim() !== '');
    if (inputs.nodeCredentials) {
      data[NODE_USERNAME_KEY] = inputs.nodeCredentials.username;
      data[NODE_PASSWORD_KEY] = inputs.nodeCredentials.password;
      lines.push(inputs.nodeCredentials.htpasswdLine);
    }
    data[HTPASSWD_KEY] = lines.join('\n') + '\n';
  }
  return {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: metadata(mirror, names(mirror).secret, 'mirror'),
    type: 'Opaque',
    // stringData would be merged into data by the server and show up as a diff on every apply.
    data: Object.fromEntries(Object.entries(data).sort().map(([key, value]) => [key, Buffer.from(value).toString('base64')])),
  };
}
