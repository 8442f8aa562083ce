// Behaviour of a cold fill as clients see it: bytes reach every waiting client while the upstream
// is still sending, and a Basic-auth upstream is pulled with its credentials.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { access, writeFile } from 'node:fs/promises';
import http from 'node:http';
import path from 'node:path';
import bcrypt from 'bcryptjs';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { startTestMirror } from '../test/harness/mirror.ts';
import { pushImage, writeOciImage } from '../test/harness/oci-image.ts';
import { cleanupAll, freePort, httpRequest, makeTempDir, spawnServer } from '../test/harness/process.ts';
import { startRegistry } from '../test/harness/registry.ts';

after(cleanupAll);

test('clients waiting on a cold blob receive bytes while the upstream is still sending, before the blob is stored', async () => {
  const upstream = await startRegistry();
  const image = await writeOciImage(await makeTempDir('stream'), { tag: 'v1', layerSizes: [6 * 1024 * 1024], seed: 'streaming' });
  await pushImage(image, upstream.ref('library/stream', 'v1'));
  const layer = image.layers[0]!;
  const slow = await startFaultProxy({ target: upstream.url });
  slow.addRule({ path: /\/blobs\//, bytesPerSecond: 2 * 1024 * 1024 });
  const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: slow.url }] });
  const hex = layer.digest.slice('sha256:'.length);
  const stored = path.join(mirror.storagePath, 'blobs/sha256', hex.slice(0, 2), hex);
  try {
    const clients = Array.from({ length: 3 }, () =>
      new Promise<{ storedAtFirstByte: boolean; digest: string }>((resolve, reject) => {
        http.get(`${mirror.url}/v2/library/stream/blobs/${layer.digest}`, (res) => {
          const hash = createHash('sha256');
          let storedAtFirstByte: Promise<boolean> | undefined;
          res.on('data', (chunk: Buffer) => {
            storedAtFirstByte ??= access(stored).then(() => true, () => false);
            hash.update(chunk);
          });
          res.on('end', async () => resolve({ storedAtFirstByte: (await storedAtFirstByte) ?? true, digest: `sha256:${hash.digest('hex')}` }));
          res.on('error', reject);
        });
      }),
    );
    for (const result of await Promise.all(clients)) {
      assert.equal(result.storedAtFirstByte, false, 'the first bytes arrived while the fill was still running');
      assert.equal(result.digest, layer.digest);
    }
    assert.equal(slow.countRequests({ method: 'GET', path: /\/blobs\// }), 1, 'one upstream fetch for all three');
  } finally {
    await mirror.stop();
    await slow.stop();
  }
});

test('an upstream that asks for Basic auth is pulled with the configured credentials', async () => {
  const dir = await makeTempDir('basic-upstream');
  await writeFile(path.join(dir, 'htpasswd'), `bob:${bcrypt.hashSync('pa55', 5)}\n`);
  const port = await freePort();
  const config = {
    version: 0.1,
    log: { level: 'warn' },
    storage: { filesystem: { rootdirectory: path.join(dir, 'storage') } },
    http: { addr: `127.0.0.1:${port}`, secret: 'basic-upstream' },
    auth: { htpasswd: { realm: 'basic-realm', path: path.join(dir, 'htpasswd') } },
  };
  await writeFile(path.join(dir, 'config.yml'), JSON.stringify(config));
  await spawnServer('docker-registry', ['serve', path.join(dir, 'config.yml')], { ready: async () => (await httpRequest(`http://127.0.0.1:${port}/v2/`)).status === 401 });
  const image = await writeOciImage(await makeTempDir('basic-image'), { tag: 'v1', seed: 'basic-upstream' });
  await pushImage(image, `127.0.0.1:${port}/team/app:v1`, { creds: 'bob:pa55' });

  const without = await startTestMirror({ upstreams: [{ registry: 'registry.example.com', url: `http://127.0.0.1:${port}` }] });
  try {
    const refused = await httpRequest(`${without.url}/v2/team/app/manifests/v1`);
    assert.equal(refused.status, 403);
  } finally {
    await without.stop();
  }
  const mirror = await startTestMirror({
    upstreams: [{ registry: 'registry.example.com', url: `http://127.0.0.1:${port}`, credentials: { username: 'bob', password: 'pa55' } }],
    extra: { auth: { allowAnonymousWithCredentials: true } },
  });
  try {
    const manifest = await httpRequest(`${mirror.url}/v2/team/app/manifests/v1`);
    assert.equal(manifest.status, 200);
    assert.equal(manifest.headers['docker-content-digest'], image.manifestDigest);
    const blob = await httpRequest(`${mirror.url}/v2/team/app/blobs/${image.layers[0]!.digest}`);
    assert.equal(`sha256:${createHash('sha256').update(blob.body).digest('hex')}`, image.layers[0]!.digest);
  } finally {
    await mirror.stop();
  }
});
