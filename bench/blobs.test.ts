import assert from 'node:assert/strict';
import { createHash, createCipheriv } from 'node:crypto';
import { access } from 'node:fs/promises';
import { test } from 'node:test';
import { startRegistry } from '../test/harness/registry.ts';
import { httpRequest } from '../test/harness/process.ts';
import { blobGets, distributionBlobPath, dropStoredFiles, pushRandomBlob } from './blobs.ts';
import { download } from './client.ts';

test('a pushed random blob has the digest of its seeded bytes, and the same seed gives the same digest', async () => {
  const registry = await startRegistry();
  try {
    const size = 3 * 1024 * 1024 + 17;
    const digest = await pushRandomBlob(registry.url, 'library/x', size, 'seed-a');
    const expected = createCipheriv('aes-256-ctr', createHash('sha256').update('seed-a').digest(), Buffer.alloc(16)).update(Buffer.alloc(size));
    assert.equal(digest, `sha256:${createHash('sha256').update(expected).digest('hex')}`);
    const stored = await httpRequest(`${registry.url}/v2/library/x/blobs/${digest}`, { timeoutMs: 20_000 });
    assert.equal(stored.status, 200);
    assert.ok(stored.body.equals(expected));
    assert.equal(await pushRandomBlob(registry.url, 'library/y', size, 'seed-a'), digest);
    assert.notEqual(await pushRandomBlob(registry.url, 'library/x', size, 'seed-b'), digest);
  } finally {
    await registry.stop();
  }
});

test('upstream GETs for a blob are read exactly from the access log: other blobs, HEADs and manifests do not count', async () => {
  const registry = await startRegistry();
  try {
    const one = await pushRandomBlob(registry.url, 'library/count', 100_000, 'one');
    const other = await pushRandomBlob(registry.url, 'library/count', 100_000, 'other');
    await registry.resetRequests();
    assert.equal(await blobGets(registry, one), 0);
    for (let i = 0; i < 3; i++) await download(`${registry.url}/v2/library/count/blobs/${one}`, { expectBytes: 100_000 });
    await download(`${registry.url}/v2/library/elsewhere/blobs/${other}`).catch(() => undefined); // 404: another repository
    await download(`${registry.url}/v2/library/count/blobs/${other}`, { expectBytes: 100_000 });
    await httpRequest(`${registry.url}/v2/library/count/blobs/${one}`, { method: 'HEAD' });
    await httpRequest(`${registry.url}/v2/library/count/manifests/${one}`);
    // counted at once after the last response: the log line may not be written yet, and must still count
    assert.equal(await blobGets(registry, one), 3);
    assert.equal(await blobGets(registry, other), 2);
  } finally {
    await registry.stop();
  }
});

test("a blob's stored file is where distributionBlobPath says, and dropStoredFiles removes it (and refuses a path with nothing there)", async () => {
  const registry = await startRegistry();
  try {
    const digest = await pushRandomBlob(registry.url, 'library/drop', 100_000, 'drop');
    const file = distributionBlobPath(registry.storageDir, digest);
    await access(file);
    await dropStoredFiles([file]);
    await assert.rejects(access(file), { code: 'ENOENT' });
    await assert.rejects(dropStoredFiles([file]), (error: Error) => error.message.includes(file) && error.message.includes('ENOENT'));
  } finally {
    await registry.stop();
  }
});
