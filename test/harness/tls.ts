// Self-signed certificates for servers on 127.0.0.1: the certificate is its own CA, so clients
// trust it by being given the same file (containerd's `ca =`, Node's `ca`, NODE_EXTRA_CA_CERTS).
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, runCommand } from './process.ts';

export interface TestCertificate {
  certFile: string;
  keyFile: string;
  /** Same as certFile: a self-signed certificate is its own CA. */
  caFile: string;
  certPem: string;
  keyPem: string;
}

export async function makeCertificate(opts: { commonName?: string; ips?: string[]; dnsNames?: string[]; days?: number } = {}): Promise<TestCertificate> {
  const dir = await makeTempDir('tls');
  const certFile = path.join(dir, 'tls.crt');
  const keyFile = path.join(dir, 'tls.key');
  const ips = opts.ips ?? ['127.0.0.1'];
  const dnsNames = opts.dnsNames ?? ['localhost'];
  // Go (containerd, distribution) ignores the CN and needs the address in subjectAltName
  const san = [...ips.map((ip) => `IP:${ip}`), ...dnsNames.map((name) => `DNS:${name}`)].join(',');
  const result = await runCommand('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', keyFile, '-out', certFile, '-days', String(opts.days ?? 2),
    '-subj', `/CN=${opts.commonName ?? 'regmirror test'}`,
    '-addext', `subjectAltName=${san}`,
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,digitalSignature,keyCertSign',
    '-addext', 'extendedKeyUsage=serverAuth',
  ]);
  if (result.code !== 0) throw new Error(`openssl could not make a certificate:\n${result.stderr}`);
  return { certFile, keyFile, caFile: certFile, certPem: await readFile(certFile, 'utf8'), keyPem: await readFile(keyFile, 'utf8') };
}
