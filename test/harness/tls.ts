// Certificates for servers on 127.0.0.1. By default self-signed: the certificate is its own CA, so
// clients trust it by being given the same file (containerd's `ca =`, Node's `ca`,
// NODE_EXTRA_CA_CERTS). With `issuer`, a server certificate signed by that one (a private CA, as an
// internal Harbor or Artifactory has), which clients trust by being given the issuer's file.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, runCommand } from './process.ts';

export interface TestCertificate {
  certFile: string;
  keyFile: string;
  /** The CA that signed it: certFile when self-signed, else the issuer's certFile. */
  caFile: string;
  certPem: string;
  keyPem: string;
  /** The content of caFile. */
  caPem: string;
}

/**
 * `issuer` with `ca`: an intermediate CA that issuer signed (an organisation's issuing CA under its
 * root). A server with a certificate it signs sends the intermediate too: serve a file holding both.
 */
export async function makeCertificate(opts: { commonName?: string; ips?: string[]; dnsNames?: string[]; days?: number; issuer?: TestCertificate; ca?: boolean } = {}): Promise<TestCertificate> {
  const dir = await makeTempDir('tls');
  const certFile = path.join(dir, 'tls.crt');
  const keyFile = path.join(dir, 'tls.key');
  const ips = opts.ips ?? ['127.0.0.1'];
  const dnsNames = opts.dnsNames ?? ['localhost'];
  // Go (containerd, distribution) ignores the CN and needs the address in subjectAltName
  const san = [...ips.map((ip) => `IP:${ip}`), ...dnsNames.map((name) => `DNS:${name}`)].join(',');
  const openssl = async (args: string[]) => {
    const result = await runCommand('openssl', args);
    if (result.code !== 0) throw new Error(`openssl could not make a certificate:\n${result.stderr}`);
  };
  const newKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', keyFile];
  const subject = ['-subj', `/CN=${opts.commonName ?? 'regmirror test'}`];
  const days = ['-days', String(opts.days ?? 2)];
  if (opts.issuer) {
    const csrFile = path.join(dir, 'tls.csr');
    const extFile = path.join(dir, 'ext.cnf');
    await writeFile(extFile, opts.ca
      ? 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,keyCertSign\n'
      : `subjectAltName=${san}\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n`);
    await openssl(['req', '-new', ...newKey, '-out', csrFile, ...subject]);
    await openssl(['x509', '-req', '-in', csrFile, '-CA', opts.issuer.certFile, '-CAkey', opts.issuer.keyFile, '-set_serial', String(Date.now()), '-out', certFile, ...days, '-extfile', extFile]);
  } else {
    await openssl([
      'req', '-x509', ...newKey, '-out', certFile, ...days, ...subject,
      '-addext', `subjectAltName=${san}`,
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,digitalSignature,keyCertSign',
      '-addext', 'extendedKeyUsage=serverAuth',
    ]);
  }
  const certPem = await readFile(certFile, 'utf8');
  const caFile = opts.issuer?.certFile ?? certFile;
  return { certFile, keyFile, caFile, certPem, keyPem: await readFile(keyFile, 'utf8'), caPem: opts.issuer?.certPem ?? certPem };
}
