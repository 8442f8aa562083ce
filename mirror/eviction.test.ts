// Eviction by last read (storage.ttl) and by size (storage.maxSize), with an injected clock, against
// a real upstream registry; and prefetch of configured images.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readlinkSync, statSync } from 'node:fs';
import { mkdir, stat, utimes, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { startMirrorProcess, startTestMirror, type TestMirror } from '../test/harness/mirror.ts';
import { pushImage, skopeo, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, sleep, waitFor } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { resolveConfig } from './config.ts';
import { ConfigError } from '../common/config-error.ts';
import { createMirror } from './app.ts';
import { createLogger } from '../common/logger.ts';

const HOUR = 3_600_000;
const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;

async function metricValue(url: string, line: RegExp): Promise<number> {
  const found = (await httpRequest(`${url}/metrics`)).body.toString().split('\n').find((l) => line.test(l));
  return found ? Number(found.split(' ').pop()) : 0;
}

/** Files the mirror did not write, as a backup tool or NFS leaves them, last changed a day ago (the first eviction would take them). */
async function placeStrayFiles(storagePath: string): Promise<string[]> {
  const strays = [
    path.join(storagePath, 'blobs/sha256/ab/ab0123.partial'),
    path.join(storagePath, 'manifests/sha256/cd/.nfs0000000001f2e3d400000001'),
    // and where the store keeps only directories
    path.join(storagePath, 'manifests/sha256/.nfs0000000001f2e3d400000002'),
    path.join(storagePath, 'blobs/stray-copy'),
  ];
  const dayAgo = new Date(Date.now() - 24 * HOUR);
  for (const stray of strays) {
    await mkdir(path.dirname(stray), { recursive: true });
    await writeFile(stray, Buffer.alloc(100_000));
    await utimes(stray, dayAgo, dayAgo);
  }
  return strays;
}

/** Bytes of every file under the store (stored content and downloads in progress), each file once however it moves meanwhile. */
function bytesOnDisk(storagePath: string): number {
  const sizes = new Map<number, number>();
  for (const name of readdirSync(storagePath, { recursive: true }) as string[]) {
    try {
      const info = statSync(path.join(storagePath, name));
      if (info.isFile()) sizes.set(info.ino, info.size);
    } catch {
      // renamed into the store or removed since the listing
    }
  }
  return [...sizes.values()].reduce((sum, size) => sum + size, 0);
}

describe('eviction', () => {
  let upstream: RegistryServer;
  let image: TestImage;
  const blobs = () => image.layers.map((l) => l.digest);
  const get = (mirror: TestMirror, digest: string) => httpRequest(`${mirror.url}/v2/library/evict/blobs/${digest}`, { timeoutMs: 20_000 });
  const upstreamGets = (digest: string) => upstream.countRequests({ method: 'GET', path: new RegExp(`/blobs/${digest}$`) });

  before(async () => {
    upstream = await startRegistry();
    image = await writeOciImage(await makeTempDir('evict'), { tag: 'v1', seed: 'evict', layerSizes: [400_000, 400_000, 400_000, 8 * 1024 * 1024] });
    await pushImage(image, upstream.ref('library/evict', 'v1'));
  });
  after(cleanupAll);

  test('storage.ttl evicts content not read for that long, counted from the last read, not the first fetch', async () => {
    let now = 10 * HOUR;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { ttl: '1h' } }, now: () => now });
    try {
      await mirror.mirror.indexed;
      const [a, b] = blobs() as [string, string];
      await get(mirror, a);
      await get(mirror, b);
      now += 0.8 * HOUR;
      await get(mirror, a); // read again: its hour starts over
      now += 0.3 * HOUR;
      await mirror.mirror.evictor.evict();
      assert.equal((await httpRequest(`${mirror.url}/v2/library/evict/blobs/${b}`, { method: 'HEAD' })).status, 200, 'HEAD answered from upstream, not evidence of the store');
      const before = await upstreamGets(b);
      await get(mirror, b);
      assert.equal(await upstreamGets(b), before + 1, 'b was evicted and is fetched again');
      const beforeA = await upstreamGets(a);
      await get(mirror, a);
      assert.equal(await upstreamGets(a), beforeA, 'a, read within the hour, was kept');
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      assert.match(metrics, /regmirror_evictions_total\{reason="ttl"\} [1-9]/);
    } finally {
      await mirror.stop();
    }
  });

  test("a tag's record goes with its manifest: evicted while running, or found at start pointing at a manifest no longer stored, together with a media type file left without its manifest", async () => {
    let now = 15 * HOUR;
    const storagePath = path.join(await makeTempDir('evict-tags'), 'data');
    const tagsDir = path.join(storagePath, 'tags/docker.io/library/evict/_tags');
    const accept = { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' };
    const first = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage: { ttl: '1h' } }, now: () => now });
    try {
      await first.mirror.indexed;
      assert.equal((await httpRequest(`${first.url}/v2/library/evict/manifests/v1`, { headers: accept })).status, 200);
      assert.deepEqual(readdirSync(tagsDir), ['v1']);
      now += 2 * HOUR;
      await first.mirror.evictor.evict();
      await waitFor(() => readdirSync(tagsDir).length === 0, { what: 'the record of v1 to go with its manifest' });
    } finally {
      await first.stop();
    }
    // What a mirror that evicted manifests before this rule, or crashed between two files, left:
    const gone = sha256(Buffer.from('a manifest evicted long ago'));
    await writeFile(path.join(tagsDir, 'old'), JSON.stringify({ digest: gone, mediaType: 'application/vnd.oci.image.manifest.v1+json', checkedAt: now }));
    const orphanType = path.join(storagePath, 'manifests/sha256', gone.slice(7, 9), `${gone.slice(7)}.type`);
    await mkdir(path.dirname(orphanType), { recursive: true });
    await writeFile(orphanType, 'application/vnd.oci.image.manifest.v1+json');
    const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage: { ttl: '1h' } }, now: () => now });
    try {
      // a tag pulled now keeps its record; the stale one and the orphan go
      assert.equal((await httpRequest(`${second.url}/v2/library/evict/manifests/v1`, { headers: accept })).status, 200);
      await second.mirror.indexed;
      await waitFor(() => !readdirSync(tagsDir).includes('old'), { what: 'the stale record to be swept' });
      assert.deepEqual(readdirSync(tagsDir), ['v1']);
      await assert.rejects(stat(orphanType), /ENOENT/);
    } finally {
      await second.stop();
    }
  });

  test('records of tags that left memory (more tags than it keeps there) go too when their manifest is evicted, without a restart', async () => {
    let now = 30 * HOUR;
    await pushImage(image, upstream.ref('library/evict', 'v2'));
    const tagsDir = (m: TestMirror) => path.join(m.storagePath, 'tags/docker.io/library/evict/_tags');
    const accept = { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' };
    // one record in memory: v1's leaves it when v2 is recorded, and only the disk knows it then
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { ttl: '1h' } }, now: () => now, tagMemoryLimit: 1 });
    try {
      await mirror.mirror.indexed;
      for (const tag of ['v1', 'v2']) assert.equal((await httpRequest(`${mirror.url}/v2/library/evict/manifests/${tag}`, { headers: accept })).status, 200);
      assert.deepEqual(readdirSync(tagsDir(mirror)).sort(), ['v1', 'v2']);
      now += 2 * HOUR;
      await mirror.mirror.evictor.evict();
      await waitFor(() => readdirSync(tagsDir(mirror)).length === 0, { what: 'both records to go with their manifest, v1 by the sweep' });
    } finally {
      await mirror.stop();
    }
  });

  test('storage.maxSize evicts the least recently read content while serving, and the store stays under it', async () => {
    let now = 20 * HOUR;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { maxSize: '1Mi' } }, now: () => now });
    try {
      await mirror.mirror.indexed;
      const [a, b, c] = blobs() as [string, string, string];
      await get(mirror, a);
      now += 1000;
      await get(mirror, b);
      now += 1000;
      await get(mirror, a); // a is now more recent than b
      now += 1000;
      await get(mirror, c); // 1.2 MB > 1 MiB: b, the least recently read, goes
      await waitFor(() => mirror.mirror.evictor.bytes <= 1024 * 1024, { what: 'eviction under maxSize' });
      const counts = { a: await upstreamGets(a), b: await upstreamGets(b), c: await upstreamGets(c) };
      await get(mirror, a);
      await get(mirror, c);
      assert.equal(await upstreamGets(a), counts.a, 'a kept');
      assert.equal(await upstreamGets(c), counts.c, 'c kept');
      await get(mirror, b);
      assert.equal(await upstreamGets(b), counts.b + 1, 'b evicted and fetched again');
    } finally {
      await mirror.stop();
    }
  });

  test('a blob larger than storage.maxSize by itself is evicted once its client has it, without waiting for other content to be stored', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { maxSize: '1Mi' } } });
    try {
      await mirror.mirror.indexed;
      const large = blobs()[3]!; // 8 MiB
      const res = await get(mirror, large);
      assert.equal(res.status, 200);
      assert.equal(sha256(res.body), large);
      const file = path.join(mirror.storagePath, 'blobs/sha256', large.slice(7, 9), large.slice(7));
      // nothing else is asked for: only the end of its stream can set eviction off
      await waitFor(() => !existsSync(file) && mirror.mirror.evictor.bytes <= 1024 * 1024, { timeoutMs: 10_000, what: 'the blob over maxSize to be evicted after its client had it' });
      assert.equal(await metricValue(mirror.url, /^regmirror_evictions_total\{reason="size"\}/), 1);
      // asked for again, it is fetched again and served whole
      assert.equal(sha256((await get(mirror, large)).body), large);
    } finally {
      await mirror.stop();
    }
  });

  test('last-read times and sizes survive a restart', async () => {
    let now = 30 * HOUR;
    const storagePath = path.join(await makeTempDir('evict-restart'), 'data');
    const options = { upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage: { ttl: '1h' } }, now: () => now };
    const first = await startTestMirror(options);
    const [a, b] = blobs() as [string, string];
    await get(first, a);
    now += 0.9 * HOUR;
    await get(first, b);
    await first.stop();
    now += 0.5 * HOUR; // a: 1.4 h since its read, b: 0.5 h
    const second = await startTestMirror(options);
    try {
      await second.mirror.indexed;
      assert.equal(second.mirror.evictor.items, 1, 'only b is left after the index rebuild');
      assert.equal(second.mirror.evictor.bytes, 400_000 + (image.layers[1]!.size - 400_000));
      const before = await upstreamGets(b);
      await get(second, b);
      assert.equal(await upstreamGets(b), before, 'b served from the store after the restart');
    } finally {
      await second.stop();
    }
  });

  test('a blob evicted between its lookup and its opening is fetched again, never answered 404: 6 clients over 1500 requests while every miss evicts', async () => {
    const small = await writeOciImage(await makeTempDir('evict-race'), { tag: 'v1', seed: 'evict-race', layerSizes: Array.from({ length: 6 }, () => 300_000) });
    await pushImage(small, upstream.ref('library/churn', 'v1'));
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { maxSize: '1Mi' } } });
    try {
      const digests = small.layers.map((l) => l.digest);
      const statuses = new Map<number, number>();
      let asked = 0;
      const deadline = Date.now() + 60_000;
      await Promise.all(Array.from({ length: 6 }, async (_, worker) => {
        while (asked < 1500 && Date.now() < deadline) {
          const digest = digests[(asked++ * 7 + worker) % digests.length]!;
          const res = await httpRequest(`${mirror.url}/v2/library/churn/blobs/${digest}`, { timeoutMs: 20_000 });
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
          if (res.status === 200) assert.equal(`sha256:${createHash('sha256').update(res.body).digest('hex')}`, digest);
        }
      }));
      assert.deepEqual(Object.fromEntries(statuses), { 200: asked });
      // each request counted once, as a hit or (fetched again) a miss
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      const count = (result: string) => Number(new RegExp(`^regmirror_cache_requests_total\\{kind="blob",result="${result}"\\} (\\d+)`, 'm').exec(metrics)?.[1] ?? 0);
      assert.equal(count('hit') + count('miss'), asked, `hits ${count('hit')} + misses ${count('miss')}`);
    } finally {
      await mirror.stop();
    }
  });

  test('a blob being streamed to a client is not evicted under it', async () => {
    let now = 40 * HOUR;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { maxSize: '9Mi' } }, now: () => now });
    try {
      await mirror.mirror.indexed;
      const big = image.layers[3]!;
      const small = blobs().slice(0, 3);
      await get(mirror, big.digest);
      // A client that reads slowly: the response from the store stays open with most of the blob unsent.
      now += 1000;
      const response = await new Promise<http.IncomingMessage>((resolve) => http.get(`${mirror.url}/v2/library/evict/blobs/${big.digest}`, resolve));
      response.pause();
      for (const digest of small) {
        now += 1000;
        await get(mirror, digest); // 8 MiB + 1.2 MB > 9 MiB: the big blob is the least recently read
      }
      await mirror.mirror.evictor.evict();
      // room for the last one was made before it was fetched: it stays, with the streamed blob
      assert.equal(mirror.mirror.evictor.bytes, big.size + image.layers[2]!.size, 'everything but the streamed blob and the last one fetched was evicted');
      let received = 0;
      response.on('data', (chunk: Buffer) => (received += chunk.length));
      response.resume();
      await new Promise((resolve) => response.on('end', resolve));
      assert.equal(received, big.size, 'the slow client got every byte');
      for (const digest of small) {
        now += 1000;
        await get(mirror, digest);
      }
      await waitFor(() => mirror.mirror.evictor.bytes < big.size, { what: 'the big blob to be evicted once nobody streams it' });
    } finally {
      await mirror.stop();
    }
  });

  test('a download that finds storage.maxSize held by a stalled client of stored content goes ahead after a bounded wait, instead of hanging with every later miss queued behind it', async () => {
    const other = await writeOciImage(await makeTempDir('evict-wait'), { tag: 'v1', seed: 'evict-wait', layerSizes: [2 * 1024 * 1024] });
    await pushImage(other, upstream.ref('library/evict-wait', 'v1'));
    // the wait is bounded by half the upstream idle timeout (the download's response is not read meanwhile)
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { maxSize: '9Mi' } }, timeouts: { bodyIdleMs: 2_000 } });
    let stalled: http.IncomingMessage | undefined;
    try {
      await mirror.mirror.indexed;
      const big = image.layers[3]!;
      await get(mirror, big.digest);
      // a client that stops reading an 8 MiB stored blob: it is pinned, and 2 MiB more do not fit under 9Mi
      stalled = await new Promise<http.IncomingMessage>((resolve) => http.get(`${mirror.url}/v2/library/evict/blobs/${big.digest}`, resolve));
      stalled.pause();
      const layer = other.layers[0]!.digest;
      const res = await httpRequest(`${mirror.url}/v2/library/evict-wait/blobs/${layer}`, { timeoutMs: 15_000 });
      assert.equal(res.status, 200);
      assert.equal(`sha256:${createHash('sha256').update(res.body).digest('hex')}`, layer);
      assert.equal(mirror.mirror.evictor.reserved, 0);
    } finally {
      stalled?.destroy();
      await mirror.stop();
    }
  });

  test('clients that stop reading a stored blob are cut after the send timeout, each counted once: the blob is then neither held open nor pinned, and storage.ttl evicts it', async () => {
    let now = 60 * HOUR;
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { storage: { ttl: '1h' } }, now: () => now, sendTimeoutMs: 1_000 });
    const stalled: net.Socket[] = [];
    const blobGets = () => metricValue(mirror.url, /^regmirror_http_requests_total\{route="blob",method="GET",status="200"\}/);
    try {
      await mirror.mirror.indexed;
      const big = image.layers[3]!; // 8 MiB: more than the socket buffers take from a client that reads nothing
      const hex = big.digest.slice('sha256:'.length);
      const file = path.join(mirror.storagePath, 'blobs/sha256', hex.slice(0, 2), hex);
      assert.equal(sha256((await get(mirror, big.digest)).body), big.digest);
      // this process's descriptors on the blob file: the mirror runs in it
      const openOnBlob = () => readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`) === file;
        } catch {
          return false; // closed since the listing
        }
      }).length;
      for (let i = 0; i < 10; i++) {
        const socket = net.connect(mirror.port, '127.0.0.1');
        stalled.push(socket);
        socket.on('error', () => undefined);
        socket.pause(); // reads nothing, ever
        socket.write(`GET /v2/library/evict/blobs/${big.digest} HTTP/1.1\r\nhost: ${mirror.host}\r\n\r\n`);
      }
      await waitFor(() => openOnBlob() === 10, { timeoutMs: 5_000, what: 'the 10 stalled responses to open the blob' });
      await waitFor(() => openOnBlob() === 0, { timeoutMs: 10_000, what: 'the stalled responses to be cut (1 s send timeout) and the blob closed' });
      await waitFor(async () => (await blobGets()) >= 11, { timeoutMs: 5_000, what: 'the cut responses to be counted' });
      assert.equal(await blobGets(), 11, 'the whole one and the 10 cut ones, each once, with the status they began with');

      // not read for the TTL, and no longer pinned by a stream: evicted
      now += 2 * HOUR;
      await waitFor(async () => {
        await mirror.mirror.evictor.evict();
        return !existsSync(file);
      }, { timeoutMs: 5_000, what: 'the blob to be evicted' });
      assert.equal(mirror.mirror.evictor.items, 0);
    } finally {
      for (const socket of stalled) socket.destroy();
      await mirror.stop();
    }
  });

  test('a file in the store that the mirror did not write (an unfinished copy, an NFS .nfs file) neither stops the mirror nor is evicted: storage.maxSize evicts around it', async () => {
    const storagePath = path.join(await makeTempDir('evict-stray'), 'data');
    const strays = await placeStrayFiles(storagePath);
    const mirror = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage: { maxSize: '1Mi' } }, logLevel: 'warn' });
    try {
      // three 400 kB blobs do not fit in 1 MiB: the least recently read content makes room
      for (const digest of blobs().slice(0, 3)) {
        const res = await httpRequest(`${mirror.url}/v2/library/evict/blobs/${digest}`, { timeoutMs: 20_000 });
        assert.equal(res.status, 200);
        assert.equal(sha256(res.body), digest);
      }
      await waitFor(async () => (await metricValue(mirror.url, /^regmirror_evictions_total\{reason="size"\}/)) >= 1, { what: 'eviction by size' });
      await sleep(200);
      assert.equal(mirror.process.exitStatus(), undefined, 'the mirror is still running');
      assert.equal((await httpRequest(`${mirror.url}/healthz`)).status, 200);
      for (const stray of strays) assert.equal((await stat(stray)).size, 100_000, `${stray} left alone`);
      for (const stray of strays) assert.ok(mirror.process.output().split('\n').some((line) => line.includes(`"path":"${stray}"`) && line.includes('did not write')), `${stray} is named in a warning`);
    } finally {
      await mirror.process.stop();
    }
  });

  test('a file in the store that the mirror did not write does not turn storage.ttl off: content not read for the TTL is still evicted', async () => {
    let now = 50 * HOUR;
    const storagePath = path.join(await makeTempDir('evict-stray-ttl'), 'data');
    await placeStrayFiles(storagePath);
    // a TTL of 10 s is swept every second
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage: { ttl: '10s' } }, now: () => now });
    try {
      await mirror.mirror.indexed;
      const a = blobs()[0]!;
      await get(mirror, a);
      now += HOUR;
      await waitFor(() => mirror.mirror.evictor.items === 0, { timeoutMs: 10_000, what: 'the TTL sweep to evict the blob' });
      const before = await upstreamGets(a);
      await get(mirror, a);
      assert.equal(await upstreamGets(a), before + 1, 'the expired blob was evicted and is fetched again');
    } finally {
      await mirror.stop();
    }
  });

  test('concurrent misses set their sizes aside under storage.maxSize: the store on disk, downloads included, never goes past it, and every pull succeeds', async () => {
    const MAX = 4 * 1024 * 1024;
    const wave = await writeOciImage(await makeTempDir('evict-wave'), { tag: 'v1', seed: 'evict-wave', layerSizes: Array.from({ length: 5 }, () => 1536 * 1024) });
    await pushImage(wave, upstream.ref('library/wave', 'v1'));
    // a slow link: each download takes most of a second, so they overlap
    const slow = await startFaultProxy({ target: upstream.url, bytesPerSecond: 2 * 1024 * 1024 });
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: slow.url }], extra: { storage: { maxSize: '4Mi' } } });
    try {
      await mirror.mirror.indexed;
      // the store is near maxSize first, with content read earlier
      for (const digest of blobs().slice(0, 3)) assert.equal((await get(mirror, digest)).status, 200);
      let peak = 0;
      let sampling = true;
      const deadline = Date.now() + 60_000;
      const sampler = (async () => {
        while (sampling && Date.now() < deadline) {
          peak = Math.max(peak, bytesOnDisk(mirror.storagePath));
          await sleep(10);
        }
      })();
      // as containerd pulls an image: every layer at once, 7.5 MiB of them
      const results = await Promise.all(wave.layers.map((layer) => httpRequest(`${mirror.url}/v2/library/wave/blobs/${layer.digest}`, { timeoutMs: 30_000 })));
      sampling = false;
      await sampler;
      results.forEach((res, i) => {
        assert.equal(res.status, 200);
        assert.equal(sha256(res.body), wave.layers[i]!.digest);
      });
      assert.ok(peak >= 1536 * 1024, `the sampler saw the downloads (${peak} bytes)`);
      assert.ok(peak <= MAX, `at most ${MAX} bytes on disk, saw ${peak}`);
      assert.ok(bytesOnDisk(mirror.storagePath) <= MAX);
      assert.equal(await metricValue(mirror.url, /^regmirror_store_reserved_bytes /), 0, 'nothing left set aside');
    } finally {
      await mirror.stop();
      await slow.stop();
    }
  });
});

describe('prefetch', () => {
  let upstream: RegistryServer;

  before(async () => {
    upstream = await startRegistry();
  });
  after(cleanupAll);

  test('configured images are brought into the store at start and then pull with the upstream down', async () => {
    const single = await writeOciImage(await makeTempDir('pre1'), { tag: 'v1', seed: 'prefetch-single' });
    const multi = await writeOciImage(await makeTempDir('pre2'), { tag: 'v2', seed: 'prefetch-multi', platforms: [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64' }] });
    await pushImage(single, upstream.ref('library/single', 'v1'));
    await pushImage(multi, upstream.ref('team/multi', 'v2'));
    const mirror = await startTestMirror({
      upstreams: [{ registry: 'docker.io', url: upstream.url, tagTTL: '1h' }],
      extra: { prefetch: ['single:v1', 'docker.io/team/multi:v2'], prefetchPlatforms: ['linux/arm64'] },
    });
    try {
      await waitFor(async () => /regmirror_prefetch_images_total\{result="ok"\} 2/.test((await httpRequest(`${mirror.url}/metrics`)).body.toString()), { timeoutMs: 20_000, what: 'prefetch of both images' });
      const arm = multi.platforms!.find((p) => p.platform.architecture === 'arm64')!;
      const amd = multi.platforms!.find((p) => p.platform.architecture === 'amd64')!;
      assert.equal(await upstream.countRequests({ method: 'GET', path: new RegExp(`/blobs/${arm.layers[0]!.digest}$`) }), 1, 'arm64 layer prefetched');
      assert.equal(await upstream.countRequests({ method: 'GET', path: new RegExp(`/blobs/${amd.layers[0]!.digest}$`) }), 0, 'amd64 layer not prefetched');
      await upstream.stop();
      const dest = await makeTempDir('pre-dest');
      const result = await skopeo(['copy', '--src-tls-verify=false', `docker://${mirror.host}/library/single:v1`, `oci:${dest}:x`]);
      assert.equal(result.code, 0, result.stderr);
    } finally {
      await mirror.stop();
      await upstream.start();
    }
  });

  test('each prefetch run counts as a read of the whole image: with storage.ttl its blobs stay as long as its manifest does', async () => {
    const HOUR_MS = 3_600_000;
    let now = 100 * HOUR_MS;
    const image = await writeOciImage(await makeTempDir('pre-ttl'), { tag: 'v1', seed: 'prefetch-ttl', layerSizes: [50_000, 60_000] });
    await pushImage(image, upstream.ref('library/kept', 'v1'));
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], extra: { prefetch: ['kept:v1'], storage: { ttl: '1h' } }, now: () => now });
    try {
      await mirror.mirror.indexed;
      await waitFor(async () => /regmirror_prefetch_images_total\{result="ok"\} 1/.test((await httpRequest(`${mirror.url}/metrics`)).body.toString()), { what: 'the first prefetch' });
      const stored = mirror.mirror.evictor.items;
      assert.equal(stored, image.layers.length + 2, 'manifest, config and layers');
      now += 0.6 * HOUR_MS;
      await mirror.mirror.prefetcher.runOnce();
      now += 0.6 * HOUR_MS; // 1.2h after the fetch, 0.6h after the last prefetch run
      await mirror.mirror.evictor.evict();
      assert.equal(mirror.mirror.evictor.items, stored, 'nothing the last run read is evicted');
    } finally {
      await mirror.stop();
    }
  });

  test('a prefetch entry that is not an image reference, or names an unknown registry, stops the start with the key named', async () => {
    const base = { storage: { path: await makeTempDir('pre-bad') }, upstreams: [{ registry: 'docker.io', url: upstream.url }] };
    for (const [prefetch, message] of [
      [['ok:v1', 'Bad/Name'], /prefetch\[1\]/],
      [['quay.io/org/app:v1'], /prefetch\[0\].*quay\.io/],
    ] as const) {
      const config = resolveConfig({ ...base, prefetch: [...prefetch] }, 'mirror.yaml');
      await assert.rejects(createMirror(config, { logger: createLogger('test', 'silent') }), (error: Error) => error instanceof ConfigError && message.test(error.message) && error.message.startsWith('mirror.yaml: '));
    }
  });
});
