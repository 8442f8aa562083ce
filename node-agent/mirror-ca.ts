// The CA an https mirror's certificate is checked against (spec.tls with a private CA or a
// self-signed certificate), put where each runtime looks for it. containerd: next to the
// registry's hosts.toml, named by `ca = "regmirror-ca.crt"` in the host entry (containerd reads a
// relative path from the hosts.toml's directory). Docker and containers/image (CRI-O, Podman,
// skopeo): `<certs.d>/<mirror host:port>/`, where every `*.crt` is taken as a CA for that host.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ensureDir, readFileOrNull, removeCreatedDirIfEmpty, removeFile, writeFileAtomic } from './node-files.ts';

/** The agent's own file name wherever it puts the CA; nothing else on a node is called this. */
export const CA_FILE_NAME = 'regmirror-ca.crt';

/** The CA file's bytes, checked to hold a PEM certificate; re-read every pass (a Secret rotation). */
export async function readMirrorCa(file: string): Promise<Buffer> {
  let bytes: Buffer;
  try {
    bytes = await readFile(file);
  } catch (error) {
    throw new Error(`--mirror-ca ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? 'error'}); runtime files left as they are`);
  }
  if (!bytes.includes('-----BEGIN CERTIFICATE-----')) throw new Error(`--mirror-ca ${file} holds no PEM certificate; runtime files left as they are`);
  return bytes;
}

/**
 * Puts `ca` at `file`, or takes the agent's file away when `ca` is undefined (and the directory
 * with it when `removeEmptyDir`, the agent made it and nothing else is in it). True when the disk
 * changed.
 */
export async function syncCaFile(file: string, ca: Buffer | undefined, removeEmptyDir: boolean): Promise<boolean> {
  const current = await readFileOrNull(file);
  if (ca !== undefined) {
    if (current !== null && current.equals(ca)) return false;
    await ensureDir(path.dirname(file));
    await writeFileAtomic(file, ca, { mode: 0o644, keepMode: false });
    return true;
  }
  if (current === null) return false;
  await removeFile(file);
  if (removeEmptyDir) await removeCreatedDirIfEmpty(path.dirname(file));
  return true;
}

/** `<certsDir>/<host[:port]>/regmirror-ca.crt` for the mirror (a default port is left out, as the runtimes do). */
export function certsDirCaFile(certsDir: string, mirror: string): string {
  return path.join(certsDir, new URL(mirror).host, CA_FILE_NAME);
}
