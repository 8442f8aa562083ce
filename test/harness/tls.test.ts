import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startContainerd } from './containerd.ts';
import { pushImage, writeOciImage } from './oci-image.ts';
import { httpRequest, makeTempDir } from './process.ts';
import { startRegistry } from './registry.ts';
import { makeCertificate } from './tls.ts';

test('a registry with a test certificate serves https that clients trust only with its CA, containerd included', async () => {
  const cert = await makeCertificate();
  const registry = await startRegistry({ tls: cert });
  const containerd = await startContainerd();
  try {
    assert.match(registry.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.equal((await httpRequest(`${registry.url}/v2/`, { ca: cert.certPem })).status, 200);
    await assert.rejects(httpRequest(`${registry.url}/v2/`), /self-signed|certificate/i);

    const image = await writeOciImage(await makeTempDir('img'));
    await pushImage(image, registry.ref('library/secure', 'v1'));
    // containerd reaches it as a mirror of docker.io, trusting the CA file given in hosts.toml
    await containerd.writeHostsToml('docker.io', { server: 'https://registry-1.docker.io', mirrors: [{ url: registry.url, ca: cert.caFile }] });
    await containerd.pull('docker.io/library/secure:v1');
    assert.equal(await registry.countRequests({ method: 'GET', path: /\/blobs\//, status: 200 }), image.layers.length + 1);
  } finally {
    await containerd.stop();
    await registry.stop();
  }
});
