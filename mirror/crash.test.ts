// The mirror as users run it (`regmirror mirror --config FILE`, a child process), killed with
// SIGKILL in the middle of storing a large blob: the next start must not serve the partial bytes.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { startMirrorProcess, temporaryFiles } from '../test/harness/mirror.ts';
import { pushImage, writeOciImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, waitFor } from '../test/harness/process.ts';
import { startRegistry } from '../test/harness/registry.ts';

after(cleanupAll);

async function temporaryBytes(storagePath: string): Promise<number> {
  return (await temporaryFiles(storagePath)).reduce((sum, file) => sum + file.size, 0);
}

test('kill -9 during a large fill leaves nothing that is served; after a restart the next pull is correct', async () => {
  const upstream = await startRegistry();
  const image = await writeOciImage(await makeTempDir('large'), { tag: 'v1', layerSizes: [24 * 1024 * 1024], seed: 'crash' });
  await pushImage(image, upstream.ref('library/large', 'v1'));
  const layer = image.layers[0]!;
  // A slow link makes "in the middle of the fill" a moment the test can hit every time.
  const slow = await startFaultProxy({ target: upstream.url });
  const throttle = slow.addRule({ path: /\/blobs\//, bytesPerSecond: 4 * 1024 * 1024 });
  const storagePath = path.join(await makeTempDir('crash-store'), 'data');
  const first = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: slow.url }], storagePath });

  const pending = httpRequest(`${first.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 60_000 }).catch((error: Error) => error);
  await waitFor(async () => (await temporaryBytes(storagePath)) > 2 * 1024 * 1024, { timeoutMs: 20_000, what: 'the fill to be under way' });
  await first.process.kill9();
  const cut = await pending;
  assert.ok(cut instanceof Error || cut.body.length < layer.size, 'the client did not get the whole blob from a killed mirror');
  const hex = layer.digest.slice('sha256:'.length);
  assert.ok(!(await readdir(path.join(storagePath, 'blobs/sha256', hex.slice(0, 2))).catch(() => [] as string[])).includes(hex), 'no partial blob in the store');

  throttle.remove();
  const second = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: slow.url }], storagePath, port: first.port });
  try {
    assert.equal(await temporaryBytes(storagePath), 0, 'leftover temporary file removed at start');
    assert.match(second.process.output(), /removed unfinished downloads/);
    const res = await httpRequest(`${second.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 60_000 });
    assert.equal(res.status, 200);
    assert.equal(`sha256:${createHash('sha256').update(res.body).digest('hex')}`, layer.digest);
    const again = await httpRequest(`${second.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 60_000 });
    assert.equal(`sha256:${createHash('sha256').update(again.body).digest('hex')}`, layer.digest);
  } finally {
    await second.process.stop();
    await slow.stop();
  }
});
