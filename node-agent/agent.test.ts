// The agent against node directories in a temp dir (no runtime daemons): backups and restores,
// re-applying after interference, readiness, and refusing unsafe input.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, lstat, mkdir, readFile, readdir, readlink, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { pino } from 'pino';
import { freePort, httpRequest, makeTempDir, runCommand, spawnServer, waitFor } from '../test/harness/process.ts';
import { startAgent, reconcileOnce } from './agent.ts';
import { parseAgentConfig, type AgentConfig } from './config.ts';
import { containerdHostsToml, MANAGED_MARKER } from './containerd.ts';
import { makeCertificate } from '../test/harness/tls.ts';
import { KILL_AT_RENAME_IMPORT } from '../test/harness/kill-at-rename.ts';

const quiet = pino({ level: 'silent' });
const REPO = path.resolve(import.meta.dirname, '..');

interface Node {
  root: string;
  hostsDir: string;
  containerdConfig: string;
  daemonJson: string;
  crioDir: string;
}

async function makeNode(opts: { configPath?: boolean } = {}): Promise<Node> {
  const root = await makeTempDir('node-agent');
  const node = {
    root,
    hostsDir: path.join(root, 'etc/containerd/certs.d'),
    containerdConfig: path.join(root, 'etc/containerd/config.toml'),
    daemonJson: path.join(root, 'etc/docker/daemon.json'),
    crioDir: path.join(root, 'etc/containers/registries.conf.d'),
  };
  await mkdir(node.hostsDir, { recursive: true });
  const registry = opts.configPath === false ? '' : `[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "${node.hostsDir}"\n`;
  await writeFile(node.containerdConfig, `version = 2\n${registry}`);
  return node;
}

function nodeArgs(node: Node, extra: string[] = []): string[] {
  return [
    '--mirror', 'http://127.0.0.1:5999',
    '--registries', 'docker.io,ghcr.io',
    '--containerd-hosts-dir', node.hostsDir,
    '--containerd-config', node.containerdConfig,
    '--docker-daemon-json', node.daemonJson,
    '--crio-dir', node.crioDir,
    '--ready-listen', '127.0.0.1:0',
    ...extra,
  ];
}

function nodeConfig(node: Node, extra: string[] = []): AgentConfig {
  return parseAgentConfig(nodeArgs(node, extra), {});
}

test('apply backs up an existing hosts.toml and remove puts it back byte for byte', async () => {
  const node = await makeNode();
  const theirs = '# the platform team\'s\r\nserver = "https://registry-1.docker.io"\n[host."https://corp.example"]\n  capabilities = ["pull"]\n';
  await mkdir(path.join(node.hostsDir, 'docker.io'));
  await writeFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), theirs, { mode: 0o640 });
  await chmod(path.join(node.hostsDir, 'docker.io/hosts.toml'), 0o640);

  const applied = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd']), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  for (const registry of ['docker.io', 'ghcr.io']) {
    const text = await readFile(path.join(node.hostsDir, registry, 'hosts.toml'), 'utf8');
    assert.ok(text.startsWith(MANAGED_MARKER), registry);
    assert.match(text, /\[host\."http:\/\/127\.0\.0\.1:5999"\]/);
  }
  assert.equal(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml.regmirror-backup'), 'utf8'), theirs);

  const again = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd']), quiet);
  assert.deepEqual(again.runtimes.flatMap((r) => r.changed), [], 'a second pass changes nothing');

  const removed = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--mode', 'remove']), quiet);
  assert.equal(removed.ready, true);
  assert.equal(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8'), theirs);
  assert.equal((await stat(path.join(node.hostsDir, 'docker.io/hosts.toml'))).mode & 0o777, 0o640);
  assert.deepEqual(await readdir(path.join(node.hostsDir, 'docker.io')), ['hosts.toml']);
  assert.deepEqual(await readdir(node.hostsDir), ['docker.io'], 'the ghcr.io directory the agent made is gone');
});

test('a registry dropped from the list is taken away on the next apply', async () => {
  const node = await makeNode();
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd']), quiet);
  const config = { ...nodeConfig(node, ['--runtimes', 'containerd']), registries: ['docker.io'] };
  await reconcileOnce(config, quiet);
  assert.deepEqual(await readdir(node.hostsDir), ['docker.io']);
});

test('a containerd without config_path is reported and the node is not ready', async () => {
  const node = await makeNode({ configPath: false });
  const result = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd']), quiet);
  assert.equal(result.ready, false);
  assert.match(result.problems.join('\n'), /does not set config_path .* containerd ignores hosts\.toml/);
  assert.ok((await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8')).startsWith(MANAGED_MARKER), 'the files are written anyway');
  assert.match(await readFile(node.containerdConfig, 'utf8'), /^version = 2\n$/, 'config.toml is never rewritten');
});

test('node credentials become an Authorization header in a file only root can read', async () => {
  const node = await makeNode();
  const secret = path.join(node.root, 'secret');
  await mkdir(secret);
  await writeFile(path.join(secret, 'username'), 'node');
  await writeFile(path.join(secret, 'password'), 's3cret:x\n');
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--credentials-file', secret]), quiet);
  const file = path.join(node.hostsDir, 'docker.io/hosts.toml');
  assert.match(await readFile(file, 'utf8'), new RegExp(`Authorization = "Basic ${Buffer.from('node:s3cret:x').toString('base64')}"`));
  assert.equal((await stat(file)).mode & 0o777, 0o600);
});

test('removal needs neither the node credentials nor --mirror-ca: what apply wrote with them, CA files included, goes all the same', async () => {
  // The operator's cleanup DaemonSet in its own namespace (the mirror's being deleted) has neither.
  const node = await makeNode();
  const cert = await makeCertificate();
  const secret = path.join(node.root, 'secret');
  await mkdir(secret);
  await writeFile(path.join(secret, 'username'), 'node');
  await writeFile(path.join(secret, 'password'), 's3cret');
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  const daemonJson = `{"pidfile": "${node.root}/nodockerd.pid"}`;
  await writeFile(node.daemonJson, daemonJson);
  await mkdir(node.crioDir, { recursive: true });
  const certsDirs = ['--docker-certs-dir', path.join(node.root, 'etc/docker/certs.d'), '--crio-certs-dir', path.join(node.root, 'etc/containers/certs.d')];
  const https = (extra: string[]) => parseAgentConfig(nodeArgs(node, [...certsDirs, ...extra]).map((a) => (a === 'http://127.0.0.1:5999' ? 'https://127.0.0.1:5999' : a)), {});
  // containerd with credentials (Docker and CRI-O are left alone for a mirror with auth), then Docker and CRI-O without.
  await reconcileOnce(https(['--runtimes', 'containerd', '--credentials-file', secret, '--mirror-ca', cert.certFile]), quiet);
  await reconcileOnce(https(['--runtimes', 'docker,crio', '--mirror-ca', cert.certFile]), quiet);
  assert.match(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8'), /Authorization = "Basic /);
  const caFiles = [
    path.join(node.hostsDir, 'docker.io/regmirror-ca.crt'),
    path.join(node.root, 'etc/docker/certs.d/127.0.0.1:5999/regmirror-ca.crt'),
    path.join(node.root, 'etc/containers/certs.d/127.0.0.1:5999/regmirror-ca.crt'),
  ];
  for (const file of caFiles) assert.equal(await readFile(file, 'utf8'), cert.certPem, file);

  const removed = await reconcileOnce(https(['--runtimes', 'containerd,docker,crio', '--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.deepEqual(await readdir(node.hostsDir), [], 'hosts.toml and the CA beside it are gone');
  assert.deepEqual(await readdir(path.join(node.root, 'etc/docker/certs.d')), []);
  assert.deepEqual(await readdir(path.join(node.root, 'etc/containers/certs.d')), []);
  assert.deepEqual(await readdir(node.crioDir), []);
  assert.equal(await readFile(node.daemonJson, 'utf8'), daemonJson);
});

test('daemon.json keeps its other keys and permissions, and removal restores it byte for byte', async () => {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  // a pidfile nobody wrote: no dockerd is signalled
  const original = `{\n\t"log-driver": "json-file",\n\t"pidfile": "${node.root}/nodockerd.pid"\n}`;
  await writeFile(node.daemonJson, original);
  await chmod(node.daemonJson, 0o600);

  const applied = await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  const merged = JSON.parse(await readFile(node.daemonJson, 'utf8'));
  assert.deepEqual(merged, { 'log-driver': 'json-file', pidfile: `${node.root}/nodockerd.pid`, 'registry-mirrors': ['http://127.0.0.1:5999'] });
  assert.equal((await stat(node.daemonJson)).mode & 0o777, 0o600);

  await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker', '--mode', 'remove']), quiet);
  assert.equal(await readFile(node.daemonJson, 'utf8'), original);
  assert.equal((await stat(node.daemonJson)).mode & 0o777, 0o600);
  assert.deepEqual(await readdir(path.dirname(node.daemonJson)), ['daemon.json'], 'no state file left behind');
});

/** `regmirror node-agent --once ...agentArgs` SIGKILLed instead of making its `nth` rename onto `at`. */
async function runAgentKilledAtRename(agentArgs: string[], at: string, nth = 1): Promise<void> {
  const env = { ...process.env, REGMIRROR_TEST_KILL_AT_RENAME: at, REGMIRROR_TEST_KILL_NTH: String(nth) };
  const run = await runCommand(process.execPath, [...KILL_AT_RENAME_IMPORT, 'bin/regmirror.ts', 'node-agent', '--once', ...agentArgs], { cwd: REPO, env });
  assert.equal(run.code, 128, `the agent was killed at rename ${nth} onto ${at}, not finished (exit ${run.code}): ${run.stderr}${run.stdout}`);
}

/** `regmirror node-agent --once` for Docker SIGKILLed instead of making its `nth` rename onto daemon.json. */
async function runAgentKilledAtDaemonJson(node: Node, args: string[], nth: number): Promise<void> {
  await runAgentKilledAtRename(nodeArgs(node, ['--runtimes', 'docker', ...args]), node.daemonJson, nth);
}

/** A node whose daemon.json links to `original` kept elsewhere (cm/daemon.json), as configuration management does. */
async function nodeWithLinkedDaemonJson(original: (node: Node) => string): Promise<{ node: Node; real: string }> {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  const real = path.join(node.root, 'cm/daemon.json');
  await mkdir(path.dirname(real));
  await writeFile(real, original(node));
  await symlink('../../cm/daemon.json', node.daemonJson);
  return { node, real };
}

async function dockerNode(original: string): Promise<Node> {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  await writeFile(node.daemonJson, original);
  return node;
}

/** A directory's files but the temp files a killed agent leaves (swept elsewhere). */
const visibleFiles = async (dir: string): Promise<string[]> => (await readdir(dir)).filter((f) => !f.startsWith('.'));

const moved = (args: string[]): string[] => args.map((a) => (a === 'http://127.0.0.1:5999' ? 'http://127.0.0.1:5998' : a));

test('a mirror move killed between the state file and daemon.json: the old entry stays the agent\'s and removal restores the original', async () => {
  // pidfiles nobody wrote: no dockerd is signalled
  const original = `{"pidfile": "/nonexistent/nodockerd.pid", "log-driver": "journald"}\n`;
  const node = await dockerNode(original);
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
  // the Service was re-created: new address; killed where daemon.json would have been renamed into place
  await runAgentKilledAtDaemonJson(node, moved(['--mirror', 'http://127.0.0.1:5999']), 1);
  assert.deepEqual(JSON.parse(await readFile(node.daemonJson, 'utf8'))['registry-mirrors'], ['http://127.0.0.1:5999'], 'daemon.json still has the old entry');

  const again = await reconcileOnce(parseAgentConfig(moved(nodeArgs(node, ['--runtimes', 'docker'])), {}), quiet);
  assert.equal(again.ready, true, again.problems.join('; '));
  assert.deepEqual(JSON.parse(await readFile(node.daemonJson, 'utf8'))['registry-mirrors'], ['http://127.0.0.1:5998'], 'the old entry is replaced, not kept as the user\'s');
  await reconcileOnce(parseAgentConfig(moved(nodeArgs(node, ['--runtimes', 'docker', '--mode', 'remove'])), {}), quiet);
  assert.equal(await readFile(node.daemonJson, 'utf8'), original, 'the original daemon.json is back');
  assert.deepEqual(await visibleFiles(path.dirname(node.daemonJson)), ['daemon.json'], 'no state file left');
});

test("an https mirror's move killed at the rename onto daemon.json keeps the old address's CA while daemon.json still names it; the finished move takes it away", async () => {
  const node = await dockerNode(`{"log-level": "info", "pidfile": "/nonexistent/nodockerd.pid"}\n`);
  const cert = await makeCertificate();
  const certsDir = path.join(node.root, 'etc/docker/certs.d');
  const args = (mirror: string) => nodeArgs(node, ['--runtimes', 'docker', '--mirror-ca', cert.certFile, '--docker-certs-dir', certsDir]).map((a) => (a === 'http://127.0.0.1:5999' ? mirror : a));
  const [from, to] = ['https://127.0.0.1:5997', 'https://127.0.0.1:5996'];
  const caOf = (mirror: string) => path.join(certsDir, new URL(mirror).host, 'regmirror-ca.crt');
  assert.equal((await reconcileOnce(parseAgentConfig(args(from), {}), quiet)).runtimes[0]!.filesInPlace, true);

  await runAgentKilledAtRename(args(to), node.daemonJson);
  assert.deepEqual(JSON.parse(await readFile(node.daemonJson, 'utf8'))['registry-mirrors'], [from], 'dockerd is still sent to the old address');
  await stat(caOf(from)); // ... with its CA

  await reconcileOnce(parseAgentConfig(args(to), {}), quiet);
  assert.deepEqual(JSON.parse(await readFile(node.daemonJson, 'utf8'))['registry-mirrors'], [to]);
  await stat(caOf(to));
  await assert.rejects(stat(caOf(from)), 'the old address\'s CA went with the move');
});

test('a removal killed after its reload step, then apply again: the original is still what removal restores', async () => {
  for (const original of [`{"pidfile": "/nonexistent/nodockerd.pid", "log-driver": "journald"}\n`, `{\n  "registry-mirrors": ["https://corp.example"],\n  "pidfile": "/nonexistent/nodockerd.pid"\n}`]) {
    const node = await dockerNode(original);
    await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
    // killed at the second rename onto daemon.json: the reload form (our entry out, the key kept) is in place
    await runAgentKilledAtDaemonJson(node, ['--mode', 'remove'], 2);
    const interim = await readFile(node.daemonJson, 'utf8');
    assert.notEqual(interim, original);
    assert.ok(!interim.includes('127.0.0.1:5999'), interim);

    await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
    await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker', '--mode', 'remove']), quiet);
    assert.equal(await readFile(node.daemonJson, 'utf8'), original, 'the original bytes are back, not the reload form');
    assert.deepEqual(await visibleFiles(path.dirname(node.daemonJson)), ['daemon.json'], 'no state file left');
  }
});

test('a daemon.json that is a symbolic link is written through it and restored there; the link stays', async () => {
  // configuration management keeps the real file elsewhere and links it
  const { node, real } = await nodeWithLinkedDaemonJson((n) => `{"pidfile": "${n.root}/nodockerd.pid"}\n`);
  const original = await readFile(real, 'utf8');
  await chmod(real, 0o640);
  const isLink = async (): Promise<boolean> => (await lstat(node.daemonJson)).isSymbolicLink() && (await readlink(node.daemonJson)) === '../../cm/daemon.json';

  const applied = await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  assert.ok(await isLink(), 'daemon.json is still the link after apply');
  assert.deepEqual(JSON.parse(await readFile(real, 'utf8'))['registry-mirrors'], ['http://127.0.0.1:5999'], 'the link\'s target has the mirror');
  assert.equal((await stat(real)).mode & 0o777, 0o640);
  assert.deepEqual(await visibleFiles(path.dirname(real)), ['daemon.json'], 'nothing else beside the target');

  await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker', '--mode', 'remove']), quiet);
  assert.ok(await isLink(), 'daemon.json is still the link after removal');
  assert.equal(await readFile(real, 'utf8'), original, 'the target has its original bytes back');
  assert.equal((await stat(real)).mode & 0o777, 0o640);
  // later edits by configuration management reach what dockerd reads
  await writeFile(real, `{"pidfile": "${node.root}/nodockerd.pid", "debug": true}\n`);
  assert.equal(JSON.parse(await readFile(node.daemonJson, 'utf8')).debug, true);
  assert.deepEqual(await visibleFiles(path.dirname(node.daemonJson)), ['daemon.json'], 'no state file left');
});

test('a write through a linked daemon.json killed before its rename leaves its temp file beside the target, and the next pass removes it', async () => {
  const { node, real } = await nodeWithLinkedDaemonJson((n) => `{"pidfile": "${n.root}/nodockerd.pid"}\n`);
  await runAgentKilledAtRename(nodeArgs(node, ['--runtimes', 'docker']), real);
  assert.ok((await readdir(path.dirname(real))).some((f) => f.startsWith('.daemon.json.regmirror-')), 'the killed write left its temp file beside the target');

  const applied = await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  assert.deepEqual(await readdir(path.dirname(real)), ['daemon.json'], 'the temp file is gone');
});

test('a daemon.json link to nothing is reported and left as it is', async () => {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  await symlink('/nonexistent/cm/daemon.json', node.daemonJson);
  const status = await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker']), quiet);
  assert.equal(status.ready, false);
  assert.match(status.problems.join('\n'), /daemon\.json is a symbolic link to \/nonexistent\/cm\/daemon\.json, which is not there as the agent sees it; left untouched/);
  assert.equal(await readlink(node.daemonJson), '/nonexistent/cm/daemon.json');
});

test('the CRI-O drop-in is written for the mirror default and deleted on removal', async () => {
  const node = await makeNode();
  await mkdir(node.crioDir, { recursive: true });
  await writeFile(path.join(node.crioDir, 'shortnames.conf'), '[aliases]\n');
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'crio']), quiet);
  assert.match(await readFile(path.join(node.crioDir, '99-regmirror.conf'), 'utf8'), /prefix = "docker.io"[\s\S]*location = "127.0.0.1:5999"/);
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'crio', '--mode', 'remove']), quiet);
  assert.deepEqual(await readdir(node.crioDir), ['shortnames.conf']);
});

test('removal leaves another mirror\'s Docker entry and CRI-O drop-in alone (another RegistryMirror\'s agent writes the same files)', async () => {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  await writeFile(node.daemonJson, `{"pidfile": "${node.root}/nodockerd.pid"}`);
  await mkdir(node.crioDir, { recursive: true });
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker,crio']), quiet);
  const daemonJson = await readFile(node.daemonJson, 'utf8');
  const dropIn = await readFile(path.join(node.crioDir, '99-regmirror.conf'), 'utf8');
  const other = parseAgentConfig(nodeArgs(node, ['--runtimes', 'docker,crio', '--mode', 'remove']).map((a) => (a === 'http://127.0.0.1:5999' ? 'http://127.0.0.1:6000' : a)), {});
  assert.equal(other.mirror, 'http://127.0.0.1:6000');
  const removed = await reconcileOnce(other, quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.equal(await readFile(node.daemonJson, 'utf8'), daemonJson, 'daemon.json untouched');
  assert.equal(await readFile(path.join(node.crioDir, '99-regmirror.conf'), 'utf8'), dropIn, 'drop-in untouched');
  // the mirror they belong to takes them away
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'docker,crio', '--mode', 'remove']), quiet);
  assert.deepEqual(await readdir(node.crioDir), []);
  assert.equal(await readFile(node.daemonJson, 'utf8'), `{"pidfile": "${node.root}/nodockerd.pid"}`);
});

test('removal leaves another mirror\'s containerd hosts.toml, and the backup it keeps, for a registry both list', async () => {
  const node = await makeNode();
  const theirs = 'server = "https://registry-1.docker.io"\n';
  await mkdir(path.join(node.hostsDir, 'docker.io'));
  await writeFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), theirs);
  // The other RegistryMirror's agent (mirror :6000) applies; this one's (:5999) then runs a remove pass.
  const other = parseAgentConfig(nodeArgs(node, ['--runtimes', 'containerd']).map((a) => (a === 'http://127.0.0.1:5999' ? 'http://127.0.0.1:6000' : a)), {});
  await reconcileOnce(other, quiet);
  const hostsToml = await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8');
  assert.match(hostsToml, /127\.0\.0\.1:6000/);
  const removed = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.equal(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8'), hostsToml, 'the other mirror\'s hosts.toml stays');
  assert.equal(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml.regmirror-backup'), 'utf8'), theirs, 'and the file it keeps for its owner');
  // the mirror it belongs to takes it away and puts the original back
  await reconcileOnce({ ...other, mode: 'remove' }, quiet);
  assert.equal(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8'), theirs);
});

test('a runtime dropped from the list (--remove-runtimes) is cleaned while the others stay configured', async () => {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  const original = `{"pidfile": "${node.root}/nodockerd.pid"}`;
  await writeFile(node.daemonJson, original);
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd,docker']), quiet);
  assert.match(await readFile(node.daemonJson, 'utf8'), /127\.0\.0\.1:5999/);
  const narrowed = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--remove-runtimes', 'docker']), quiet);
  assert.equal(narrowed.ready, true, narrowed.problems.join('; '));
  assert.equal(await readFile(node.daemonJson, 'utf8'), original, 'Docker no longer points at the mirror');
  assert.ok((await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8')).startsWith(MANAGED_MARKER), 'containerd still does');
  assert.throws(() => nodeConfig(node, ['--runtimes', 'docker', '--remove-runtimes', 'docker']), /--remove-runtimes.*docker also in --runtimes|remove-runtimes: docker also in --runtimes/);
});

test('the running agent puts back a hosts.toml that something else deleted or changed', async () => {
  const node = await makeNode();
  const agent = await startAgent(nodeConfig(node, ['--runtimes', 'containerd']), quiet);
  try {
    const file = path.join(node.hostsDir, 'docker.io/hosts.toml');
    const ours = await readFile(file, 'utf8');
    await rm(file);
    await waitFor(async () => (await readFile(file, 'utf8').catch(() => '')) === ours, { timeoutMs: 5000, what: 'hosts.toml re-applied after deletion' });
    await rm(path.join(node.hostsDir, 'ghcr.io'), { recursive: true });
    await waitFor(async () => (await readFile(path.join(node.hostsDir, 'ghcr.io/hosts.toml'), 'utf8').catch(() => '')).startsWith(MANAGED_MARKER), { timeoutMs: 5000, what: 'registry directory re-created' });
    await writeFile(file, 'server = "https://elsewhere"\n');
    await waitFor(async () => (await readFile(file, 'utf8')) === ours, { timeoutMs: 5000, what: 'hosts.toml re-applied after a change' });
    // the re-created directory is watched too (a new inode, not the deleted one)
    await rm(path.join(node.hostsDir, 'ghcr.io/hosts.toml'));
    await waitFor(async () => (await readFile(path.join(node.hostsDir, 'ghcr.io/hosts.toml'), 'utf8').catch(() => '')).startsWith(MANAGED_MARKER), { timeoutMs: 5000, what: 'hosts.toml in the re-created directory re-applied' });
  } finally {
    await agent.stop();
  }
});

test('/readyz answers 200 once the node is configured and 503 with the reason when it is not', async () => {
  const node = await makeNode({ configPath: false });
  const readyFile = path.join(node.root, 'ready');
  const agent = await startAgent(nodeConfig(node, ['--runtimes', 'containerd', '--ready-file', readyFile]), quiet);
  try {
    const url = `http://${agent.readinessAddress()}`;
    const notReady = await httpRequest(`${url}/readyz`);
    assert.equal(notReady.status, 503);
    assert.match(notReady.body.toString(), /config_path/);
    assert.equal((await httpRequest(`${url}/healthz`)).status, 200);
    await assert.rejects(stat(readyFile));

    await writeFile(node.containerdConfig, `version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "${node.hostsDir}"\n`);
    const result = await agent.nextPass();
    assert.equal(result.ready, true);
    assert.equal((await httpRequest(`${url}/readyz`)).status, 200);
    await stat(readyFile);
    const status = JSON.parse((await httpRequest(`${url}/status`)).body.toString());
    assert.deepEqual(status.runtimes.map((r: { runtime: string; present: boolean }) => [r.runtime, r.present]), [['containerd', true]]);
  } finally {
    await agent.stop();
  }
  await assert.rejects(stat(readyFile), 'the ready file goes when the agent stops');
});

test('in remove mode the agent cleans up, then stays up and ready', async () => {
  const node = await makeNode();
  await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd']), quiet);
  const agent = await startAgent(nodeConfig(node, ['--runtimes', 'containerd', '--mode', 'remove']), quiet);
  try {
    assert.deepEqual(await readdir(node.hostsDir), []);
    assert.equal((await httpRequest(`http://${agent.readinessAddress()}/readyz`)).status, 200);
  } finally {
    await agent.stop();
  }
});

test('regmirror node-agent refuses an unsafe registry with exit code 2 and writes nothing', async () => {
  const node = await makeNode();
  const run = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', ...nodeArgs(node, ['--registries', 'docker.io,../../../etc', '--once'])], { cwd: REPO });
  assert.equal(run.code, 2);
  assert.match(run.stderr, /configuration error: flag --registries: registries: "\.\.\/\.\.\/\.\.\/etc" is not a registry host name/);
  assert.deepEqual(await readdir(node.hostsDir), []);

  const env = { ...process.env, REGMIRROR_MIRROR: 'mirror:5000', REGMIRROR_REGISTRIES: 'docker.io' };
  const fromEnv = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', '--once'], { cwd: REPO, env });
  assert.equal(fromEnv.code, 2);
  assert.match(fromEnv.stderr, /environment REGMIRROR_MIRROR: mirror: .*not a URL|environment REGMIRROR_MIRROR: mirror: .*http or https/);
});

test('regmirror node-agent --once applies and exits 0, also when containerd will ignore the files (logged, naming the problem); 1 when nothing could be applied', async () => {
  const node = await makeNode();
  const ok = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', ...nodeArgs(node, ['--runtimes', 'containerd', '--once'])], { cwd: REPO });
  assert.equal(ok.code, 0, ok.stderr + ok.stdout);
  assert.deepEqual((await readdir(node.hostsDir)).sort(), ['docker.io', 'ghcr.io']);

  const bad = await makeNode({ configPath: false });
  const ignored = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', ...nodeArgs(bad, ['--runtimes', 'containerd', '--once'])], { cwd: REPO });
  assert.equal(ignored.code, 0, 'the files are in place: exit 0, as DESIGN.md says');
  assert.deepEqual((await readdir(bad.hostsDir)).sort(), ['docker.io', 'ghcr.io']);
  const report = JSON.parse(ignored.stdout.trim().split('\n').at(-1)!);
  assert.equal(report.level, 50, 'logged as an error');
  assert.equal(report.msg, 'node not configured');
  assert.match(report.problems.join('\n'), /does not set config_path/);

  const none = await makeTempDir('node-agent-nothing');
  const nothing = await runCommand(process.execPath, ['bin/regmirror.ts', 'node-agent', '--mirror', 'http://127.0.0.1:5999', '--registries', 'docker.io', '--runtimes', 'containerd',
    '--containerd-hosts-dir', path.join(none, 'certs.d'), '--containerd-config', path.join(none, 'config.toml'), '--once'], { cwd: REPO });
  assert.equal(nothing.code, 1, 'no runtime on the node: nothing applied');
  assert.match(nothing.stdout, /no container runtime found/);
});

test('a node with none of the runtimes is not ready, and says where it looked', async () => {
  const root = await makeTempDir('node-agent-empty');
  const config = parseAgentConfig([
    '--mirror', 'http://127.0.0.1:5999', '--registries', 'docker.io', '--runtimes', 'containerd,crio',
    '--containerd-hosts-dir', path.join(root, 'certs.d'), '--containerd-config', path.join(root, 'config.toml'),
    '--crio-dir', path.join(root, 'registries.conf.d'),
  ], {});
  const result = await reconcileOnce(config, quiet);
  assert.equal(result.ready, false);
  assert.match(result.problems.join('\n'), /no container runtime found/);
  assert.deepEqual(await readdir(root), [], 'nothing is created where no runtime is');
});

test('regmirror node-agent runs as the DaemonSet does: environment only, /readyz, SIGTERM leaves the node configured', async () => {
  const node = await makeNode();
  const port = await freePort();
  const env = {
    ...process.env,
    REGMIRROR_MIRROR: 'http://127.0.0.1:5999',
    REGMIRROR_REGISTRIES: 'docker.io',
    REGMIRROR_RUNTIMES: 'containerd',
    REGMIRROR_CONTAINERD_HOSTS_DIR: node.hostsDir,
    REGMIRROR_CONTAINERD_CONFIG: node.containerdConfig,
    REGMIRROR_READY_LISTEN: `127.0.0.1:${port}`,
  };
  const agent = await spawnServer(process.execPath, ['bin/regmirror.ts', 'node-agent'], {
    cwd: REPO,
    env,
    ready: async () => (await httpRequest(`http://127.0.0.1:${port}/readyz`)).status === 200,
  });
  assert.ok((await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8')).startsWith(MANAGED_MARKER));
  await agent.stop('SIGTERM');
  assert.equal(agent.exitStatus()?.code, 0, agent.output());
  assert.ok((await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8')).startsWith(MANAGED_MARKER), 'configuration stays after SIGTERM');
});

test('only the runtimes found on the node are configured', async () => {
  const node = await makeNode();
  // the CRI-O drop-in directory does not exist on this node
  const result = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd,crio']), quiet);
  assert.equal(result.ready, true, result.problems.join('; '));
  assert.deepEqual(result.runtimes.map((r) => [r.runtime, r.present]), [['containerd', true], ['crio', false]]);
  await assert.rejects(stat(node.crioDir), 'no drop-in directory is made on a node without CRI-O');
});

test("a dockerd in a container (docker:dind in a CI pod, seen through hostPID) is not the node's: its flags neither fail the node nor does it get signalled", async () => {
  const node = await makeNode();
  await mkdir(path.dirname(node.daemonJson), { recursive: true }); // the DaemonSet's DirectoryOrCreate; no daemon.json
  // a process named dockerd whose daemon.json, as it sees it, is not in the directory the agent writes
  const fake = path.join(await makeTempDir('dind'), 'dockerd');
  await writeFile(fake, '#!/bin/sh\nsleep 120\n', { mode: 0o755 });
  const dind = spawn(fake, ['--host=unix:///var/run/docker.sock', '--registry-mirror=https://mirror.gitlab.example'], { stdio: 'ignore' });
  let signalled: string | null = null;
  dind.on('exit', (_code, signal) => (signalled = signal));
  try {
    await waitFor(async () => (await readFile(`/proc/${dind.pid}/comm`, 'utf8').catch(() => '')).trim() === 'dockerd', { timeoutMs: 5_000, what: 'the stand-in dockerd' });
    const result = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd,docker', '--docker-pidfile', path.join(node.root, 'docker.pid')]), quiet);
    assert.equal(result.ready, true, result.problems.join('; '));
    assert.deepEqual(result.runtimes.map((r) => [r.runtime, r.present]), [['containerd', true], ['docker', false]]);
    await assert.rejects(stat(node.daemonJson), 'no daemon.json written for a Docker the node does not run');
    assert.equal(signalled, null, 'the container\'s dockerd was not signalled');
  } finally {
    dind.kill('SIGKILL');
  }
});

test('a rotated credentials file reaches hosts.toml on the next periodic check', async () => {
  const node = await makeNode();
  const secret = path.join(node.root, 'node-credentials');
  await writeFile(secret, 'node:first\n');
  const agent = await startAgent(nodeConfig(node, ['--runtimes', 'containerd', '--credentials-file', secret, '--resync-interval', '1s']), quiet);
  try {
    const file = path.join(node.hostsDir, 'docker.io/hosts.toml');
    assert.match(await readFile(file, 'utf8'), new RegExp(Buffer.from('node:first').toString('base64')));
    await writeFile(secret, 'node:second\n');
    await waitFor(async () => (await readFile(file, 'utf8')).includes(Buffer.from('node:second').toString('base64')), { timeoutMs: 5000, what: 'new credentials in hosts.toml' });
  } finally {
    await agent.stop();
  }
});

/** Every file, directory and symlink under `root`: type, mode, link target and content, for a before/after comparison. */
async function snapshot(root: string): Promise<string[]> {
  const rows: string[] = [];
  for (const name of (await readdir(root, { recursive: true })).sort()) {
    const file = path.join(root, name);
    const st = await lstat(file);
    const mode = (st.mode & 0o7777).toString(8);
    if (st.isSymbolicLink()) rows.push(`${name} link ${await readlink(file)}`);
    else if (st.isDirectory()) rows.push(`${name} dir ${mode}`);
    else rows.push(`${name} file ${mode} ${JSON.stringify(await readFile(file, 'utf8'))}`);
  }
  return rows;
}

test('a registry directory that is a symlink (shared with Docker\'s certs.d) is taken back on removal like any other: the node is as it was', async () => {
  const node = await makeNode();
  const shared = path.join(node.root, 'etc/docker/certs.d/docker.io');
  await mkdir(shared, { recursive: true });
  await writeFile(path.join(shared, 'hosts.toml'), 'server = "https://registry-1.docker.io"\n[host."https://corp.example"]\n  capabilities = ["pull", "resolve"]\n');
  await writeFile(path.join(shared, 'ca.crt'), 'CA\n');
  await symlink('../../docker/certs.d/docker.io', path.join(node.hostsDir, 'docker.io'));
  const before = await snapshot(node.root);

  const applied = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--registries', 'docker.io']), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  assert.ok((await readFile(path.join(shared, 'hosts.toml'), 'utf8')).startsWith(MANAGED_MARKER), 'written through the link');

  const removed = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--registries', 'docker.io', '--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.deepEqual(await snapshot(node.root), before, "the user's hosts.toml is back, the link and the shared directory stay");
});

test('with --owner the agent knows its files under an earlier mirror URL: a registry dropped while the mirror moved goes, and removal leaves nothing', async () => {
  const node = await makeNode();
  const agent = (mirror: string, registries: string, extra: string[] = []) =>
    parseAgentConfig(nodeArgs(node, ['--runtimes', 'containerd', '--owner', 'registry-cache/hub', '--registries', registries, ...extra]).map((a) => (a === 'http://127.0.0.1:5999' ? mirror : a)), {});
  // another RegistryMirror's agent configured quay.io, at the URL this mirror moves to
  const other = parseAgentConfig(nodeArgs(node, ['--runtimes', 'containerd', '--owner', 'other/hub', '--registries', 'quay.io']).map((a) => (a === 'http://127.0.0.1:5999' ? 'http://127.0.0.1:5702' : a)), {});
  await reconcileOnce(other, quiet);
  const quay = await readFile(path.join(node.hostsDir, 'quay.io/hosts.toml'), 'utf8');
  assert.match(quay, /^# regmirror-owner: other\/hub$/m);

  await reconcileOnce(agent('http://127.0.0.1:5701', 'docker.io,ghcr.io'), quiet);
  assert.match(await readFile(path.join(node.hostsDir, 'ghcr.io/hosts.toml'), 'utf8'), /^# regmirror-owner: registry-cache\/hub$/m);
  // the Service got a new ClusterIP (or spec.tls turned the mirror's URL to https), and ghcr.io left the list
  const moved = await reconcileOnce(agent('http://127.0.0.1:5702', 'docker.io'), quiet);
  assert.equal(moved.ready, true, moved.problems.join('; '));
  assert.deepEqual((await readdir(node.hostsDir)).sort(), ['docker.io', 'quay.io'], 'ghcr.io, pointing at the old URL, went');
  assert.match(await readFile(path.join(node.hostsDir, 'docker.io/hosts.toml'), 'utf8'), /127\.0\.0\.1:5702/);

  const removed = await reconcileOnce(agent('http://127.0.0.1:5702', 'docker.io', ['--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.deepEqual(await readdir(node.hostsDir), ['quay.io'], 'all of this agent\'s files went; the other owner\'s stays, at the same URL');
  assert.equal(await readFile(path.join(node.hostsDir, 'quay.io/hosts.toml'), 'utf8'), quay);
});

test('an empty registry directory that was there before apply is still there after removal; the ones the agent made go', async () => {
  const node = await makeNode();
  await mkdir(path.join(node.hostsDir, 'docker.io'));
  await chmod(path.join(node.hostsDir, 'docker.io'), 0o750);
  const cert = await makeCertificate();
  const certsDir = path.join(node.root, 'etc/docker/certs.d');
  await mkdir(path.join(certsDir, '127.0.0.1:5999'), { recursive: true });
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  await writeFile(node.daemonJson, `{"pidfile": "${node.root}/nodockerd.pid"}`);
  const before = await snapshot(node.root);
  const https = (extra: string[]) =>
    parseAgentConfig(nodeArgs(node, ['--runtimes', 'containerd,docker', '--docker-certs-dir', certsDir, '--owner', 'registry-cache/hub', ...extra]).map((a) => (a === 'http://127.0.0.1:5999' ? 'https://127.0.0.1:5999' : a)), {});

  const applied = await reconcileOnce(https(['--mirror-ca', cert.certFile]), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  assert.deepEqual((await readdir(path.join(node.hostsDir, 'ghcr.io'))).sort(), ['.regmirror-created', 'hosts.toml', 'regmirror-ca.crt'], 'a directory the agent made says so');
  assert.deepEqual((await readdir(path.join(node.hostsDir, 'docker.io'))).sort(), ['hosts.toml', 'regmirror-ca.crt']);
  assert.deepEqual(await readdir(path.join(certsDir, '127.0.0.1:5999')), ['regmirror-ca.crt']);

  const removed = await reconcileOnce(https(['--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.deepEqual(await snapshot(node.root), before, 'docker.io/ and certs.d/127.0.0.1:5999/ stay, empty as they were; ghcr.io/ went');
});

test("registry directories an agent from before directory markers made (its hosts.toml without an owner line) go on removal with its files, as they did then", async () => {
  const node = await makeNode();
  // as the earlier agent left them: its hosts.toml (no owner line) and CA, no marker
  for (const registry of ['docker.io', 'ghcr.io']) {
    await mkdir(path.join(node.hostsDir, registry));
    await writeFile(path.join(node.hostsDir, registry, 'hosts.toml'), containerdHostsToml({ registry, mirror: 'http://127.0.0.1:5999', dialTimeout: '2s' }));
  }
  await writeFile(path.join(node.hostsDir, 'ghcr.io', 'regmirror-ca.crt'), 'CA');
  // a directory of the node's own, with a file beside the earlier agent's
  await writeFile(path.join(node.hostsDir, 'docker.io', 'client.cert'), 'mine');
  const removed = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd', '--owner', 'registry-cache/hub', '--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.deepEqual(await readdir(node.hostsDir), ['docker.io'], "ghcr.io/ went; docker.io/ holds the node's own file");
  assert.deepEqual(await readdir(path.join(node.hostsDir, 'docker.io')), ['client.cert']);
});

test('temp files a killed write left, the node credentials in them, are removed by the next pass, and removal then takes the directories the agent made', async () => {
  const node = await makeNode();
  const theirs = 'server = "https://registry-1.docker.io"\n[host."https://corp.example"]\n';
  await mkdir(path.join(node.hostsDir, 'quay.io'));
  await writeFile(path.join(node.hostsDir, 'quay.io/hosts.toml'), theirs);
  await mkdir(path.dirname(node.daemonJson), { recursive: true });
  await writeFile(node.daemonJson, `{"pidfile": "${node.root}/nodockerd.pid"}`);
  await mkdir(node.crioDir, { recursive: true });
  const before = await snapshot(node.root);
  const secret = path.join(await makeTempDir('node-credentials'), 'credentials');
  await writeFile(secret, 'node:s3cret-pass\n');
  const containerd = nodeArgs(node, ['--runtimes', 'containerd', '--registries', 'docker.io,quay.io', '--credentials-file', secret]);
  const temps = async (dir: string, file: string) => (await readdir(dir)).filter((name) => name.startsWith(`.${file}.regmirror-`)).map((name) => path.join(dir, name));

  // killed after quay.io's own file was moved aside as the backup, before ours was in place
  await runAgentKilledAtRename(containerd, '/quay.io/hosts.toml');
  assert.equal(await readFile(path.join(node.hostsDir, 'quay.io/hosts.toml.regmirror-backup'), 'utf8'), theirs);
  const [quayTemp] = await temps(path.join(node.hostsDir, 'quay.io'), 'hosts.toml');
  assert.ok(quayTemp, 'the killed write left its temp file');

  // killed while rewriting docker.io's hosts.toml with rotated credentials
  await writeFile(secret, 'node:rotated-pass\n');
  await runAgentKilledAtRename(containerd, '/docker.io/hosts.toml');
  await assert.rejects(stat(quayTemp), 'the pass after a killed one removed its temp file');
  const left = await temps(path.join(node.hostsDir, 'docker.io'), 'hosts.toml');
  assert.equal(left.length, 1, 'the killed write left its temp file');
  const leftFile = left[0]!;
  assert.match(await readFile(leftFile, 'utf8'), new RegExp(`Authorization = "Basic ${Buffer.from('node:rotated-pass').toString('base64')}"`));
  assert.equal((await stat(leftFile)).mode & 0o777, 0o600);
  // killed writing daemon.json and the CRI-O drop-in
  await runAgentKilledAtRename(nodeArgs(node, ['--runtimes', 'docker,crio']), '/daemon.json');
  await runAgentKilledAtRename(nodeArgs(node, ['--runtimes', 'crio']), '/99-regmirror.conf');
  assert.equal((await temps(path.dirname(node.daemonJson), 'daemon.json')).length, 1);
  assert.equal((await temps(node.crioDir, '99-regmirror.conf')).length, 1);

  const applied = await reconcileOnce(parseAgentConfig(containerd, {}), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  assert.ok(applied.runtimes[0]!.changed.includes(leftFile), 'the next pass reports the temp file it removed');
  await assert.rejects(stat(leftFile));

  const removed = await reconcileOnce(nodeConfig(node, ['--runtimes', 'containerd,docker,crio', '--mode', 'remove']), quiet);
  assert.equal(removed.ready, true, removed.problems.join('; '));
  assert.deepEqual(await snapshot(node.root), before, 'no temp file, no credentials, no directory of the agent\'s left; quay.io\'s own file is back');
});
