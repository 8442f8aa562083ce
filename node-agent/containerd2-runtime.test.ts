// A real containerd 2.x (2.1 and 2.2, built by test/containerd2) under the node agent: where the
// agent says ready, a CRI pull (as kubelet's) goes through the mirror, and where containerd 2.x does
// not read hosts.toml the agent says so. Findings encoded here (containerd's own behaviour):
// - a version 3 config reads config_path from [plugins."io.containerd.cri.v1.images".registry] only;
// - without config_path no hosts.toml is read: 2.1 has no default, and 2.2's default is a list;
// - a config_path list is read only in local pull mode: CRI pulls through the transfer service (the
//   default since 2.1) take it for one directory (containerd#12415);
// - a version 2 config is migrated: its CRI table's config_path counts, and so does the images
//   plugin's table; a version 1 config's [plugins.cri] does not.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { containerd2Binaries, CONTAINERD2_BUILD_COMMAND, CONTAINERD2_RELEASES, type Containerd2Binaries } from '../test/containerd2/binaries.ts';
import { startContainerd, type StartContainerdOptions } from '../test/harness/containerd.ts';
import { criPullImage } from './cri-pull.ts';
import { mirrorManifestRequests, runNodeAgent, startMirroredRegistries, type MirroredRegistries } from './runtime-fixtures.ts';

const LOCAL_PULL = '[plugins."io.containerd.cri.v1.images"]\n  use_local_image_pull = true';

let upstreams: MirroredRegistries;
let tag = 0;

before(async () => {
  upstreams = await startMirroredRegistries();
});
after(async () => upstreams?.stop());

interface Outcome {
  ready: boolean;
  problems: string;
  /** the agent's log lines (warnings) */
  log: string;
  /** the CRI pull asked the mirror, and the mirror asked the stand-in Docker Hub */
  viaMirror: boolean;
}

/** A node whose containerd 2.x has this configuration: what the agent (--once, apply) reports, and whether a CRI pull goes through the mirror. */
async function onNode(binaries: Containerd2Binaries, opts: Omit<StartContainerdOptions, 'binaries'>): Promise<Outcome> {
  const ref = `library/alpine:c${++tag}`;
  await upstreams.push(upstreams.hub, 'library/alpine', `c${tag}`);
  const node = await startContainerd({ ...opts, binaries });
  try {
    const run = await runNodeAgent(['--mirror', upstreams.mirror.url, '--registries', 'docker.io', '--runtimes', 'containerd',
      '--containerd-hosts-dir', node.hostsDir, '--containerd-config', node.configFile, '--once', '--ready-listen', '']);
    const report = JSON.parse(run.stdout.trim().split('\n').at(-1)!) as { ready: boolean; problems?: string[] };
    const mirrorBefore = await mirrorManifestRequests(upstreams.mirror);
    const pulled = await criPullImage(node.socket, `docker.io/${ref}`).then(() => true, (error: Error) => {
      // the hosts.toml servers are out of reach: without the mirror the pull fails at Docker Hub
      assert.match(error.message, /registry-1\.docker\.io/);
      return false;
    });
    const hubGets = await upstreams.hub.countRequests({ method: 'GET', path: new RegExp(`^/v2/library/alpine/manifests/c${tag}$`) });
    const viaMirror = (await mirrorManifestRequests(upstreams.mirror)) > mirrorBefore && hubGets >= 1;
    assert.equal(pulled, viaMirror);
    return { ready: report.ready, problems: (report.problems ?? []).join('\n'), log: run.stdout, viaMirror };
  } finally {
    await node.stop();
  }
}

const available = CONTAINERD2_RELEASES.map((release) => ({ release, found: containerd2Binaries(release) }));
for (const { release, found } of available) {
  const skip = found.ok ? false : `${found.reason}; run \`${CONTAINERD2_BUILD_COMMAND}\``;
  if (!found.ok) {
    process.stderr.write(`\n*** containerd ${release} runtime tests SKIPPED: ${skip} ***\n\n`);
    // CI must run them: there a missing binary is a failure, not a skip.
    if (process.env.CI === 'true') it(`containerd ${release} is built in CI`, () => assert.fail(found.reason));
  }
  const binaries = found.ok ? found.binaries : (undefined as unknown as Containerd2Binaries);

  describe(`containerd ${found.ok ? found.binaries.version : release} under the node agent`, { skip }, () => {
    it('version 3 with config_path: the agent writes hosts.toml and is ready; ctr and CRI pulls go through the mirror', async () => {
      await upstreams.push(upstreams.hub, 'library/alpine', 'ctr');
      const node = await startContainerd({ binaries });
      try {
        assert.match(await readFile(node.configFile, 'utf8'), /^version = 3\n[^]*\[plugins\."io\.containerd\.cri\.v1\.images"\.registry\]\n {2}config_path = /m);
        const run = await runNodeAgent(['--mirror', upstreams.mirror.url, '--registries', 'docker.io', '--runtimes', 'containerd',
          '--containerd-hosts-dir', node.hostsDir, '--containerd-config', node.configFile, '--once', '--ready-listen', '']);
        assert.deepEqual(JSON.parse(run.stdout.trim().split('\n').at(-1)!).ready, true);
        assert.match(await readFile(path.join(node.hostsDir, 'docker.io', 'hosts.toml'), 'utf8'), new RegExp(`\\[host\\."${upstreams.mirror.url}"\\]`));
        const before = await mirrorManifestRequests(upstreams.mirror);
        await node.pull('docker.io/library/alpine:ctr');
        assert.ok((await mirrorManifestRequests(upstreams.mirror)) > before, 'the mirror served the manifest');
        assert.ok((await upstreams.hub.countRequests({ method: 'GET', path: /^\/v2\/library\/alpine\/manifests\/ctr$/ })) >= 1);
        assert.ok((await node.images()).includes('docker.io/library/alpine:ctr'));
      } finally {
        await node.stop();
      }
      assert.deepEqual(await onNode(binaries, {}).then(({ ready, problems, viaMirror }) => ({ ready, problems, viaMirror })), { ready: true, problems: '', viaMirror: true });
    });

    it('version 3 without config_path: containerd reads no hosts.toml, and the agent is not ready', async () => {
      const none = await onNode(binaries, { configPath: false });
      assert.equal(none.viaMirror, false);
      assert.equal(none.ready, false);
      assert.match(none.problems, /does not set config_path under \[plugins\."io\.containerd\.cri\.v1\.images"\.registry\], the table containerd reads in a version 3 config .*containerd 2\.0 and 2\.1 have no default/);
    });

    it('a config_path list (as 2.2 defaults to) is read only with local image pull: the agent is ready exactly then', async () => {
      const list = (hostsDir: string): string => `${hostsDir}:${hostsDir}-docker`;
      const transfer = await onNode(binaries, { configPath: list });
      assert.equal(transfer.viaMirror, false, 'the transfer service takes the list for one directory');
      assert.equal(transfer.ready, false);
      assert.match(transfer.problems, /a list of directories: containerd 2\.1 and later take it for one directory/);
      const local = await onNode(binaries, { configPath: (hostsDir) => `${hostsDir}-docker:${hostsDir}`, extraToml: LOCAL_PULL });
      assert.deepEqual({ ready: local.ready, viaMirror: local.viaMirror }, { ready: true, viaMirror: true });
    });

    it('a version 2 config is migrated: its CRI table counts (ready); the images table counts too, which 1.x ignores (not ready, said so)', async () => {
      const cri = await onNode(binaries, { version: 2 });
      assert.deepEqual({ ready: cri.ready, viaMirror: cri.viaMirror }, { ready: true, viaMirror: true });
      const images = await onNode(binaries, { version: 2, registryPlugin: '"io.containerd.cri.v1.images"' });
      assert.equal(images.viaMirror, true, 'containerd 2.x keeps the images table when it migrates');
      assert.equal(images.ready, false, 'containerd 1.6 ignores it (containerd-runtime.test.ts), and the agent cannot tell which runs');
      assert.match(images.problems, /a table containerd 2\.x reads in a version 2 config too, but containerd 1\.x does not/);
      const none = await onNode(binaries, { version: 2, configPath: false });
      assert.deepEqual({ ready: none.ready, viaMirror: none.viaMirror }, { ready: false, viaMirror: false });
    });

    it("a version 1 config's [plugins.cri] config_path is not read by containerd 2.x: ready (1.x reads it), with a warning", async () => {
      const v1 = await onNode(binaries, { version: 1 });
      assert.equal(v1.viaMirror, false);
      assert.equal(v1.ready, true);
      assert.match(v1.log, /which containerd 1\.x reads but containerd 2\.x does not/);
    });
  });
}
