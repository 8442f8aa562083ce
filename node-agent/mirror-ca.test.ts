// An https mirror with its own CA, on Docker and CRI-O nodes: the agent puts the CA in each
// runtime's certs.d under the mirror's host:port, where containers/image (skopeo here, the library
// CRI-O uses) trusts it, and takes it away again. The directories are temp ones: dockerd and
// containers/image as root read only /etc/docker/certs.d and /etc/containers/certs.d, which a test
// does not write; containerd's own end-to-end case is in containerd-runtime.test.ts.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir, runCommand } from '../test/harness/process.ts';
import { skopeo } from '../test/harness/oci-image.ts';
import { makeCertificate, type TestCertificate } from '../test/harness/tls.ts';
import { runNodeAgent, startMirroredRegistries, type MirroredRegistries } from './runtime-fixtures.ts';

let cert: TestCertificate;
let secure: MirroredRegistries;
let root: string;
let daemonJson: string;

before(async () => {
  cert = await makeCertificate();
  secure = await startMirroredRegistries({ tls: cert });
  await secure.push(secure.hub, 'library/etcd', 'v1');
  root = await makeTempDir('mirror-ca-node');
  await mkdir(path.join(root, 'docker'), { recursive: true });
  // a pidfile nobody wrote: no dockerd is signalled or looked up in /proc (where another test's may run)
  daemonJson = `{"pidfile": "${path.join(root, 'no-dockerd.pid')}"}\n`;
  await writeFile(path.join(root, 'docker/daemon.json'), daemonJson);
  await mkdir(path.join(root, 'registries.conf.d'), { recursive: true });
});

after(async () => {
  await secure?.stop();
});

const args = (mode: 'apply' | 'remove', ca: string | undefined = cert.certFile, mirror = secure.mirror.url) => [
  '--mirror', mirror, '--registries', 'docker.io', '--runtimes', 'docker,crio',
  '--docker-daemon-json', path.join(root, 'docker/daemon.json'), '--docker-pidfile', path.join(root, 'no-dockerd.pid'),
  '--docker-socket', path.join(root, 'no-dockerd.sock'), '--docker-certs-dir', path.join(root, 'docker/certs.d'),
  '--crio-dir', path.join(root, 'registries.conf.d'), '--crio-certs-dir', path.join(root, 'containers/certs.d'),
  ...(ca ? ['--mirror-ca', ca] : []), '--mode', mode, '--once', '--ready-listen', '',
];

test('the CA goes to <certs.d>/<host:port>/ for Docker and CRI-O, where containers/image trusts the mirror with it', async () => {
  const host = new URL(secure.mirror.url).host;
  await runNodeAgent(args('apply'));
  for (const certsDir of ['docker/certs.d', 'containers/certs.d']) {
    assert.equal(await readFile(path.join(root, certsDir, host, 'regmirror-ca.crt'), 'utf8'), cert.certPem, certsDir);
  }
  assert.deepEqual(JSON.parse(await readFile(path.join(root, 'docker/daemon.json'), 'utf8'))['registry-mirrors'], [secure.mirror.url]);

  // containers/image reads a per-host certs directory laid out this way (--cert-dir names it here)
  const inspect = (certDir?: string) =>
    skopeo(['inspect', '--retry-times=0', ...(certDir ? ['--cert-dir', certDir] : []), `docker://${host}/library/etcd:v1`], { timeoutMs: 60_000 });
  const trusted = await inspect(path.join(root, 'containers/certs.d', host));
  assert.equal(trusted.code, 0, trusted.stderr);
  const untrusted = await inspect();
  assert.notEqual(untrusted.code, 0);
  assert.match(untrusted.stderr, /certificate/);
});

test('an unreadable --mirror-ca fails the pass with a message naming it and changes nothing', async () => {
  const before = await readFile(path.join(root, 'docker/daemon.json'), 'utf8');
  const result = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', ...args('apply', path.join(root, 'missing-ca.crt'))], {
    cwd: path.resolve(import.meta.dirname, '..'), timeoutMs: 60_000,
  });
  assert.notEqual(result.code, 0);
  assert.match(result.stdout + result.stderr, /--mirror-ca \S*missing-ca\.crt cannot be read \(ENOENT\)/);
  assert.equal(await readFile(path.join(root, 'docker/daemon.json'), 'utf8'), before);
});

test('removal takes the CA files and their host directories away, and leaves certs.d itself', async () => {
  await runNodeAgent(args('remove'));
  assert.deepEqual(await readdir(path.join(root, 'docker/certs.d')), []);
  assert.deepEqual(await readdir(path.join(root, 'containers/certs.d')), []);
  assert.deepEqual(await readdir(path.join(root, 'registries.conf.d')), []);
  assert.equal(await readFile(path.join(root, 'docker/daemon.json'), 'utf8'), daemonJson, 'the original daemon.json is back');
});

test('a mirror that moves (a new Service address) takes the CA put for its old address away, so removal leaves nothing', async () => {
  const oldHost = new URL(secure.mirror.url).host;
  const moved = `https://127.0.0.1:${Number(new URL(secure.mirror.url).port) + 1}`;
  await runNodeAgent(args('apply'));
  await runNodeAgent(args('apply', cert.certFile, moved));
  for (const certsDir of ['docker/certs.d', 'containers/certs.d']) {
    assert.deepEqual(await readdir(path.join(root, certsDir)), [new URL(moved).host], `${certsDir}: only the new address has the CA (not ${oldHost})`);
  }
  await runNodeAgent(args('remove', cert.certFile, moved));
  assert.deepEqual(await readdir(path.join(root, 'docker/certs.d')), []);
  assert.deepEqual(await readdir(path.join(root, 'containers/certs.d')), []);
  assert.deepEqual(await readdir(path.join(root, 'registries.conf.d')), []);
  assert.equal(await readFile(path.join(root, 'docker/daemon.json'), 'utf8'), daemonJson, 'the original daemon.json is back');
});
