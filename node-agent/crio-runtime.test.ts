// CRI-O pulls with containers/image; skopeo 1.9 is that same library. skopeo has no flag for the
// drop-in directory (its --registries.d is signature-storage configuration, and
// --registries-conf replaces only the main file), but containers/image also reads
// $HOME/.config/containers/registries.conf.d/, so the agent writes its drop-in there under a temp
// HOME: the real drop-in loading, without touching /etc.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { makeTempDir } from '../test/harness/process.ts';
import { skopeo } from '../test/harness/oci-image.ts';
import { mirrorManifestRequests, runNodeAgent, startMirroredRegistries, type MirroredRegistries } from './runtime-fixtures.ts';

let upstreams: MirroredRegistries;
let home: string;
let dropInDir: string;
let registriesConf: string;

before(async () => {
  upstreams = await startMirroredRegistries();
  await upstreams.push(upstreams.hub, 'library/nginx', 'v1');
  await upstreams.push(upstreams.hub, 'library/nginx', 'v2');
  await upstreams.push(upstreams.ghcr, 'org/tool', 'v1');
  home = await makeTempDir('crio-home');
  dropInDir = path.join(home, '.config/containers/registries.conf.d');
  await mkdir(dropInDir, { recursive: true });
  // an empty main file, so the machine's own registries.conf plays no part
  registriesConf = path.join(home, 'registries.conf');
  await writeFile(registriesConf, 'unqualified-search-registries = []\n');
});

after(async () => {
  await upstreams?.stop();
});

function agentArgs(mode: 'apply' | 'remove'): string[] {
  return [
    '--mirror', upstreams.mirror.url,
    '--registries', 'docker.io,ghcr.io,registry.example.com:5000',
    '--runtimes', 'crio',
    '--crio-dir', dropInDir,
    '--mode', mode,
    '--once',
  ];
}

async function pull(ref: string): Promise<{ code: number; stderr: string }> {
  const out = path.join(await makeTempDir('crio-pull'), 'image');
  return skopeo(['--debug', '--registries-conf', registriesConf, 'copy', '--retry-times=0', `docker://${ref}`, `dir:${out}`], {
    env: { ...process.env, HOME: home },
    timeoutMs: 60_000,
  });
}

test('containers/image reads the drop-in and pulls docker.io and ghcr.io through the mirror', async () => {
  await runNodeAgent(agentArgs('apply'));
  assert.deepEqual(await readdir(dropInDir), ['99-regmirror.conf']);

  const before = await mirrorManifestRequests(upstreams.mirror);
  const result = await pull('docker.io/library/nginx:v1');
  assert.equal(result.code, 0, result.stderr.slice(-3000));
  // skopeo --debug logs each configuration file it loads (quotes escaped: \"...\")
  assert.match(result.stderr, /Loading registries configuration \\"[^"]*\.config\/containers\/registries\.conf\.d\/99-regmirror\.conf\\"/);
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) > before, 'the mirror served the manifest');
  assert.ok((await upstreams.hub.countRequests({ method: 'GET', path: /^\/v2\/library\/nginx\/manifests\// })) >= 1);

  // ghcr.io has no server here but the local upstream behind the mirror: the pull can only succeed through it
  const ghcrBefore = await mirrorManifestRequests(upstreams.mirror);
  const ghcr = await pull('ghcr.io/org/tool:v1');
  assert.equal(ghcr.code, 0, ghcr.stderr.slice(-3000));
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) > ghcrBefore, 'the mirror served the ghcr.io manifest');
  assert.ok((await upstreams.ghcr.countRequests({ method: 'GET', path: /^\/v2\/org\/tool\/manifests\// })) >= 1, 'fetched from the ghcr.io upstream');

  // a registry with a port (no such host here either): its mirror location must still parse
  const portedBefore = await mirrorManifestRequests(upstreams.mirror);
  const ported = await pull('registry.example.com:5000/org/tool:v1');
  assert.equal(ported.code, 0, ported.stderr.slice(-3000));
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) > portedBefore, 'the mirror served registry.example.com:5000');
});

test('a node drop-in loaded after ours that defines docker.io replaces the mirror for it: the agent says so, and once it loads first the mirror serves again', async () => {
  // kubespray and others name drop-ins after the registry; "d" sorts after "9", so this one loads last
  const own = path.join(dropInDir, 'docker.io.conf');
  await writeFile(own, '[[registry]]\nprefix = "docker.io"\nlocation = "docker.io"\n');
  const applied = await runNodeAgent(agentArgs('apply'));
  assert.match(applied.stdout, /docker\.io\.conf is loaded after 99-regmirror\.conf and defines \[\[registry\]\] prefix docker\.io, which replaces the mirror's entry/);
  assert.match(applied.stdout, /"ready":false/);
  const before = await mirrorManifestRequests(upstreams.mirror);
  const bypassed = await pull('docker.io/library/nginx:v2');
  assert.notEqual(bypassed.code, 0, 'docker.io itself cannot be reached here');
  assert.equal(await mirrorManifestRequests(upstreams.mirror), before, 'the mirror was not asked: the later drop-in won');

  await rename(own, path.join(dropInDir, '00-docker.io.conf'));
  const fixed = await runNodeAgent(agentArgs('apply'));
  assert.doesNotMatch(fixed.stdout, /loaded after 99-regmirror\.conf/);
  const through = await pull('docker.io/library/nginx:v2');
  assert.equal(through.code, 0, through.stderr.slice(-3000));
  assert.ok((await mirrorManifestRequests(upstreams.mirror)) > before, 'the mirror served the manifest');
  await rm(path.join(dropInDir, '00-docker.io.conf'));
});

test('after removal the drop-in is gone and containers/image no longer asks the mirror', async () => {
  await runNodeAgent(agentArgs('remove'));
  assert.deepEqual(await readdir(dropInDir), []);
  const before = await mirrorManifestRequests(upstreams.mirror);
  const result = await pull('docker.io/library/nginx:v2');
  assert.notEqual(result.code, 0);
  assert.equal(await mirrorManifestRequests(upstreams.mirror), before, 'the mirror was not asked');
});
