import assert from 'node:assert/strict';
import { access } from 'node:fs/promises';
import { after, test } from 'node:test';
import { startMirrorProcess } from '../test/harness/mirror.ts';
import { cleanupAll, waitFor } from '../test/harness/process.ts';
import { startRegistry } from '../test/harness/registry.ts';
import { blobGets, distributionBlobPath, pushRandomBlob, regmirrorBlobPath } from './blobs.ts';
import { download } from './client.ts';
import { startDistributionProxy } from './distribution-proxy.ts';

after(cleanupAll);

const exists = (file: string) => access(file).then(() => true, () => false);

test('both mirrors store a pulled blob where the benchmark looks for it, and serve it again without the upstream', async () => {
  const upstream = await startRegistry();
  const proxy = await startDistributionProxy(upstream.url);
  const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: upstream.url }], logLevel: 'warn' });
  try {
    const digest = await pushRandomBlob(upstream.url, 'library/stored', 2_000_000, 'stored');
    const stored = { distribution: distributionBlobPath(proxy.storageDir, digest), regmirror: regmirrorBlobPath(mirror.storagePath, digest) };
    assert.equal(await exists(stored.distribution), false);
    await download(`${proxy.url}/v2/library/stored/blobs/${digest}`, { expectBytes: 2_000_000 });
    await download(`${mirror.url}/v2/library/stored/blobs/${digest}`, { expectBytes: 2_000_000 });
    for (const file of Object.values(stored)) await waitFor(() => exists(file), { timeoutMs: 20_000, what: file });
    // distribution fetched it twice (one GET to answer, one to store), regmirror once
    const fetched = await blobGets(upstream, digest);
    assert.equal(fetched, 3);
    await download(`${proxy.url}/v2/library/stored/blobs/${digest}`, { expectBytes: 2_000_000 });
    await download(`${mirror.url}/v2/library/stored/blobs/${digest}`, { expectBytes: 2_000_000 });
    assert.equal(await blobGets(upstream, digest), fetched, 'warm: served from each store');
  } finally {
    await Promise.all([proxy.stop(), mirror.process.stop()]);
    await upstream.stop();
  }
});
