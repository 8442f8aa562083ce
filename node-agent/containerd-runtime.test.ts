// A real containerd pulls through the mirror once the agent has written its hosts directory,
// and stops asking the mirror once the agent has taken it away.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir } from 'node:fs/promises';
import path from 'node:path';
import { startContainerd, type Containerd, type StartContainerdOptions } from '../test/harness/containerd.ts';
import { runCommand } from '../test/harness/process.ts';
import { makeCertificate } from '../test/harness/tls.ts';
import { criPullImage } from './cri-pull.ts';
import { mirrorManifestRequests, runNodeAgent, startMirroredRegistries, type MirroredRegistries } from './runtime-fixtures.ts';

const REPO = path.resolve(import.meta.dirname, '..');
let upstreams: MirroredRegistries;
let containerd: Containerd;

before(async () => {
  upstreams = await startMirroredRegistries();
  await upstreams.push(upstreams.hub, 'library/alpine', 'v1');
  await upstreams.push(upstreams.hub, 'library/alpine', 'v2');
  await upstreams.push(upstreams.hub, 'library/alpine', 'cri');
  await upstreams.push(upstreams.ghcr, 'acme/tool', 'v1');
  containerd = await startContainerd();
});

after(async () => {
  await containerd?.stop();
  await upstreams?.stop();
});

function agentArgs(mode: 'apply' | 'remove'): string[] {
  return [
    '--mirror', upstreams.mirror.url,
    '--registries', 'docker.io,ghcr.io',
    '--runtimes', 'containerd',
    '--containerd-hosts-dir', containerd.hostsDir,
    '--containerd-config', containerd.configFile,
    '--mode', mode,
    '--once',
    '--ready-listen', '',
  ];
}

test('containerd pulls docker.io and ghcr.io images through the mirror the agent configured', async () => {
  await runNodeAgent(agentArgs('apply'));
  assert.deepEqual((await readdir(containerd.hostsDir)).sort(), ['docker.io', 'ghcr.io']);

  const before = await mirrorManifestRequests(upstreams.mirror);
  // The hosts.toml servers (registry-1.docker.io, ghcr.io) are not reachable from here: only the
  // mirror can have answered these pulls, and it fetched from the stand-in upstreams.
  await containerd.pull('docker.io/library/alpine:v1');
  await containerd.pull('ghcr.io/acme/tool:v1');
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) >= before + 2, 'the mirror served the manifests');
  assert.ok((await upstreams.hub.countRequests({ method: 'GET', path: /^\/v2\/library\/alpine\/manifests\// })) >= 1);
  assert.ok((await upstreams.ghcr.countRequests({ method: 'GET', path: /^\/v2\/acme\/tool\/manifests\// })) >= 1);
  const images = await containerd.images();
  assert.ok(images.includes('docker.io/library/alpine:v1'), images.join(', '));
  assert.ok(images.includes('ghcr.io/acme/tool:v1'), images.join(', '));
});

test("through the CRI, as kubelet pulls, containerd finds the agent's hosts.toml via config_path", async () => {
  const before = await mirrorManifestRequests(upstreams.mirror);
  const ref = await criPullImage(containerd.socket, 'docker.io/library/alpine:cri');
  assert.match(ref, /^sha256:[0-9a-f]{64}$/);
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) > before, 'the mirror served the manifest');
  const images = await containerd.images('k8s.io');
  assert.ok(images.includes('docker.io/library/alpine:cri'), images.join(', '));
});

test('a containerd without config_path is reported, and indeed its CRI pulls do not use the mirror', async () => {
  const bare = await startContainerd({ configPath: false });
  try {
    const run = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', '--mirror', upstreams.mirror.url, '--registries', 'docker.io',
      '--runtimes', 'containerd', '--containerd-hosts-dir', bare.hostsDir, '--containerd-config', bare.configFile, '--once'], { cwd: REPO });
    assert.equal(run.code, 0, 'the files are in place (exit 0); the problem is reported');
    assert.match(run.stdout, /does not set config_path/);
    const before = await mirrorManifestRequests(upstreams.mirror);
    await assert.rejects(criPullImage(bare.socket, 'docker.io/library/alpine:cri'), /registry-1\.docker\.io/);
    assert.equal(await mirrorManifestRequests(upstreams.mirror), before, 'the hosts.toml was ignored');
  } finally {
    await bare.stop();
  }
});

/**
 * A node whose containerd has this configuration: what the agent (--once, apply) reports, and
 * whether a CRI pull, as kubelet's, asks the mirror.
 */
async function onNode(opts: StartContainerdOptions): Promise<{ ready: boolean; problems: string; viaMirror: boolean }> {
  const node = await startContainerd(opts);
  try {
    const run = await runNodeAgent(['--mirror', upstreams.mirror.url, '--registries', 'docker.io', '--runtimes', 'containerd',
      '--containerd-hosts-dir', node.hostsDir, '--containerd-config', node.configFile, '--once', '--ready-listen', '']);
    const report = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as { ready: boolean; problems?: string[] };
    const before = await mirrorManifestRequests(upstreams.mirror);
    await criPullImage(node.socket, 'docker.io/library/alpine:cri').catch(() => undefined);
    return { ready: report.ready, problems: (report.problems ?? []).join('\n'), viaMirror: (await mirrorManifestRequests(upstreams.mirror)) > before };
  } finally {
    await node.stop();
  }
}

test("config_path counts only in the table containerd reads for the config's version: the agent says so, and CRI pulls agree", async () => {
  // version 1 (no version line): [plugins.cri], by plugin ID
  assert.deepEqual(await onNode({ version: 1 }), { ready: true, problems: '', viaMirror: true });
  const v1Uri = await onNode({ version: 1, registryPlugin: '"io.containerd.grpc.v1.cri"' });
  assert.equal(v1Uri.viaMirror, false, 'containerd 1.6 ignores the URI-named table in a version 1 config');
  assert.equal(v1Uri.ready, false);
  assert.match(v1Uri.problems, /does not set config_path under \[plugins\.cri\.registry\], the table containerd reads in a version 1 config \(no version set\).* sets it under \[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\], a table containerd reads only in a version 2 config/);
  // version 2: containerd 2.x's images table is not read by containerd 1.x
  const v2Images = await onNode({ registryPlugin: '"io.containerd.cri.v1.images"' });
  assert.equal(v2Images.viaMirror, false, 'containerd 1.6 ignores the images plugin\'s table');
  assert.equal(v2Images.ready, false);
  assert.match(v2Images.problems, /does not set config_path under \[plugins\."io\.containerd\.grpc\.v1\.cri"\.registry\], the table containerd reads in a version 2 config \(version set in .*config\.toml\)/);
});

test('config_path set in a drop-in that config.toml imports is found, and CRI pulls go through the mirror', async () => {
  const found = await onNode({
    configPath: false,
    imports: ['conf.d/*.toml'],
    files: (hostsDir) => ({ 'conf.d/10-registry.toml': `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = ${JSON.stringify(hostsDir)}\n` }),
  });
  assert.deepEqual(found, { ready: true, problems: '', viaMirror: true });
});

test("a drop-in with a CRI plugin table of its own replaces config.toml's, config_path and all: not ready, and CRI pulls go around the mirror", async () => {
  const replaced = await onNode({
    imports: ['conf.d/*.toml'],
    files: () => ({ 'conf.d/10-sandbox.toml': 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "registry.k8s.io/pause:3.9"\n' }),
  });
  assert.equal(replaced.viaMirror, false);
  assert.equal(replaced.ready, false);
  assert.match(replaced.problems, /config\.toml sets it under .*, but .*conf\.d\/10-sandbox\.toml \(loaded later\) has a \[plugins\."io\.containerd\.grpc\.v1\.cri"\] table of its own, which replaces that one whole/);
});

test('after removal containerd no longer asks the mirror', async () => {
  await runNodeAgent(agentArgs('remove'));
  assert.deepEqual(await readdir(containerd.hostsDir), []);

  const mirrorBefore = await mirrorManifestRequests(upstreams.mirror);
  const hubBefore = await upstreams.hub.countRequests({ path: /^\/v2\/library\/alpine\// });
  await assert.rejects(containerd.pull('docker.io/library/alpine:v2'), /registry-1\.docker\.io/, 'the pull goes to Docker Hub itself');
  assert.equal(await mirrorManifestRequests(upstreams.mirror), mirrorBefore, 'the mirror was not asked');
  assert.equal(await upstreams.hub.countRequests({ path: /^\/v2\/library\/alpine\// }), hubBefore);
});

test('with node credentials containerd pulls through a mirror that requires auth', async () => {
  const secured = await startMirroredRegistries({ auth: { username: 'regmirror-node', password: 'n0de-secret' } });
  try {
    await secured.push(secured.hub, 'library/redis', 'v1');
    await secured.push(secured.hub, 'library/redis', 'v2');
    const args = ['--mirror', secured.mirror.url, '--registries', 'docker.io', '--runtimes', 'containerd',
      '--containerd-hosts-dir', containerd.hostsDir, '--containerd-config', containerd.configFile, '--once'];

    await runNodeAgent(args);
    await assert.rejects(containerd.pull('docker.io/library/redis:v1'), 'without credentials the mirror refuses and Docker Hub is out of reach');

    await runNodeAgent(args, { REGMIRROR_MIRROR_USERNAME: 'regmirror-node', REGMIRROR_MIRROR_PASSWORD: 'n0de-secret' });
    const before = await mirrorManifestRequests(secured.mirror);
    await containerd.pull('docker.io/library/redis:v2');
    assert.ok((await mirrorManifestRequests(secured.mirror)) > before);
    assert.ok((await secured.hub.countRequests({ method: 'GET', path: /^\/v2\/library\/redis\/manifests\/v2$/ })) >= 1);
  } finally {
    await runNodeAgent(['--mirror', secured.mirror.url, '--registries', 'docker.io', '--runtimes', 'containerd',
      '--containerd-hosts-dir', containerd.hostsDir, '--containerd-config', containerd.configFile, '--mode', 'remove', '--once']);
    await secured.stop();
  }
});

test('with --mirror-ca containerd trusts an https mirror with its own CA and pulls through it; removal takes the CA away', async () => {
  const cert = await makeCertificate();
  const secure = await startMirroredRegistries({ tls: cert });
  const args = ['--mirror', secure.mirror.url, '--registries', 'docker.io', '--runtimes', 'containerd',
    '--containerd-hosts-dir', containerd.hostsDir, '--containerd-config', containerd.configFile, '--once', '--ready-listen', ''];
  try {
    assert.match(secure.mirror.url, /^https:/);
    await secure.push(secure.hub, 'library/nats', 'v1');
    await secure.push(secure.hub, 'library/nats', 'v2');

    await runNodeAgent(args);
    await assert.rejects(containerd.pull('docker.io/library/nats:v1'), 'without the CA the handshake fails and Docker Hub is out of reach');

    await runNodeAgent([...args, '--mirror-ca', cert.certFile]);
    assert.deepEqual((await readdir(path.join(containerd.hostsDir, 'docker.io'))).sort(), ['.regmirror-created', 'hosts.toml', 'regmirror-ca.crt']);
    const before = await mirrorManifestRequests(secure.mirror, cert.certPem);
    await containerd.pull('docker.io/library/nats:v2');
    assert.ok((await mirrorManifestRequests(secure.mirror, cert.certPem)) > before, 'pulled through the https mirror');

    await runNodeAgent([...args, '--mirror-ca', cert.certFile, '--mode', 'remove']);
    assert.deepEqual(await readdir(containerd.hostsDir), [], 'hosts.toml, the CA and the directory are gone');
  } finally {
    await runNodeAgent([...args, '--mode', 'remove']);
    await secure.stop();
  }
});
