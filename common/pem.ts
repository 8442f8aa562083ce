// PEM certificate bundles (a private CA, a self-signed certificate), as the mirror's upstreams[].caFile
// and the operator's spec.upstreams[].caSecretRef and caConfigMapRef hold them: one rule for what
// counts as a bundle, so the operator refuses what the mirror would refuse at start.
import { X509Certificate } from 'node:crypto';

const BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/**
 * The certificates of a PEM bundle, each block as written; other text between them (comments,
 * `openssl x509 -text` output, private keys) is left out. Throws, saying which block, when one does
 * not parse; returns none when the text holds no certificate block.
 */
export function pemCertificates(text: string): string[] {
  const blocks = text.match(BLOCK) ?? [];
  blocks.forEach((block, index) => {
    try {
      new X509Certificate(block);
    } catch (error) {
      throw new Error(`holds a certificate block that is not a valid X.509 certificate (block ${index + 1} of ${blocks.length}: ${(error as Error).message})`);
    }
  });
  return blocks;
}

/** What is wrong with a CA bundle, for a message; undefined when it holds at least one certificate and each parses. */
export function caBundleProblem(text: string): string | undefined {
  try {
    return pemCertificates(text).length === 0 ? 'holds no PEM certificate (-----BEGIN CERTIFICATE-----)' : undefined;
  } catch (error) {
    return (error as Error).message;
  }
}
