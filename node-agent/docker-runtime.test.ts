// A real dockerd (20.10) takes the mirror the agent merged into its daemon.json on SIGHUP, pulls
// Docker Hub images through it, and after removal has its original daemon.json back, byte for byte.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile, readdir, stat } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { startDockerd, type Dockerd } from '../test/harness/dockerd.ts';
import { waitFor } from '../test/harness/process.ts';
import { startAgent } from './agent.ts';
import { parseAgentConfig } from './config.ts';
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

function agentArgs(mode: 'apply' | 'remove'): string[] {
  return [
    '--mirror', upstreams.mirror.url,
    '--registries', 'docker.io,ghcr.io',
    '--runtimes', 'docker',
    '--docker-daemon-json', dockerd.daemonJson,
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
