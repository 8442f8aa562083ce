import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { gunzipSync } from 'node:zlib';
import { MEDIA_TYPES, pushImage, readBlob, skopeo, writeOciImage } from './oci-image.ts';
import { httpRequest, makeTempDir, runCommand } from './process.ts';
import { startRegistry } from './registry.ts';

const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const ACCEPT_ALL = [...Object.values(MEDIA_TYPES.oci), ...Object.values(MEDIA_TYPES.docker)].join(', ');

test('the same seed writes the same digests and another seed writes others', async () => {
  const a = await writeOciImage(await makeTempDir('img'), { seed: 's1', layerSizes: [1000, 5000] });
  const b = await writeOciImage(await makeTempDir('img'), { seed: 's1', layerSizes: [1000, 5000] });
  const c = await writeOciImage(await makeTempDir('img'), { seed: 's2', layerSizes: [1000, 5000] });
  assert.equal(a.manifestDigest, b.manifestDigest);
  assert.deepEqual(a.layers, b.layers);
  assert.notEqual(a.manifestDigest, c.manifestDigest);
  assert.notEqual(a.layers[0]!.digest, c.layers[0]!.digest);
});

test('layers are gzip tars of the requested size whose digests match the manifest and the config diff_ids', async () => {
  const image = await writeOciImage(await makeTempDir('img'), { layerSizes: [3000, 70_000] });
  const manifest = JSON.parse((await readBlob(image, image.manifestDigest)).toString());
  assert.equal(manifest.mediaType, MEDIA_TYPES.oci.manifest);
  assert.equal(sha256(await readBlob(image, image.manifestDigest)), image.manifestDigest);
  const config = JSON.parse((await readBlob(image, image.configDigest)).toString());
  for (const [i, layer] of image.layers.entries()) {
    const blob = await readBlob(image, layer.digest);
    assert.equal(sha256(blob), layer.digest);
    assert.equal(blob.length, layer.size);
    assert.equal(manifest.layers[i].digest, layer.digest);
    assert.equal(sha256(gunzipSync(blob)), config.rootfs.diff_ids[i]);
  }
  const blobFiles = await readdir(path.join(image.layoutDir, 'blobs', 'sha256'));
  const onDisk = (await Promise.all(blobFiles.map(async (f) => (await stat(path.join(image.layoutDir, 'blobs', 'sha256', f))).size))).reduce((a, b) => a + b, 0);
  assert.equal(image.totalSize, onDisk);
  const listing = await runCommand('tar', ['-tvzf', path.join(image.layoutDir, 'blobs', 'sha256', image.layers[1]!.digest.slice(7))]);
  assert.equal(listing.code, 0, listing.stderr);
  assert.match(listing.stdout, /layer1\/data\.bin/);
  assert.match(listing.stdout, /\s70000\s/);
});

test('skopeo reads the layout by tag, and one layout holds several tags', async () => {
  const dir = await makeTempDir('img');
  const one = await writeOciImage(dir, { tag: 'one' });
  const two = await writeOciImage(dir, { tag: 'two' });
  for (const image of [one, two]) {
    const raw = await skopeo(['inspect', '--raw', `oci:${dir}:${image.tag}`]);
    assert.equal(raw.code, 0, raw.stderr);
    assert.equal(sha256(Buffer.from(raw.stdout)), image.manifestDigest);
  }
});

test('images written at once into one layout keep every tag', async () => {
  const dir = await makeTempDir('img');
  const images = await Promise.all(['a', 'b', 'c', 'd', 'e'].map((tag) => writeOciImage(dir, { tag, layerSizes: [100] })));
  const layoutIndex = JSON.parse(await readFile(path.join(dir, 'index.json'), 'utf8'));
  assert.deepEqual(
    layoutIndex.manifests.map((m: { annotations: Record<string, string> }) => m.annotations['org.opencontainers.image.ref.name']).sort(),
    ['a', 'b', 'c', 'd', 'e'],
  );
  assert.equal(new Set(images.map((i) => i.digest)).size, 5);
});

test('platforms write one manifest per platform under an index', async () => {
  const image = await writeOciImage(await makeTempDir('img'), {
    platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64', variant: 'v8' }],
  });
  assert.ok(image.indexDigest);
  assert.equal(image.digest, image.indexDigest);
  const index = JSON.parse((await readBlob(image, image.indexDigest)).toString());
  assert.equal(index.mediaType, MEDIA_TYPES.oci.index);
  assert.deepEqual(index.manifests.map((m: { platform: unknown }) => m.platform), [
    { os: 'linux', architecture: 'amd64' },
    { os: 'linux', architecture: 'arm64', variant: 'v8' },
  ]);
  assert.equal(image.platforms?.length, 2);
  const blobFiles = await readdir(path.join(image.layoutDir, 'blobs', 'sha256'));
  const onDisk = (await Promise.all(blobFiles.map(async (f) => (await stat(path.join(image.layoutDir, 'blobs', 'sha256', f))).size))).reduce((a, b) => a + b, 0);
  assert.equal(image.totalSize, onDisk);
  assert.notEqual(image.platforms![0]!.layers[0]!.digest, image.platforms![1]!.layers[0]!.digest);
  const layoutIndex = JSON.parse(await readFile(path.join(image.layoutDir, 'index.json'), 'utf8'));
  assert.equal(layoutIndex.manifests[0].digest, image.indexDigest);
});

test('pushImage pushes single and multi-arch images with their own digests, OCI or Docker media types', async () => {
  const registry = await startRegistry();
  try {
    const dir = await makeTempDir('img');
    const platforms = [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64' }];
    const cases = [
      { name: 'oci-single', image: await writeOciImage(dir, { tag: 'a' }) },
      { name: 'oci-multi', image: await writeOciImage(dir, { tag: 'b', platforms }) },
      { name: 'docker-single', image: await writeOciImage(dir, { tag: 'c', dockerMediaTypes: true }) },
      { name: 'docker-multi', image: await writeOciImage(dir, { tag: 'd', platforms, dockerMediaTypes: true }) },
    ];
    for (const { name, image } of cases) {
      await pushImage(image, registry.ref(`library/${name}`, 'v1'));
      const res = await httpRequest(`${registry.url}/v2/library/${name}/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
      assert.equal(res.status, 200, name);
      assert.equal(res.headers['docker-content-digest'], image.digest, name);
      assert.equal(res.headers['content-type'], image.mediaType, name);
      for (const p of image.platforms ?? []) {
        const child = await httpRequest(`${registry.url}/v2/library/${name}/manifests/${p.manifestDigest}`, { method: 'HEAD', headers: { accept: ACCEPT_ALL } });
        assert.equal(child.status, 200, `${name} ${p.platform.architecture}`);
      }
    }
  } finally {
    await registry.stop();
  }
});

test('pushImage with format v2s2 converts an OCI image to Docker media types', async () => {
  const registry = await startRegistry();
  try {
    const image = await writeOciImage(await makeTempDir('img'));
    await pushImage(image, registry.ref('library/converted', 'v1'), { format: 'v2s2' });
    const res = await httpRequest(`${registry.url}/v2/library/converted/manifests/v1`, { headers: { accept: ACCEPT_ALL } });
    assert.equal(res.headers['content-type'], MEDIA_TYPES.docker.manifest);
  } finally {
    await registry.stop();
  }
});
