// Upstream authentication as Docker Hub does it: a distribution registry behind a token server
// that gives anonymous pull tokens for public repositories and wants credentials for private ones.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pushImage, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { startTokenServer, type TokenServer } from '../test/harness/token-server.ts';
import { startTestMirror } from '../test/harness/mirror.ts';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { MAX_CACHED_TOKENS } from './upstream.ts';

const errorCode = (body: Buffer) => (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]!.code;
const errorMessage = (body: Buffer) => (JSON.parse(body.toString()) as { errors: { message: string }[] }).errors[0]!.message;

describe('upstream token auth', () => {
  let tokens: TokenServer;
  let hub: RegistryServer;
  let publicImage: TestImage;
  let privateImage: TestImage;

  before(async () => {
    tokens = await startTokenServer({ users: { alice: 's3cret' }, privateRepos: ['alice/private'], expiresInSec: 300 });
    hub = await startRegistry({ tokenAuth: tokens });
    publicImage = await writeOciImage(await makeTempDir('public'), { tag: 'v1', seed: 'auth-public' });
    privateImage = await writeOciImage(await makeTempDir('private'), { tag: 'v1', seed: 'auth-private' });
    await pushImage(publicImage, hub.ref('library/public', 'v1'), { creds: 'alice:s3cret' });
    await pushImage(privateImage, hub.ref('alice/private', 'v1'), { creds: 'alice:s3cret' });
  });
  after(cleanupAll);

  test('public repositories are pulled with anonymous tokens, cached per scope until they expire', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url, tagTTL: '0s' }] });
    try {
      const before = tokens.tokensIssued();
      for (let i = 0; i < 3; i++) {
        const res = await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`);
        assert.equal(res.status, 200);
        assert.equal(res.headers['docker-content-digest'], publicImage.manifestDigest);
      }
      const blob = await httpRequest(`${mirror.url}/v2/library/public/blobs/${publicImage.layers[0]!.digest}`);
      assert.equal(blob.status, 200);
      assert.equal(tokens.tokensIssued() - before, 1, 'one token for repository:library/public:pull, reused');
      assert.ok(tokens.requests().slice(-1)[0]!.account === undefined, 'anonymous token request');
    } finally {
      await mirror.stop();
    }
  });

  test('a private repository is refused without credentials and pulled with them', async () => {
    const anonymous = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url }] });
    try {
      const refused = await httpRequest(`${anonymous.url}/v2/alice/private/manifests/v1`);
      assert.equal(refused.status, 403);
      assert.equal(errorCode(refused.body), 'DENIED');
    } finally {
      await anonymous.stop();
    }

    const dir = await makeTempDir('creds');
    await writeFile(path.join(dir, 'password'), 's3cret\n');
    const credentialed = await startTestMirror({
      upstreams: [{ registry: 'docker.io', url: hub.url, credentials: { username: 'alice', passwordFile: path.join(dir, 'password') } }],
      extra: { auth: { allowAnonymousWithCredentials: true } },
    });
    try {
      const res = await httpRequest(`${credentialed.url}/v2/alice/private/manifests/v1`);
      assert.equal(res.status, 200);
      assert.equal(res.headers['docker-content-digest'], privateImage.manifestDigest);
      assert.equal(tokens.requests().slice(-1)[0]!.account, 'alice');
      const blob = await httpRequest(`${credentialed.url}/v2/alice/private/blobs/${privateImage.configDigest}`);
      assert.equal(blob.status, 200);
    } finally {
      await credentialed.stop();
    }
  });

  test('an outage of the token service (5xx, or not reachable) is 502 UNAVAILABLE, not DENIED: counted as a failed fetch, stored tags still served, pulls work again once it is back', async () => {
    // the registry sends clients to the token server through a fault proxy, which can take it down
    const tokenProxy = await startFaultProxy({ target: tokens.url });
    const own = await startRegistry({ tokenAuth: { ...tokens, realm: `${tokenProxy.url}/token` } });
    await pushImage(publicImage, own.ref('library/public', 'v1'), { creds: 'alice:s3cret' });
    await pushImage(publicImage, own.ref('library/other', 'v1'), { creds: 'alice:s3cret' });
    const storagePath = path.join(await makeTempDir('token-outage'), 'data');
    const options = { upstreams: [{ registry: 'docker.io', url: own.url, tagTTL: '0s' }], storagePath };
    const first = await startTestMirror(options);
    assert.equal((await httpRequest(`${first.url}/v2/library/public/manifests/v1`)).status, 200);
    await first.stop();

    const outage = tokenProxy.addRule({ path: /^\/token$/, status: 503 });
    // restarted: no token in memory, so every request needs the token service
    const mirror = await startTestMirror(options);
    try {
      const layer = publicImage.layers[0]!.digest;
      for (const [method, what] of [['GET', 'manifests/v1'], ['GET', `blobs/${layer}`], ['HEAD', `blobs/${layer}`]] as const) {
        const res = await httpRequest(`${mirror.url}/v2/library/other/${what}`, { method });
        assert.equal(res.status, 502, `${method} ${what} while the token service answers 503`);
        if (method === 'GET') {
          assert.equal(errorCode(res.body), 'UNAVAILABLE');
          assert.match(errorMessage(res.body), /token service answered HTTP 503/);
        }
      }
      assert.ok(outage.hits() >= 3);
      const stored = await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`);
      assert.equal(stored.status, 200, 'a stored tag is served while its upstream cannot be asked');
      assert.equal(stored.headers['docker-content-digest'], publicImage.manifestDigest);
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      assert.match(metrics, /regmirror_fetch_failures_total\{reason="upstream"\} 2\n/, 'the manifest and the blob GET');

      outage.remove();
      await tokenProxy.setDown('refuse');
      const unreachable = await httpRequest(`${mirror.url}/v2/library/other/manifests/v1`);
      assert.equal(unreachable.status, 502);
      assert.match(errorMessage(unreachable.body), /token service .* could not be reached \(ECONNREFUSED\)/);

      await tokenProxy.setDown(false);
      const back = await httpRequest(`${mirror.url}/v2/library/other/manifests/v1`);
      assert.equal(back.status, 200);
      assert.equal(back.headers['docker-content-digest'], publicImage.manifestDigest);
    } finally {
      await mirror.stop();
      await tokenProxy.stop();
      await own.stop();
    }
  });

  test('wrong credentials give DENIED, not a hang or a crash', async () => {
    const mirror = await startTestMirror({
      upstreams: [{ registry: 'docker.io', url: hub.url, credentials: { username: 'alice', password: 'wrong' } }],
      extra: { auth: { allowAnonymousWithCredentials: true } },
    });
    try {
      const res = await httpRequest(`${mirror.url}/v2/alice/private/manifests/v1`);
      assert.equal(res.status, 403);
      assert.equal(errorCode(res.body), 'DENIED');
    } finally {
      await mirror.stop();
    }
  });

  test('names the upstream does not have each get a token, but the mirror keeps at most MAX_CACHED_TOKENS; a dropped scope gets a new token and still pulls', async () => {
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url, tagTTL: '0s' }] });
    try {
      const client = mirror.mirror.upstreams.get('docker.io')!.client;
      const pullPublic = async () => {
        const res = await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`);
        assert.equal(res.status, 200);
        assert.equal(res.headers['docker-content-digest'], publicImage.manifestDigest);
      };
      await pullPublic();
      const before = tokens.tokensIssued();
      // what a client asking for made-up names does (the report: team<i>/app, every one 404)
      const names = MAX_CACHED_TOKENS + 100;
      for (let start = 0; start < names; start += 16) {
        await Promise.all(
          Array.from({ length: Math.min(16, names - start) }, async (_, i) => {
            const res = await httpRequest(`${mirror.url}/v2/team${start + i}/app/manifests/latest`);
            assert.equal(res.status, 404, `team${start + i}/app`);
          }),
        );
      }
      assert.equal(tokens.tokensIssued() - before, names, 'one token a name');
      assert.equal(client.cachedTokens, MAX_CACHED_TOKENS, 'the oldest tokens were dropped');

      const issued = tokens.tokensIssued();
      const last = await httpRequest(`${mirror.url}/v2/team${names - 1}/app/manifests/latest`);
      assert.equal(last.status, 404);
      assert.equal(tokens.tokensIssued(), issued, 'the newest token is still held and reused');
      await pullPublic();
      assert.equal(tokens.tokensIssued(), issued + 1, 'library/public, the oldest, was dropped: one token request more');
      assert.equal(client.cachedTokens, MAX_CACHED_TOKENS);
    } finally {
      await mirror.stop();
    }
  });

  test('expired tokens leave the cache: after an hour the next request finds one token held, a new one', async () => {
    let clock = Date.now();
    const mirror = await startTestMirror({ upstreams: [{ registry: 'docker.io', url: hub.url, tagTTL: '0s' }], now: () => clock });
    try {
      const client = mirror.mirror.upstreams.get('docker.io')!.client;
      for (let i = 0; i < 20; i++) assert.equal((await httpRequest(`${mirror.url}/v2/gone${i}/app/manifests/latest`)).status, 404);
      assert.equal((await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`)).status, 200);
      assert.equal(client.cachedTokens, 21);
      const issued = tokens.tokensIssued();
      clock += 60_000; // within the 300 s the token server grants
      assert.equal((await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`)).status, 200);
      assert.equal(tokens.tokensIssued(), issued, 'a live token is reused');
      assert.equal(client.cachedTokens, 21);

      clock += 3_600_000;
      const res = await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`);
      assert.equal(res.status, 200, 'an expired token is not sent: a new one is asked for');
      assert.equal(res.headers['docker-content-digest'], publicImage.manifestDigest);
      assert.equal(client.cachedTokens, 1, 'the 20 expired tokens of names the upstream does not have are gone');
      assert.equal(tokens.tokensIssued(), issued + 1);
    } finally {
      await mirror.stop();
    }
  });
});
