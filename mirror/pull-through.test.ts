// The pull-through cache against a real distribution registry, with skopeo as the client.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import type net from 'node:net';
import path from 'node:path';
import { pushImage, readBlob, skopeo, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, sleep } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { startTestMirror, temporaryFiles, type TestMirror } from '../test/harness/mirror.ts';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { retryAfterMs } from './cache.ts';
import { nextPageLink } from './routes.ts';

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

async function copyThrough(mirror: TestMirror, ref: string): Promise<string> {
  const dest = await makeTempDir('skopeo-dest');
  const result = await skopeo(['copy', '--src-tls-verify=false', '--retry-times=0', `docker://${mirror.host}/${ref}`, `oci:${dest}:x`]);
  assert.equal(result.code, 0, `skopeo copy ${ref} through the mirror failed:\n${result.stderr}`);
  return dest;
}

const blobGets = (registry: RegistryServer) => registry.countRequests({ method: 'GET', path: /\/blobs\/sha256:/, status: 200 });
const manifestRequests = (registry: RegistryServer, method: string) => registry.countRequests({ method, path: /\/manifests\// });

describe('pull-through cache', () => {
  let upstream: RegistryServer;
  let image: TestImage;

  before(async () => {
    upstream = await startRegistry();
    image = await writeOciImage(await makeTempDir('image'), { tag: 'v1', layerSizes: [300_000, 50_000], seed: 'pull-through' });
    await pushImage(image, upstream.ref('library/app', 'v1'));
  });
  after(cleanupAll);

  test('first pull fetches from the upstream, the second is served from the store', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      const before = await blobGets(upstream);
      await copyThrough(mirror, 'library/app:v1');
      const afterFirst = await blobGets(upstream);
      assert.equal(afterFirst - before, image.layers.length + 1, 'each layer and the config fetched once');
      await copyThrough(mirror, 'app:v1'); // Docker Hub short name: library/ added
      assert.equal(await blobGets(upstream), afterFirst, 'second pull made no upstream blob GET');
    } finally {
      await mirror.stop();
    }
  });

  test('the store gives other users of the machine no access: what it writes is 0640 and 0750, and an older store\'s open top directories are closed at start', async () => {
    const storagePath = path.join(await makeTempDir('store-modes'), 'data');
    await mkdir(path.join(storagePath, 'blobs'), { recursive: true, mode: 0o755 });
    await chmod(path.join(storagePath, 'blobs'), 0o755); // as a version before the modes made it
    await mkdir(path.join(storagePath, 'manifests'));
    await chmod(path.join(storagePath, 'manifests'), 0o2775); // set-group-ID, as kubelet leaves a volume with fsGroup
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath });
    try {
      await copyThrough(mirror, 'library/app:v1');
      const open: string[] = [];
      let files = 0;
      const walk = async (dir: string): Promise<void> => {
        for (const entry of await readdir(dir, { withFileTypes: true })) {
          const full = path.join(dir, entry.name);
          const { mode } = await stat(full);
          if (mode & 0o007) open.push(`${(mode & 0o777).toString(8)} ${path.relative(storagePath, full)}`);
          if (entry.isDirectory()) await walk(full);
          else files++;
        }
      };
      await walk(storagePath);
      assert.ok(files >= image.layers.length + 2, `${files} files written`);
      assert.equal((await stat(path.join(storagePath, 'manifests'))).mode & 0o7777, 0o2750, 'the set-group-ID bit stays');
      assert.equal((await stat(path.join(storagePath, 'manifests', 'sha256'))).mode & 0o2000, 0o2000, 'and what is made below inherits it');
      assert.deepEqual(open, [], 'nothing readable by others');
    } finally {
      await mirror.stop();
    }
  });

  test('an upstream that answers HEAD with 405 (as quay.io does): content stored under one repository is confirmed for another by a GET, and an unchanged tag counts as revalidated, not moved', async () => {
    await pushImage(image, upstream.ref('org/app', 'v1'));
    await pushImage(image, upstream.ref('org/app2', 'v1'));
    const proxy = await startFaultProxy({ target: upstream.url });
    proxy.addRule({ method: 'HEAD', status: 405 });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'quay.io', url: proxy.url, tagTTL: '0s' }] });
    try {
      await copyThrough(mirror, 'org/app:v1');
      const layer = image.layers[0]!.digest;
      for (const path of [`/v2/org/app2/manifests/${image.manifestDigest}`, `/v2/org/app2/blobs/${layer}`]) {
        for (const method of ['GET', 'HEAD']) {
          const res = await httpRequest(`${mirror.url}${path}`, { method, headers: { accept: image.manifestMediaType } });
          assert.equal(res.status, 200, `${method} ${path}: ${res.body.toString()}`);
        }
      }
      assert.ok(proxy.countRequests({ method: 'GET', path: /^\/v2\/org\/app2\/manifests\/sha256:/ }) >= 1, 'confirmed by a GET');
      const revalidated = async () => Number(/regmirror_cache_requests_total\{kind="manifest",result="revalidated"\} (\d+)/.exec((await httpRequest(`${mirror.url}/metrics`)).body.toString())?.[1] ?? 0);
      const before = await revalidated();
      const res = await httpRequest(`${mirror.url}/v2/org/app/manifests/v1`, { headers: { accept: image.manifestMediaType } });
      assert.equal(res.status, 200);
      assert.equal(res.headers['docker-content-digest'], image.digest);
      assert.equal(await revalidated(), before + 1, 'the tag had not moved');
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('a manifest compressed on the way (Content-Encoding gzip, unasked) is decoded and stored as the upstream has it; the mirror asks for identity', async () => {
    const proxy = await startFaultProxy({ target: upstream.url });
    proxy.addRule({ method: 'GET', path: /\/manifests\//, gzipBody: true });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    try {
      for (const reference of ['v1', image.digest]) {
        const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/${reference}`, { headers: { accept: image.mediaType } });
        assert.equal(res.status, 200, `${reference}: ${res.body.toString()}`);
        assert.equal(sha256(res.body), image.digest);
        assert.equal(res.headers['content-encoding'], undefined);
      }
      assert.ok(proxy.countRequests({ fault: 'gzip' }) >= 1, 'the proxy compressed');
      const asked = proxy.requests().filter((r) => r.path.startsWith('/v2/library/'));
      assert.ok(asked.length > 0 && asked.every((r) => r.acceptEncoding === 'identity'), JSON.stringify(asked.map((r) => r.acceptEncoding)));
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('manifests and blobs carry the headers a registry sends, for GET and HEAD, by tag and by digest', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      const manifestBytes = await readBlob(image, image.manifestDigest);
      for (const reference of ['v1', image.manifestDigest]) {
        for (const method of ['GET', 'HEAD']) {
          const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/${reference}`, { method, headers: { accept: image.manifestMediaType } });
          assert.equal(res.status, 200);
          assert.equal(res.headers['docker-content-digest'], image.manifestDigest);
          assert.equal(res.headers['content-type'], image.manifestMediaType);
          assert.equal(res.headers['content-length'], String(manifestBytes.length));
          if (method === 'GET') assert.deepEqual(res.body, manifestBytes);
        }
      }
      const layer = image.layers[0]!;
      const layerBytes = await readBlob(image, layer.digest);
      const head = await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, { method: 'HEAD' });
      assert.equal(head.status, 200);
      assert.equal(head.headers['content-length'], String(layer.size));
      assert.equal(head.headers['docker-content-digest'], layer.digest);
      const get = await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, { timeoutMs: 20_000 });
      assert.equal(get.status, 200);
      assert.equal(get.headers['content-type'], 'application/octet-stream');
      assert.equal(sha256(get.body), layer.digest);
      assert.deepEqual(get.body, layerBytes);
    } finally {
      await mirror.stop();
    }
  });

  test('If-None-Match with the ETag a manifest or blob is sent with gets 304 Not Modified without a body, for GET and HEAD; a blob the mirror lacks is not fetched for it', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      const layer = image.layers[1]!;
      const blobUrl = `${mirror.url}/v2/library/app/blobs/${layer.digest}`;
      const blobGets = () => upstream.countRequests({ method: 'GET', path: new RegExp(`/blobs/${layer.digest}$`) });
      const before = await blobGets();
      for (const method of ['GET', 'HEAD']) {
        const res = await httpRequest(blobUrl, { method, headers: { 'if-none-match': `"${layer.digest}"` } });
        assert.equal(res.status, 304, `${method} blob`);
        assert.equal(res.body.length, 0);
        assert.equal(res.headers.etag, `"${layer.digest}"`);
        assert.equal(res.headers['docker-content-digest'], layer.digest);
      }
      assert.equal(await blobGets(), before, 'the client holds the bytes: nothing fetched for it');
      assert.equal((await httpRequest(blobUrl, { headers: { 'if-none-match': '*' } })).status, 304, '* and a blob that exists');
      assert.equal((await httpRequest(`${mirror.url}/v2/library/app/blobs/sha256:${'1'.repeat(64)}`, { headers: { 'if-none-match': '*' } })).status, 404, '* and a blob nowhere');
      assert.equal((await httpRequest(`${mirror.url}/v2/library/app/blobs/sha256:${'1'.repeat(64)}`, { headers: { 'if-none-match': `"sha256:${'1'.repeat(64)}"` } })).status, 404, 'its own ETag named, and a blob nowhere');
      const sent = await httpRequest(blobUrl, { headers: { 'if-none-match': `"${image.configDigest}"` } });
      assert.equal(sent.status, 200, 'another ETag: the blob is sent');
      assert.equal(sha256(sent.body), layer.digest);

      const etag = `"${image.manifestDigest}"`;
      for (const reference of ['v1', image.manifestDigest]) {
        const url = `${mirror.url}/v2/library/app/manifests/${reference}`;
        assert.equal((await httpRequest(url, { headers: { accept: image.manifestMediaType } })).headers.etag, etag);
        for (const method of ['GET', 'HEAD']) {
          for (const ifNoneMatch of [etag, `W/${etag}`, `"sha256:${'2'.repeat(64)}", ${etag}`, '*']) {
            const res = await httpRequest(url, { method, headers: { accept: image.manifestMediaType, 'if-none-match': ifNoneMatch } });
            assert.equal(res.status, 304, `${method} ${reference}, If-None-Match: ${ifNoneMatch}`);
            assert.equal(res.body.length, 0);
            assert.equal(res.headers.etag, etag);
            assert.equal(res.headers['docker-content-digest'], image.manifestDigest);
          }
        }
        const changed = await httpRequest(url, { headers: { accept: image.manifestMediaType, 'if-none-match': `"sha256:${'2'.repeat(64)}"` } });
        assert.equal(changed.status, 200, 'another ETag: the manifest is sent');
        assert.equal(sha256(changed.body), image.manifestDigest);
      }
    } finally {
      await mirror.stop();
    }
  });

  test('Range requests get 206 with the right bytes, cold and warm; an impossible range gets 416', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      const layer = image.layers[0]!;
      const bytes = await readBlob(image, layer.digest);
      for (const round of ['cold', 'warm']) {
        const res = await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, { headers: { range: 'bytes=1000-1999' } });
        assert.equal(res.status, 206, round);
        assert.equal(res.headers['content-range'], `bytes 1000-1999/${layer.size}`);
        assert.deepEqual(res.body, bytes.subarray(1000, 2000), round);
      }
      const suffix = await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, { headers: { range: 'bytes=-10' } });
      assert.deepEqual(suffix.body, bytes.subarray(bytes.length - 10));
      const bad = await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, { headers: { range: `bytes=${layer.size}-` } });
      assert.equal(bad.status, 416);
      assert.equal(bad.headers['content-range'], `bytes */${layer.size}`);
    } finally {
      await mirror.stop();
    }
  });

  test('a tag that moved upstream is followed when tagTTL is 0', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url, tagTTL: '0s' }] });
    try {
      const first = await writeOciImage(await makeTempDir('moving'), { tag: 'moving', seed: 'moving-1' });
      const second = await writeOciImage(await makeTempDir('moving'), { tag: 'moving', seed: 'moving-2' });
      await pushImage(first, upstream.ref('library/moving', 'moving'));
      const a = await httpRequest(`${mirror.url}/v2/library/moving/manifests/moving`);
      assert.equal(a.headers['docker-content-digest'], first.manifestDigest);
      await pushImage(second, upstream.ref('library/moving', 'moving'));
      const b = await httpRequest(`${mirror.url}/v2/library/moving/manifests/moving`);
      assert.equal(b.headers['docker-content-digest'], second.manifestDigest);
    } finally {
      await mirror.stop();
    }
  });

  test('a tag that moved while the upstream refuses manifest GETs (Docker Hub rate limits GETs, not HEADs) is served from the stored copy, and after a 429 the upstream is left alone until its Retry-After', async () => {
    let now = 5_000_000;
    const proxy = await startFaultProxy({ target: upstream.url });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url, tagTTL: '0s' }], now: () => now });
    try {
      const first = await writeOciImage(await makeTempDir('limited'), { tag: 'latest', seed: 'limited-1' });
      const second = await writeOciImage(await makeTempDir('limited'), { tag: 'latest', seed: 'limited-2' });
      await pushImage(first, upstream.ref('library/limited', 'latest'));
      const url = `${mirror.url}/v2/library/limited/manifests/latest`;
      assert.equal((await httpRequest(url)).headers['docker-content-digest'], first.manifestDigest);
      await pushImage(second, upstream.ref('library/limited', 'latest'));

      const failing = proxy.addRule({ method: 'GET', path: /\/manifests\//, status: 503 });
      const whileFailing = await httpRequest(url);
      assert.equal(whileFailing.status, 200, whileFailing.body.toString());
      assert.equal(whileFailing.headers['docker-content-digest'], first.manifestDigest);
      failing.remove();

      const limited = proxy.addRule({ method: 'GET', path: /\/manifests\//, status: 429, headers: { 'retry-after': '60' } });
      proxy.resetRequests();
      for (const method of ['GET', 'HEAD'] as const) {
        const res = await httpRequest(url, { method });
        assert.equal(res.status, 200, `${method}: ${res.body.toString()}`);
        assert.equal(res.headers['docker-content-digest'], first.manifestDigest, method);
      }
      assert.deepEqual(proxy.requests().map((r) => `${r.method} ${r.status}`), ['HEAD 200', 'GET 429'], 'held off after the 429');
      limited.remove();

      now += 61_000;
      assert.equal((await httpRequest(url)).headers['docker-content-digest'], second.manifestDigest, 'followed once Retry-After has passed');
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('within tagTTL a tag is served without asking the upstream; after it, one HEAD revalidates', async () => {
    let now = 1_000_000;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url, tagTTL: '30s' }], now: () => now });
    try {
      await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`);
      const gets = await manifestRequests(upstream, 'GET');
      const heads = await manifestRequests(upstream, 'HEAD');
      for (let i = 0; i < 5; i++) assert.equal((await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200);
      assert.equal(await manifestRequests(upstream, 'HEAD'), heads, 'no HEAD within tagTTL');
      now += 31_000;
      assert.equal((await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`)).status, 200);
      assert.equal(await manifestRequests(upstream, 'HEAD'), heads + 1, 'one HEAD after tagTTL');
      assert.equal(await manifestRequests(upstream, 'GET'), gets, 'unchanged tag: no manifest GET');
    } finally {
      await mirror.stop();
    }
  });

  test('manifests by digest are never re-asked upstream', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      await httpRequest(`${mirror.url}/v2/library/app/manifests/${image.manifestDigest}`);
      const count = (await manifestRequests(upstream, 'GET')) + (await manifestRequests(upstream, 'HEAD'));
      for (let i = 0; i < 3; i++) await httpRequest(`${mirror.url}/v2/library/app/manifests/${image.manifestDigest}`);
      assert.equal((await manifestRequests(upstream, 'GET')) + (await manifestRequests(upstream, 'HEAD')), count);
    } finally {
      await mirror.stop();
    }
  });

  test('8 concurrent cold clients cause one upstream GET of the blob and all get the right bytes', async () => {
    const big = await writeOciImage(await makeTempDir('big'), { tag: 'big', layerSizes: [8 * 1024 * 1024], seed: 'concurrent' });
    await pushImage(big, upstream.ref('library/big', 'big'));
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      const layer = big.layers[0]!;
      const path = new RegExp(`/blobs/${layer.digest}$`);
      const before = await upstream.countRequests({ method: 'GET', path });
      const responses = await Promise.all(Array.from({ length: 8 }, () => httpRequest(`${mirror.url}/v2/library/big/blobs/${layer.digest}`, { timeoutMs: 30_000 })));
      for (const res of responses) {
        assert.equal(res.status, 200);
        assert.equal(sha256(res.body), layer.digest);
      }
      assert.equal((await upstream.countRequests({ method: 'GET', path })) - before, 1);
    } finally {
      await mirror.stop();
    }
  });

  test('several upstreams in one mirror are chosen by ?ns= or a registry prefix in the path, the default takes requests without either', async () => {
    const ghcr = await startRegistry();
    const other = await writeOciImage(await makeTempDir('ghcr'), { tag: 'v2', seed: 'ghcr-image' });
    await pushImage(other, ghcr.ref('org/tool', 'v2'));
    const mirror = await startTestMirror({
      upstreams: [{ registry: 'docker.io', url: upstream.url }, { registry: 'ghcr.io', url: ghcr.url }, { registry: 'registry.example.com:5000', url: ghcr.url }],
      default: 'docker.io',
    });
    try {
      const fromGhcr = await httpRequest(`${mirror.url}/v2/org/tool/manifests/v2?ns=ghcr.io`);
      assert.equal(fromGhcr.headers['docker-content-digest'], other.manifestDigest);
      const fromHub = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1?ns=docker.io`);
      assert.equal(fromHub.headers['docker-content-digest'], image.manifestDigest);
      const noNs = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`);
      assert.equal(noNs.headers['docker-content-digest'], image.manifestDigest);
      const prefixed = await httpRequest(`${mirror.url}/v2/ghcr.io/org/tool/manifests/v2`);
      assert.equal(prefixed.headers['docker-content-digest'], other.manifestDigest);
      // a registry with a port: a path has no ':', so the port follows '__'
      const ported = await httpRequest(`${mirror.url}/v2/registry.example.com__5000/org/tool/manifests/v2`);
      assert.equal(ported.status, 200, ported.body.toString());
      assert.equal(ported.headers['docker-content-digest'], other.manifestDigest);
      const notOnHub = await httpRequest(`${mirror.url}/v2/org/tool/manifests/v2`);
      assert.equal(notOnHub.status, 404);
      const unknown = await httpRequest(`${mirror.url}/v2/org/tool/manifests/v2?ns=quay.io`);
      assert.equal(unknown.status, 404);
      assert.equal(JSON.parse(unknown.body.toString()).errors[0].code, 'NAME_UNKNOWN');
      const tags = await httpRequest(`${mirror.url}/v2/org/tool/tags/list?ns=ghcr.io`);
      assert.deepEqual(JSON.parse(tags.body.toString()), { name: 'org/tool', tags: ['v2'] });
    } finally {
      await mirror.stop();
      await ghcr.stop();
    }
  });

  test('with the upstream stopped, stored tags and blobs are still served, and a mirror restarted meanwhile starts and serves them', async () => {
    const own = await startRegistry();
    await pushImage(image, own.ref('library/app', 'v1'));
    const storagePath = path.join(await makeTempDir('offline-store'), 'data');
    const first = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: own.url }], storagePath });
    await copyThrough(first, 'library/app:v1');
    await own.stop();
    try {
      await copyThrough(first, 'library/app:v1');
      const metrics = (await httpRequest(`${first.url}/metrics`)).body.toString();
      assert.match(metrics, /regmirror_cache_requests_total\{kind="manifest",result="stale"\} [1-9]/);
      await first.stop();
      const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: own.url }], storagePath });
      try {
        await copyThrough(second, 'library/app:v1');
        const missing = await httpRequest(`${second.url}/v2/library/other/manifests/v1`);
        assert.equal(missing.status, 502);
        assert.equal(JSON.parse(missing.body.toString()).errors[0].code, 'UNAVAILABLE');
      } finally {
        await second.stop();
      }
    } finally {
      await first.stop().catch(() => undefined);
    }
  });

  test('a stored manifest whose file no longer matches its digest is not served: after a restart it is fetched from the upstream again, by tag and by digest, and stored right', async () => {
    const storagePath = path.join(await makeTempDir('corrupt-manifest'), 'data');
    const options = { upstreams: [{ registry: 'docker.io', url: upstream.url, tagTTL: '1h' }], storagePath };
    const hex = image.manifestDigest.slice('sha256:'.length);
    const file = path.join(storagePath, 'manifests/sha256', hex.slice(0, 2), hex);
    const first = await startTestMirror(options);
    assert.equal((await httpRequest(`${first.url}/v2/library/app/manifests/v1`)).status, 200);
    await first.stop();
    for (const reference of ['v1', image.manifestDigest]) {
      await writeFile(file, '{not json');
      const mirror = await startTestMirror(options);
      try {
        await mirror.mirror.indexed;
        const gets = await manifestRequests(upstream, 'GET');
        const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/${reference}`, { headers: { accept: image.manifestMediaType } });
        assert.equal(res.status, 200, reference);
        assert.equal(sha256(res.body), image.manifestDigest, `${reference}: the manifest, not the file's bytes`);
        assert.equal(res.headers['docker-content-digest'], image.manifestDigest);
        assert.equal(await manifestRequests(upstream, 'GET'), gets + 1, `${reference}: fetched again`);
        assert.equal(sha256(await readFile(file)), image.manifestDigest, `${reference}: stored right`);
        assert.equal(mirror.mirror.evictor.bytes, image.manifestSize, `${reference}: the store's size counts the manifest fetched again, not the file removed`);
      } finally {
        await mirror.stop();
      }
    }
  });

  test('an upstream serving corrupted bytes gets no complete 200 to any client, and nothing is stored', async () => {
    const own = await startRegistry();
    const victim = await writeOciImage(await makeTempDir('corrupt'), { tag: 'v1', layerSizes: [2 * 1024 * 1024], seed: 'corrupt' });
    await pushImage(victim, own.ref('library/corrupt', 'v1'));
    const layer = victim.layers[0]!;
    // distribution serves the data file as it is: flip one byte in its storage
    const hex = layer.digest.slice('sha256:'.length);
    const data = path.join(own.storageDir, 'docker/registry/v2/blobs/sha256', hex.slice(0, 2), hex, 'data');
    const bytes = await readFile(data);
    bytes[bytes.length >> 1] = bytes[bytes.length >> 1]! ^ 0xff;
    await writeFile(data, bytes);
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: own.url }] });
    try {
      const results = await Promise.allSettled(Array.from({ length: 3 }, () => httpRequest(`${mirror.url}/v2/library/corrupt/blobs/${layer.digest}`, { timeoutMs: 20_000 })));
      for (const result of results) {
        if (result.status === 'fulfilled') {
          const complete = result.value.status === 200 && result.value.body.length === layer.size;
          assert.ok(!complete, 'a client received the whole corrupted blob with 200');
        }
      }
      const stored = await readdir(path.join(mirror.storagePath, 'blobs/sha256', hex.slice(0, 2))).catch(() => [] as string[]);
      assert.ok(!stored.includes(hex), 'corrupted blob was stored');
      assert.deepEqual(await temporaryFiles(mirror.storagePath), [], 'no temporary file left');
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      assert.match(metrics, /regmirror_fetch_failures_total\{reason="digest"\} 1/);
    } finally {
      await mirror.stop();
      await own.stop();
    }
  });

  test('tags/list: an unknown repository is NAME_UNKNOWN, and the next-page Link leads back to the same registry through this mirror', async () => {
    const ghcr = await startRegistry();
    const tool = await writeOciImage(await makeTempDir('paged'), { tag: 'g1', seed: 'paged-ghcr' });
    await pushImage(tool, ghcr.ref('org/tool', 'g1'));
    await pushImage(tool, ghcr.ref('org/tool', 'g2'));
    await pushImage(image, upstream.ref('org/tool', 'hub-only')); // same name on the default registry
    const proxy = await startFaultProxy({ target: ghcr.url });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }, { registry: 'ghcr.io', url: proxy.url }], default: 'docker.io' });
    try {
      const unknown = await httpRequest(`${mirror.url}/v2/library/nope/tags/list`);
      assert.equal(unknown.status, 404);
      assert.equal(JSON.parse(unknown.body.toString()).errors[0].code, 'NAME_UNKNOWN');

      // distribution 2.8 answers without paging; the proxy plays an upstream that pages
      const paged = proxy.addRule({
        method: 'GET', path: /\/tags\/list$/, times: 2, status: 200,
        body: JSON.stringify({ name: 'org/tool', tags: ['g1'] }), headers: { link: '</v2/org/tool/tags/list?last=g1&n=1>; rel="next"' },
      });
      const prefixed = await httpRequest(`${mirror.url}/v2/ghcr.io/org/tool/tags/list?n=1`);
      assert.equal(prefixed.headers.link, '</v2/ghcr.io/org/tool/tags/list?n=1&last=g1>; rel="next"');
      const viaNs = await httpRequest(`${mirror.url}/v2/org/tool/tags/list?n=1&ns=ghcr.io`);
      assert.equal(viaNs.headers.link, '</v2/org/tool/tags/list?n=1&last=g1&ns=ghcr.io>; rel="next"');
      paged.remove();
      proxy.resetRequests();
      const next = /^<([^>]+)>/.exec(String(viaNs.headers.link))![1]!;
      const page2 = await httpRequest(`${mirror.url}${next}`);
      assert.equal(page2.status, 200);
      // distribution 2.8 itself lists every tag whatever the paging; what matters is whose
      assert.deepEqual(JSON.parse(page2.body.toString()).tags, ['g1', 'g2'], 'ghcr.io\'s tags, not the default registry\'s');
      assert.deepEqual(proxy.requests().map((r) => [r.path, r.query]), [['/v2/org/tool/tags/list', 'n=1&last=g1']], 'the paging went on at ghcr.io');
    } finally {
      await mirror.stop();
      await proxy.stop();
      await ghcr.stop();
    }
  });

  test('tags/list from stored tags while the upstream is down is paged as the spec pages (n, last, a next-page Link)', async () => {
    for (const tag of ['p0', 'p1', 'p2', 'p3']) await pushImage(image, upstream.ref('org/pag', tag));
    const proxy = await startFaultProxy({ target: upstream.url });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    try {
      for (const tag of ['p3', 'p1', 'p0', 'p2']) assert.equal((await httpRequest(`${mirror.url}/v2/org/pag/manifests/${tag}`, { headers: { accept: image.mediaType } })).status, 200);
      await proxy.setDown('refuse');
      const list = async (query: string) => {
        const res = await httpRequest(`${mirror.url}/v2/org/pag/tags/list${query}`);
        assert.equal(res.status, 200, res.body.toString());
        return { tags: (JSON.parse(res.body.toString()) as { tags: string[] }).tags, link: res.headers.link };
      };
      assert.deepEqual(await list(''), { tags: ['p0', 'p1', 'p2', 'p3'], link: undefined });
      const first = await list('?n=2');
      assert.deepEqual(first, { tags: ['p0', 'p1'], link: '</v2/org/pag/tags/list?n=2&last=p1>; rel="next"' });
      assert.deepEqual(await list('?n=2&last=p1'), { tags: ['p2', 'p3'], link: undefined });
      assert.deepEqual(await list('?last=p2'), { tags: ['p3'], link: undefined });
      assert.deepEqual(await list('?n=0'), { tags: [], link: undefined });
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('a manifest with a Content-Encoding the mirror cannot decode is 400 MANIFEST_INVALID, and the mirror goes on serving', async () => {
    const proxy = await startFaultProxy({ target: upstream.url });
    proxy.addRule({ method: 'GET', path: /\/manifests\/v1$/, headers: { 'content-encoding': 'zstd' } });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    try {
      const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`, { headers: { accept: image.mediaType } });
      assert.equal(res.status, 400, res.body.toString());
      assert.match(JSON.parse(res.body.toString()).errors[0].message, /Content-Encoding zstd/);
      await sleep(200); // an unheard 'error' event from the destroyed body would come now
      assert.equal((await httpRequest(`${mirror.url}/v2/library/app/manifests/${image.digest}`, { headers: { accept: image.mediaType } })).status, 200);
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('a stored tag is served when the upstream answers its GET with a page that is no manifest (a proxy\'s HTML), as in any outage', async () => {
    const proxy = await startFaultProxy({ target: upstream.url });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url, tagTTL: '0s' }] });
    try {
      assert.equal((await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`, { headers: { accept: image.mediaType } })).status, 200);
      proxy.addRule({ method: 'HEAD', status: 405 });
      proxy.addRule({ method: 'GET', path: /\/manifests\/v1$/, status: 200, headers: { 'content-type': 'text/html' }, body: '<html><body>down for maintenance</body></html>' });
      const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`, { headers: { accept: image.mediaType } });
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(res.headers['docker-content-digest'], image.digest);
      const cold = await httpRequest(`${mirror.url}/v2/library/other/manifests/v1`, { headers: { accept: image.mediaType } });
      assert.equal(cold.status, 502, 'a tag not stored: the upstream failed');
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('a manifest of a type the mirror does not serve (a custom artifact type) is 404 MANIFEST_UNKNOWN naming the type, not an outage, and nothing is stored', async () => {
    const proxy = await startFaultProxy({ target: upstream.url });
    const custom = 'application/vnd.example.custom.manifest.v1+json';
    proxy.addRule({ path: /\/manifests\/custom$/, status: 200, headers: { 'content-type': custom }, body: JSON.stringify({ schemaVersion: 2, mediaType: custom }) });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    try {
      for (const method of ['GET', 'HEAD']) {
        const res = await httpRequest(`${mirror.url}/v2/library/app/manifests/custom`, { method, headers: { accept: custom } });
        assert.equal(res.status, 404, `${method}: ${res.body.toString()}`);
        if (method === 'GET') {
          const error = JSON.parse(res.body.toString()).errors[0];
          assert.equal(error.code, 'MANIFEST_UNKNOWN');
          assert.match(error.message, /application\/vnd\.example\.custom\.manifest\.v1\+json/);
        }
      }
      assert.deepEqual(await readdir(path.join(mirror.storagePath, 'manifests', 'sha256')).catch(() => []), [], 'nothing stored');
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test('referrers: passed on from an upstream that has the API (filter, next-page Link back through the mirror); an upstream without it (distribution 2.8) or away gets 404 UNSUPPORTED, so clients use the tag schema', async () => {
    // distribution 2.8 has no referrers API; this scripted server plays an upstream that has one
    // (distribution 3, ghcr.io): a fake, for that endpoint only.
    const subject = image.manifestDigest;
    const index = JSON.stringify({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: `sha256:${'5'.repeat(64)}`, size: 512, artifactType: 'application/vnd.example.signature' }],
    });
    const asked: string[] = [];
    const scripted = http.createServer((req, res) => {
      const url = new URL(req.url ?? '/', 'http://x');
      if (url.pathname !== `/v2/org/app/referrers/${subject}`) return void res.writeHead(404).end();
      asked.push(url.search);
      const filtered = url.searchParams.has('artifactType');
      res.writeHead(200, {
        'content-type': 'application/vnd.oci.image.index.v1+json',
        link: `</v2/org/app/referrers/${subject}?artifactType=application%2Fvnd.example.signature&page=2>; rel="next"`,
        ...(filtered ? { 'oci-filters-applied': 'artifactType' } : {}),
      });
      res.end(index);
    });
    await new Promise<void>((resolve) => scripted.listen(0, '127.0.0.1', resolve));
    const ghcrUrl = `http://127.0.0.1:${(scripted.address() as net.AddressInfo).port}`;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }, { registry: 'ghcr.io', url: ghcrUrl }], default: 'docker.io' });
    try {
      const res = await httpRequest(`${mirror.url}/v2/org/app/referrers/${subject}?ns=ghcr.io&artifactType=application/vnd.example.signature`);
      assert.equal(res.status, 200, res.body.toString());
      assert.equal(res.body.toString(), index);
      assert.equal(res.headers['content-type'], 'application/vnd.oci.image.index.v1+json');
      assert.equal(res.headers['oci-filters-applied'], 'artifactType');
      assert.equal(res.headers.link, `</v2/org/app/referrers/${subject}?artifactType=application%2Fvnd.example.signature&page=2&ns=ghcr.io>; rel="next"`);
      assert.deepEqual(asked, ['?artifactType=application%2Fvnd.example.signature'], 'the filter went to the upstream');
      const next = /^<([^>]+)>/.exec(String(res.headers.link))![1]!;
      assert.equal((await httpRequest(`${mirror.url}${next}`)).status, 200);
      assert.match(asked[1]!, /page=2/);

      const unsupported = async (url: string) => {
        const answer = await httpRequest(`${mirror.url}${url}`);
        assert.equal(answer.status, 404, url);
        assert.equal(JSON.parse(answer.body.toString()).errors[0].code, 'UNSUPPORTED', 'not NAME_UNKNOWN, which oras-go takes for a missing repository');
      };
      await unsupported(`/v2/library/app/referrers/${subject}`);
      scripted.closeAllConnections();
      await new Promise((resolve) => scripted.close(resolve));
      await unsupported(`/v2/org/app/referrers/${subject}?ns=ghcr.io`);
    } finally {
      await mirror.stop();
      if (scripted.listening) await new Promise((resolve) => scripted.close(resolve));
    }
  });

  test('each request is counted once in regmirror_http_requests_total, blob GETs too', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }] });
    try {
      const layer = image.layers[0]!;
      for (let i = 0; i < 3; i++) assert.equal((await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer.digest}`)).status, 200);
      await httpRequest(`${mirror.url}/v2/library/app/manifests/v1`);
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      assert.match(metrics, /regmirror_http_requests_total\{route="blob",method="GET",status="200"\} 3\n/);
      assert.match(metrics, /regmirror_http_requests_total\{route="manifest",method="GET",status="200"\} 1\n/);
    } finally {
      await mirror.stop();
    }
  });

  test('a request whose client gave up before the answer (a slow upstream) is counted once, as none: manifests, blobs, HEADs and 404s alike', async () => {
    const proxy = await startFaultProxy({ target: upstream.url });
    proxy.addRule({ path: /\/(manifests|blobs)\//, delayMs: 1_000 });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    try {
      const layer = image.layers[0]!.digest;
      const given: [string, string, string][] = [
        ['GET', '/v2/library/app/manifests/v1', 'manifest'],
        ['GET', `/v2/library/app/blobs/${layer}`, 'blob'],
        ['GET', `/v2/library/nothere/blobs/${layer}`, 'blob'], // the upstream says 404 once the client has left
        ['HEAD', `/v2/library/app/blobs/${image.configDigest}`, 'blob'],
      ];
      for (const [method, path] of given) await assert.rejects(httpRequest(`${mirror.url}${path}`, { method, headers: { accept: 'application/vnd.oci.image.manifest.v1+json' }, timeoutMs: 200 }), /timed out/);
      await sleep(2_000);
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      const counted = (route: string, method: string) => metrics.split('\n').filter((line) => line.startsWith(`regmirror_http_requests_total{route="${route}",method="${method}"`)).map((line) => line.replace(/^.*status="([^"]+)"\} /, '$1 '));
      assert.deepEqual(counted('manifest', 'GET'), ['none 1']);
      assert.deepEqual(counted('blob', 'GET'), ['none 2']);
      assert.deepEqual(counted('blob', 'HEAD'), ['none 1']);
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });
});

test('Retry-After is read as delta-seconds or an HTTP date, and anything else is ignored', () => {
  const now = Date.parse('2026-11-28T10:00:00Z');
  assert.equal(retryAfterMs('120', now), 120_000);
  assert.equal(retryAfterMs('Sat, 28 Nov 2026 10:05:00 GMT', now), 300_000);
  assert.equal(retryAfterMs('soon', now), undefined);
  assert.equal(retryAfterMs(undefined, now), undefined);
});

test('an upstream\'s next-page Link is rebuilt, pointing at this mirror: other links it carries, and oversized ones, are not passed on', () => {
  assert.equal(nextPageLink('</v2/org/app/tags/list?n=1&last=a>; rel="next"', 'org/app', 'ghcr.io', 'tags/list'), '</v2/org/app/tags/list?n=1&last=a&ns=ghcr.io>; rel="next"');
  assert.equal(
    nextPageLink('</v2/org/app/tags/list?n=1&last=a>; rel="next", <https://evil.example/steal>; rel="next"', 'org/app', undefined, 'tags/list'),
    '</v2/org/app/tags/list?n=1&last=a>; rel="next"',
  );
  assert.equal(nextPageLink(`</v2/org/app/tags/list?n=1&last=${'a'.repeat(5000)}>; rel="next"`, 'org/app', undefined, 'tags/list'), undefined);
  assert.equal(nextPageLink('</v2/org/app/tags/list?n=1&last=a>; rel="prev"', 'org/app', undefined, 'tags/list'), undefined);
  const digest = `sha256:${'1'.repeat(64)}`;
  assert.equal(nextPageLink(`<https://upstream.example/v2/org/app/referrers/${digest}?page=2>; rel="next"; title="x"`, 'org/app', undefined, `referrers/${digest}`), `</v2/org/app/referrers/${digest}?page=2>; rel="next"`);
});
