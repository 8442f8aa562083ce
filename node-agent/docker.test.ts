import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DaemonJsonError, daemonJsonForReload, daemonJsonPidFile, daemonJsonSocket, dockerdFlags, mirrorsInDockerInfo, planDockerApply, planDockerRemove,
} from './docker.ts';

const MIRROR = 'http://10.96.0.42:5000';
const ORIGINAL = Buffer.from('{\n    "log-driver": "journald",\n    "storage-driver": "overlay2",\n    "registry-mirrors": ["https://corp.example"]\n}\n');

test('apply puts the mirror first in registry-mirrors and keeps every other key and the indentation', () => {
  const plan = planDockerApply(ORIGINAL, null, MIRROR);
  assert.equal(plan.text, `{
    "log-driver": "journald",
    "storage-driver": "overlay2",
    "registry-mirrors": [
        "${MIRROR}",
        "https://corp.example"
    ]
}
`);
  assert.deepEqual(plan.state, { mirror: MIRROR, original: ORIGINAL.toString('base64') });
});

test('apply creates daemon.json when there is none and remembers that there was none', () => {
  const plan = planDockerApply(null, null, MIRROR);
  assert.equal(plan.text, `{\n  "registry-mirrors": [\n    "${MIRROR}"\n  ]\n}\n`);
  assert.equal(plan.state.original, null);
});

test('apply is idempotent and replaces its previous mirror when the URL changes', () => {
  const first = planDockerApply(ORIGINAL, null, MIRROR);
  const again = planDockerApply(Buffer.from(first.text!), first.state, MIRROR);
  assert.equal(again.text, null);
  assert.deepEqual(again.state, first.state);
  const moved = planDockerApply(Buffer.from(first.text!), first.state, 'http://10.96.0.43:5000');
  assert.deepEqual(JSON.parse(moved.text!)['registry-mirrors'], ['http://10.96.0.43:5000', 'https://corp.example']);
  assert.equal(moved.state.original, first.state.original, 'the original stays the file before the agent');
});

test('a mirror move names the old entry in the state file until daemon.json no longer holds it', () => {
  const first = planDockerApply(ORIGINAL, null, MIRROR);
  const moved = planDockerApply(Buffer.from(first.text!), first.state, 'http://10.96.0.43:5000');
  assert.deepEqual(moved.during, { mirror: 'http://10.96.0.43:5000', original: first.state.original, replacing: [MIRROR] });
  assert.deepEqual(moved.state, { mirror: 'http://10.96.0.43:5000', original: first.state.original });
  // killed after the state file was written, before daemon.json: the old entry is still ours
  const resumed = planDockerApply(Buffer.from(first.text!), moved.during, 'http://10.96.0.43:5000');
  assert.equal(resumed.text, moved.text);
  assert.equal(resumed.state.original, ORIGINAL.toString('base64'), 'the file with the old entry is not taken for the original');
  const removed = planDockerRemove(Buffer.from(first.text!), moved.during);
  assert.ok(removed.action === 'write' && removed.bytes.equals(ORIGINAL), 'removal from there restores the original');
  // killed after daemon.json, before the state file was settled: nothing to write, the state settles
  const settled = planDockerApply(Buffer.from(moved.text!), moved.during, 'http://10.96.0.43:5000');
  assert.equal(settled.text, null);
  assert.deepEqual(settled.state, moved.state);
});

test('apply after a removal cut short after its reload step keeps the original (and so does a reformatted copy of it)', () => {
  for (const original of [ORIGINAL, Buffer.from('{"debug": false}'), null]) {
    const applied = planDockerApply(original, null, MIRROR);
    const interim = Buffer.from(daemonJsonForReload(Buffer.from(applied.text!), applied.state));
    const again = planDockerApply(interim, applied.state, MIRROR);
    assert.equal(again.state.original, applied.state.original, `the reload form of ${original} is not taken for the original`);
    const removed = planDockerRemove(Buffer.from(again.text!), again.state);
    if (original === null) assert.deepEqual(removed, { action: 'delete' });
    else assert.ok(removed.action === 'write' && removed.bytes.equals(original));
  }
  const applied = planDockerApply(ORIGINAL, null, MIRROR);
  const reformatted = Buffer.from(JSON.stringify(JSON.parse(ORIGINAL.toString())));
  assert.equal(planDockerApply(reformatted, applied.state, MIRROR).state.original, applied.state.original);
});

test('a daemon.json rewritten by someone else without our entry becomes the new original', () => {
  const first = planDockerApply(ORIGINAL, null, MIRROR);
  const rewritten = Buffer.from('{"debug": true}');
  const plan = planDockerApply(rewritten, first.state, MIRROR);
  assert.deepEqual(JSON.parse(plan.text!), { debug: true, 'registry-mirrors': [MIRROR] });
  assert.equal(plan.state.original, rewritten.toString('base64'));
});

test('remove restores the original bytes exactly when nothing else changed', () => {
  const applied = planDockerApply(ORIGINAL, null, MIRROR);
  const plan = planDockerRemove(Buffer.from(applied.text!), applied.state);
  assert.equal(plan.action, 'write');
  assert.ok(plan.action === 'write' && plan.bytes.equals(ORIGINAL));
});

test('remove deletes daemon.json when the agent created it and nothing else was added', () => {
  const applied = planDockerApply(null, null, MIRROR);
  assert.deepEqual(planDockerRemove(Buffer.from(applied.text!), applied.state), { action: 'delete' });
});

test('remove takes only our entry out when other keys changed meanwhile', () => {
  const applied = planDockerApply(ORIGINAL, null, MIRROR);
  const edited = JSON.parse(applied.text!);
  edited.debug = true;
  const plan = planDockerRemove(Buffer.from(JSON.stringify(edited, null, 4)), applied.state);
  assert.ok(plan.action === 'write');
  assert.deepEqual(JSON.parse(plan.bytes.toString()), {
    'log-driver': 'journald', 'storage-driver': 'overlay2', 'registry-mirrors': ['https://corp.example'], debug: true,
  });
});

test('remove leaves the file alone when our entry is already gone or nothing was applied', () => {
  const applied = planDockerApply(ORIGINAL, null, MIRROR);
  assert.deepEqual(planDockerRemove(ORIGINAL, applied.state), { action: 'none' });
  assert.deepEqual(planDockerRemove(ORIGINAL, null), { action: 'none' });
  assert.deepEqual(planDockerRemove(null, applied.state), { action: 'none' });
});

test('a removal cut short after its reload step still brings the original bytes back', () => {
  // The agent dies (evicted, OOM) between writing the reload form and the original: the next
  // removal pass finds our entry gone, the keys reformatted, and the state file still there.
  for (const original of [ORIGINAL, Buffer.from('{\n\t"debug": false\n}\n'), null]) {
    const applied = planDockerApply(original, null, MIRROR);
    const interim = Buffer.from(daemonJsonForReload(Buffer.from(applied.text!), applied.state));
    assert.ok(original === null || !interim.equals(original), 'the reload form differs from the original');
    const plan = planDockerRemove(interim, applied.state);
    if (original === null) assert.deepEqual(plan, { action: 'delete' });
    else assert.ok(plan.action === 'write' && plan.bytes.equals(original), `restores ${original.toString()}`);
  }
  // Someone changed it since: their file stays as it is.
  const applied = planDockerApply(ORIGINAL, null, MIRROR);
  const edited = JSON.parse(daemonJsonForReload(Buffer.from(applied.text!), applied.state));
  edited.debug = true;
  assert.deepEqual(planDockerRemove(Buffer.from(JSON.stringify(edited)), applied.state), { action: 'none' });
});

test('the reload step keeps the registry-mirrors key so dockerd drops the mirror on SIGHUP', () => {
  const applied = planDockerApply(Buffer.from('{"debug": false}'), null, MIRROR);
  assert.deepEqual(JSON.parse(daemonJsonForReload(Buffer.from(applied.text!), applied.state)), { debug: false, 'registry-mirrors': [] });
});

test('a daemon.json that is not a JSON object is refused, not overwritten', () => {
  assert.throws(() => planDockerApply(Buffer.from('{"debug": tru'), null, MIRROR), DaemonJsonError);
  assert.throws(() => planDockerApply(Buffer.from('[1]'), null, MIRROR), DaemonJsonError);
  assert.throws(() => planDockerApply(Buffer.from('{"registry-mirrors": "http://x"}'), null, MIRROR), DaemonJsonError);
  assert.equal(planDockerApply(Buffer.from(''), null, MIRROR).text, `{\n  "registry-mirrors": [\n    "${MIRROR}"\n  ]\n}\n`);
});

test('pidfile, socket and live mirrors are read from daemon.json and docker info', () => {
  const json = Buffer.from('{"pidfile": "/tmp/d/dockerd.pid", "hosts": ["tcp://0.0.0.0:2375", "unix:///tmp/d/docker.sock"]}');
  assert.equal(daemonJsonPidFile(json), '/tmp/d/dockerd.pid');
  assert.equal(daemonJsonSocket(json), '/tmp/d/docker.sock');
  assert.equal(daemonJsonPidFile(Buffer.from('{}')), undefined);
  assert.deepEqual(mirrorsInDockerInfo({ RegistryConfig: { Mirrors: ['http://10.96.0.42:5000/'] } }), [MIRROR]);
  assert.deepEqual(mirrorsInDockerInfo({}), []);
});

test("dockerd's --registry-mirror (either form, any number) and --config-file are read from its command line", () => {
  assert.deepEqual(dockerdFlags(['/usr/bin/dockerd', '-H', 'fd://', '--containerd=/run/containerd/containerd.sock']), { registryMirrors: [], configFile: undefined });
  assert.deepEqual(
    dockerdFlags(['dockerd', '--registry-mirror', 'https://mirror.gcr.io/', '--config-file=/etc/docker/prod.json', `--registry-mirror=${MIRROR}`, '--debug']),
    { registryMirrors: ['https://mirror.gcr.io', MIRROR], configFile: '/etc/docker/prod.json' },
  );
  assert.deepEqual(dockerdFlags(['dockerd', '--config-file', 'daemon.json', '--', '--registry-mirror=x']), { registryMirrors: [], configFile: 'daemon.json' });
  assert.deepEqual(dockerdFlags(['dockerd', '--registry-mirrors=x', '--label=--registry-mirror']), { registryMirrors: [], configFile: undefined }, 'only the flags themselves');
});
