// Upstream authentication as Docker Hub does it: a distribution registry behind a token server
// that gives anonymous pull tokens for public repositories and wants credentials for private ones.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Agent } from 'undici';
import { createLogger } from '../common/logger.ts';
import { MEDIA_TYPES, pushImage, readBlob, writeOciImage, type TestImage } from '../test/harness/oci-image.ts';
import { cleanupAll, httpRequest, makeTempDir } from '../test/harness/process.ts';
import { startRegistry, type RegistryServer } from '../test/harness/registry.ts';
import { startTokenServer, type TokenServer } from '../test/harness/token-server.ts';
import { startTestMirror } from '../test/harness/mirror.ts';
import { startFaultProxy } from '../test/harness/fault-proxy.ts';
import { makeCertificate } from '../test/harness/tls.ts';
import { MAX_CACHED_TOKENS, TokenServiceError, UpstreamClient } from './upstream.ts';

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

  test('a token service that takes connections and never answers does not hold a stored tag past upstreamTimeouts.revalidate: the stored manifest is served', async () => {
    const tokenProxy = await startFaultProxy({ target: tokens.url });
    const own = await startRegistry({ tokenAuth: { ...tokens, realm: `${tokenProxy.url}/token` } });
    await pushImage(publicImage, own.ref('library/slow-auth', 'v1'), { creds: 'alice:s3cret' });
    const storagePath = path.join(await makeTempDir('token-hang'), 'data');
    // the other upstream timeouts are far longer than the client waits, so only the revalidate bound can answer in time
    const options = {
      upstreams: [{ registry: 'docker.io', url: own.url, tagTTL: '0s' }],
      storagePath,
      extra: { upstreamTimeouts: { revalidate: '1s', response: '120s' } },
    };
    const first = await startTestMirror(options);
    assert.equal((await httpRequest(`${first.url}/v2/library/slow-auth/manifests/v1`)).status, 200);
    await first.stop();

    // restarted: no token in memory, so the tag check needs the token service, which now hangs
    const hang = tokenProxy.addRule({ path: /^\/token$/, hang: true });
    const mirror = await startTestMirror(options);
    try {
      const res = await httpRequest(`${mirror.url}/v2/library/slow-auth/manifests/v1`, { timeoutMs: 30_000 });
      assert.equal(res.status, 200);
      assert.equal(res.headers['docker-content-digest'], publicImage.manifestDigest);
      assert.ok(hang.hits() >= 1, 'the token request was made and left hanging');
      const metrics = (await httpRequest(`${mirror.url}/metrics`)).body.toString();
      assert.match(metrics, /regmirror_cache_requests_total\{kind="manifest",result="stale"\} 1\n/);
    } finally {
      await mirror.stop();
      await tokenProxy.stop();
      await own.stop();
    }
  });

  test("blob storage the upstream redirects to never gets its credentials: storage's own 401 challenge fails that blob (502 UNAVAILABLE), and other repositories still get tokens from the upstream's token service", async () => {
    // Docker Hub sends blob GETs to its CDN; distribution does not redirect by itself, so the fault
    // proxy in front of it answers the chosen blob GETs with a redirect to this storage
    const front = await startFaultProxy({ target: hub.url });
    const seen: string[] = [];
    const storage = http.createServer((req, res) => {
      const [pathname = '', query = ''] = (req.url ?? '').split('?', 2);
      seen.push(`${req.method} ${pathname} ${req.headers.authorization ?? '(no authorization)'}`);
      if (pathname.startsWith('/ok/') && query === 'signature=1') {
        void readBlob(privateImage, pathname.slice('/ok/'.length)).then((bytes) => res.writeHead(200, { 'content-length': bytes.length }).end(bytes));
      } else if (pathname === '/token') {
        // what storage that wants credentials would do with them
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token: 'storage-token', expires_in: 300 }));
      } else {
        res.writeHead(401, { 'www-authenticate': `Bearer realm="http://${req.headers.host}/token",service="storage"` }).end();
      }
    });
    await new Promise<void>((resolve) => storage.listen(0, '127.0.0.1', resolve));
    const storageHost = `127.0.0.1:${(storage.address() as AddressInfo).port}`;
    const redirect = (digest: string, to: string) => front.addRule({ method: 'GET', path: new RegExp(`/blobs/${digest}$`), status: 307, headers: { location: `http://${storageHost}${to}?signature=1` } });
    const mirror = await startTestMirror({
      upstreams: [{ registry: 'docker.io', url: front.url, credentials: { username: 'alice', password: 's3cret' } }],
      extra: { auth: { allowAnonymousWithCredentials: true } },
    });
    try {
      assert.equal((await httpRequest(`${mirror.url}/v2/alice/private/manifests/v1`)).status, 200);
      // a redirect the storage answers works as before, without our token
      redirect(privateImage.configDigest, `/ok/${privateImage.configDigest}`);
      const config = await httpRequest(`${mirror.url}/v2/alice/private/blobs/${privateImage.configDigest}`);
      assert.equal(config.status, 200);
      assert.deepEqual(config.body, await readBlob(privateImage, privateImage.configDigest));

      const layer = privateImage.layers[0]!.digest;
      redirect(layer, `/refuse/${layer}`);
      const refused = await httpRequest(`${mirror.url}/v2/alice/private/blobs/${layer}`);
      assert.deepEqual(seen, [`GET /ok/${privateImage.configDigest} (no authorization)`, `GET /refuse/${layer} (no authorization)`], 'the storage got no credentials and no token request');
      assert.equal(refused.status, 502);
      assert.equal(errorCode(refused.body), 'UNAVAILABLE');
      assert.equal(errorMessage(refused.body), `upstream docker.io unavailable: the storage it redirected to (${storageHost}) refused the request (HTTP 401)`);

      // the storage's challenge did not replace the upstream's: another repository's token comes
      // from the upstream's token service, asked at once, and the storage hears nothing more
      const asked = tokens.requests().length;
      const other = await httpRequest(`${mirror.url}/v2/library/public/manifests/v1`);
      assert.equal(other.status, 200);
      assert.equal(other.headers['docker-content-digest'], publicImage.manifestDigest);
      assert.deepEqual(tokens.requests().slice(asked).map((r) => [r.account, r.scopes]), [['alice', ['repository:library/public:pull']]]);
      assert.equal(seen.length, 2);
    } finally {
      await mirror.stop();
      await front.stop();
      storage.closeAllConnections();
      await new Promise((resolve) => storage.close(resolve));
    }
  });

  test('the credentials of an https upstream are not sent to a plain http token realm (the fetch fails, naming it); anonymous token requests still go there', async () => {
    const cert = await makeCertificate();
    // the same registry's bytes served over https, its challenge still naming the http token service
    const secure = await startRegistry({ tokenAuth: tokens, tls: cert, storageDir: hub.storageDir });
    // the mirror trusts only the system's CAs; the client is given the test CA by its dispatcher
    const dispatcher = new Agent({ connect: { ca: cert.certPem } });
    const upstream = { registry: 'docker.io', url: new URL(secure.url), tagTTLMs: 0 };
    const options = { logger: createLogger('upstream-auth-test', 'silent'), dispatcher };
    try {
      const anonymous = await new UpstreamClient(upstream, options).fetch('library/public', 'manifests/v1', { method: 'GET', accept: MEDIA_TYPES.oci.manifest });
      await anonymous.body.dump();
      assert.equal(anonymous.status, 200);

      const asked = tokens.requests().length;
      const credentialed = new UpstreamClient({ ...upstream, credentials: { username: 'alice', password: 's3cret' } }, options);
      await assert.rejects(credentialed.fetch('alice/private', 'manifests/v1', { method: 'GET', accept: MEDIA_TYPES.oci.manifest }), (error: Error) => {
        assert.ok(error instanceof TokenServiceError, String(error));
        assert.equal(error.message, `its token service ${tokens.url} is plain http, and the mirror does not send the credentials of an https upstream in clear`);
        return true;
      });
      assert.equal(tokens.requests().length, asked, 'the token service was not asked');
    } finally {
      await dispatcher.destroy();
      await secure.stop();
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
