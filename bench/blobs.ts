// Blobs for the benchmark: seeded random bytes streamed into the upstream with a chunked upload
// (POST, one streamed PATCH, PUT ?digest=), hashed on the way, so a 200 MB blob never sits in
// memory or in a file of ours. And the upstream's count of GETs for one blob.
import { createCipheriv, createHash } from 'node:crypto';
import { once } from 'node:events';
import { unlink } from 'node:fs/promises';
import http from 'node:http';
import type { RegistryServer } from '../test/harness/registry.ts';

interface Answer {
  status: number;
  location: string | undefined;
  body: string;
}

function send(url: URL, method: string, headers: Record<string, string>, write: (request: http.ClientRequest) => Promise<void>): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const request = http.request(url, { method, headers, agent: false, timeout: 120_000 }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () => {
        const location = response.headers.location;
        resolve({ status: response.statusCode ?? 0, location: location ? new URL(location, url).href : undefined, body: Buffer.concat(chunks).toString().slice(0, 500) });
      });
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`${method} ${url.pathname}: timed out`)));
    request.on('error', reject);
    write(request).then(() => request.end(), (error: unknown) => request.destroy(error as Error));
  });
}

/** Writes `size` bytes of AES-256-CTR keystream keyed by seed, respecting backpressure; returns the sha256 digest. */
async function writeSeededBytes(request: http.ClientRequest, size: number, seed: string): Promise<string> {
  const cipher = createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16));
  const hash = createHash('sha256');
  const zeros = Buffer.alloc(1 << 20);
  for (let left = size; left > 0; ) {
    const n = Math.min(left, zeros.length);
    const chunk = cipher.update(zeros.subarray(0, n));
    hash.update(chunk);
    left -= n;
    if (!request.write(chunk)) await once(request, 'drain');
  }
  return `sha256:${hash.digest('hex')}`;
}

/** Pushes `size` seeded random bytes as a blob of `repository`; returns its digest. Same seed, same digest. */
export async function pushRandomBlob(registryUrl: string, repository: string, size: number, seed: string): Promise<string> {
  const started = await send(new URL(`/v2/${repository}/blobs/uploads/`, registryUrl), 'POST', { 'content-length': '0' }, async () => undefined);
  if (started.status !== 202 || !started.location) throw new Error(`starting an upload to ${repository} answered ${started.status}: ${started.body}`);
  let digest = '';
  const patched = await send(new URL(started.location), 'PATCH', { 'content-type': 'application/octet-stream' }, async (request) => {
    digest = await writeSeededBytes(request, size, seed);
  });
  if (patched.status !== 202 || !patched.location) throw new Error(`uploading to ${repository} answered ${patched.status}: ${patched.body}`);
  const finish = new URL(patched.location);
  finish.searchParams.set('digest', digest);
  const put = await send(finish, 'PUT', { 'content-length': '0' }, async () => undefined);
  if (put.status !== 201) throw new Error(`committing blob ${digest} to ${repository} answered ${put.status}: ${put.body}`);
  return digest;
}

/** GET requests the registry answered for this blob (any repository, any status), from its access log. */
export async function blobGets(registry: Pick<RegistryServer, 'countRequests'>, digest: string): Promise<number> {
  const escaped = digest.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return registry.countRequests({ method: 'GET', path: new RegExp(`/blobs/${escaped}$`) });
}

/** Where each server keeps a stored blob, to know when a fill has finished and the blob is warm. */
export function regmirrorBlobPath(storagePath: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return `${storagePath}/blobs/sha256/${hex.slice(0, 2)}/${hex}`;
}

export function distributionBlobPath(storageDir: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return `${storageDir}/docker/registry/v2/blobs/sha256/${hex.slice(0, 2)}/${hex}/data`;
}

/**
 * Deletes a cold blob's stored files (upstream's, each mirror's) once its run is measured, so their
 * page cache is freed and the next run writes into memory the kernel has used before, as on a
 * machine that has been up a while. On this VM, page cache growing into memory not used since boot
 * costs about 3.5 ms per MB of system time (bench/profiling.md); without this, later cold runs
 * measured that rather than the mirrors. A file not there is an error: a wrong path would
 * otherwise quietly undo the point.
 */
export async function dropStoredFiles(files: string[]): Promise<void> {
  for (const file of files) {
    await unlink(file).catch((error: NodeJS.ErrnoException) => {
      throw new Error(`dropping ${file} after its run: ${error.code ?? error.message}`);
    });
  }
}
