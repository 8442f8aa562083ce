import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse as parseToml } from 'smol-toml';

// smol-toml builds null-prototype tables; compare them as plain data
const parse = (text: string): Record<string, unknown> => JSON.parse(JSON.stringify(parseToml(text)));
import {
  MANAGED_MARKER, containerdHostsToml, isManagedHostsToml, planHostsApply, planHostsRemove, readContainerdRegistrySetup,
} from './containerd.ts';
import { registryApiUrl } from '../common/registry-path.ts';

test('hosts.toml sends containerd to the mirror first and to the real registry as server', () => {
  const text = containerdHostsToml({ registry: 'docker.io', mirror: 'http://10.96.0.42:5000', dialTimeout: '2s' });
  assert.ok(text.startsWith(`${MANAGED_MARKER}\n`));
  assert.deepEqual(parse(text), {
    server: 'https://registry-1.docker.io',
    host: { 'http://10.96.0.42:5000': { capabilities: ['pull', 'resolve'], dial_timeout: '2s' } },
  });
  assert.equal(text, `${MANAGED_MARKER}
server = "https://registry-1.docker.io"

[host."http://10.96.0.42:5000"]
capabilities = [ "pull", "resolve" ]
dial_timeout = "2s"
`);
});

test('the server of a registry other than Docker Hub is the registry itself', () => {
  assert.equal(registryApiUrl('ghcr.io'), 'https://ghcr.io');
  assert.equal(registryApiUrl('registry.example.com:5000'), 'https://registry.example.com:5000');
  const doc = parse(containerdHostsToml({ registry: 'ghcr.io', mirror: 'https://mirror.internal', dialTimeout: '1s' }));
  assert.equal(doc.server, 'https://ghcr.io');
});

test('hosts.toml carries an Authorization header for the mirror when auth is on', () => {
  const text = containerdHostsToml({ registry: 'docker.io', mirror: 'http://m:5000', dialTimeout: '2s', authorization: 'Basic bm9kZTpzM2NyZXQ=' });
  const host = (parse(text) as { host: Record<string, { header: Record<string, string> }> }).host['http://m:5000']!;
  assert.deepEqual(host.header, { Authorization: 'Basic bm9kZTpzM2NyZXQ=' });
});

test('apply writes over its own file, backs up a foreign one, and leaves an identical file alone', () => {
  const desired = containerdHostsToml({ registry: 'docker.io', mirror: 'http://m:5000', dialTimeout: '2s' });
  const older = containerdHostsToml({ registry: 'docker.io', mirror: 'http://old:5000', dialTimeout: '2s' });
  assert.deepEqual(planHostsApply(desired, desired), { action: 'none' });
  assert.deepEqual(planHostsApply(null, desired), { action: 'write', text: desired, backupCurrent: false });
  assert.deepEqual(planHostsApply(older, desired), { action: 'write', text: desired, backupCurrent: false });
  const theirs = 'server = "https://registry-1.docker.io"\n[host."https://corp-mirror"]\n';
  assert.equal(isManagedHostsToml(theirs), false);
  assert.deepEqual(planHostsApply(theirs, desired), { action: 'write', text: desired, backupCurrent: true });
});

test('remove restores the backup, deletes a file that had none, and never touches a foreign file', () => {
  const ours = containerdHostsToml({ registry: 'docker.io', mirror: 'http://m:5000', dialTimeout: '2s' });
  assert.deepEqual(planHostsRemove(ours, true), { action: 'restore' });
  assert.deepEqual(planHostsRemove(ours, false), { action: 'delete' });
  assert.deepEqual(planHostsRemove(null, true), { action: 'restore' });
  assert.deepEqual(planHostsRemove(null, false), { action: 'none' });
  assert.deepEqual(planHostsRemove('server = "x"\n', false), { action: 'none' });
  assert.deepEqual(planHostsRemove('server = "x"\n', true), { action: 'drop-backup' });
});

test('config_path is found in containerd 1.x and 2.x configs, and its absence is reported', () => {
  const v2 = `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n`;
  assert.deepEqual(readContainerdRegistrySetup(v2), { configPath: '/etc/containerd/certs.d', criDisabled: false, legacyMirrors: false });
  const v1 = `[plugins.cri.registry]\nconfig_path = "/etc/containerd/certs.d"\n`;
  assert.equal(readContainerdRegistrySetup(v1).configPath, '/etc/containerd/certs.d');
  const v3 = `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/etc/containerd/certs.d"\n`;
  assert.equal(readContainerdRegistrySetup(v3).configPath, '/etc/containerd/certs.d');
  // containerd 2.x has a default; 1.x has none
  assert.equal(readContainerdRegistrySetup('version = 3\n').configPath, '/etc/containerd/certs.d:/etc/docker/certs.d');
  assert.equal(readContainerdRegistrySetup('version = 2\nroot = "/var/lib/containerd"\n').configPath, undefined);
  const legacy = `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://m"]\n`;
  assert.deepEqual(readContainerdRegistrySetup(legacy), { configPath: undefined, criDisabled: false, legacyMirrors: true });
  assert.equal(readContainerdRegistrySetup('disabled_plugins = ["cri"]\n').criDisabled, true);
  assert.throws(() => readContainerdRegistrySetup('this is = = not toml'));
});
