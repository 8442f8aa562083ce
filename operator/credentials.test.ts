import { test } from 'node:test';
import assert from 'node:assert/strict';
import { InvalidCredentialsError, normaliseCredentials, registryOfAuthKey } from './credentials.ts';

const b64 = (text: string) => Buffer.from(text).toString('base64');

test('a basic-auth Secret gives its username and password', () => {
  const secret = { type: 'kubernetes.io/basic-auth', data: { username: b64('alice'), password: b64('pa:ss') } };
  assert.deepEqual(normaliseCredentials(secret, 'docker.io', 'hub'), { username: 'alice', password: 'pa:ss' });
});

test('a dockerconfigjson Secret gives the entry for the registry, however Docker Hub is spelled', () => {
  const config = {
    auths: {
      'https://index.docker.io/v1/': { auth: b64('alice:hub:pass') },
      'ghcr.io': { username: 'bob', password: 'gh-token' },
    },
  };
  const secret = { type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify(config)) } };
  assert.deepEqual(normaliseCredentials(secret, 'docker.io', 'pull'), { username: 'alice', password: 'hub:pass' });
  assert.deepEqual(normaliseCredentials(secret, 'ghcr.io', 'pull'), { username: 'bob', password: 'gh-token' });
  assert.throws(() => normaliseCredentials(secret, 'quay.io', 'pull'), /no entry for quay.io/);
  assert.equal(registryOfAuthKey('registry-1.docker.io'), 'docker.io');
  assert.equal(registryOfAuthKey('https://registry.example.com:5000/v2/'), 'registry.example.com:5000');
});

test('unusable Secrets are InvalidCredentials whose messages never hold the values', () => {
  const cases: { type: string; data: Record<string, string> }[] = [
    { type: 'Opaque', data: { username: b64('alice'), password: b64('topsecret') } },
    { type: 'kubernetes.io/basic-auth', data: { username: b64('alice') } },
    { type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64('topsecret not json') } },
    { type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify({ auths: { 'docker.io': { auth: b64('topsecret') } } })) } },
  ];
  for (const secret of cases) {
    assert.throws(() => normaliseCredentials(secret, 'docker.io', 'hub'), (error: Error) => {
      assert.ok(error instanceof InvalidCredentialsError);
      assert.ok(!error.message.includes('topsecret'), error.message);
      return true;
    });
  }
});

test('a dockerconfigjson of another shape (a number where a string belongs, null) is InvalidCredentials naming the Secret and key, never the value', () => {
  const docker = (config: unknown) => ({ type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify(config)) } });
  const cases: [unknown, RegExp][] = [
    [{ auths: { 'docker.io': { username: 'alice', password: 55512345 } } }, /Secret hub: auths\["docker\.io"\]\.password in "\.dockerconfigjson" is a number, not a string/],
    [{ auths: { 'docker.io': { username: 55512345, password: 'x' } } }, /auths\["docker\.io"\]\.username in "\.dockerconfigjson" is a number/],
    [{ auths: { 'docker.io': { auth: 55512345 } } }, /auths\["docker\.io"\]\.auth in "\.dockerconfigjson" is a number/],
    [{ auths: { 'docker.io': { auth: [55512345] } } }, /auths\["docker\.io"\]\.auth in "\.dockerconfigjson" is a list/],
    [{ auths: { 'docker.io': 55512345 } }, /auths\["docker\.io"\] in "\.dockerconfigjson" is not an object/],
    [{ auths: 55512345 }, /"auths" in "\.dockerconfigjson" is not an object/],
    [null, /Secret hub: "\.dockerconfigjson" is not a JSON object/],
    [55512345, /"\.dockerconfigjson" is not a JSON object/],
  ];
  for (const [config, message] of cases) {
    assert.throws(() => normaliseCredentials(docker(config), 'docker.io', 'hub'), (error: Error) => {
      assert.ok(error instanceof InvalidCredentialsError, `${error.name}: ${JSON.stringify(config)}`);
      assert.match(error.message, message);
      assert.ok(!error.message.includes('55512345'), error.message);
      return true;
    });
  }
});
