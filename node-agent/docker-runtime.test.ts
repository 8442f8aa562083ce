// A real dockerd (20.10) takes the mirror the agent merged into its daemon.json on SIGHUP, pulls
// Docker Hub images through it, and after removal has its original daemon.json back, byte for byte.
// A dockerd whose command line rules the file out (--registry-mirror, another --config-file), or
// that refuses a reload, is left with a daemon.json it can still start with.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { startDockerd, type Dockerd } from '../test/harness/dockerd.ts';
import { makeTempDir, waitFor } from '../test/harness/process.ts';
import { reconcileOnce, startAgent } from './agent.ts';
import { parseAgentConfig } from './config.ts';
import { planDockerApply } from './docker.ts';
import { mirrorManifestRequests, runNodeAgent, startMirroredRegistries, type MirroredRegistries } from './runtime-fixtures.ts';

let upstreams: MirroredRegistries;
let dockerd: Dockerd;
let original: Buffer;

before(async () => {
  upstreams = await startMirroredRegistries();
  await upstreams.push(upstreams.hub, 'library/busybox', 'v1');
  await upstreams.push(upstreams.hub, 'library/busybox', 'v2');
  // keys of the node's own that must survive: a log level and labels
  dockerd = await startDockerd({ daemonJson: { 'log-level': 'info', labels: ['node=test'] } });
  original = await readFile(dockerd.daemonJson);
});

after(async () => {
  await dockerd?.stop();
  await upstreams?.stop();
});

function agentArgs(mode: 'apply' | 'remove', daemonJson = dockerd.daemonJson): string[] {
  return [
    '--mirror', upstreams.mirror.url,
    '--registries', 'docker.io,ghcr.io',
    '--runtimes', 'docker',
    '--docker-daemon-json', daemonJson,
    '--mode', mode,
    '--once',
  ];
}

test('the agent merges the mirror into daemon.json, SIGHUPs dockerd, and docker pull goes through the mirror', async () => {
  const modeBefore = (await stat(dockerd.daemonJson)).mode & 0o777;
  const run = await runNodeAgent(agentArgs('apply'));
  assert.match(run.stdout, /Docker's registry-mirrors cover Docker Hub only: ghcr\.io/, 'the agent says ghcr.io is not covered');

  const merged = JSON.parse(await readFile(dockerd.daemonJson, 'utf8'));
  const kept = JSON.parse(original.toString());
  assert.deepEqual(merged, { ...kept, 'registry-mirrors': [upstreams.mirror.url] });
  assert.equal((await stat(dockerd.daemonJson)).mode & 0o777, modeBefore);

  const info = await dockerd.docker(['info']);
  assert.match(info.stdout, new RegExp(`Registry Mirrors:\\s+${upstreams.mirror.url}/`), info.stdout);

  const mirrorBefore = await mirrorManifestRequests(upstreams.mirror);
  // Docker Hub itself is out of reach from here: the image can only come from the mirror.
  await dockerd.pull('library/busybox:v1');
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) > mirrorBefore, 'the mirror served the manifest');
  assert.ok((await upstreams.hub.countRequests({ method: 'GET', path: /^\/v2\/library\/busybox\/manifests\// })) >= 1);
});

test('removal restores the original daemon.json byte for byte and dockerd stops asking the mirror', async () => {
  await runNodeAgent(agentArgs('remove'));
  assert.ok((await readFile(dockerd.daemonJson)).equals(original), 'daemon.json is the original');
  assert.deepEqual((await readdir(path.dirname(dockerd.daemonJson))).filter((f) => f.includes('regmirror')), [], 'no state file left');

  const info = await dockerd.info();
  assert.deepEqual((info.RegistryConfig as { Mirrors: string[] }).Mirrors, [], 'the running dockerd dropped the mirror');
  const mirrorBefore = await mirrorManifestRequests(upstreams.mirror);
  await assert.rejects(dockerd.pull('library/busybox:v2'));
  assert.equal(await mirrorManifestRequests(upstreams.mirror), mirrorBefore, 'the mirror was not asked');
});

test('the running agent merges the mirror back when daemon.json is rewritten, and removal restores the rewritten file', async () => {
  const log = pino({ level: 'silent' });
  const config = parseAgentConfig([...agentArgs('apply').filter((a) => a !== '--once'), '--ready-listen', '127.0.0.1:0'], {});
  const agent = await startAgent(config, log);
  try {
    assert.equal(agent.status()?.ready, true, agent.status()?.problems.join('; '));
    // configuration management rewrites the file without our entry and reloads dockerd itself
    await dockerd.writeDaemonJson({ 'log-level': 'warn' });
    const rewritten = await readFile(dockerd.daemonJson);
    dockerd.reload();
    await waitFor(async () => ((await dockerd.readDaemonJson())['registry-mirrors'] as string[] | undefined)?.[0] === upstreams.mirror.url, { timeoutMs: 10_000, what: 'mirror merged back into daemon.json' });
    await waitFor(async () => ((await dockerd.info()).RegistryConfig as { Mirrors: string[] }).Mirrors.includes(`${upstreams.mirror.url}/`), { timeoutMs: 10_000, what: 'dockerd reloaded with the mirror' });
    assert.equal((await dockerd.readDaemonJson())['log-level'], 'warn', 'their change is kept');

    await agent.stop();
    await runNodeAgent(agentArgs('remove'));
    assert.ok((await readFile(dockerd.daemonJson)).equals(rewritten), 'removal restores the file as its owner last wrote it');
  } finally {
    await agent.stop();
  }
});

const quiet = pino({ level: 'silent' });
const once = (mode: 'apply' | 'remove', daemonJson: string) => reconcileOnce(parseAgentConfig(agentArgs(mode, daemonJson), {}), quiet);
const agentFiles = async (daemonJson: string): Promise<string[]> => (await readdir(path.dirname(daemonJson))).filter((f) => f.includes('regmirror'));

test('dockerd started with --registry-mirror: daemon.json is left without the mirror, the agent says what to do, and dockerd still starts', async () => {
  // as a systemd ExecStart or drop-in starts it
  const flagged = await startDockerd({ daemonJson: { 'log-level': 'info' }, flags: ['--registry-mirror', 'http://127.0.0.1:5909'] });
  try {
    const before = await readFile(flagged.daemonJson);
    const applied = await once('apply', flagged.daemonJson);
    // the node reboots, or the package is upgraded: dockerd starts with the file as the agent left it
    await flagged.stop();
    await flagged.start();
    assert.ok((await readFile(flagged.daemonJson)).equals(before), 'daemon.json untouched');
    assert.equal(applied.ready, false);
    assert.match(applied.problems.join('\n'), new RegExp(`dockerd \\(pid \\d+\\) runs with --registry-mirror http://127\\.0\\.0\\.1:5909 on its command line, and dockerd refuses to start \\(and to reload\\) when daemon\\.json sets registry-mirrors as well, so ${flagged.daemonJson} is left without the mirror\\. Put --registry-mirror ${upstreams.mirror.url} first among dockerd's flags, or drop the flag`));

    // while dockerd is down (restarting), a pass cannot look at its flags: it does not add the mirror either
    await flagged.stop();
    const unseen = await once('apply', flagged.daemonJson);
    assert.ok((await readFile(flagged.daemonJson)).equals(before), 'daemon.json untouched while dockerd is out of sight');
    assert.match(unseen.problems.join('\n'), /dockerd could not take it when last seen \(\d+@\d+: a --registry-mirror flag, or a refused reload\), and no dockerd is in sight now/);
    await flagged.start();

    // an entry the agent wrote before dockerd had the flag (or before the agent looked) goes again
    const old = planDockerApply(before, null, upstreams.mirror.url);
    await writeFile(`${flagged.daemonJson}.regmirror-state.json`, JSON.stringify(old.state));
    await writeFile(flagged.daemonJson, old.text!);
    await once('apply', flagged.daemonJson);
    assert.ok((await readFile(flagged.daemonJson)).equals(before), 'the original is back');
    await flagged.stop();
    await flagged.start();

    // the flag names the mirror: Docker uses it, the file stays as it is, and the node is ready
    await flagged.stop();
    await flagged.start({ flags: [`--registry-mirror=${upstreams.mirror.url}`] });
    const named = await once('apply', flagged.daemonJson);
    assert.equal(named.ready, true, named.problems.join('; '));
    assert.ok((await readFile(flagged.daemonJson)).equals(before));
    const mirrorBefore = await mirrorManifestRequests(upstreams.mirror);
    await flagged.pull('library/busybox:v1');
    assert.ok((await mirrorManifestRequests(upstreams.mirror)) > mirrorBefore, 'pulled through the mirror the flag names');

    await once('remove', flagged.daemonJson);
    assert.ok((await readFile(flagged.daemonJson)).equals(before));
    assert.deepEqual(await agentFiles(flagged.daemonJson), [], 'no state file left');
  } finally {
    await flagged.stop();
  }
});

test('a reload dockerd refuses for a reason the agent cannot see beforehand: the entry goes again, and the same file is not offered to the same dockerd twice', async () => {
  const strict = await startDockerd({ flags: ['--log-level', 'info'] });
  try {
    // configuration management sets log-level in the file as well and does not reload dockerd;
    // dockerd refuses this file on the next reload and at its next start (a flag and the file both set it)
    await strict.writeDaemonJson({ 'log-level': 'warn' });
    const theirs = await readFile(strict.daemonJson);
    const reloads = (): number => strict.output().split('Got signal to reload configuration').length - 1;

    const refused = await once('apply', strict.daemonJson);
    assert.ok((await readFile(strict.daemonJson)).equals(theirs), 'daemon.json is as its owner left it, not with the mirror that made dockerd fail');
    assert.equal(reloads(), 1);
    assert.match(refused.problems.join('\n'), new RegExp(`did not take up registry mirror ${upstreams.mirror.url} within 5 s of SIGHUP: it refused ${strict.daemonJson} .* so the agent took its entry out again; it tries again when ${strict.daemonJson} changes or dockerd restarts`));

    const again = await once('apply', strict.daemonJson);
    assert.deepEqual(again.runtimes.flatMap((r) => r.changed), [], 'nothing written');
    assert.equal(reloads(), 1, 'no second SIGHUP');
    assert.match(again.problems.join('\n'), /refused .* on an earlier reload/);

    // the owner takes log-level out again: the agent applies, dockerd takes the mirror
    await strict.writeDaemonJson({});
    const fixed = await once('apply', strict.daemonJson);
    assert.equal(fixed.ready, true, fixed.problems.join('; '));
    assert.ok(((await strict.info()).RegistryConfig as { Mirrors: string[] }).Mirrors.includes(`${upstreams.mirror.url}/`));
    await once('remove', strict.daemonJson);
    assert.deepEqual(await agentFiles(strict.daemonJson), []);
  } finally {
    await strict.stop();
  }
});

test('dockerd reading another file (--config-file) than the agent is given: reported, and that file left untouched', async () => {
  // a daemon.json dockerd does not read, and a pidfile that finds dockerd all the same
  const dir = await makeTempDir('other-docker');
  const [other, pidFile] = [path.join(dir, 'daemon.json'), path.join(dir, 'docker.pid')] as const;
  await Promise.all([writeFile(other, '{}\n'), writeFile(pidFile, String(dockerd.pid))]);
  const withPid = (args: string[]) => parseAgentConfig([...args, '--docker-pidfile', pidFile, '--docker-socket', dockerd.socket], {});
  const status = await reconcileOnce(withPid(agentArgs('apply', other)), quiet);
  assert.equal(await readFile(other, 'utf8'), '{}\n', 'the file dockerd does not read is untouched');
  assert.match(status.problems.join('\n'), new RegExp(`reads its configuration from --config-file ${dockerd.daemonJson}, not from ${other} that the agent writes \\(--docker-daemon-json\\); ${other} left untouched`));

  // the same file under another path (the pod mounts /etc/docker at /host/etc/docker) is dockerd's
  const beforeApply = await readFile(dockerd.daemonJson);
  const mounted = path.join(dir, 'host-etc-docker');
  await symlink(path.dirname(dockerd.daemonJson), mounted);
  const applied = await reconcileOnce(withPid(agentArgs('apply', path.join(mounted, 'daemon.json'))), quiet);
  assert.equal(applied.ready, true, applied.problems.join('; '));
  await reconcileOnce(withPid(agentArgs('remove', path.join(mounted, 'daemon.json'))), quiet);
  assert.ok((await readFile(dockerd.daemonJson)).equals(beforeApply), 'and removal through that path restores it');
});
