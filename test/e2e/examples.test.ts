// Every RegistryMirror in examples/ is accepted by a real kube-apiserver with the CRD installed
// (server-side dry run: OpenAPI schema, defaults and CEL rules), and a broken one is refused, so
// the acceptance means something. The plain install (deploy/regmirror.yaml) is dry-run too.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { kubeEnvAvailability, startKubeEnv, type KubeEnv } from '../kube/env.ts';
import { parseManifests } from '../../charts/kubernetes-schemas.ts';

const REPO_ROOT = path.resolve(import.meta.dirname, '..', '..');
const EXAMPLES_DIR = path.join(REPO_ROOT, 'examples');
const CRD_FILE = path.join(REPO_ROOT, 'crds', 'registrymirrors.regmirror.dev.yaml');
const examples = readdirSync(EXAMPLES_DIR).filter((f) => f.endsWith('.yaml')).sort();

const availability = kubeEnvAvailability();
// On a developer machine without the Kubernetes binaries this skips, loudly; in CI it must run.
const skip = !availability.ok && !process.env.CI ? `needs kube-apiserver: ${availability.reason}` : false;
if (skip) process.stderr.write(`\nSKIPPED examples/ validation against kube-apiserver: ${skip}\n\n`);

let kube: KubeEnv;

async function kubectl(args: string[], input?: string): Promise<string> {
  const result = await kube.kubectl(args, { input });
  assert.equal(result.code, 0, `kubectl ${args.join(' ')}:\n${result.stderr}${result.stdout}`);
  return result.stdout;
}

before(async () => {
  if (skip) return;
  if (!availability.ok) throw new Error(`CI is set, so examples/ must be checked, but: ${availability.reason}`);
  kube = await startKubeEnv();
  await kubectl(['apply', '--server-side', '-f', CRD_FILE]);
  await kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/registrymirrors.regmirror.dev']);
  const namespaces = new Set(examples.flatMap((file) => parseManifests(readFileSync(path.join(EXAMPLES_DIR, file), 'utf8')).map((o) => o.metadata.namespace)));
  for (const namespace of namespaces) if (namespace) await kubectl(['create', 'namespace', namespace]);
});

after(async () => {
  await kube?.stop();
});

test('examples/ has RegistryMirrors for Docker Hub with credentials, several registries, CRI-O nodes and a registry behind a private CA', () => {
  for (const name of ['docker-hub-with-credentials.yaml', 'several-registries.yaml', 'crio-nodes.yaml', 'minimal.yaml', 'private-registry-ca.yaml']) assert.ok(examples.includes(name), name);
  for (const file of examples) {
    const kinds = parseManifests(readFileSync(path.join(EXAMPLES_DIR, file), 'utf8')).map((o) => o.kind);
    assert.ok(kinds.includes('RegistryMirror'), `${file} holds a RegistryMirror`);
  }
});

for (const file of examples) {
  test(`kube-apiserver accepts examples/${file} (kubectl apply --dry-run=server)`, { skip }, async () => {
    const out = await kubectl(['apply', '--dry-run=server', '-f', path.join(EXAMPLES_DIR, file)]);
    assert.match(out, /registrymirror\.regmirror\.dev\/\S+ created \(server dry run\)/);
  });
}

test('kube-apiserver accepts the plain install, deploy/regmirror.yaml (kubectl apply --server-side --dry-run=server)', { skip }, async () => {
  // The namespace the file creates must exist for a dry run of the objects in it.
  await kubectl(['create', 'namespace', 'regmirror-system']);
  const out = await kubectl(['apply', '--server-side', '--dry-run=server', '-f', path.join(REPO_ROOT, 'deploy', 'regmirror.yaml')]);
  for (const object of ['deployment.apps/regmirror-operator', 'clusterrole.rbac.authorization.k8s.io/regmirror-operator', 'serviceaccount/regmirror-operator']) {
    assert.match(out, new RegExp(`${object.replaceAll('.', '\\.')} serverside-applied \\(server dry run\\)`), out);
  }
});

test('kube-apiserver refuses a RegistryMirror that breaks the CRD\'s rules, so acceptance is meaningful', { skip }, async () => {
  const broken = readFileSync(path.join(EXAMPLES_DIR, 'minimal.yaml'), 'utf8')
    .replace('registry: ghcr.io', 'registry: https://ghcr.io') // a URL where a registry name goes
    .concat('  storage:\n    size: 1Gi\n    maxSize: 2Gi\n'); // maxSize above size (a CEL rule)
  const result = await kube.kubectl(['apply', '--dry-run=server', '-f', '-'], { input: broken });
  assert.notEqual(result.code, 0);
  assert.match(result.stderr, /spec\.upstreams\[1\]\.registry/);
  assert.match(result.stderr, /maxSize must not exceed size/);
});
