// Several mirror processes on one store, as replicas on a ReadWriteMany volume or the old and the
// new pod of a rolling update run: real mirror processes (`regmirror mirror --config FILE`) against
// a real distribution upstream, one storage.path.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, stat, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import path from 'node:path';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { startMirrorProcess, startTestMirror, temporaryFiles } from '../test/harness/mirror.ts';
import { pushImage, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir, waitFor } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';

const sha256 = (bytes: Buffer) => `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
const temporaryBytes = async (storagePath: string) => (await temporaryFiles(storagePath)).reduce((sum, file) => sum + file.size, 0);
const stored = (storagePath: string, digest: string) => existsSync(path.join(storagePath, 'blobs/sha256', digest.slice(7, 9), digest.slice(7)));

describe('mirror processes sharing one store', () => {
  let upstream: RegistryServer;
  let large: TestImage;
  let small: TestImage;

  before(async () => {
    upstream = await startRegistry();
    large = await writeOciImage(await makeTempDir('shared-large'), { tag: 'v1', seed: 'shared-large', layerSizes: [12 * 1024 * 1024] });
    await pushImage(large, upstream.ref('library/large', 'v1'));
    small = await writeOciImage(await makeTempDir('shared-small'), { tag: 'v1', seed: 'shared-small', layerSizes: [400_000, 400_000, 400_000] });
    await pushImage(small, upstream.ref('library/small', 'v1'));
  });
  after(cleanupAll);

  test("a process starting on the store leaves another's download in progress alone: that client gets the whole blob, and it is stored", async () => {
    const layer = large.layers[0]!;
    const slow = await startFaultProxy({ target: upstream.url });
    slow.addRule({ path: /\/blobs\//, bytesPerSecond: 3 * 1024 * 1024 });
    const storagePath = path.join(await makeTempDir('shared-tmp'), 'data');
    const first = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: slow.url }], storagePath });
    try {
      const pending = httpRequest(`${first.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 60_000 });
      await waitFor(async () => (await temporaryBytes(storagePath)) > 1024 * 1024, { timeoutMs: 20_000, what: "the first process's download to be under way" });
      // the second replica, or the new pod of a rolling update, starts while the first downloads
      const second = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: slow.url }], storagePath });
      try {
        assert.ok((await temporaryBytes(storagePath)) > 1024 * 1024, "the first process's download is still there once the second has started");
        const res = await pending;
        assert.equal(res.status, 200);
        assert.equal(res.body.length, layer.size, 'the whole blob');
        assert.equal(sha256(res.body), layer.digest);
        assert.ok(stored(storagePath, layer.digest), 'stored');
        assert.doesNotMatch(first.process.output(), /ENOENT/);
        // the second serves it from the store
        const again = await httpRequest(`${second.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 20_000 });
        assert.equal(sha256(again.body), layer.digest);
      } finally {
        await second.process.stop();
      }
    } finally {
      await first.process.stop();
      await slow.stop();
    }
  });

  test('what a process killed with -9 was writing is removed by another process on the store while that one runs; temporary files of a process elsewhere go once its heartbeat is stale, and loose ones of an older version once unchanged for 2 minutes', async () => {
    const layer = large.layers[0]!;
    const slow = await startFaultProxy({ target: upstream.url });
    slow.addRule({ path: /\/blobs\//, bytesPerSecond: 3 * 1024 * 1024 });
    const storagePath = path.join(await makeTempDir('shared-sweep'), 'data');
    const tmp = path.join(storagePath, 'tmp');
    const longAgo = new Date(Date.now() - 10 * 60_000);
    // a process on another node whose heartbeat stopped 10 minutes ago, one on another node that lives, and an older version's loose files
    const place = async (file: string, at?: Date) => {
      await mkdir(path.dirname(path.join(tmp, file)), { recursive: true });
      await writeFile(path.join(tmp, file), file.endsWith('.heartbeat') ? JSON.stringify({ hostname: 'other-node', pid: 1, pidNamespace: 'pid:[1]', startedAt: '' }) : 'partial');
      if (at) await utimes(path.join(tmp, file), at, at);
    };
    await place('other-node.1.dead/.heartbeat', longAgo);
    await place('other-node.1.dead/0b5c8e0a-partial-blob');
    await place('other-node.1.live/.heartbeat');
    await place('other-node.1.live/4f1d2e3c-partial-blob');
    await place('0d9b1f3e-old-version-crash', longAgo);
    await place('7a4c2b1d-old-version-writing');

    const first = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: slow.url }], storagePath });
    const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: slow.url }], storagePath, heartbeatMs: 200 });
    try {
      const names = async () => (await temporaryFiles(storagePath)).map((file) => file.path).sort();
      assert.deepEqual(await names(), ['7a4c2b1d-old-version-writing', 'other-node.1.live/4f1d2e3c-partial-blob'], 'at start: what belongs to the process that stopped 10 minutes ago and the old crash went, what is being written stays');
      const pending = httpRequest(`${first.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 60_000 }).catch((error: Error) => error);
      await waitFor(async () => (await temporaryBytes(storagePath)) > 1024 * 1024, { timeoutMs: 20_000, what: "the first process's download to be under way" });
      await first.process.kill9();
      await pending;
      await waitFor(async () => !(await names()).some((name) => name.startsWith(`${hostname()}.${first.process.pid}.`)), { timeoutMs: 20_000, what: "the killed process's unfinished download to be removed by the other process, without a restart" });
      // the process elsewhere stops, and the older version's file stops changing
      await utimes(path.join(tmp, 'other-node.1.live/.heartbeat'), longAgo, longAgo);
      await utimes(path.join(tmp, '7a4c2b1d-old-version-writing'), longAgo, longAgo);
      await waitFor(async () => (await names()).length === 0, { timeoutMs: 20_000, what: 'the stale temporary files to be removed' });
      assert.deepEqual(await readdir(tmp), [second.mirror.store.instance], "only the running process's own directory is left");
      // and the store still works
      const res = await httpRequest(`${second.url}/v2/library/large/blobs/${layer.digest}`, { timeoutMs: 60_000 });
      assert.equal(sha256(res.body), layer.digest);
    } finally {
      await second.stop();
      await first.process.stop();
      await slow.stop();
    }
  });

  test('storage.maxSize holds for the store as a whole: a process sees what the others stored and evicts the least recently read of it, and a process whose stored blob another evicted fetches it again', async () => {
    const MAX = 1024 * 1024;
    const storagePath = path.join(await makeTempDir('shared-max'), 'data');
    const storage = { maxSize: '1Mi' };
    const first = await startMirrorProcess({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage } });
    // in this process, so its heartbeat (and the rescan that goes with it) comes every 200 ms, not 30 s
    const second = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, extra: { storage }, heartbeatMs: 200 });
    const blobBytes = () => {
      let total = 0;
      for (const layer of small.layers) if (stored(storagePath, layer.digest)) total += layer.size;
      return total;
    };
    try {
      await second.mirror.indexed;
      const [a, b, c] = small.layers.map((layer) => layer.digest) as [string, string, string];
      const pull = async (url: string, digest: string) => {
        const res = await httpRequest(`${url}/v2/library/small/blobs/${digest}`, { timeoutMs: 20_000 });
        assert.equal(res.status, 200);
        assert.equal(sha256(res.body), digest);
      };
      // 1.2 MB in all, over 1 MiB; each process stored less than that itself
      await pull(first.url, a);
      await pull(first.url, b);
      await pull(second.url, c);
      await waitFor(() => blobBytes() <= MAX, { timeoutMs: 20_000, what: 'the store as a whole to be evicted under storage.maxSize' });
      assert.ok(!stored(storagePath, a), 'the least recently read blob went, though another process stored it');
      assert.ok(stored(storagePath, c), 'the most recent stayed');
      await waitFor(() => second.mirror.evictor.bytes === blobBytes(), { timeoutMs: 20_000, what: "the second process's index to count the whole store" });
      // the first process still has it in its index: it finds the file gone and fetches it again
      const before = await upstream.countRequests({ method: 'GET', path: new RegExp(`/blobs/${a}$`) });
      await pull(first.url, a);
      assert.equal(await upstream.countRequests({ method: 'GET', path: new RegExp(`/blobs/${a}$`) }), before + 1, 'fetched again from the upstream');
    } finally {
      await second.stop();
      await first.process.stop();
    }
  });

  test("a process keeps its heartbeat fresh while it walks the store (a large store, a network volume): the others never take it for gone", async () => {
    const storagePath = path.join(await makeTempDir('shared-walk'), 'data');
    // another live process on the store, so every tick walks it again
    const other = path.join(storagePath, 'tmp', 'elsewhere.1.abcdef01');
    await mkdir(other, { recursive: true });
    await writeFile(path.join(other, '.heartbeat'), JSON.stringify({ hostname: 'elsewhere', pid: 1, pidNamespace: undefined, startedAt: new Date().toISOString() }));
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: upstream.url }], storagePath, heartbeatMs: 100 });
    // each walk takes 3 s, as one of a store with millions of files, or on a slow network volume, would
    let walks = 0;
    mirror.mirror.evictor.rescan = async () => {
      walks++;
      await new Promise((resolve) => setTimeout(resolve, 3_000));
    };
    const heartbeat = path.join(mirror.mirror.store.temporaryDirectory, '.heartbeat');
    try {
      await waitFor(() => walks >= 1, { timeoutMs: 10_000, what: 'a walk of the store to start' });
      let stalest = 0;
      const until = Date.now() + 2_500; // within the first walk
      while (Date.now() < until) {
        const now = new Date();
        await utimes(path.join(other, '.heartbeat'), now, now);
        stalest = Math.max(stalest, Date.now() - (await stat(heartbeat)).mtimeMs);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      // a tenth of a second between touches; a walk that held them back would leave the heartbeat 3 s old
      assert.ok(stalest < 1_500, `the heartbeat was ${stalest} ms old during a walk`);
      assert.equal(walks, 1, 'one walk at a time: ticks during a walk do not queue more');
    } finally {
      await mirror.stop();
    }
  });
});
