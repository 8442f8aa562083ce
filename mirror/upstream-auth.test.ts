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

const errorCode = (body: Buffer) => (JSON.parse(body.toString()) as { errors: { code: string }[] }).errors[0]!.code;

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
});
