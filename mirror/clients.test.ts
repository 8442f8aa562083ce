// Real clients through one mirror: Docker Engine with registry-mirrors, containerd with hosts.toml
// (Docker Hub and ghcr.io, a multi-arch index), skopeo by tag and by digest.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startContainerd } from '../test/harness/containerd.ts';
import { startDockerd } from '../test/harness/dockerd.ts';
import { startTestMirror, type TestMirror } from '../test/harness/mirror.ts';
import { MEDIA_TYPES, pushImage, skopeo, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';

describe('real clients pull through the mirror', () => {
  let hub: RegistryServer;
  let ghcr: RegistryServer;
  let mirror: TestMirror;
  let hubImage: TestImage;
  let dockerImage: TestImage;
  let ghcrImage: TestImage;
  let multiArch: TestImage;
  let dockerList: TestImage;

  before(async () => {
    [hub, ghcr] = await Promise.all([startRegistry(), startRegistry()]);
    hubImage = await writeOciImage(await makeTempDir('hub'), { tag: 'v1', seed: 'clients-hub', layerSizes: [200_000] });
    dockerImage = await writeOciImage(await makeTempDir('docker'), { tag: 'v1', seed: 'clients-docker', layerSizes: [200_000], dockerMediaTypes: true });
    ghcrImage = await writeOciImage(await makeTempDir('ghcr'), { tag: '1.0', seed: 'clients-ghcr', layerSizes: [100_000] });
    multiArch = await writeOciImage(await makeTempDir('multi'), {
      tag: 'multi',
      seed: 'clients-multi',
      platforms: [
        { os: 'linux', architecture: 'amd64' },
        { os: 'linux', architecture: 'arm64' },
      ],
    });
    await pushImage(hubImage, hub.ref('library/app', 'v1'));
    await pushImage(dockerImage, hub.ref('library/dockerapp', 'v1'));
    await pushImage(multiArch, hub.ref('library/multi', 'multi'));
    // a Docker manifest list whose linux/amd64 image is not its first entry
    dockerList = await writeOciImage(await makeTempDir('docker-list'), {
      tag: 'v1',
      seed: 'clients-docker-list',
      dockerMediaTypes: true,
      platforms: [
        { os: 'linux', architecture: 'arm64' },
        { os: 'linux', architecture: 'amd64' },
      ],
    });
    await pushImage(dockerList, hub.ref('library/dockerlist', 'v1'));
    await pushImage(ghcrImage, ghcr.ref('org/tool', '1.0'));
    mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }, { registry: 'ghcr.io', url: ghcr.url }], default: 'docker.io' });
  });
  after(async () => {
    await mirror.stop();
    await cleanupAll();
  });

  test('containerd with hosts.toml pulls docker.io and ghcr.io images, and a multi-arch index, through one mirror', async () => {
    const node = await startContainerd();
    try {
      // server points at an address that refuses: only the mirror can have served these pulls
      await node.writeHostsToml('docker.io', { server: 'http://127.0.0.1:9', mirrors: [{ url: mirror.url }] });
      await node.writeHostsToml('ghcr.io', { server: 'http://127.0.0.1:9', mirrors: [{ url: mirror.url }] });
      await node.pull('docker.io/library/app:v1');
      await node.pull('ghcr.io/org/tool:1.0');
      await node.pull('docker.io/library/multi:multi', { allPlatforms: true });
      const images = await node.images();
      for (const ref of ['docker.io/library/app:v1', 'ghcr.io/org/tool:1.0', 'docker.io/library/multi:multi']) assert.ok(images.includes(ref), `${ref} in ${images.join(', ')}`);
      // the index itself is cached and served by digest
      const byDigest = await hub.countRequests({ method: 'GET', path: new RegExp(`/manifests/${multiArch.indexDigest}$`) });
      await node.pull(`docker.io/library/multi@${multiArch.indexDigest}`);
      assert.equal(await hub.countRequests({ method: 'GET', path: new RegExp(`/manifests/${multiArch.indexDigest}$`) }), byDigest, 'index by digest came from the store');
    } finally {
      await node.stop();
    }
  });

  test('Docker Engine with registry-mirrors pulls library images (Docker v2 schema 2) through the mirror', async () => {
    const docker = await startDockerd({ daemonJson: { 'registry-mirrors': [mirror.url] } });
    try {
      const before = await hub.countRequests({ method: 'GET', path: /\/v2\/library\/dockerapp\/blobs\// });
      await docker.pull('library/dockerapp:v1');
      const listed = await docker.docker(['image', 'inspect', '--format', '{{.Id}}', 'dockerapp:v1']);
      assert.equal(listed.code, 0, listed.stderr);
      assert.equal(listed.stdout.trim(), dockerImage.configDigest);
      assert.equal(await hub.countRequests({ method: 'GET', path: /\/v2\/library\/dockerapp\/blobs\// }), before + dockerImage.layers.length + 1, 'the mirror fetched the blobs from the upstream');
    } finally {
      await docker.stop();
    }
  });

  test('skopeo copies by tag and by digest through the mirror', async () => {
    for (const ref of ['library/app:v1', `library/app@${hubImage.manifestDigest}`]) {
      const dest = await makeTempDir('copy');
      const result = await skopeo(['copy', '--src-tls-verify=false', `docker://${mirror.host}/${ref}`, `oci:${dest}:x`]);
      assert.equal(result.code, 0, result.stderr);
    }
  });

  test('a manifest type the client did not list in Accept is refused as distribution does (404), not sent for it to misread; listed, no Accept or */* get it', async () => {
    const url = `${mirror.url}/v2/library/multi/manifests/multi`;
    const ask = (accept?: string) => httpRequest(url, accept ? { headers: { accept } } : {});
    const schema2Only = await ask(MEDIA_TYPES.docker.manifest);
    assert.equal(schema2Only.status, 404);
    const error = JSON.parse(schema2Only.body.toString()).errors[0];
    assert.equal(error.code, 'MANIFEST_UNKNOWN');
    assert.match(error.message, /application\/vnd\.oci\.image\.index\.v1\+json found, but the Accept header does not include it/);
    for (const accept of [undefined, '*/*', `${MEDIA_TYPES.oci.manifest}, ${MEDIA_TYPES.oci.index}`, 'application/json']) {
      const res = await ask(accept);
      assert.equal(res.status, 200, String(accept));
      assert.equal(res.headers['content-type'], MEDIA_TYPES.oci.index);
    }
    const head = await httpRequest(url, { method: 'HEAD', headers: { accept: MEDIA_TYPES.docker.manifest } });
    assert.equal(head.status, 404, 'HEAD answers the same');
  });

  test("Docker's manifest types are answered as distribution answers them whatever the Accept: a list by tag to a schema 2 client is its linux/amd64 image, and by digest the bytes the digest names", async () => {
    const amd64 = dockerList.platforms!.find((p) => p.platform.architecture === 'amd64')!;
    const ask = (base: string, reference: string, accept: string) => httpRequest(`${base}/v2/library/dockerlist/manifests/${reference}`, { headers: { accept } });
    const cases: [string, string][] = [
      ['v1', MEDIA_TYPES.docker.manifest],
      [amd64.manifestDigest, MEDIA_TYPES.oci.manifest],
      [dockerList.manifestDigest, MEDIA_TYPES.docker.manifest],
    ];
    for (const [reference, accept] of cases) {
      const [upstream, mirrored] = [await ask(hub.url, reference, accept), await ask(mirror.url, reference, accept)];
      assert.equal(upstream.status, 200, `distribution: ${reference} with Accept ${accept}`);
      assert.equal(mirrored.status, 200, `${reference} with Accept ${accept}: ${mirrored.body.toString()}`);
      assert.equal(mirrored.headers['docker-content-digest'], upstream.headers['docker-content-digest'], reference);
      assert.equal(mirrored.headers['content-type'], upstream.headers['content-type'], reference);
      assert.deepEqual(mirrored.body, upstream.body, reference);
    }
    const single = await ask(mirror.url, 'v1', MEDIA_TYPES.docker.manifest);
    assert.equal(single.headers['docker-content-digest'], amd64.manifestDigest, 'the linux/amd64 image, not the first entry');
    // distribution would rewrite that image into the old signed schema 1 here; the mirror does not make schema 1
    const oci = await ask(mirror.url, 'v1', MEDIA_TYPES.oci.manifest);
    assert.equal(oci.status, 404);
    assert.match(JSON.parse(oci.body.toString()).errors[0].message, /manifest\.list\.v2\+json found, but the Accept header does not include it/);
  });
});
