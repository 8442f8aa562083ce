import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { pushImage, skopeo, writeOciImage, type TestImage } from './oci-image.ts';
import { httpRequest, makeTempDir } from './process.ts';
import { startRegistry, type RegistryServer } from './registry.ts';
import { startTokenServer, type TokenServer } from './token-server.ts';

let tokens: TokenServer;
let registry: RegistryServer;
let image: TestImage;

before(async () => {
  tokens = await startTokenServer({ users: { alice: 'wonderland' }, privateRepos: ['library/secret', 'team/*'] });
  registry = await startRegistry({ tokenAuth: tokens });
  image = await writeOciImage(await makeTempDir('img'));
  await pushImage(image, registry.ref('library/public', 'v1'), { creds: 'alice:wonderland' });
  await pushImage(image, registry.ref('library/secret', 'v1'), { creds: 'alice:wonderland' });
});

after(async () => {
  await registry.stop();
  await tokens.stop();
});

async function pull(ref: string, creds?: string): Promise<{ code: number; stderr: string }> {
  const args = ['copy', '--src-tls-verify=false', creds ? `--src-creds=${creds}` : '--src-no-creds', `docker://${ref}`, `dir:${await makeTempDir('pulled')}`];
  return skopeo(args);
}

test('the registry challenges anonymous requests with the token realm and service', async () => {
  const res = await httpRequest(`${registry.url}/v2/library/public/manifests/v1`);
  assert.equal(res.status, 401);
  assert.equal(
    res.headers['www-authenticate'],
    `Bearer realm="${tokens.realm}",service="${tokens.service}",scope="repository:library/public:pull"`,
  );
});

test('a public repository can be pulled anonymously', async () => {
  const result = await pull(registry.ref('library/public', 'v1'));
  assert.equal(result.code, 0, result.stderr);
});

test('a private repository refuses an anonymous pull and allows one with credentials', async () => {
  const anonymous = await pull(registry.ref('library/secret', 'v1'));
  assert.notEqual(anonymous.code, 0);
  assert.match(anonymous.stderr, /unauthorized|authentication required|denied/i);
  const withCreds = await pull(registry.ref('library/secret', 'v1'), 'alice:wonderland');
  assert.equal(withCreds.code, 0, withCreds.stderr);
});

test('private prefixes cover every repository under them', async () => {
  await pushImage(image, registry.ref('team/app', 'v1'), { creds: 'alice:wonderland' });
  assert.notEqual((await pull(registry.ref('team/app', 'v1'))).code, 0);
  assert.equal((await pull(registry.ref('team/app', 'v1'), 'alice:wonderland')).code, 0);
});

test('push needs credentials', async () => {
  await assert.rejects(pushImage(image, registry.ref('library/public', 'v2')), /unauthorized|authentication required|denied/i);
});

test('images with Docker media types are pushed with credentials through the token flow too', async () => {
  const docker = await writeOciImage(await makeTempDir('img'), { dockerMediaTypes: true, layerSizes: [300_000] });
  await assert.rejects(pushImage(docker, registry.ref('library/docker', 'v1')), /401|unauthorized|denied/i);
  await pushImage(docker, registry.ref('library/docker', 'v1'), { creds: 'alice:wonderland' });
  const result = await pull(registry.ref('library/docker', 'v1'));
  assert.equal(result.code, 0, result.stderr);
});

test('wrong credentials get 401 from the token server, and every token issued is counted', async () => {
  const before = tokens.tokensIssued();
  const wrong = await httpRequest(`${tokens.realm}?service=${tokens.service}&scope=repository:library/secret:pull`, {
    headers: { authorization: `Basic ${Buffer.from('alice:nope').toString('base64')}` },
  });
  assert.equal(wrong.status, 401);
  assert.equal(tokens.tokensIssued(), before);

  const anonymous = await httpRequest(`${tokens.realm}?service=${tokens.service}&scope=repository:library/secret:pull`);
  assert.equal(anonymous.status, 200);
  assert.equal(tokens.tokensIssued(), before + 1);
  const claims = JSON.parse(Buffer.from(JSON.parse(anonymous.body.toString()).token.split('.')[1], 'base64url').toString());
  assert.deepEqual(claims.access, [{ type: 'repository', name: 'library/secret', actions: [] }]);
  assert.equal(claims.aud, tokens.service);
  assert.deepEqual(tokens.requests().at(-1), {
    account: undefined, method: 'GET', scopes: ['repository:library/secret:pull'], granted: [], status: 200,
  });
});

test('the OAuth2 password grant (containerd with credentials) gets a token too', async () => {
  const res = await httpRequest(tokens.realm, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'password', username: 'alice', password: 'wonderland', service: tokens.service, scope: 'repository:library/secret:pull', client_id: 'test' }).toString(),
  });
  assert.equal(res.status, 200);
  const body = JSON.parse(res.body.toString());
  const manifest = await httpRequest(`${registry.url}/v2/library/secret/manifests/v1`, {
    headers: { authorization: `Bearer ${body.access_token}`, accept: image.manifestMediaType },
  });
  assert.equal(manifest.status, 200);
  assert.equal(manifest.headers['docker-content-digest'], image.manifestDigest);
});

test('setUser rotates a password, and stop()/start() take the token service down and back on the same realm', async () => {
  const url = `${tokens.realm}?service=${tokens.service}&scope=repository:library/secret:pull`;
  const as = (password: string) => ({ headers: { authorization: `Basic ${Buffer.from(`alice:${password}`).toString('base64')}` } });
  tokens.setUser('alice', 'rotated');
  try {
    assert.equal((await httpRequest(url, as('wonderland'))).status, 401);
    assert.equal((await httpRequest(url, as('rotated'))).status, 200);
  } finally {
    tokens.setUser('alice', 'wonderland');
  }
  await tokens.stop();
  await assert.rejects(httpRequest(url), /ECONNREFUSED/);
  await tokens.start();
  assert.equal((await httpRequest(url, as('wonderland'))).status, 200);
});
