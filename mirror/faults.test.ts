// Faults the mirror must survive: an upstream that stalls, resets or cuts transfers, a disk that
// fills up during a fill, many clients at once, and a flood of malformed requests. Every loop is
// bounded in count and in time; correctness is checked byte for byte against the digests.
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync } from 'node:fs';
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { startFaultProxy, type FaultProxy } from '../test/harness/fault-proxy.ts';
import { startMirrorProcess, startTestMirror, temporaryFiles, type TestMirror } from '../test/harness/mirror.ts';
import { pushImage, readBlob, writeOciImage, MEDIA_TYPES, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, freePort, httpRequest, makeTempDir, registerExitCleanup, runCommand, waitFor } from '../test/harness/process.ts';
import { LOG_WINDOW_MS, LogThrottle } from './log-throttle.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const ACCEPT = [MEDIA_TYPES.oci.index, MEDIA_TYPES.oci.manifest, MEDIA_TYPES.docker.index, MEDIA_TYPES.docker.manifest].join(', ');

interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** GET over a shared keep-alive agent; rejects when the connection is cut before the body ends. */
function get(url: string, agent: http.Agent, headers: Record<string, string> = {}, timeoutMs = 30_000): Promise<Response> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent, headers, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (b: Buffer) => chunks.push(b));
      res.on('end', () => {
        const body = Buffer.concat(chunks);
        const promised = res.headers['content-length'];
        // a cut connection can look like an early end on some paths: a short body is never a success
        if (promised !== undefined && Number(promised) !== body.length) reject(new Error(`short body: ${body.length} of ${promised}`));
        else resolve({ status: res.statusCode ?? 0, headers: res.headers, body });
      });
      res.on('error', reject);
      res.on('aborted', () => reject(new Error('response aborted')));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timed out`)));
    req.on('error', reject);
  });
}

/** GETs a blob through the mirror and asserts that all of it, and the right bytes, came back. */
async function assertServes(mirror: Pick<TestMirror, 'url'>, agent: http.Agent, repository: string, digest: string): Promise<void> {
  const res = await get(`${mirror.url}/v2/${repository}/blobs/${digest}`, agent);
  assert.equal(res.status, 200, `GET ${repository} ${digest}`);
  assert.equal(sha256(res.body), digest);
}

async function storedBlobs(storagePath: string): Promise<string[]> {
  const found: string[] = [];
  const top = path.join(storagePath, 'blobs', 'sha256');
  for (const prefix of await readdir(top).catch(() => [] as string[])) for (const file of await readdir(path.join(top, prefix))) found.push(`sha256:${file}`);
  return found;
}

async function metric(mirror: Pick<TestMirror, 'url'>, line: RegExp): Promise<number> {
  const text = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
  const found = text.split('\n').find((l) => line.test(l));
  return found ? Number(found.split(' ').pop()) : 0;
}

describe('upstream faults during a fill', () => {
  let hub: RegistryServer;
  let proxy: FaultProxy;
  let image: TestImage;

  before(async () => {
    hub = await startRegistry();
    image = await writeOciImage(await makeTempDir('faults-image'), { tag: 'v1', seed: 'faults', layerSizes: [2 * 1024 * 1024, 1024 * 1024, 512 * 1024] });
    await pushImage(image, hub.ref('library/app', 'v1'));
    proxy = await startFaultProxy({ target: hub.url });
  });
  // a test that fails halfway leaves no fault behind for the next one
  afterEach(() => proxy.clearRules());
  after(async () => {
    await proxy.stop();
    await cleanupAll();
  });

  test('an upstream that stalls mid-blob is timed out: the client is cut, nothing partial is kept, the next request succeeds', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }], timeouts: { bodyIdleMs: 1_000 } });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const layer = image.layers[0]!;
      const stall = proxy.addRule({ path: /\/blobs\//, stallAfterBytes: 300 * 1024 });
      await assert.rejects(get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent), /aborted|short body|socket hang up|ECONNRESET/);
      assert.equal(stall.hits(), 1);
      await waitFor(async () => (await temporaryFiles(mirror.storagePath)).length === 0, { timeoutMs: 10_000, what: 'the partial download to be removed' });
      assert.ok(!(await storedBlobs(mirror.storagePath)).includes(layer.digest), 'no partial blob in the store');
      assert.equal(await metric(mirror, /^regmirror_fetch_failures_total\{reason="timeout"\}/), 1);

      stall.remove(); // the upstream recovers
      await assertServes(mirror, agent, 'library/app', layer.digest);
      assert.ok((await storedBlobs(mirror.storagePath)).includes(layer.digest));
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('a Range request for a blob still being fetched is answered only once the whole blob checked out: corrupted bytes from the upstream never make a complete 206', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const layer = image.layers[2]!;
      // one byte flipped near the end: every byte of the range asked for is as the upstream sent it
      const corrupt = proxy.addRule({ path: /\/blobs\//, corruptByteAt: layer.size - 100, times: 1 });
      const res = await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent, { range: 'bytes=0-1023' });
      assert.equal(corrupt.hits(), 1);
      assert.equal(res.status, 502, 'not a 206 of bytes nobody checked');
      assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'UNAVAILABLE');
      // fetched again, intact: the range is served, and from the verified blob
      const again = await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent, { range: 'bytes=0-1023' });
      assert.equal(again.status, 206);
      const whole = await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent);
      assert.equal(sha256(whole.body), layer.digest);
      assert.deepEqual(again.body, whole.body.subarray(0, 1024));
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('an upstream that never answers is timed out with 502 UNAVAILABLE, and the next request succeeds', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }], timeouts: { headersMs: 1_000 } });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const layer = image.layers[1]!;
      const hang = proxy.addRule({ path: /\/blobs\//, hang: true, times: 1 });
      const res = await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent);
      assert.equal(res.status, 502);
      assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'UNAVAILABLE');
      assert.equal(hang.hits(), 1);
      assert.equal(await metric(mirror, /^regmirror_fetch_failures_total\{reason="timeout"\}/), 1, 'a fetch that never got headers is a failure too');

      // so is one the upstream answers with 503, for a blob or a manifest; one it does not have is not
      const unavailable = proxy.addRule({ path: /\/(blobs|manifests)\//, status: 503 });
      assert.equal((await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent)).status, 502);
      assert.equal((await get(`${mirror.url}/v2/library/app/manifests/v1`, agent)).status, 502);
      unavailable.remove();
      assert.equal((await get(`${mirror.url}/v2/library/app/blobs/sha256:${'0'.repeat(64)}`, agent)).status, 404);
      assert.equal(await metric(mirror, /^regmirror_fetch_failures_total\{reason="upstream"\}/), 2);
      await assertServes(mirror, agent, 'library/app', layer.digest);
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('one connection the upstream drops before answering is tried again, and the client never notices', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true });
    try {
      proxy.resetRequests();
      const reset = proxy.addRule({ path: /\/manifests\//, reset: true, times: 1 });
      const manifest = await get(`${mirror.url}/v2/library/app/manifests/v1`, agent, { accept: ACCEPT });
      assert.equal(manifest.status, 200);
      assert.equal(sha256(manifest.body), image.manifestDigest);
      assert.equal(reset.hits(), 1);
      assert.equal(proxy.countRequests({ method: 'GET', path: /\/manifests\/v1$/ }), 2, 'the dropped request and its one retry');
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('an upstream that keeps resetting connections gets 502 UNAVAILABLE, and the next request succeeds', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const reset = proxy.addRule({ reset: true, times: 4 }); // each request and its one retry
      const manifest = await get(`${mirror.url}/v2/library/app/manifests/v1`, agent, { accept: ACCEPT });
      assert.equal(manifest.status, 502);
      assert.equal(JSON.parse(manifest.body.toString()).errors[0].code, 'UNAVAILABLE');
      const blob = await get(`${mirror.url}/v2/library/app/blobs/${image.configDigest}`, agent);
      assert.equal(blob.status, 502);
      assert.equal(reset.hits(), 4);
      const recovered = await get(`${mirror.url}/v2/library/app/manifests/v1`, agent, { accept: ACCEPT });
      assert.equal(recovered.status, 200);
      assert.equal(sha256(recovered.body), image.manifestDigest);
      assert.equal(sha256((await get(`${mirror.url}/v2/library/app/blobs/${image.configDigest}`, agent)).body), image.configDigest);
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('an upstream that resets mid-blob: the client gets no success (an error or a cut), nothing partial is kept, the next request succeeds', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const layer = image.layers[2]!;
      // only this blob: a late request left over from an earlier test must not take the one cut
      const cut = proxy.addRule({ path: new RegExp(`/blobs/${layer.digest}$`), truncateAfterBytes: 100_000, times: 1 });
      // Which one depends on whether the mirror had sent a byte before the upstream cut: before, a
      // 502 saying so (the client can tell what happened); after, its own connection is cut.
      const outcome = await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent).then(
        (res) => res,
        (error: Error) => error,
      );
      if (outcome instanceof Error) assert.match(outcome.message, /aborted|short body|socket hang up|ECONNRESET/);
      else {
        assert.equal(outcome.status, 502);
        const error = JSON.parse(outcome.body.toString()).errors[0];
        assert.equal(error.code, 'UNAVAILABLE');
        assert.match(error.message, new RegExp(`transfer of ${layer.digest} failed.*nothing was stored`));
      }
      assert.equal(cut.hits(), 1);
      await waitFor(async () => (await temporaryFiles(mirror.storagePath)).length === 0, { timeoutMs: 10_000, what: 'the partial download to be removed' });
      assert.ok(!(await storedBlobs(mirror.storagePath)).includes(layer.digest));
      await assertServes(mirror, agent, 'library/app', layer.digest);
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('an upstream that answers 200 and then cuts before any byte: the client gets 502 UNAVAILABLE naming the blob, not a cut', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true });
    try {
      const layer = image.layers[1]!;
      const cut = proxy.addRule({ path: new RegExp(`/blobs/${layer.digest}$`), truncateAfterBytes: 0, times: 1 });
      const res = await get(`${mirror.url}/v2/library/app/blobs/${layer.digest}`, agent);
      assert.equal(cut.hits(), 1);
      assert.equal(res.status, 502);
      const error = JSON.parse(res.body.toString()).errors[0];
      assert.equal(error.code, 'UNAVAILABLE');
      assert.match(error.message, new RegExp(`upstream docker.io unavailable: the transfer of ${layer.digest} failed .*nothing was stored, try again`));
      assert.ok(!(await storedBlobs(mirror.storagePath)).includes(layer.digest));
      await assertServes(mirror, agent, 'library/app', layer.digest);
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('blob transfers cut mid-body are each counted once in regmirror_http_requests_total, with the status they began with: an upstream failing mid-fill, clients leaving a stored blob early', async () => {
    const big = await writeOciImage(await makeTempDir('cut-counted'), { tag: 'v1', seed: 'cut-counted', layerSizes: [32 * 1024 * 1024] });
    await pushImage(big, hub.ref('library/cut', 'v1'));
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true });
    const blobGets = () => metric(mirror, /^regmirror_http_requests_total\{route="blob",method="GET",status="200"\}/);
    try {
      const layer = big.layers[0]!;
      const url = `${mirror.url}/v2/library/cut/blobs/${layer.digest}`;
      // cut after 8 MiB of 32: the client has had bytes by then, so its own connection is cut
      const cut = proxy.addRule({ path: new RegExp(`/blobs/${layer.digest}$`), truncateAfterBytes: 8 * 1024 * 1024, times: 1 });
      await assert.rejects(get(url, agent), /aborted|short body|socket hang up|ECONNRESET/);
      assert.equal(cut.hits(), 1);
      await waitFor(async () => (await blobGets()) === 1, { timeoutMs: 5_000, what: 'the cut transfer to be counted' });

      await assertServes(mirror, agent, 'library/cut', layer.digest); // stored now
      const leaving = Array.from({ length: 5 }, () =>
        new Promise<number>((resolve) => {
          let received = 0;
          const req = http.get(url, { agent: false, timeout: 20_000 }, (res) =>
            res.on('data', (b: Buffer) => {
              received += b.length;
              if (received >= 1024 * 1024) req.destroy();
            }),
          );
          req.on('close', () => resolve(received));
          req.on('error', () => undefined);
        }),
      );
      for (const received of await Promise.all(leaving)) assert.ok(received < layer.size, `a client meant to leave early got all ${received} bytes`);
      await waitFor(async () => (await blobGets()) >= 7, { timeoutMs: 5_000, what: 'the 5 abandoned downloads to be counted' });
      assert.equal(await blobGets(), 7, 'the cut one, the whole one and the 5 abandoned ones, each once');
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });

  test('40 clients while the upstream resets 30 connections get correct bytes or an error, never wrong bytes, and all succeed afterwards', async (t) => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: proxy.url }] });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 40 });
    const blobs = [image.configDigest, ...image.layers.map((l) => l.digest)];
    try {
      const reset = proxy.addRule({ path: /\/blobs\//, reset: true, times: 30 });
      let ok = 0;
      let failed = 0;
      const deadline = Date.now() + 20_000;
      await Promise.all(
        Array.from({ length: 40 }, async (_, client) => {
          for (let round = 0; round < 5 && Date.now() < deadline; round++) {
            const digest = blobs[(client + round) % blobs.length]!;
            try {
              const res = await get(`${mirror.url}/v2/library/app/blobs/${digest}`, agent);
              if (res.status === 200) {
                assert.equal(sha256(res.body), digest, 'a 200 always carries the right bytes');
                ok++;
              } else {
                assert.equal(res.status, 502);
                failed++;
              }
            } catch (error) {
              if (error instanceof assert.AssertionError) throw error;
              failed++; // cut mid-body: the client sees an error, never a complete wrong blob
            }
          }
        }),
      );
      t.diagnostic(`ok ${ok}, failed ${failed}, upstream resets ${reset.hits()}`);
      assert.ok(reset.hits() > 0 && ok > 0 && failed > 0, `ok ${ok}, failed ${failed}, resets ${reset.hits()}`);
      reset.remove();
      for (const digest of blobs) assert.equal(sha256((await get(`${mirror.url}/v2/library/app/blobs/${digest}`, agent)).body), digest);
      assert.deepEqual(await temporaryFiles(mirror.storagePath), []);
    } finally {
      agent.destroy();
      await mirror.stop();
    }
  });
});

/** A small tmpfs mounted under a temp dir for the test's store (root only); unmounted afterwards, and at exit if the test dies. */
async function withTmpfs(size: string, run: (mountPoint: string) => Promise<void>): Promise<void> {
  const mountPoint = path.join(await makeTempDir('disk-full'), 'volume');
  await mkdir(mountPoint);
  const mounted = await runCommand('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', mountPoint]);
  assert.equal(mounted.code, 0, mounted.stderr);
  const unregister = registerExitCleanup(() => execFileSync('umount', ['-l', mountPoint], { stdio: 'ignore' }));
  try {
    await run(mountPoint);
  } finally {
    const unmounted = await runCommand('umount', [mountPoint]);
    if (unmounted.code === 0) unregister();
  }
}

describe('a full disk', { skip: process.getuid?.() !== 0 ? 'mounting a tmpfs needs root' : false }, () => {
  let hub: RegistryServer;
  let small: TestImage;
  let big: TestImage;
  let later: TestImage;

  before(async () => {
    hub = await startRegistry();
    small = await writeOciImage(await makeTempDir('disk-small'), { tag: 'v1', seed: 'disk-small', layerSizes: [1024 * 1024] });
    big = await writeOciImage(await makeTempDir('disk-big'), { tag: 'v1', seed: 'disk-big', layerSizes: [12 * 1024 * 1024] });
    later = await writeOciImage(await makeTempDir('disk-later'), { tag: 'v1', seed: 'disk-later', layerSizes: [2 * 1024 * 1024] });
    await pushImage(small, hub.ref('library/small', 'v1'));
    await pushImage(big, hub.ref('library/big', 'v1'));
    await pushImage(later, hub.ref('library/later', 'v1'));
  });
  after(cleanupAll);

  const pull = async (mirror: Pick<TestMirror, 'url'>, agent: http.Agent, name: string, img: TestImage) => {
    const manifest = await get(`${mirror.url}/v2/library/${name}/manifests/v1`, agent, { accept: ACCEPT });
    assert.equal(manifest.status, 200);
    for (const digest of [img.configDigest, ...img.layers.map((l) => l.digest)]) await assertServes(mirror, agent, `library/${name}`, digest);
  };

  test('filling up during a fill: the client is cut, nothing partial is kept, stored content is still served', () =>
    withTmpfs('8m', async (volume) => {
      const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], storagePath: path.join(volume, 'data') });
      const agent = new http.Agent({ keepAlive: true });
      try {
        await pull(mirror, agent, 'small', small);
        // the 12 MiB layer cannot fit in what is left of 8 MiB
        const bigLayer = big.layers[0]!;
        await assert.rejects(get(`${mirror.url}/v2/library/big/blobs/${bigLayer.digest}`, agent), /aborted|short body|socket hang up|ECONNRESET/);
        await waitFor(async () => (await temporaryFiles(mirror.storagePath)).length === 0, { timeoutMs: 10_000, what: 'the partial download to be removed' });
        assert.ok(!(await storedBlobs(mirror.storagePath)).includes(bigLayer.digest), 'nothing partial kept');
        assert.equal(await metric(mirror, /^regmirror_fetch_failures_total\{reason="disk"\}/), 1, 'the failure is counted as a disk failure');

        // what is stored is still served, even with the upstream gone
        await hub.stop();
        try {
          await assertServes(mirror, agent, 'library/small', small.layers[0]!.digest);
          assert.equal((await get(`${mirror.url}/v2/library/small/manifests/v1`, agent, { accept: ACCEPT })).status, 200, 'the stored manifest is served when the upstream is down');
        } finally {
          await hub.start();
        }
        // the room the failed fill took was given back: content that fits is stored
        await pull(mirror, agent, 'later', later);
        assert.ok((await storedBlobs(mirror.storagePath)).includes(later.layers[0]!.digest));
      } finally {
        agent.destroy();
        await mirror.stop();
      }
    }));

  test('with the volume full, a tag pull of a stored image is answered from the store (tag record rewrite aside), counted as revalidated, and room is made', () =>
    withTmpfs('4m', async (volume) => {
      // tagTTL 0s: every tag pull asks the upstream and rewrites the tag record
      const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url, tagTTL: '0s' }], storagePath: path.join(volume, 'data') });
      const agent = new http.Agent({ keepAlive: true });
      try {
        await pull(mirror, agent, 'small', small); // read first: the least recently read
        await pull(mirror, agent, 'later', later);
        const filled = await runCommand('dd', ['if=/dev/zero', `of=${path.join(volume, 'filler')}`, 'bs=1M', 'count=8']);
        assert.notEqual(filled.code, 0, 'dd stopped at a full disk');
        const revalidated = () => metric(mirror, /^regmirror_cache_requests_total\{kind="manifest",result="revalidated"\}/);
        const before = await revalidated();
        for (let i = 0; i < 3; i++) {
          const res = await get(`${mirror.url}/v2/library/later/manifests/v1`, agent, { accept: ACCEPT });
          assert.equal(res.status, 200, res.body.toString());
          assert.equal(sha256(res.body), later.manifestDigest);
        }
        assert.equal((await revalidated()) - before, 3, 'each tag pull counted once, as revalidated');
        for (const digest of [later.configDigest, ...later.layers.map((l) => l.digest)]) await assertServes(mirror, agent, 'library/later', digest);
        // the failed tag record write made room, as a failed fill does
        await waitFor(async () => (await metric(mirror, /^regmirror_evictions_total\{reason="room"\}/)) >= 1, { timeoutMs: 10_000, what: 'room to be made' });
        assert.ok(!(await storedBlobs(mirror.storagePath)).includes(small.layers[0]!.digest), 'the least recently read blob went');
      } finally {
        agent.destroy();
        await mirror.stop();
      }
    }));

  test('a fill cut by a full volume while its client reads: room is made for its retry and no more (one of two stored 8 MiB layers evicted, not both), and the retry is stored', () =>
    withTmpfs('24m', async (volume) => {
      const stored8 = await Promise.all(['a', 'b'].map(async (name) => {
        const img = await writeOciImage(await makeTempDir(`disk-room-${name}`), { tag: 'v1', seed: `disk-room-${name}`, layerSizes: [8 * 1024 * 1024] });
        await pushImage(img, hub.ref(`library/room-${name}`, 'v1'));
        return img;
      }));
      // a process, for its log: room-making says when it is done, with what it freed
      const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: hub.url }], storagePath: path.join(volume, 'data') });
      const agent = new http.Agent({ keepAlive: true });
      const count = async (line: RegExp) => Number((await httpRequest(`${mirror.url}/metrics`)).body.toString().split('\n').find((l) => line.test(l))?.split(' ').pop() ?? 0);
      try {
        for (const [i, img] of stored8.entries()) assert.equal(sha256((await get(`${mirror.url}/v2/library/room-${i === 0 ? 'a' : 'b'}/blobs/${img.layers[0]!.digest}`, agent)).body), img.layers[0]!.digest);
        // 16 MiB stored of 24: the 12 MiB layer fills the volume while its client reads it
        const bigLayer = big.layers[0]!;
        await assert.rejects(get(`${mirror.url}/v2/library/big/blobs/${bigLayer.digest}`, agent), /aborted|short body|socket hang up|ECONNRESET/);
        await waitFor(async () => /evicted the least recently read content to make room/.test(mirror.process.output()), { timeoutMs: 20_000, what: 'room to be made' });
        // 12 MiB + a tenth of the store fit once one layer (8 MiB) joins the ~8 MiB free
        assert.equal(await count(/^regmirror_evictions_total\{reason="room"\}/), 1, 'one layer evicted to make room');
        const kept = await storedBlobs(mirror.storagePath);
        assert.ok(!kept.includes(stored8[0]!.layers[0]!.digest), 'the least recently read layer went');
        assert.ok(kept.includes(stored8[1]!.layers[0]!.digest), 'the other stayed');
        const again = await get(`${mirror.url}/v2/library/big/blobs/${bigLayer.digest}`, agent);
        assert.equal(sha256(again.body), bigLayer.digest);
        assert.ok((await storedBlobs(mirror.storagePath)).includes(bigLayer.digest), 'the retry is stored');
      } finally {
        agent.destroy();
        await mirror.process.stop();
      }
    }));

  test('a volume remounted read-only: misses of a small blob, a large blob and a manifest each get 503 saying the store could not be written and count as disk failures; the mirror keeps running and serves what it stored', () =>
    withTmpfs('32m', async (volume) => {
      // a process: a failure that ends it must not end the test runner
      const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: hub.url }], storagePath: path.join(volume, 'data') });
      const agent = new http.Agent({ keepAlive: true });
      try {
        await pull(mirror, agent, 'small', small);
        const remounted = await runCommand('mount', ['-o', 'remount,ro', volume]);
        assert.equal(remounted.code, 0, remounted.stderr);
        const misses = [
          `/v2/library/later/blobs/${later.configDigest}`, // a few hundred bytes: the whole body is in before the file fails
          `/v2/library/big/blobs/${big.layers[0]!.digest}`,
          '/v2/library/later/manifests/v1',
        ];
        for (const miss of misses) {
          const res = await get(`${mirror.url}${miss}`, agent, { accept: ACCEPT });
          assert.equal(res.status, 503, `${miss}: ${res.status} ${res.body.toString()}`);
          const error = JSON.parse(res.body.toString()).errors[0];
          assert.equal(error.code, 'UNAVAILABLE');
          assert.match(error.message, /store could not be written/);
        }
        assert.equal(mirror.process.exitStatus(), undefined, 'the mirror is still running');
        assert.equal(await metric(mirror, /^regmirror_fetch_failures_total\{reason="disk"\}/), misses.length, 'each counted as a disk failure');
        assert.equal((await get(`${mirror.url}/readyz`, agent)).status, 503, 'not ready: nodes are sent elsewhere');
        await pull(mirror, agent, 'small', small);
      } finally {
        agent.destroy();
        await runCommand('mount', ['-o', 'remount,rw', volume]);
        await mirror.process.stop();
      }
    }));

  test('with no room left, a miss gets 503 UNAVAILABLE saying the store is full, the least recently read content makes room, and the retry succeeds', () =>
    withTmpfs('4m', async (volume) => {
      const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }], storagePath: path.join(volume, 'data') });
      const agent = new http.Agent({ keepAlive: true });
      try {
        await pull(mirror, agent, 'small', small);
        const filled = await runCommand('dd', ['if=/dev/zero', `of=${path.join(volume, 'filler')}`, 'bs=1M', 'count=8']);
        assert.notEqual(filled.code, 0, 'dd stopped at a full disk');
        const manifestUrl = `${mirror.url}/v2/library/later/manifests/v1`;
        const full = await get(manifestUrl, agent, { accept: ACCEPT });
        assert.equal(full.status, 503);
        const error = JSON.parse(full.body.toString()).errors[0];
        assert.equal(error.code, 'UNAVAILABLE');
        assert.match(error.message, /store is full \(ENOSPC\)/);
        assert.equal(await metric(mirror, /^regmirror_fetch_failures_total\{reason="disk"\}/), 1, 'the manifest that could not be stored is counted');
        // no storage.maxSize here: the full volume itself makes the mirror evict, oldest read first
        await waitFor(async () => (await metric(mirror, /^regmirror_evictions_total\{reason="room"\}/)) >= 1, { timeoutMs: 10_000, what: 'room to be made' });
        assert.ok(!(await storedBlobs(mirror.storagePath)).includes(small.layers[0]!.digest), 'the least recently read blob went');
        const again = await get(manifestUrl, agent, { accept: ACCEPT });
        assert.equal(again.status, 200);
        await assertServes(mirror, agent, 'library/later', later.configDigest);
        assert.ok((await storedBlobs(mirror.storagePath)).includes(later.configDigest), 'stored this time');
      } finally {
        agent.destroy();
        await mirror.stop();
      }
    }));
});

describe('load', () => {
  let hub: RegistryServer;
  let proxy: FaultProxy;
  const images: TestImage[] = [];

  before(async () => {
    hub = await startRegistry();
    proxy = await startFaultProxy({ target: hub.url, latencyMs: 10 });
    const dirs = await Promise.all(Array.from({ length: 20 }, (_, i) => makeTempDir(`load-${i}`)));
    for (let i = 0; i < 20; i++) {
      images.push(await writeOciImage(dirs[i]!, { tag: 'v1', seed: `load-${i}`, layerSizes: [32 * 1024 + i * 9_000, 200 * 1024 + i * 17_000] }));
    }
    for (let batch = 0; batch < 20; batch += 5) await Promise.all(images.slice(batch, batch + 5).map((img, j) => pushImage(img, hub.ref(`library/load${batch + j}`, 'v1'))));
    proxy.resetRequests();
  });
  after(async () => {
    await proxy.stop();
    await cleanupAll();
  });

  test('200 concurrent clients pulling 20 images for a bounded time get zero wrong bytes, and each blob is fetched upstream once', async (t) => {
    const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: proxy.url, tagTTL: '1m' }], logLevel: 'warn' });
    const agent = new http.Agent({ keepAlive: true, maxSockets: 200 });
    const layouts = await Promise.all(images.map(async (img) => readBlob(img, img.layers[1]!.digest)));
    const counts = { manifests: 0, blobs: 0, ranges: 0, bytes: 0 };
    const deadline = Date.now() + 6_000;
    try {
      await Promise.all(
        Array.from({ length: 200 }, async (_, client) => {
          for (let round = 0; round < 10 && Date.now() < deadline; round++) {
            const index = (client * 7 + round) % images.length;
            const img = images[index]!;
            const base = `${mirror.url}/v2/library/load${index}`;
            const manifest = await get(`${base}/manifests/v1`, agent, { accept: ACCEPT });
            assert.equal(manifest.status, 200);
            assert.equal(sha256(manifest.body), img.manifestDigest, `manifest of load${index}`);
            assert.equal(manifest.headers['docker-content-digest'], img.manifestDigest);
            counts.manifests++;
            for (const digest of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
              const blob = await get(`${base}/blobs/${digest}`, agent);
              assert.equal(blob.status, 200);
              assert.equal(sha256(blob.body), digest, `blob ${digest} of load${index}`);
              counts.blobs++;
              counts.bytes += blob.body.length;
            }
            // a range of the large layer, checked against the layout's own bytes
            const whole = layouts[index]!;
            const start = (client * 4099 + round * 131) % (whole.length - 1);
            const end = Math.min(whole.length - 1, start + 65_535);
            const range = await get(`${base}/blobs/${img.layers[1]!.digest}`, agent, { range: `bytes=${start}-${end}` });
            assert.equal(range.status, 206);
            assert.ok(range.body.equals(whole.subarray(start, end + 1)), `range ${start}-${end} of load${index}`);
            counts.ranges++;
          }
        }),
      );
      t.diagnostic(`verified ${JSON.stringify(counts)}`);
      assert.ok(counts.manifests >= 200, `every client completed at least one pull: ${JSON.stringify(counts)}`);
      for (const [i, img] of images.entries()) {
        for (const digest of [img.configDigest, ...img.layers.map((l) => l.digest)]) {
          const fetched = proxy.countRequests({ method: 'GET', path: new RegExp(`^/v2/library/load${i}/blobs/${digest}$`) });
          assert.equal(fetched, 1, `${digest} of load${i} fetched upstream ${fetched} times`);
        }
      }
      assert.equal(mirror.process.exitStatus(), undefined, 'the mirror is still running');
    } finally {
      agent.destroy();
      await mirror.process.stop();
    }
  });
});

test('an upstream manifest over 4 MiB sent without a Content-Length gets 400 MANIFEST_INVALID: the mirror stops reading at the limit and stores nothing', async () => {
  // A scripted HTTP server, not a registry: distribution always sends a manifest's Content-Length,
  // and this one streams a 64 MiB "manifest" chunked, as a broken or hostile upstream could.
  const total = 64 * 1024 * 1024;
  let written = 0;
  let closed = false;
  let finished = false;
  const scripted = http.createServer(async (req, res) => {
    if (req.method !== 'GET' || !/^\/v2\/library\/huge\/manifests\/v1$/.test(req.url ?? '')) {
      res.writeHead(404).end();
      return;
    }
    res.on('close', () => (closed = true));
    res.writeHead(200, { 'content-type': MEDIA_TYPES.oci.manifest });
    const piece = Buffer.alloc(64 * 1024, 'a');
    const drained = () =>
      new Promise<void>((resolve) => {
        const done = () => {
          res.off('drain', done);
          res.off('close', done);
          resolve();
        };
        res.on('drain', done);
        res.on('close', done);
      });
    res.write(`{"schemaVersion":2,"mediaType":"${MEDIA_TYPES.oci.manifest}","annotations":{"pad":"`);
    while (written < total && !res.destroyed) {
      written += piece.length;
      if (!res.write(piece)) await drained();
    }
    if (!res.destroyed) {
      res.end('"}}');
      finished = true;
    }
  });
  await new Promise<void>((resolve) => scripted.listen(0, '127.0.0.1', resolve));
  const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: `http://127.0.0.1:${(scripted.address() as net.AddressInfo).port}` }] });
  try {
    const res = await httpRequest(`${mirror.url}/v2/library/huge/manifests/v1`, { headers: { accept: ACCEPT }, timeoutMs: 30_000 });
    assert.equal(res.status, 400, `${res.status}, ${res.body.length} bytes`);
    assert.equal(JSON.parse(res.body.toString()).errors[0].code, 'MANIFEST_INVALID');
    await waitFor(() => closed, { timeoutMs: 10_000, what: 'the mirror to close the upstream transfer' });
    assert.ok(!finished && written < total, `the mirror read the whole ${written}-byte body`);
    assert.deepEqual(await readdir(path.join(mirror.storagePath, 'manifests', 'sha256')).catch(() => []), [], 'nothing stored');
  } finally {
    await mirror.stop();
    scripted.closeAllConnections();
    await new Promise((resolve) => scripted.close(resolve));
  }
});

test('fills that fail before reading the upstream (no usable tmp directory, setting room aside failing) each get a 5xx and give their upstream connection back: after more of them than the upstream pool has connections, a pull still succeeds', async () => {
  const hub = await startRegistry();
  // large enough that a response cannot all sit in socket buffers: unread, it holds its connection
  const img = await writeOciImage(await makeTempDir('no-tmp-image'), { tag: 'v1', seed: 'no-tmp', layerSizes: [2 * 1024 * 1024, 2 * 1024 * 1024] });
  await pushImage(img, hub.ref('library/app', 'v1'));
  const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }] });
  const agent = new http.Agent({ keepAlive: true });
  const tmp = path.join(mirror.storagePath, 'tmp');
  const evictor = mirror.mirror.evictor;
  const reserve = evictor.reserve;
  // upstream.ts keeps at most 64 connections per upstream; a failed fill is not joined, so each request is a new upstream GET
  const failEach = async (digest: string, expected?: RegExp) => {
    for (let i = 0; i < 70; i++) {
      const res = await get(`${mirror.url}/v2/library/app/blobs/${digest}`, agent, {}, 5_000).catch((error: Error) => {
        throw new Error(`request ${i + 1} of 70: ${error.message}`);
      });
      assert.ok(res.status >= 500, `request ${i + 1}: ${res.status}`);
      const error = JSON.parse(res.body.toString()).errors[0];
      assert.equal(error.code, 'UNAVAILABLE', `request ${i + 1}`);
      if (expected) assert.match(error.message, expected, `request ${i + 1}`);
    }
  };
  try {
    const [first, second] = img.layers.map((l) => l.digest) as [string, string];
    // the store's tmp directory turned into a file (a volume remounted, a hand edit): no fill can open its file
    await rm(tmp, { recursive: true });
    await writeFile(tmp, '');
    // the store's trouble, said as such: not blamed on the upstream
    await failEach(first, /^the mirror's store could not be written \(ENOTDIR\)/);
    await rm(tmp);
    await mkdir(tmp);
    await assertServes(mirror, agent, 'library/app', first);

    // the step between the upstream's answer and the fill reading it
    evictor.reserve = async () => {
      throw new Error('setting room aside failed');
    };
    await failEach(second);
    evictor.reserve = reserve;
    await assertServes(mirror, agent, 'library/app', second);
  } finally {
    evictor.reserve = reserve;
    agent.destroy();
    await mirror.stop();
    await hub.stop();
  }
});

const openFiles = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

test('clients that give up mid-download, during fills and from the store, leak no file descriptors', async (t) => {
  const hub = await startRegistry();
  const img = await writeOciImage(await makeTempDir('abort-image'), { tag: 'v1', seed: 'aborts', layerSizes: [1024 * 1024, 1024 * 1024, 1024 * 1024] });
  await pushImage(img, hub.ref('library/app', 'v1'));
  const proxy = await startFaultProxy({ target: hub.url });
  proxy.addRule({ path: /\/blobs\//, bytesPerSecond: 2 * 1024 * 1024 }); // fills last about half a second
  const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: proxy.url }], logLevel: 'warn' });
  const pid = mirror.process.pid;
  try {
    assert.equal((await httpRequest(`${mirror.url}/v2/`)).status, 200);
    const baseline = openFiles(pid);
    const digests = img.layers.map((l) => l.digest);
    const giveUp = (digest: string, afterBytes: number) =>
      new Promise<void>((resolve) => {
        let received = 0;
        const req = http.get(`${mirror.url}/v2/library/app/blobs/${digest}`, { agent: false, timeout: 20_000 }, (res) => {
          res.on('data', (b: Buffer) => {
            received += b.length;
            if (received >= afterBytes) req.destroy();
          });
          res.on('end', resolve);
        });
        req.on('close', () => resolve());
        req.on('error', () => resolve());
      });
    // two waves: the first while the blobs are being fetched, the second from the store
    for (let wave = 0; wave < 2; wave++) {
      await Promise.all(Array.from({ length: 30 }, (_, i) => giveUp(digests[i % digests.length]!, 1 + ((i * 37_123) % 700_000))));
      await waitFor(async () => (await metricFrom(mirror.url, /^regmirror_inflight_fetches /)) === 0, { timeoutMs: 20_000, what: 'the fills to end' });
    }
    const fills = proxy.countRequests({ method: 'GET', path: /\/blobs\// });
    t.diagnostic(`open files: ${baseline} before, ${openFiles(pid)} after 60 abandoned downloads (${fills} upstream blob GETs)`);
    await waitFor(() => openFiles(pid) <= baseline + 8, { timeoutMs: 10_000, what: `open files back near ${baseline} (upstream keep-alive connections aside)` });
    assert.deepEqual(await temporaryFiles(mirror.storagePath), []);
    for (const digest of digests) assert.equal(sha256((await httpRequest(`${mirror.url}/v2/library/app/blobs/${digest}`)).body), digest);
    assert.equal(mirror.process.exitStatus(), undefined);
  } finally {
    await mirror.process.stop();
    await proxy.stop();
    await hub.stop();
  }
});

async function metricFrom(url: string, line: RegExp): Promise<number> {
  const text = (await httpRequest(`${url}/metrics`)).body.toString();
  const found = text.split('\n').find((l) => line.test(l));
  return found ? Number(found.split(' ').pop()) : 0;
}

/** Sends raw bytes on a fresh connection and returns the status line's code (0 when none came back). */
function rawExchange(port: number, payload: string | Buffer, opts: { halfOpen?: boolean } = {}): Promise<number> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = net.connect(port, '127.0.0.1', () => {
      socket.write(payload);
      // a client that sends part of a request and leaves
      if (opts.halfOpen) setImmediate(() => socket.destroy());
    });
    socket.setTimeout(5_000, () => socket.destroy());
    socket.on('data', (b: Buffer) => chunks.push(b));
    socket.on('error', () => undefined);
    socket.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3})/.exec(Buffer.concat(chunks).toString('latin1'))?.[1] ?? 0)));
  });
}

function rssBytes(pid: number): number {
  const match = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!match) throw new Error(`no VmRSS for ${pid}`);
  return Number(match[1]) * 1024;
}

test('10,000 malformed requests: no crash, the right error codes, and no memory growth', async (t) => {
  const hub = await startRegistry();
  const img = await writeOciImage(await makeTempDir('malformed-image'), { tag: 'v1', seed: 'malformed', layerSizes: [64 * 1024] });
  await pushImage(img, hub.ref('library/app', 'v1'));
  // started as it ships (bin/regmirror.sh and the V8 and malloc settings it documents): with
  // Node's defaults the heap keeps growing to about 270 MB before it levels off, which says
  // nothing about a leak
  const launcher = path.resolve(import.meta.dirname, '../bin/regmirror.sh');
  const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: hub.url }], logLevel: 'warn', launcher });
  try {
    const layer = img.layers[0]!.digest;
    assert.equal((await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer}`)).status, 200);
    const close = 'Host: x\r\nConnection: close\r\n\r\n';
    const kinds: { payload: (i: number) => string; expect: number[]; halfOpen?: boolean }[] = [
      { payload: () => 'GARBAGE\r\n\r\n', expect: [400] },
      { payload: (i) => `\x00\x01\x02${'\xff'.repeat(i % 50)}\r\n\r\n`, expect: [400] },
      { payload: () => 'GET /v2/ HTTP/9.9\r\nHost: x\r\n\r\n', expect: [400, 505] },
      { payload: () => `GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(70_000)}\r\n\r\n`, expect: [431] },
      { payload: (i) => `GET /v2/library/../../etc/${i}/manifests/latest HTTP/1.1\r\n${close}`, expect: [400] },
      { payload: (i) => `GET /v2/library/%zz${i}/manifests/latest HTTP/1.1\r\n${close}`, expect: [400] },
      { payload: (i) => `GET /v2/library/app/blobs/sha256:${i}zz HTTP/1.1\r\n${close}`, expect: [400] },
      { payload: (i) => `GET /v2/library/app/manifests/${'~'.repeat(1 + (i % 200))} HTTP/1.1\r\n${close}`, expect: [400] },
      { payload: (i) => `GET /v2/library/app/blobs/${layer} HTTP/1.1\r\nRange: bytes=${i + 10_000_000}-\r\n${close}`, expect: [416] },
      { payload: () => `GET /v2/library/app/blobs/${layer} HTTP/1.1\r\nRange: bytes=oops\r\n${close}`, expect: [200] },
      { payload: (i) => `PUT /v2/library/app/manifests/v${i} HTTP/1.1\r\nContent-Length: 5\r\nContent-Type: application/json\r\n${close}12345`, expect: [405] },
      { payload: () => `POST /v2/library/app/blobs/uploads/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n${close}zz\r\nnot a chunk\r\n`, expect: [400, 405] },
      { payload: () => 'GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n', expect: [400] },
      { payload: () => 'GET /v2/library/app/manifests/v1 HTTP/1.1\r\nHost: x\r\nAccept: applic', expect: [0], halfOpen: true },
      { payload: (i) => `GET /${'x'.repeat(i % 3000)} HTTP/1.1\r\n${close}`, expect: [404] },
      { payload: (i) => `GET /v2/?ns=${'n'.repeat(i % 300)} HTTP/1.1\r\n${close}`, expect: [200] },
      { payload: (i) => `GET /v2/library/app/manifests/v1?ns=unknown${i}.example HTTP/1.1\r\n${close}`, expect: [404] },
    ];
    const statuses = new Map<number, number>();
    let unexpected = 0;
    const run = async (total: number) => {
      let next = 0;
      const deadline = Date.now() + 60_000;
      await Promise.all(
        Array.from({ length: 100 }, async () => {
          while (next < total && Date.now() < deadline) {
            const i = next++;
            const kind = kinds[i % kinds.length]!;
            const status = await rawExchange(mirror.port, Buffer.from(kind.payload(i), 'latin1'), { halfOpen: kind.halfOpen ?? false });
            statuses.set(status, (statuses.get(status) ?? 0) + 1);
            if (!kind.expect.includes(status)) unexpected++;
          }
        }),
      );
      assert.equal(next, total, 'every request was sent within the time bound');
    };

    // The heap grows for the first few thousand, then levels off. A leak does not: it adds as
    // much in the second 10,000 as in the first. So the growth measured is the second 10,000's.
    await run(3_000);
    await run(10_000);
    const before = rssBytes(mirror.process.pid);
    await run(10_000);
    const afterFlood = rssBytes(mirror.process.pid);
    t.diagnostic(`answers ${JSON.stringify([...statuses].sort((a, b) => a[0] - b[0]))}; RSS ${(before / 2 ** 20).toFixed(1)} -> ${(afterFlood / 2 ** 20).toFixed(1)} MiB over the last 10,000`);
    assert.equal(unexpected, 0, `unexpected answers: ${JSON.stringify([...statuses])}`);
    assert.equal(mirror.process.exitStatus(), undefined, 'the mirror is still running');
    assert.equal((await httpRequest(`${mirror.url}/healthz`)).status, 200);
    const blob = await httpRequest(`${mirror.url}/v2/library/app/blobs/${layer}`);
    assert.equal(sha256(blob.body), layer);
    // a leak of 5 KiB per request that reaches the routes (6 in 10 here) adds 30 MiB over those
    // 10,000; the mirror grows by under 1 MiB
    assert.ok(afterFlood - before < 16 * 1024 * 1024, `RSS grew from ${(before / 2 ** 20).toFixed(1)} MiB to ${(afterFlood / 2 ** 20).toFixed(1)} MiB`);
    assert.doesNotMatch(mirror.process.output(), /"level":(50|60)/, 'nothing was logged as an error or fatal');
  } finally {
    await mirror.process.stop();
    await hub.stop();
  }
});


test('an upstream that is down makes one warning a kind every 10 s, not one a request; the next says how many were held back', async () => {
  const down = await freePort(); // nothing listens there: every fetch is refused
  const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: `http://127.0.0.1:${down}` }], logLevel: 'warn' });
  try {
    const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => httpRequest(`${mirror.url}/v2/library/app${i % 4}/manifests/v1`)));
    assert.ok(answers.every((res) => res.status === 502), answers.map((res) => res.status).join(' '));
  } finally {
    await mirror.process.stop(); // every line it wrote is read by the time it has exited
  }
  const warnings = mirror.process.output().split('\n').filter((line) => line.includes('request failed upstream'));
  assert.equal(warnings.length, 1, warnings.join('\n'));
});

test('a blob the upstream cuts mid-transfer is logged as a warning naming the reason (the upstream\'s trouble), a corrupted one as an error: operators alert on errors', async () => {
  const hub = await startRegistry();
  const proxy = await startFaultProxy({ target: hub.url });
  const image = await writeOciImage(await makeTempDir('faults-levels'), { tag: 'v1', seed: 'faults-levels', layerSizes: [1024 * 1024, 512 * 1024] });
  await pushImage(image, hub.ref('library/levels', 'v1'));
  const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: proxy.url }], logLevel: 'warn' });
  try {
    const [cutLayer, badLayer] = [image.layers[0]!, image.layers[1]!];
    proxy.addRule({ path: new RegExp(`/blobs/${cutLayer.digest}$`), truncateAfterBytes: 100_000, times: 1 });
    proxy.addRule({ path: new RegExp(`/blobs/${badLayer.digest}$`), corruptByteAt: 1000, times: 1 });
    for (const layer of [cutLayer, badLayer]) {
      const answer = await httpRequest(`${mirror.url}/v2/library/levels/blobs/${layer.digest}`).catch((error: Error) => error);
      assert.ok(answer instanceof Error || answer.status >= 500, 'no success');
    }
  } finally {
    await mirror.process.stop(); // every line it wrote is read by the time it has exited
    await proxy.stop();
    await hub.stop();
  }
  const lines = mirror.process.output().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as { level: number; msg: string; digest?: string; reason?: string });
  const failed = (digest: string) => lines.filter((line) => line.msg === 'blob fetch failed; nothing stored' && line.digest === digest);
  const [cut] = failed(image.layers[0]!.digest);
  const [bad] = failed(image.layers[1]!.digest);
  assert.equal(cut?.level, 40, JSON.stringify(cut));
  assert.equal(cut?.reason, 'upstream');
  assert.equal(bad?.level, 50, JSON.stringify(bad));
  assert.equal(bad?.reason, 'digest');
  const errors = lines.filter((line) => line.level >= 50);
  assert.deepEqual(errors.map((line) => line.msg), ['blob fetch failed; nothing stored'], 'the corrupted blob is the one error');
});

test('an upstream refusing the mirror (403, 429) is logged at warn as its 5xx are; a client asking for what does not exist is not', async () => {
  const hub = await startRegistry();
  const proxy = await startFaultProxy({ target: hub.url });
  const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: proxy.url }], logLevel: 'warn' });
  try {
    proxy.addRule({ path: /\/v2\/library\/private\//, status: 403 });
    proxy.addRule({ path: /\/v2\/library\/limited\//, status: 429, headers: { 'retry-after': '1' } });
    assert.equal((await httpRequest(`${mirror.url}/v2/library/private/manifests/v1`)).status, 403);
    assert.equal((await httpRequest(`${mirror.url}/v2/library/limited/manifests/v1`)).status, 429);
    assert.equal((await httpRequest(`${mirror.url}/v2/library/missing/manifests/v1`)).status, 404);
    assert.equal((await httpRequest(`${mirror.url}/v2/library/app/manifests/bad~tag`)).status, 400);
  } finally {
    await mirror.process.stop(); // every line it wrote is read by the time it has exited
    await proxy.stop();
    await hub.stop();
  }
  const warned = mirror.process.output().split('\n').filter((line) => line.includes('request failed upstream')).map((line) => JSON.parse(line) as { level: number; code: string });
  assert.deepEqual(warned.map((line) => [line.level, line.code]), [[40, 'DENIED'], [40, 'TOOMANYREQUESTS']]);
});

test('LogThrottle: the first line of a kind goes at once, the same within the window is held back and counted, other kinds are not', () => {
  let clock = 0;
  const throttle = new LogThrottle(() => clock);
  assert.equal(throttle.take('a'), 0);
  for (let i = 0; i < 5; i++) assert.equal(throttle.take('a'), undefined);
  assert.equal(throttle.take('b'), 0, 'another kind');
  clock += LOG_WINDOW_MS;
  assert.equal(throttle.take('a'), 5, 'held back since the last');
  assert.equal(throttle.take('a'), undefined);
});
