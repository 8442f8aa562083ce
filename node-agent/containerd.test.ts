import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse as parseToml } from 'smol-toml';

// smol-toml builds null-prototype tables; compare them as plain data
const parse = (text: string): Record<string, unknown> => JSON.parse(JSON.stringify(parseToml(text)));
import {
  MANAGED_MARKER, containerdHostsToml, containerdRegistrySetup, hostsTomlOwner, isManagedHostsToml, isOwnHostsToml, planHostsApply, planHostsRemove,
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

/** The registry setup containerd reads from config.toml and the files it imports, in load order. */
function setup(...texts: string[]) {
  return containerdRegistrySetup(texts.map((text, i) => ({ file: i === 0 ? 'config.toml' : `conf.d/${i}.toml`, doc: parseToml(text) })));
}

test('config_path is found in containerd 1.x and 2.x configs, and its absence is reported', () => {
  const v2 = `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n`;
  assert.deepEqual(setup(v2), {
    version: 2, versionFile: 'config.toml', registryTable: '[plugins."io.containerd.grpc.v1.cri".registry]',
    configPath: '/etc/containerd/certs.d', criDisabled: false, legacyMirrors: false, listIgnoredByTransfer: false, containerd2Differs: [], misplaced: [], unusable: undefined,
  });
  const v1 = `[plugins.cri.registry]\nconfig_path = "/etc/containerd/certs.d"\n`;
  assert.equal(setup(v1).configPath, '/etc/containerd/certs.d');
  assert.equal(setup(`[plugins."cri".registry]\nconfig_path = "/etc/containerd/certs.d"\n`).configPath, '/etc/containerd/certs.d');
  const v3 = `version = 3\n[plugins."io.containerd.cri.v1.images".registry]\nconfig_path = "/etc/containerd/certs.d"\n`;
  assert.equal(setup(v3).configPath, '/etc/containerd/certs.d');
  // no default that counts: containerd 2.0 and 2.1 have none, 2.2's is a list their CRI pulls do not read
  assert.equal(setup('version = 3\n').configPath, undefined);
  assert.equal(setup('version = 2\nroot = "/var/lib/containerd"\n').configPath, undefined);
  const legacy = `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://m"]\n`;
  assert.equal(setup(legacy).configPath, undefined);
  assert.equal(setup(legacy).legacyMirrors, true);
  assert.equal(setup('disabled_plugins = ["cri"]\n').criDisabled, true);
  assert.equal(setup('version = 4\n').configPath, undefined);
  assert.match(setup('version = 4\n').unusable!, /version = 4 is not a containerd config version/);
});

test('config_path counts only in the table containerd reads for the config\'s version, and the message says where it is instead', () => {
  const table = (plugin: string) => `[plugins.${plugin}.registry]\n  config_path = "/etc/containerd/certs.d"\n`;
  const GRPC = '"io.containerd.grpc.v1.cri"';
  const IMAGES = '"io.containerd.cri.v1.images"';
  // version 1 (or none): containerd 1.6 reads [plugins.cri] by plugin ID and nothing else
  const v1Uri = setup(table(GRPC));
  assert.equal(v1Uri.configPath, undefined);
  assert.equal(v1Uri.registryTable, '[plugins.cri.registry]');
  assert.deepEqual(v1Uri.misplaced, ['config.toml sets it under [plugins."io.containerd.grpc.v1.cri".registry], a table containerd reads only in a version 2 config']);
  assert.equal(setup(`version = 1\n${table(GRPC)}`).configPath, undefined);
  // version 2: the CRI plugin's URI; the version 1 ID is not read, containerd 2.x's images table only by 2.x
  assert.equal(setup(`version = 2\n${table(IMAGES)}`).configPath, undefined);
  assert.match(setup(`version = 2\n${table(IMAGES)}`).misplaced[0]!, /\[plugins."io.containerd.cri.v1.images".registry\], a table containerd 2.x reads in a version 2 config too, but containerd 1.x does not .*set it under \[plugins."io.containerd.grpc.v1.cri".registry\], which both read/);
  assert.equal(setup(`version = 2\n${table('cri')}`).configPath, undefined);
  // version 3 (containerd 2.x): only the images plugin's
  assert.equal(setup(`version = 3\n${table(GRPC)}`).configPath, undefined);
  assert.match(setup(`version = 3\n${table(GRPC)}`).misplaced[0]!, /a table containerd reads only in a version 2 config/);
  assert.equal(setup(`version = 3\n[plugins.${IMAGES}.registry]\n  config_path = ""\n`).configPath, undefined, 'set empty: no hosts directory');
});

test('a config_path list is read by containerd 2.1+ only when it pulls for the CRI itself, not through its transfer service', () => {
  const IMAGES = '"io.containerd.cri.v1.images"';
  const list = (version: number, table: string, extra = '') => `version = ${version}\n[plugins.${table}]\n${extra}[plugins.${table}.registry]\n  config_path = "/etc/containerd/certs.d:/etc/docker/certs.d"\n`;
  assert.equal(setup(list(3, IMAGES)).listIgnoredByTransfer, true);
  assert.equal(setup(`version = 3\n[plugins.${IMAGES}.registry]\n  config_path = "/etc/containerd/certs.d"\n`).listIgnoredByTransfer, false, 'one directory');
  for (const local of ['use_local_image_pull = true', 'disable_snapshot_annotations = false', 'discard_unpacked_layers = true', 'image_pull_with_sync_fs = true', 'max_concurrent_downloads = 10']) {
    assert.equal(setup(list(3, IMAGES, `  ${local}\n`)).listIgnoredByTransfer, false, local);
  }
  assert.equal(setup(list(3, IMAGES, '  max_concurrent_downloads = 3\n')).listIgnoredByTransfer, true);
  // version 2: containerd 1.x and 2.0 read the list, so it is a difference to warn about, not a problem
  const v2 = setup(list(2, '"io.containerd.grpc.v1.cri"'));
  assert.equal(v2.configPath, '/etc/containerd/certs.d:/etc/docker/certs.d');
  assert.match(v2.containerd2Differs[0]!, /containerd 2\.1 and later take the list for one directory/);
  // version 1: containerd 2.x does not read [plugins.cri]
  assert.match(setup(`[plugins.cri.registry]\n  config_path = "/d"\n`).containerd2Differs[0]!, /which containerd 1\.x reads but containerd 2\.x does not/);
});

test('imported files merge as containerd merges them: the last version wins, a later plugin table replaces an earlier one whole', () => {
  const GRPC = '"io.containerd.grpc.v1.cri"';
  const withPath = (dir: string) => `[plugins.${GRPC}.registry]\n  config_path = "${dir}"\n`;
  // the drop-in sets it, with or without a version of its own
  assert.equal(setup('version = 2\nimports = ["/etc/containerd/conf.d/*.toml"]\n', `version = 2\n${withPath('/etc/containerd/certs.d')}`).configPath, '/etc/containerd/certs.d');
  assert.equal(setup('version = 2\n', withPath('/etc/containerd/certs.d')).configPath, '/etc/containerd/certs.d');
  // a later file's setting wins
  assert.equal(setup('version = 2\n', withPath('/a'), `version = 2\n${withPath('/b')}`).configPath, '/b');
  // a drop-in with a CRI table of its own replaces config.toml's, config_path and all
  const replaced = setup(`version = 2\n${withPath('/etc/containerd/certs.d')}`, `[plugins.${GRPC}]\n  sandbox_image = "registry.k8s.io/pause:3.9"\n`);
  assert.equal(replaced.configPath, undefined);
  assert.match(replaced.misplaced[0]!, /config\.toml sets it under \[plugins."io.containerd.grpc.v1.cri".registry\], but conf\.d\/1\.toml \(loaded later\) has a \[plugins."io.containerd.grpc.v1.cri"\] table of its own, which replaces that one whole/);
  // a drop-in's version applies to all: version 1 makes containerd read [plugins.cri]
  const downgraded = setup(`version = 2\n${withPath('/etc/containerd/certs.d')}`, 'version = 1\n');
  assert.equal(downgraded.version, 1);
  assert.equal(downgraded.versionFile, 'conf.d/1.toml');
  assert.equal(downgraded.configPath, undefined);
  assert.equal(setup('version = 2\n', `version = 1\n[plugins.cri.registry]\n  config_path = "/d"\n`).configPath, '/d');
});

test('with --owner the header names the owner, and the owner, not the mirror URL, makes a file the agent\'s own', () => {
  const text = containerdHostsToml({ registry: 'ghcr.io', mirror: 'http://10.96.0.42:5000', owner: 'registry-cache/hub', dialTimeout: '2s' });
  assert.ok(text.startsWith(`${MANAGED_MARKER}\n# regmirror-owner: registry-cache/hub\nserver = "https://ghcr.io"\n`), text);
  assert.equal(hostsTomlOwner(text), 'registry-cache/hub');
  assert.equal(hostsTomlOwner(text.replaceAll('\n', '\r\n')), 'registry-cache/hub');
  // the same agent after the mirror moved (a new ClusterIP, or http turned https)
  assert.equal(isOwnHostsToml(text, { mirror: 'https://10.96.0.43:5000', owner: 'registry-cache/hub' }), true);
  // another RegistryMirror's agent, even at the same URL
  assert.equal(isOwnHostsToml(text, { mirror: 'http://10.96.0.42:5000', owner: 'other/hub' }), false);
  // an agent run without --owner goes by the mirror URL
  assert.equal(isOwnHostsToml(text, { mirror: 'http://10.96.0.42:5000' }), true);
  assert.equal(isOwnHostsToml(text, { mirror: 'http://10.96.0.43:5000' }), false);
  // a file written without an owner (an older agent's) goes by the mirror URL
  const older = containerdHostsToml({ registry: 'ghcr.io', mirror: 'http://10.96.0.42:5000', dialTimeout: '2s' });
  assert.equal(hostsTomlOwner(older), undefined);
  assert.equal(isOwnHostsToml(older, { mirror: 'http://10.96.0.42:5000', owner: 'registry-cache/hub' }), true);
  assert.equal(isOwnHostsToml(older, { mirror: 'http://10.96.0.43:5000', owner: 'registry-cache/hub' }), false);
});
