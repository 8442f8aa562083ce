// The Helm chart and the plain manifests: generated files are current, helm 3.6 lints and renders
// the chart, every rendered object validates against its schema, and the values do what
// values.yaml says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parse } from 'yaml';
import { LEADER_ELECTION_RULES, MIRROR_RULES, NODE_CLEANUP_RULES, NODE_RULES, OPERATOR_RULES } from '../operator/rbac.ts';
import { CHART_DIR, GENERATED_FILES, REPO_ROOT, helm, helmTemplate } from './generate.ts';
import { parseManifests, validateObject, type KubeObject } from './kubernetes-schemas.ts';

const EVERYTHING_ON = [
  '--set', 'watchNamespaces={team-a,team-b}',
  '--set', 'metrics.serviceMonitor.enabled=true',
  '--set', 'metrics.mirrorPodMonitor.enabled=true',
  '--set', 'metrics.grafanaDashboard.enabled=true',
  '--set', 'replicaCount=2',
  '--set', 'image.tag=test',
  '--set', 'mirrorImage=registry.example.com/regmirror:pinned',
];

const find = (objects: KubeObject[], kind: string, name?: string) =>
  objects.filter((o) => o.kind === kind && (name === undefined || o.metadata.name === name));

type Container = { args: string[]; env: { name: string; value?: string }[]; image: string; securityContext: Record<string, unknown> };
const operatorContainer = (objects: KubeObject[]): Container => {
  const [deployment] = find(objects, 'Deployment');
  return (deployment as unknown as { spec: { template: { spec: { containers: Container[] } } } }).spec.template.spec.containers[0]!;
};
const envOf = (container: Container, name: string) => container.env.find((e) => e.name === name)?.value;

test('the committed chart RBAC, chart CRD and deploy/regmirror.yaml are what charts/generate.ts writes (run it after changing them)', async () => {
  for (const [file, render] of GENERATED_FILES) {
    assert.equal(readFileSync(path.join(REPO_ROOT, file), 'utf8'), await render(), `${file} is stale: run node charts/generate.ts`);
  }
});

test('helm 3.6 lints the chart strictly, with the default values and with every option on', async () => {
  await helm(['lint', '--strict', CHART_DIR]);
  await helm(['lint', '--strict', CHART_DIR, ...EVERYTHING_ON]);
});

test('every object the chart renders (and deploy/regmirror.yaml holds) validates against the Kubernetes schemas', async () => {
  const renders = {
    defaults: await helmTemplate(['--include-crds']),
    everything: await helmTemplate(['--include-crds', ...EVERYTHING_ON]),
    'deploy/regmirror.yaml': readFileSync(path.join(REPO_ROOT, 'deploy', 'regmirror.yaml'), 'utf8'),
  };
  for (const [name, text] of Object.entries(renders)) {
    const objects = parseManifests(text);
    assert.ok(objects.length >= 8, `${name}: ${objects.length} objects`);
    for (const object of objects) validateObject(object);
  }
  const kinds = parseManifests(renders.everything).map((o) => o.kind).sort();
  for (const kind of ['ServiceMonitor', 'PodMonitor', 'ConfigMap', 'CustomResourceDefinition']) assert.ok(kinds.includes(kind), kind);
});

test('every object carries the app.kubernetes.io labels', async () => {
  for (const object of parseManifests(await helmTemplate(EVERYTHING_ON, { name: 'edge', namespace: 'mirrors' }))) {
    const labels = object.metadata.labels ?? {};
    assert.equal(labels['app.kubernetes.io/name'], 'regmirror', `${object.kind} ${object.metadata.name}`);
    assert.equal(labels['app.kubernetes.io/instance'], 'edge');
    assert.equal(labels['app.kubernetes.io/managed-by'], 'Helm');
    assert.equal(labels['app.kubernetes.io/part-of'], 'regmirror');
    assert.equal(labels['app.kubernetes.io/version'], '0.1.0');
    if (object.metadata.namespace !== undefined && !['RoleBinding'].includes(object.kind)) assert.equal(object.metadata.namespace, 'mirrors');
  }
});

test('the RBAC rules are operator/rbac.ts\'s, bound cluster-wide by default', async () => {
  const objects = parseManifests(await helmTemplate());
  const [clusterRole] = find(objects, 'ClusterRole', 'regmirror-operator');
  assert.deepEqual((clusterRole as unknown as { rules: unknown }).rules, OPERATOR_RULES);
  assert.ok(NODE_RULES.every((rule) => OPERATOR_RULES.includes(rule)), 'reading Nodes, bound cluster-wide with the rest');
  const [role] = find(objects, 'Role', 'regmirror-operator-leader-election');
  assert.deepEqual((role as unknown as { rules: unknown }).rules, LEADER_ELECTION_RULES);
  const [binding] = find(objects, 'ClusterRoleBinding', 'regmirror-operator');
  assert.deepEqual((binding as unknown as { subjects: unknown }).subjects, [{ kind: 'ServiceAccount', name: 'regmirror-operator', namespace: 'regmirror-system' }]);
  assert.deepEqual(find(objects, 'RoleBinding').map((b) => b.metadata.name), ['regmirror-operator-leader-election', 'regmirror-operator-node-cleanup'], 'only the RoleBindings in the operator\'s namespace');
  const container = operatorContainer(objects);
  assert.equal(envOf(container, 'WATCH_NAMESPACE'), undefined);
  assert.ok(container.args.includes('--leader-elect=true'));
});

test('watchNamespaces binds the rules in each listed namespace only (RegistryMirrors themselves and reading Nodes cluster-wide) and tells the operator to watch just those', async () => {
  const objects = parseManifests(await helmTemplate(EVERYTHING_ON));
  // Only the rules over RegistryMirrors are bound cluster-wide (a namespace being deleted takes its
  // RoleBinding with it before the finalizer of a RegistryMirror in it is done), and reading Nodes,
  // which are cluster-scoped (no RoleBinding grants them).
  const clusterBindings = find(objects, 'ClusterRoleBinding') as unknown as { roleRef: { kind: string; name: string } }[];
  assert.deepEqual(clusterBindings.map((b) => b.roleRef), ['regmirror-operator-registrymirrors', 'regmirror-operator-nodes'].map((name) => ({ apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name })));
  const [mirrorsRole] = find(objects, 'ClusterRole', 'regmirror-operator-registrymirrors');
  assert.deepEqual((mirrorsRole as unknown as { rules: unknown }).rules, MIRROR_RULES);
  assert.ok(MIRROR_RULES.every((rule) => rule.apiGroups.join() === 'regmirror.dev'), 'nothing but RegistryMirrors');
  const [nodesRole] = find(objects, 'ClusterRole', 'regmirror-operator-nodes');
  assert.deepEqual((nodesRole as unknown as { rules: unknown }).rules, NODE_RULES);
  assert.deepEqual(NODE_RULES.flatMap((rule) => [...rule.resources, ...rule.verbs]), ['nodes', 'get', 'list'], 'reading Nodes, nothing else');
  const bindings = find(objects, 'RoleBinding', 'regmirror-operator');
  assert.deepEqual(bindings.map((b) => b.metadata.namespace), ['team-a', 'team-b']);
  for (const binding of bindings) assert.deepEqual((binding as unknown as { roleRef: unknown }).roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'ClusterRole', name: 'regmirror-operator' });
  const container = operatorContainer(objects);
  assert.equal(envOf(container, 'WATCH_NAMESPACE'), 'team-a,team-b');
  assert.equal(container.image, 'ghcr.io/regmirror/regmirror:test');
  assert.equal(envOf(container, 'MIRROR_IMAGE'), 'registry.example.com/regmirror:pinned');
  const [podMonitor] = find(objects, 'PodMonitor');
  assert.deepEqual((podMonitor as unknown as { spec: { namespaceSelector: unknown } }).spec.namespaceSelector, { matchNames: ['team-a', 'team-b'] });
});

test('the mirrors\' PodMonitor scrapes over http by default, and over https with the given tlsConfig for mirrors with spec.tls', async () => {
  type Endpoint = { port: string; path: string; scheme: string; tlsConfig?: unknown };
  const endpoint = (objects: KubeObject[]) => (find(objects, 'PodMonitor')[0] as unknown as { spec: { podMetricsEndpoints: Endpoint[] } }).spec.podMetricsEndpoints[0]!;
  const plain = endpoint(parseManifests(await helmTemplate(['--set', 'metrics.mirrorPodMonitor.enabled=true'])));
  assert.equal(plain.scheme, 'http');
  assert.equal(plain.tlsConfig, undefined);
  const tls = endpoint(parseManifests(await helmTemplate(['--set', 'metrics.mirrorPodMonitor.enabled=true', '--set', 'metrics.mirrorPodMonitor.scheme=https',
    '--set', 'metrics.mirrorPodMonitor.tlsConfig.ca.secret.name=hub-tls', '--set', 'metrics.mirrorPodMonitor.tlsConfig.ca.secret.key=ca.crt'])));
  assert.equal(tls.scheme, 'https');
  assert.deepEqual(tls.tlsConfig, { ca: { secret: { name: 'hub-tls', key: 'ca.crt' } } });
});

test('cleanup DaemonSets of RegistryMirrors whose namespace is being deleted may be made in the operator\'s namespace, cluster-wide or watching some namespaces', async () => {
  for (const values of [[], EVERYTHING_ON]) {
    const objects = parseManifests(await helmTemplate(values, { name: 'edge', namespace: 'mirrors' }));
    const [role] = find(objects, 'Role', 'edge-regmirror-operator-node-cleanup');
    assert.equal(role?.metadata.namespace, 'mirrors', `values ${values.join(' ')}`);
    assert.deepEqual((role as unknown as { rules: unknown }).rules, NODE_CLEANUP_RULES);
    const [binding] = find(objects, 'RoleBinding', 'edge-regmirror-operator-node-cleanup');
    assert.equal(binding?.metadata.namespace, 'mirrors');
    assert.deepEqual((binding as unknown as { roleRef: unknown }).roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'edge-regmirror-operator-node-cleanup' });
    assert.deepEqual((binding as unknown as { subjects: unknown }).subjects, [{ kind: 'ServiceAccount', name: 'edge-regmirror-operator', namespace: 'mirrors' }]);
    // The operator's cleanup namespace is its own: POD_NAMESPACE, from the downward API.
    const env = (operatorContainer(objects) as unknown as { env: { name: string; valueFrom?: unknown }[] }).env;
    assert.deepEqual(env.find((e) => e.name === 'POD_NAMESPACE')?.valueFrom, { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.namespace' } });
  }
});

test('leader election off drops the Lease RBAC and passes --leader-elect=false', async () => {
  const objects = parseManifests(await helmTemplate(['--set', 'leaderElection.enabled=false']));
  assert.deepEqual(find(objects, 'Role').map((r) => r.metadata.name), ['regmirror-operator-node-cleanup']);
  assert.ok(operatorContainer(objects).args.includes('--leader-elect=false'));
});

test('the operator runs as non-root on a read-only root filesystem, with probes on its metrics port', async () => {
  const objects = parseManifests(await helmTemplate());
  const [deployment] = find(objects, 'Deployment');
  const pod = (deployment as unknown as { spec: { template: { spec: Record<string, any> } } }).spec.template.spec;
  assert.equal(pod.securityContext.runAsNonRoot, true);
  const container = pod.containers[0];
  assert.deepEqual(container.command, ['regmirror']);
  assert.equal(container.args[0], 'operator');
  assert.equal(container.securityContext.readOnlyRootFilesystem, true);
  assert.equal(container.readinessProbe.httpGet.path, '/readyz');
  assert.equal(container.livenessProbe.httpGet.path, '/healthz');
  assert.equal(envOf(container, 'METRICS_ADDRESS'), ':8080');
});

test('values.schema.json refuses values that would render a broken install, naming the key; a numeric image tag is written as its digits', async () => {
  const refused = async (args: string[], key: RegExp) => {
    await assert.rejects(helmTemplate(args), (error: Error) => key.test(error.message) && /schema/.test(error.message), args.join(' '));
  };
  await refused(['--set-string', 'replicaCount=two'], /replicaCount: Invalid type/);
  await refused(['--set', 'watchNamespaces=team-a'], /watchNamespaces: Invalid type/);
  await refused(['--set', 'logLevel=verbose'], /logLevel must be one of/);
  await refused(['--set', 'nodeCleanupTimeout=five minutes'], /nodeCleanupTimeout/);
  const dir = mkdtempSync(path.join(tmpdir(), 'regmirror-values-'));
  try {
    // a values file: Helm reads an unquoted number as a float, which printf once wrote as %!s(float64=2.0250101e+07)
    writeFileSync(path.join(dir, 'whole.yaml'), 'image:\n  tag: 20250101\n');
    writeFileSync(path.join(dir, 'decimal.yaml'), 'image:\n  tag: 1.27\n');
    for (const args of [['-f', path.join(dir, 'whole.yaml')], ['--set', 'image.tag=20250101']]) {
      const container = operatorContainer(parseManifests(await helmTemplate(args)));
      assert.equal(container.image, 'ghcr.io/regmirror/regmirror:20250101', args.join(' '));
      assert.equal(envOf(container, 'MIRROR_IMAGE'), 'ghcr.io/regmirror/regmirror:20250101');
    }
    await refused(['-f', path.join(dir, 'decimal.yaml')], /image\.tag: Invalid type/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the operator\'s fieldRefs name apiVersion v1, as the API server stores them, so a server-side apply of deploy/regmirror.yaml over a Helm install has nothing to conflict on', async () => {
  const env = operatorContainer(parseManifests(await helmTemplate())).env as { name: string; valueFrom?: { fieldRef?: { apiVersion?: string } } }[];
  const refs = env.filter((e) => e.valueFrom?.fieldRef);
  assert.ok(refs.length >= 2);
  for (const ref of refs) assert.equal(ref.valueFrom!.fieldRef!.apiVersion, 'v1', ref.name);
});

test('the chart version and appVersion follow package.json, and the CRD ships in the chart\'s crds/', () => {
  const chart = parse(readFileSync(path.join(CHART_DIR, 'Chart.yaml'), 'utf8')) as { version: string; appVersion: string };
  const pkg = JSON.parse(readFileSync(path.join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
  assert.equal(chart.appVersion, pkg.version);
  assert.equal(chart.version, pkg.version);
  const crd = parseManifests(readFileSync(path.join(CHART_DIR, 'crds', 'registrymirrors.regmirror.dev.yaml'), 'utf8'));
  const original = parseManifests(readFileSync(path.join(REPO_ROOT, 'crds', 'registrymirrors.regmirror.dev.yaml'), 'utf8'));
  assert.deepEqual(crd, original);
});
