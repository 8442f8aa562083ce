import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ConfigError } from '../common/config-error.ts';
import { parseAgentConfig } from './config.ts';

const BASE = ['--mirror', 'http://10.96.0.42:5000', '--registries', 'docker.io,ghcr.io'];

test('flags configure the agent and standard node paths are the defaults', () => {
  const config = parseAgentConfig(BASE, {});
  assert.equal(config.mirror, 'http://10.96.0.42:5000');
  assert.deepEqual(config.registries, ['docker.io', 'ghcr.io']);
  assert.equal(config.defaultRegistry, 'docker.io');
  assert.equal(config.mode, 'apply');
  assert.equal(config.once, false);
  assert.deepEqual(config.runtimes, ['containerd', 'docker', 'crio']);
  assert.equal(config.containerdHostsDir, '/etc/containerd/certs.d');
  assert.equal(config.dockerDaemonJson, '/etc/docker/daemon.json');
  assert.equal(config.crioDir, '/etc/containers/registries.conf.d');
  assert.equal(config.resyncIntervalMs, 60_000);
});

test('environment variables configure the agent, and flags win over them', () => {
  const env = {
    REGMIRROR_MIRROR: 'https://mirror.internal/',
    REGMIRROR_REGISTRIES: ' ghcr.io , quay.io ',
    REGMIRROR_MODE: 'remove',
    REGMIRROR_ONCE: 'true',
    REGMIRROR_CONTAINERD_HOSTS_DIR: '/host/etc/containerd/certs.d',
    REGMIRROR_DOCKER_DAEMON_JSON: '/host/etc/docker/daemon.json',
    REGMIRROR_CRIO_DIR: '/host/etc/containers/registries.conf.d',
    REGMIRROR_RUNTIMES: 'containerd',
  };
  const config = parseAgentConfig([], env);
  assert.equal(config.mirror, 'https://mirror.internal');
  assert.deepEqual(config.registries, ['ghcr.io', 'quay.io']);
  assert.equal(config.defaultRegistry, 'ghcr.io');
  assert.equal(config.mode, 'remove');
  assert.equal(config.once, true);
  assert.equal(config.containerdHostsDir, '/host/etc/containerd/certs.d');
  assert.deepEqual(config.runtimes, ['containerd']);
  assert.equal(parseAgentConfig(['--mode', 'apply'], env).mode, 'apply');
});

function configError(argv: string[], env: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    parseAgentConfig(argv, env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error;
  }
  assert.fail('expected a ConfigError');
}

test('a registry name that could escape the hosts directory is refused, naming the flag or variable', () => {
  for (const bad of ['../etc', 'docker.io/library', '..', 'a..b', 'https://ghcr.io', 'docker.io\\x', '.hidden', '-x.io']) {
    const error = configError(['--mirror', 'http://m:5000', `--registries=${bad}`]);
    assert.equal(error.key, 'registries');
    assert.match(error.message, /flag --registries/);
  }
  const fromEnv = configError([], { REGMIRROR_MIRROR: 'http://m:5000', REGMIRROR_REGISTRIES: 'docker.io,../../root' });
  assert.match(fromEnv.message, /environment REGMIRROR_REGISTRIES/);
  assert.match(fromEnv.message, /"\.\.\/\.\.\/root"/);
});

test('a mirror that is not an http(s) URL without a path is refused', () => {
  for (const bad of ['10.96.0.42:5000', 'ftp://m', 'not a url', 'http://m:5000/v2/', 'http://user:pw@m:5000', 'http://m?x=1']) {
    const error = configError(['--mirror', bad, '--registries', 'docker.io']);
    assert.equal(error.key, 'mirror');
    assert.match(error.message, /flag --mirror/);
  }
  assert.match(configError([], { REGMIRROR_MIRROR: 'file:///etc/passwd', REGMIRROR_REGISTRIES: 'docker.io' }).message, /REGMIRROR_MIRROR/);
});

test('missing and malformed settings name what to set', () => {
  assert.match(configError(['--registries', 'docker.io']).message, /--mirror or environment REGMIRROR_MIRROR: mirror: is required/);
  assert.match(configError(['--mirror', 'http://m']).message, /REGMIRROR_REGISTRIES/);
  assert.equal(configError([...BASE, '--mode', 'delete']).key, 'mode');
  assert.equal(configError([...BASE, '--runtimes', 'podman']).key, 'runtimes');
  assert.equal(configError([...BASE, '--containerd-hosts-dir', 'relative/dir']).key, 'containerd-hosts-dir');
  assert.equal(configError([...BASE, '--resync-interval', '10']).key, 'resync-interval');
  assert.equal(configError([...BASE, '--default-registry', 'quay.io']).key, 'default-registry');
  assert.equal(configError([...BASE, '--no-such-flag']).key, 'flags');
});

test('--mirror-ca is an absolute path and only for an https mirror', () => {
  const https = ['--mirror', 'https://10.96.0.42:5000', '--registries', 'docker.io'];
  assert.equal(parseAgentConfig([...https, '--mirror-ca', '/run/secrets/regmirror-ca/ca.crt'], {}).mirrorCa, '/run/secrets/regmirror-ca/ca.crt');
  assert.equal(parseAgentConfig(https, {}).mirrorCa, undefined);
  assert.match(configError([...BASE, '--mirror-ca', '/ca.crt']).message, /flag --mirror-ca: mirror-ca: is for an https:\/\/ mirror/);
  assert.equal(configError([...https, '--mirror-ca', 'ca.crt']).key, 'mirror-ca');
});

test('node credentials come from the environment as a pair, never half, never with a file too', () => {
  const env = { REGMIRROR_MIRROR_USERNAME: 'regmirror-node', REGMIRROR_MIRROR_PASSWORD: 'p:w' };
  assert.deepEqual(parseAgentConfig(BASE, env).credentials, { username: 'regmirror-node', password: 'p:w' });
  assert.equal(parseAgentConfig(BASE, {}).credentials, undefined);
  assert.match(configError(BASE, { REGMIRROR_MIRROR_USERNAME: 'regmirror-node' }).message, /REGMIRROR_MIRROR_PASSWORD.*both must be set/);
  assert.match(configError([...BASE, '--credentials-file', '/run/secrets/node'], env).message, /not both/);
});

test('--owner (REGMIRROR_OWNER) is <namespace>/<name>, one line of name characters: it goes into a file header', () => {
  assert.equal(parseAgentConfig([...BASE, '--owner', 'registry-cache/hub'], {}).owner, 'registry-cache/hub');
  assert.equal(parseAgentConfig(BASE, { REGMIRROR_OWNER: 'registry-cache/hub' }).owner, 'registry-cache/hub');
  assert.equal(parseAgentConfig(BASE, {}).owner, undefined);
  for (const bad of ['a/b\nserver = "x"', 'a b', '/hub', 'ns/', 'a/b/c', '#x']) {
    assert.match(configError([...BASE, '--owner', bad]).message, /flag --owner: owner: .* must be <namespace>\/<name>/);
  }
  assert.match(configError(BASE, { REGMIRROR_OWNER: 'x y' }).message, /environment REGMIRROR_OWNER/);
});
