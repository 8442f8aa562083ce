import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { startContainerd, type Containerd } from './containerd.ts';
import { pushImage, writeOciImage, type TestImage } from './oci-image.ts';
import { freePort, makeTempDir } from './process.ts';
import { startRegistry, type RegistryServer } from './registry.ts';

let containerd: Containerd;
let registry: RegistryServer;
let image: TestImage;
let multi: TestImage;

before(async () => {
  [containerd, registry] = await Promise.all([startContainerd(), startRegistry()]);
  const dir = await makeTempDir('img');
  image = await writeOciImage(dir, { tag: 'single' });
  multi = await writeOciImage(dir, { tag: 'multi', platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64' }] });
  await pushImage(image, registry.ref('library/test', 'v1'));
  await pushImage(multi, registry.ref('library/multi', 'v1'));
});

after(async () => {
  await containerd.stop();
  await registry.stop();
});

test('containerd pulls and unpacks an image straight from a registry through a hosts.toml that points at it', async () => {
  await containerd.writeHostsToml(registry.host, { server: registry.url });
  await containerd.pull(registry.ref('library/test', 'v1'));
  assert.ok((await containerd.images()).includes(registry.ref('library/test', 'v1')));
  const snapshots = await containerd.ctr(['snapshots', 'ls']);
  assert.equal(snapshots.stdout.trim().split('\n').length - 1, image.layers.length, snapshots.stdout);
  for (const layer of image.layers) {
    assert.equal(await registry.countRequests({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}$`), status: 200 }), 1);
  }
});

test('containerd asks a docker.io mirror with ?ns=docker.io', async () => {
  await containerd.writeHostsToml('docker.io', { server: 'https://registry-1.docker.io', mirrors: [{ url: registry.url }] });
  await containerd.pull('docker.io/library/test:v1');
  const viaMirror = (await registry.requests()).filter((r) => r.path === '/v2/library/test/manifests/v1' && r.query === 'ns=docker.io');
  assert.ok(viaMirror.length >= 1);
});

test('containerd falls back to the server when the mirror does not answer', async () => {
  const dead = `http://127.0.0.1:${await freePort()}`;
  await containerd.writeHostsToml(registry.host, { server: registry.url, mirrors: [{ url: dead }] });
  await containerd.ctr(['images', 'rm', registry.ref('library/test', 'v1')]);
  await containerd.pull(registry.ref('library/test', 'v1'));
  assert.ok((await containerd.images()).includes(registry.ref('library/test', 'v1')));
});

test('pull takes one platform of a multi-arch image, or all of them', async () => {
  await containerd.writeHostsToml(registry.host, { server: registry.url });
  const arm64 = multi.platforms!.find((p) => p.platform.architecture === 'arm64')!;
  const amd64 = multi.platforms!.find((p) => p.platform.architecture === 'amd64')!;
  const layerGets = async (p: typeof arm64): Promise<number> =>
    registry.countRequests({ method: 'GET', path: new RegExp(`/blobs/(${p.layers.map((l) => l.digest).join('|')})$`) });
  await containerd.pull(registry.ref('library/multi', 'v1'), { platform: 'linux/arm64' });
  assert.equal(await layerGets(arm64), arm64.layers.length);
  assert.equal(await layerGets(amd64), 0);
  await containerd.pull(registry.ref('library/multi', 'v1'), { allPlatforms: true });
  assert.equal(await layerGets(amd64), amd64.layers.length);
});

test('configPath: false leaves config_path out of config.toml; several containerds run side by side', async () => {
  const other = await startContainerd({ configPath: false });
  try {
    assert.doesNotMatch(await readFile(other.configFile, 'utf8'), /config_path/);
    assert.match(await readFile(containerd.configFile, 'utf8'), new RegExp(`config_path = "${containerd.hostsDir}"`));
    assert.notEqual(other.socket, containerd.socket);
    assert.equal((await other.ctr(['version'])).code, 0);
  } finally {
    await other.stop();
  }
});

test('after kill9() start() brings containerd back with the images it had', async () => {
  const node = await startContainerd();
  try {
    await node.writeHostsToml(registry.host, { server: registry.url });
    await node.pull(registry.ref('library/test', 'v1'));
    await node.kill9();
    assert.notEqual((await node.ctr(['version'])).code, 0);
    await node.start();
    assert.deepEqual(await node.images(), [registry.ref('library/test', 'v1')]);
  } finally {
    await node.stop();
  }
});
