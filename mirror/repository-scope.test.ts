// Content is stored once by digest, but a repository is only served what its own upstream has:
// a digest cached from one registry or repository must not answer for another that lacks it.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { appendFile, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { pushImage, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, sleep, waitFor } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { startTestMirror, type TestMirror } from '../test/harness/mirror.ts';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const errorCode = (body: Buffer) => (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]!.code;
const ACCEPT = { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' };

/** Fetches an image's manifest and every blob through the mirror, as a runtime pulling it would. */
async function pull(mirror: TestMirror, repository: string, image: TestImage, query = ''): Promise<void> {
  const manifest = await httpRequest(`${mirror.url}/v2/${repository}/manifests/${image.tag}${query}`, { headers: ACCEPT });
  assert.equal(manifest.status, 200, manifest.body.toString());
  for (const blob of [image.configDigest, ...image.layers.map((l) => l.digest)]) {
    const res = await httpRequest(`${mirror.url}/v2/${repository}/blobs/${blob}${query}`, { timeoutMs: 20_000 });
    assert.equal(res.status, 200);
    assert.equal(sha256(res.body), blob);
  }
}

describe('repository scope', () => {
  let hub: RegistryServer;
  let ghcr: RegistryServer;
  let hubImage: TestImage;
  let ghcrImage: TestImage;

  before(async () => {
    [hub, ghcr] = await Promise.all([startRegistry(), startRegistry()]);
    hubImage = await writeOciImage(await makeTempDir('hub-image'), { tag: 'v1', layerSizes: [200_000], seed: 'scope-hub' });
    ghcrImage = await writeOciImage(await makeTempDir('ghcr-image'), { tag: 'v1', layerSizes: [150_000, 20_000], seed: 'scope-ghcr' });
    await pushImage(hubImage, hub.ref('myorg/app', 'v1'));
    await pushImage(hubImage, hub.ref('myorg/copy', 'v1'));
    await pushImage(ghcrImage, ghcr.ref('anyone/tool', 'v1'));
  });
  after(cleanupAll);

  test("content cached from one registry is not served under another registry's repository that lacks it: 404 as from the upstream", async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }, { registry: 'ghcr.io', url: ghcr.url }], default: 'docker.io' });
    try {
      await pull(mirror, 'anyone/tool', ghcrImage, '?ns=ghcr.io');
      // the same digests asked for under a Docker Hub repository, which has none of them
      for (const method of ['GET', 'HEAD'] as const) {
        const manifest = await httpRequest(`${mirror.url}/v2/myorg/app/manifests/${ghcrImage.manifestDigest}`, { method, headers: ACCEPT });
        assert.equal(manifest.status, 404, `${method} manifest`);
        const blob = await httpRequest(`${mirror.url}/v2/myorg/app/blobs/${ghcrImage.layers[0]!.digest}`, { method });
        assert.equal(blob.status, 404, `${method} blob`);
        if (method === 'GET') {
          assert.equal(errorCode(manifest.body), 'MANIFEST_UNKNOWN');
          assert.equal(errorCode(blob.body), 'BLOB_UNKNOWN');
        }
      }
      // and under another repository of the registry it came from, which lacks them too
      const otherRepo = await httpRequest(`${mirror.url}/v2/anyone/else/blobs/${ghcrImage.layers[0]!.digest}?ns=ghcr.io`);
      assert.equal(otherRepo.status, 404);
      // the repository it came from is still served
      await pull(mirror, 'anyone/tool', ghcrImage, '?ns=ghcr.io');
    } finally {
      await mirror.stop();
    }
  });

  test('a repository whose upstream has the same content is served the stored copy after one HEAD per item, without downloading it again', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }] });
    try {
      await pull(mirror, 'myorg/app', hubImage);
      // only myorg/copy's own: a late access-log line of the first pull cannot count against it
      const gets = () => hub.countRequests({ method: 'GET', path: /^\/v2\/myorg\/copy\/blobs\/sha256:/ });
      const heads = (what: RegExp) => hub.countRequests({ method: 'HEAD', path: what });
      const blobHeads = /^\/v2\/myorg\/copy\/blobs\//;
      const manifestHeads = new RegExp(`^/v2/myorg/copy/manifests/${hubImage.manifestDigest}$`);
      const [before, blobHeadsBefore, manifestHeadsBefore] = [await gets(), await heads(blobHeads), await heads(manifestHeads)];
      const manifest = await httpRequest(`${mirror.url}/v2/myorg/copy/manifests/${hubImage.manifestDigest}`, { headers: ACCEPT });
      assert.equal(manifest.status, 200);
      for (const blob of [hubImage.configDigest, ...hubImage.layers.map((l) => l.digest)]) {
        const res = await httpRequest(`${mirror.url}/v2/myorg/copy/blobs/${blob}`);
        assert.equal(res.status, 200);
        assert.equal(sha256(res.body), blob);
      }
      assert.equal(await gets(), before, 'no blob downloaded again');
      assert.equal(before, 0);
      // the manifest, confirmed with a HEAD, vouched for its blobs: none needed a HEAD of its own
      assert.equal((await heads(blobHeads)) - blobHeadsBefore, 0);
      assert.equal((await heads(manifestHeads)) - manifestHeadsBefore, 1);
    } finally {
      await mirror.stop();
    }
  });

  /** A store holding myorg/app:v1, pulled through a mirror (stopped) from an upstream that is gone since. */
  async function storeFilledThenUpstreamGone(name: string): Promise<{ storagePath: string; upstreamUrl: string }> {
    const own = await startRegistry();
    await pushImage(hubImage, own.ref('myorg/app', 'v1'));
    const storagePath = path.join(await makeTempDir(name), 'data');
    const first = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: own.url }], storagePath });
    await pull(first, 'myorg/app', hubImage);
    await first.stop();
    await own.stop();
    return { storagePath, upstreamUrl: own.url };
  }

  test('what a repository was seen to have survives a restart: with the upstream down, its content is still served by digest', async () => {
    const { storagePath, upstreamUrl } = await storeFilledThenUpstreamGone('scope-restart');
    const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstreamUrl }], storagePath });
    try {
      const manifest = await httpRequest(`${second.url}/v2/myorg/app/manifests/${hubImage.manifestDigest}`, { headers: ACCEPT });
      assert.equal(manifest.status, 200);
      for (const blob of [hubImage.configDigest, ...hubImage.layers.map((l) => l.digest)]) assert.equal((await httpRequest(`${second.url}/v2/myorg/app/blobs/${blob}`)).status, 200);
      // another repository cannot be vouched for while the upstream is away
      const unconfirmed = await httpRequest(`${second.url}/v2/myorg/copy/blobs/${hubImage.layers[0]!.digest}`);
      assert.equal(unconfirmed.status, 502);
      assert.equal(errorCode(unconfirmed.body), 'UNAVAILABLE');
    } finally {
      await second.stop();
    }
  });

  test('a store from before links were kept: a repository\'s own content is still served by digest with the upstream down, from its tag records', async () => {
    const { storagePath, upstreamUrl } = await storeFilledThenUpstreamGone('scope-upgrade');
    // what an older regmirror left: the same store without links files
    const links = path.join(storagePath, 'tags', 'docker.io', 'myorg', 'app', '_links');
    await rm(links);
    const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstreamUrl }], storagePath });
    try {
      assert.equal((await httpRequest(`${second.url}/v2/myorg/app/manifests/${hubImage.manifestDigest}`, { headers: ACCEPT })).status, 200);
      for (const blob of [hubImage.configDigest, ...hubImage.layers.map((l) => l.digest)]) assert.equal((await httpRequest(`${second.url}/v2/myorg/app/blobs/${blob}`)).status, 200, blob);
      // and written down, for the next start
      assert.ok((await readFile(links, 'utf8')).includes(hubImage.layers[0]!.digest));
    } finally {
      await second.stop();
    }
  });

  test("links go with their content: once eviction removed a repository's images, its links file is cut down to what is stored, and a later pull links them again", async () => {
    const images: TestImage[] = [];
    for (let i = 0; i < 8; i++) {
      const image = await writeOciImage(await makeTempDir(`scope-churn-${i}`), { tag: `v${i}`, layerSizes: [5_000 + i], seed: `scope-churn-${i}` });
      await pushImage(image, hub.ref('myorg/churn', `v${i}`));
      images.push(image);
    }
    const digestsOf = (image: TestImage) => [image.manifestDigest, image.configDigest, ...image.layers.map((l) => l.digest)];
    let now = 1_000 * 3_600_000;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], extra: { storage: { ttl: '1h' } }, now: () => now, linksPruneDelayMs: 20 });
    const links = path.join(mirror.storagePath, 'tags', 'docker.io', 'myorg', 'churn', '_links');
    const linked = async () => new Set((await readFile(links, 'utf8')).split('\n').filter(Boolean));
    try {
      await mirror.mirror.indexed;
      for (const image of images.slice(0, 7)) await pull(mirror, 'myorg/churn', image);
      now += 2 * 3_600_000;
      await pull(mirror, 'myorg/churn', images[7]!);
      assert.equal((await linked()).size, 24);
      await mirror.mirror.evictor.evict();
      // pruned a moment after the removals (linksPruneDelayMs), however busy the machine is
      const kept = digestsOf(images[7]!).sort().join();
      await waitFor(async () => [...(await linked())].sort().join() === kept, { timeoutMs: 10_000, what: 'the links of evicted content to be pruned' }).catch(() => undefined);
      assert.deepEqual([...(await linked())].sort(), digestsOf(images[7]!).sort(), 'only the stored image is linked');
      // pulled again: fetched, served and linked again
      await pull(mirror, 'myorg/churn', images[0]!);
      for (const digest of digestsOf(images[0]!)) assert.ok((await linked()).has(digest), digest);
    } finally {
      await mirror.stop();
    }
  });

  test('a links file full of content no longer stored (a store from before pruning) is cut down when the repository is next used', async () => {
    const { storagePath, upstreamUrl } = await storeFilledThenUpstreamGone('scope-stale-links');
    const links = path.join(storagePath, 'tags', 'docker.io', 'myorg', 'app', '_links');
    const stale = Array.from({ length: 40 }, (_, i) => sha256(Buffer.from(`gone-${i}`)));
    await appendFile(links, `${stale.join('\n')}\n`);
    const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstreamUrl }], storagePath });
    try {
      await second.mirror.indexed;
      assert.equal((await httpRequest(`${second.url}/v2/myorg/app/manifests/${hubImage.manifestDigest}`, { headers: ACCEPT })).status, 200);
      const kept = (await readFile(links, 'utf8')).split('\n').filter(Boolean);
      assert.ok(!kept.some((digest) => stale.includes(digest)), 'stale links dropped');
      // what is stored stays linked: served by digest with the upstream down
      for (const blob of [hubImage.configDigest, ...hubImage.layers.map((l) => l.digest)]) {
        assert.ok(kept.includes(blob), blob);
        assert.equal((await httpRequest(`${second.url}/v2/myorg/app/blobs/${blob}`)).status, 200, blob);
      }
    } finally {
      await second.stop();
    }
  });

  test('stored content asked for under names the upstream does not have keeps nothing in memory for those names (any client can make names up)', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }] });
    try {
      await pull(mirror, 'myorg/app', hubImage);
      const before = mirror.mirror.cache.memory.repositories;
      for (let i = 0; i < 200; i++) {
        const res = await httpRequest(`${mirror.url}/v2/made-up/name${i}/blobs/${hubImage.layers[0]!.digest}`, { method: 'HEAD' });
        assert.equal(res.status, 404);
      }
      assert.equal(mirror.mirror.cache.memory.repositories, before);
      // the repository that has it is still served from the store
      await pull(mirror, 'myorg/app', hubImage);
    } finally {
      await mirror.stop();
    }
  });

  test('clients of two repositories that joined a fetch failing for a third share one download of their own, with storage.maxSize set, and nothing waits on the other', async () => {
    const big = await writeOciImage(await makeTempDir('scope-big'), { tag: 'v1', layerSizes: [3 * 1024 * 1024], seed: 'scope-big' });
    await pushImage(big, hub.ref('myorg/big', 'v1'));
    await pushImage(big, hub.ref('myorg/bigcopy', 'v1'));
    const proxy = await startFaultProxy({ target: hub.url });
    proxy.addRule({ method: 'GET', path: /^\/v2\/myorg\/missing\/blobs\//, delayMs: 1_000 });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }], extra: { storage: { maxSize: '4Mi' } } });
    try {
      const layer = big.layers[0]!.digest;
      const missing = httpRequest(`${mirror.url}/v2/myorg/missing/blobs/${layer}`, { timeoutMs: 20_000 });
      await sleep(200);
      const responses = await Promise.all(['myorg/big', 'myorg/bigcopy'].map((repository) => httpRequest(`${mirror.url}/v2/${repository}/blobs/${layer}`, { timeoutMs: 15_000 })));
      for (const res of responses) {
        assert.equal(res.status, 200);
        assert.equal(sha256(res.body), layer);
      }
      assert.equal((await missing).status, 404);
      assert.equal(proxy.countRequests({ method: 'GET', path: /^\/v2\/myorg\/(big|bigcopy)\/blobs\// }), 1, 'one download for both');
      // nothing left set aside, and another miss goes through
      assert.equal(mirror.mirror.evictor.reserved, 0);
      assert.equal((await httpRequest(`${mirror.url}/v2/myorg/big/blobs/${big.configDigest}`, { timeoutMs: 5_000 })).status, 200);
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });

  test("a blob fetch that fails for one repository (not there upstream) is not handed to a request for another repository that has it", async () => {
    const proxy = await startFaultProxy({ target: hub.url });
    // the upstream takes its time to say that myorg/missing has no such blob
    proxy.addRule({ method: 'GET', path: /^\/v2\/myorg\/missing\/blobs\//, delayMs: 1_000 });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    try {
      const layer = hubImage.layers[0]!;
      const missing = httpRequest(`${mirror.url}/v2/myorg/missing/blobs/${layer.digest}`, { timeoutMs: 20_000 });
      await sleep(200);
      const present = await httpRequest(`${mirror.url}/v2/myorg/app/blobs/${layer.digest}`, { timeoutMs: 20_000 });
      assert.equal(present.status, 200, present.body.toString().slice(0, 200));
      assert.equal(sha256(present.body), layer.digest);
      assert.equal((await missing).status, 404);
    } finally {
      await mirror.stop();
      await proxy.stop();
    }
  });
});
