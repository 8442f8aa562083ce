import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { startDockerd, type Dockerd } from './dockerd.ts';
import { pushImage, writeOciImage, type TestImage } from './oci-image.ts';
import { makeTempDir, waitFor } from './process.ts';
import { startRegistry, type RegistryServer } from './registry.ts';

let dockerd: Dockerd;
let registry: RegistryServer;
let image: TestImage;

before(async () => {
  [registry, image] = await Promise.all([startRegistry(), writeOciImage(await makeTempDir('img'))]);
  await pushImage(image, registry.ref('library/test', 'v1'));
  dockerd = await startDockerd({ daemonJson: { 'registry-mirrors': [registry.url] } });
});

after(async () => {
  await dockerd.stop();
  await registry.stop();
});

/** Whether anything is mounted in the daemon's temp dir (data-root's parent). */
function mounted(dataRoot: string): boolean {
  const dir = path.dirname(dataRoot);
  return readFileSync('/proc/self/mountinfo', 'utf8').split('\n').some((line) => (line.split(' ')[4] ?? '').startsWith(`${dir}/`));
}

test('dockerd answers docker info with vfs storage under its own data root', async () => {
  const result = await dockerd.docker(['info', '--format', '{{.ServerVersion}} {{.Driver}} {{.DockerRootDir}}']);
  assert.equal(result.code, 0, result.stderr);
  const [version, driver, root] = result.stdout.trim().split(' ');
  assert.match(version!, /^20\.10\./);
  assert.equal(driver, 'vfs');
  assert.equal(root, dockerd.dataRoot);
});

test('docker pull of a Docker Hub name goes through registry-mirrors, without ?ns=', async () => {
  await dockerd.pull('library/test:v1');
  // dockerd 20.10 resolves the tag with HEAD, then GETs the manifest by digest
  const manifestRequests = (await registry.requests()).filter((r) => r.path.startsWith('/v2/library/test/manifests/') && r.userAgent.startsWith('docker/'));
  assert.deepEqual(manifestRequests.map((r) => `${r.method} ${r.path}`), ['HEAD /v2/library/test/manifests/v1', `GET /v2/library/test/manifests/${image.manifestDigest}`]);
  assert.ok(manifestRequests.every((r) => r.query === ''));
  for (const layer of image.layers) {
    assert.equal(await registry.countRequests({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}$`), status: 200 }), 1);
  }
  const images = await dockerd.docker(['images', '--format', '{{.Repository}}:{{.Tag}}']);
  assert.match(images.stdout, /^test:v1$/m);
});

test('docker pulls from a plain-HTTP registry on 127.0.0.1 by its address', async () => {
  await dockerd.pull(registry.ref('library/test', 'v1'));
  const inspect = await dockerd.docker(['image', 'inspect', '--format', '{{json .RepoDigests}}', registry.ref('library/test', 'v1')]);
  assert.match(inspect.stdout, new RegExp(image.manifestDigest));
});

test('reload() makes dockerd re-read registry-mirrors from daemon.json', async () => {
  const other = await startDockerd();
  try {
    assert.deepEqual(((await other.info()).RegistryConfig as { Mirrors: string[] }).Mirrors, []);
    await other.writeDaemonJson({ ...(await other.readDaemonJson()), 'registry-mirrors': [registry.url] });
    other.reload();
    await waitFor(async () => ((await other.info()).RegistryConfig as { Mirrors: string[] }).Mirrors.includes(`${registry.url}/`), {
      what: 'the mirror in docker info',
    });
  } finally {
    await other.stop();
  }
});

test('kill9() leaves no mount behind and start() brings the daemon back with its images', async () => {
  const other = await startDockerd();
  try {
    await other.pull(registry.ref('library/test', 'v1'));
    await other.kill9();
    assert.equal(mounted(other.dataRoot), false);
    await other.start();
    const images = await other.docker(['images', '-q']);
    assert.equal(images.stdout.trim().split('\n').filter(Boolean).length, 1);
  } finally {
    await other.stop();
  }
  assert.equal(mounted(other.dataRoot), false);
});
