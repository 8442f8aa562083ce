import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { startFaultProxy, type FaultProxy } from './fault-proxy.ts';
import { pushImage, skopeo, writeOciImage, type TestImage } from './oci-image.ts';
import { httpRequest, makeTempDir } from './process.ts';
import { startRegistry, type RegistryServer } from './registry.ts';

let registry: RegistryServer;
let proxy: FaultProxy;
let image: TestImage;
let blobUrl: string;

before(async () => {
  registry = await startRegistry();
  image = await writeOciImage(await makeTempDir('img'), { layerSizes: [256 * 1024] });
  await pushImage(image, registry.ref('library/test', 'v1'));
  proxy = await startFaultProxy({ target: registry.url });
  blobUrl = `${proxy.url}/v2/library/test/blobs/${image.layers[0]!.digest}`;
});

after(async () => {
  await proxy.stop();
  await registry.stop();
});

const sha256 = (bytes: Buffer): string => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

test('without rules the proxy is transparent: skopeo pulls through it', async () => {
  const result = await skopeo(['copy', '--src-tls-verify=false', `docker://${proxy.host}/library/test:v1`, `dir:${await makeTempDir('pulled')}`]);
  assert.equal(result.code, 0, result.stderr);
  assert.equal(proxy.countRequests({ method: 'GET', path: /\/blobs\//, status: 200 }), 2);
});

test('a status rule answers 429 with a registry error the given number of times, then forwards again', async () => {
  const rule = proxy.addRule({ path: /\/manifests\//, status: 429, headers: { 'retry-after': '1' }, times: 1 });
  const limited = await httpRequest(`${proxy.url}/v2/library/test/manifests/v1`, { headers: { accept: image.manifestMediaType } });
  assert.equal(limited.status, 429);
  assert.equal(limited.headers['retry-after'], '1');
  assert.equal(JSON.parse(limited.body.toString()).errors[0].code, 'TOOMANYREQUESTS');
  const ok = await httpRequest(`${proxy.url}/v2/library/test/manifests/v1`, { headers: { accept: image.manifestMediaType } });
  assert.equal(ok.status, 200);
  assert.equal(rule.hits(), 1);
  rule.remove();
});

test('delay, reset and hang rules', async () => {
  const delay = proxy.addRule({ path: /^\/v2\/$/, delayMs: 300, times: 1 });
  const started = Date.now();
  assert.equal((await httpRequest(`${proxy.url}/v2/`)).status, 200);
  assert.ok(Date.now() - started >= 300);
  delay.remove();

  const reset = proxy.addRule({ path: /^\/v2\/$/, reset: true, times: 1 });
  await assert.rejects(httpRequest(`${proxy.url}/v2/`), /socket hang up|ECONNRESET/);
  reset.remove();

  const hang = proxy.addRule({ path: /^\/v2\/$/, hang: true, times: 1 });
  await assert.rejects(httpRequest(`${proxy.url}/v2/`, { timeoutMs: 300 }), /timed out/);
  hang.remove();
});

test('truncate and corrupt rules break blob bodies', async () => {
  const layer = image.layers[0]!;
  const truncate = proxy.addRule({ path: /\/blobs\//, truncateAfterBytes: 1000, times: 1 });
  const cut = await httpRequest(blobUrl).then((r) => r.body.length, () => -1);
  assert.ok(cut === -1 || cut === 1000, `a truncated body must not arrive whole (got ${cut})`);
  truncate.remove();

  const damage = proxy.addRule({ path: /\/blobs\//, corruptByteAt: 5000, times: 1 });
  const corrupted = await httpRequest(blobUrl);
  assert.equal(corrupted.status, 200);
  assert.equal(corrupted.body.length, layer.size);
  assert.notEqual(sha256(corrupted.body), layer.digest);
  damage.remove();

  assert.equal(sha256((await httpRequest(blobUrl)).body), layer.digest);
});

test('bytesPerSecond throttles a body', async () => {
  const rule = proxy.addRule({ path: /\/blobs\//, bytesPerSecond: 512 * 1024, times: 1 });
  const started = Date.now();
  const res = await httpRequest(blobUrl);
  const elapsed = Date.now() - started;
  assert.equal(res.body.length, image.layers[0]!.size);
  assert.ok(elapsed >= 400 && elapsed < 3_000, `256 KiB at 512 KiB/s took ${elapsed}ms`);
  rule.remove();
});

test('setDown refuses or resets connections until it is set back up on the same port', async () => {
  await proxy.setDown('refuse');
  await assert.rejects(httpRequest(`${proxy.url}/v2/`), /ECONNREFUSED/);
  await proxy.setDown('reset');
  await assert.rejects(httpRequest(`${proxy.url}/v2/`), /socket hang up|ECONNRESET/);
  await proxy.setDown(false);
  assert.equal((await httpRequest(`${proxy.url}/v2/`)).status, 200);
});

test('a stall rule sends the first bytes, then nothing, with the connection left open', async () => {
  const stall = proxy.addRule({ path: /\/blobs\//, stallAfterBytes: 10_000, times: 1 });
  const received = await new Promise<number>((resolve, reject) => {
    let bytes = 0;
    const req = http.get(blobUrl, { agent: false }, (res) => res.on('data', (b: Buffer) => (bytes += b.length)));
    // an idle timeout: it fires only because the body stopped coming while the connection stayed open
    req.setTimeout(500, () => {
      req.destroy();
      resolve(bytes);
    });
    req.on('error', (error) => (bytes > 0 ? undefined : reject(error)));
  });
  assert.equal(received, 10_000);
  assert.equal(stall.hits(), 1);
  assert.equal(proxy.countRequests({ fault: 'stall' }), 1);
  const whole = await httpRequest(blobUrl);
  assert.equal(sha256(whole.body), image.layers[0]!.digest, 'later requests are forwarded whole');
  stall.remove();
});
