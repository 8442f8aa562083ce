// Certificates for a test control plane: one CA that signs the kube-apiserver's serving certificate
// and client certificates for any user and groups (Kubernetes takes the user from the subject's CN and
// the groups from its O entries). Node cannot issue X.509 certificates, so the openssl CLI signs them.
import { execFile } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

const OPENSSL_TIMEOUT_MS = 30_000;
const VALID_DAYS = '30';

const OPENSSL_CONFIG = `[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
authorityKeyIdentifier = keyid
subjectAltName = IP:127.0.0.1,DNS:localhost,IP:10.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
`;

export interface KeyPair {
  keyFile: string;
  certFile: string;
}

export interface Pki {
  dir: string;
  ca: KeyPair;
  /** Issues a key and certificate; `usage` picks the extension section of OPENSSL_CONFIG. */
  issue(name: string, subject: { commonName: string; organizations?: string[] }, usage: 'server' | 'client'): Promise<KeyPair>;
}

function openssl(args: string[], cwd: string): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('openssl', args, { cwd, timeout: OPENSSL_TIMEOUT_MS }, (err, _stdout, stderr) => {
      if (err) reject(new Error(`openssl ${args[0]} failed: ${stderr || err.message}`));
      else resolve();
    });
  });
}

/** An EC P-256 private key (PKCS#8 PEM); returns the public key PEM as well. */
export async function writePrivateKey(file: string): Promise<string> {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  await writeFile(file, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
  return publicKey.export({ type: 'spki', format: 'pem' }).toString();
}

/** `-subj` text; openssl treats `/`, `+`, `=` and `\` specially inside values. */
function subjectText(subject: { commonName: string; organizations?: string[] }): string {
  const escape = (value: string): string => value.replace(/[\\/+=,]/g, (c) => `\\${c}`);
  return [...(subject.organizations ?? []).map((o) => `/O=${escape(o)}`), `/CN=${escape(subject.commonName)}`].join('');
}

export async function createPki(dir: string): Promise<Pki> {
  const config = path.join(dir, 'openssl.cnf');
  await writeFile(config, OPENSSL_CONFIG);
  const ca: KeyPair = { keyFile: path.join(dir, 'ca.key'), certFile: path.join(dir, 'ca.crt') };
  await writePrivateKey(ca.keyFile);
  await openssl(
    ['req', '-x509', '-new', '-key', ca.keyFile, '-subj', '/CN=regmirror-test-ca', '-days', VALID_DAYS,
      '-config', config, '-extensions', 'ca', '-out', ca.certFile],
    dir,
  );
  return {
    dir,
    ca,
    async issue(name, subject, usage) {
      const pair: KeyPair = { keyFile: path.join(dir, `${name}.key`), certFile: path.join(dir, `${name}.crt`) };
      const csr = path.join(dir, `${name}.csr`);
      await writePrivateKey(pair.keyFile);
      await openssl(['req', '-new', '-utf8', '-key', pair.keyFile, '-subj', subjectText(subject), '-config', config, '-out', csr], dir);
      await openssl(
        ['x509', '-req', '-in', csr, '-CA', ca.certFile, '-CAkey', ca.keyFile, '-set_serial', `0x${randomBytes(16).toString('hex')}`,
          '-days', VALID_DAYS, '-extfile', config, '-extensions', usage, '-out', pair.certFile],
        dir,
      );
      return pair;
    },
  };
}

export async function base64File(file: string): Promise<string> {
  return (await readFile(file)).toString('base64');
}
