// The test environment itself: kubectl and @kubernetes/client-node work against it as against a
// cluster, the server enforces CRD schemas and RBAC, and the controller manager collects garbage.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ApiException,
  CoreV1Api,
  CustomObjectsApi,
  KubernetesObjectApi,
  PatchStrategy,
  RbacAuthorizationV1Api,
  type V1ConfigMap,
  Watch,
  setHeaderOptions,
} from '@kubernetes/client-node';
import { kubeVersions } from './binaries.ts';
import { type KubeEnv, kubeEnvAvailability, startKubeEnv } from './env.ts';

const availability = kubeEnvAvailability();
const skip = availability.ok ? false : availability.reason;
if (!availability.ok) process.stderr.write(`*** Kubernetes API tests SKIPPED: ${availability.reason} ***\n`);

const FIXTURES = path.join(import.meta.dirname, 'fixtures');
const WAIT_MS = 60_000;

async function eventually<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = WAIT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await probe();
    if (value !== undefined) return value;
    await sleep(250);
  }
  throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}`);
}

function statusOf(err: unknown): number | undefined {
  return err instanceof ApiException ? err.code : undefined;
}

async function installWidgetCrd(env: KubeEnv): Promise<void> {
  const applied = await env.kubectl(['apply', '-f', path.join(FIXTURES, 'widget-crd.yaml')]);
  assert.equal(applied.code, 0, applied.stderr);
  const established = await env.kubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/widgets.samples.regmirror.dev']);
  assert.equal(established.code, 0, established.stderr);
}

/** Logs one ConfigMap's requests with their bodies, and nothing else. */
const AUDIT_POLICY = {
  omitStages: ['RequestReceived'],
  rules: [
    { level: 'RequestResponse', resources: [{ group: '', resources: ['configmaps'], resourceNames: ['audited'] }] },
    { level: 'None' },
  ],
};

describe('kube test environment without a controller manager', { skip }, () => {
  let env: KubeEnv;
  before(async () => {
    env = await startKubeEnv({ auditPolicy: AUDIT_POLICY });
    await installWidgetCrd(env);
  });
  after(async () => env?.stop());

  it('serves the pinned Kubernetes version to kubectl on 127.0.0.1', async () => {
    assert.match(env.server, /^https:\/\/127\.0\.0\.1:\d+$/);
    const version = await env.kubectl(['version', '-o', 'json']);
    assert.equal(version.code, 0, version.stderr);
    const parsed = JSON.parse(version.stdout) as { serverVersion: { gitVersion: string } };
    assert.equal(parsed.serverVersion.gitVersion, kubeVersions().kubernetes);
  });

  it('accepts a custom resource applied with kubectl and returns it', async () => {
    const applied = await env.kubectl(['apply', '-f', path.join(FIXTURES, 'widget.yaml')]);
    assert.equal(applied.code, 0, applied.stderr);
    const got = await env.kubectl(['get', 'widget', 'small', '-n', 'default', '-o', 'jsonpath={.spec.size}/{.spec.color}']);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout, '3/green');
  });

  it('rejects custom resources that violate the CRD schema', async () => {
    const tooBig = await env.kubectl(['apply', '-f', '-'], {
      input: 'apiVersion: samples.regmirror.dev/v1\nkind: Widget\nmetadata: {name: huge, namespace: default}\nspec: {size: 11, color: green}\n',
    });
    assert.notEqual(tooBig.code, 0);
    assert.match(tooBig.stderr, /spec\.size/);

    const custom = env.kubeConfig().makeApiClient(CustomObjectsApi);
    const badColor = { apiVersion: 'samples.regmirror.dev/v1', kind: 'Widget', metadata: { name: 'purple' }, spec: { size: 2, color: 'purple' } };
    await assert.rejects(
      custom.createNamespacedCustomObject({ group: 'samples.regmirror.dev', version: 'v1', namespace: 'default', plural: 'widgets', body: badColor }),
      (err: unknown) => statusOf(err) === 422 && /spec\.color/.test(String((err as Error).message)),
    );
  });

  it('lists, creates and server-side applies with @kubernetes/client-node', async () => {
    const kc = env.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    const namespaces = await core.listNamespace();
    const names = namespaces.items.map((ns) => ns.metadata?.name);
    assert.ok(names.includes('default') && names.includes('kube-system'), `namespaces: ${names.join(', ')}`);

    await core.createNamespace({ body: { metadata: { name: 'client-node' } } });
    const created = await core.createNamespacedConfigMap({ namespace: 'client-node', body: { metadata: { name: 'created' }, data: { a: '1' } } });
    assert.equal(created.data?.a, '1');
    const listed = await core.listNamespacedConfigMap({ namespace: 'client-node' });
    assert.ok(listed.items.some((cm) => cm.metadata?.name === 'created'));

    const objects = KubernetesObjectApi.makeApiClient(kc);
    const desired: V1ConfigMap = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'applied', namespace: 'client-node' }, data: { mode: 'first' } };
    await objects.patch(desired, undefined, undefined, 'regmirror-test', true, PatchStrategy.ServerSideApply);
    const reapplied = await objects.patch(
      { ...desired, data: { mode: 'second' } },
      undefined,
      undefined,
      'regmirror-test',
      true,
      PatchStrategy.ServerSideApply,
    );
    assert.equal(reapplied.data?.mode, 'second');
    const managers = (reapplied.metadata?.managedFields ?? []).map((entry) => `${entry.manager}/${entry.operation}`);
    assert.deepEqual(managers, ['regmirror-test/Apply']);
  });

  it('patches the status subresource of a custom resource without touching its spec', async () => {
    const custom = env.kubeConfig().makeApiClient(CustomObjectsApi);
    const ref = { group: 'samples.regmirror.dev', version: 'v1', namespace: 'default', plural: 'widgets' };
    await custom.createNamespacedCustomObject({ ...ref, body: { apiVersion: 'samples.regmirror.dev/v1', kind: 'Widget', metadata: { name: 'statused' }, spec: { size: 5 } } });
    const patched = (await custom.patchNamespacedCustomObjectStatus(
      { ...ref, name: 'statused', body: { status: { phase: 'Ready', observedGeneration: 1 }, spec: { size: 9 } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    )) as { spec: { size: number }; status: { phase: string }; metadata: { generation: number } };
    assert.equal(patched.status.phase, 'Ready');
    assert.equal(patched.spec.size, 5, 'a status patch must not change the spec');
    assert.equal(patched.metadata.generation, 1);
  });

  it('delivers ADDED, MODIFIED and DELETED to a watch', async () => {
    const kc = env.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'watched' } } });
    const seen: string[] = [];
    let watchError: unknown;
    const controller = await new Watch(kc).watch(
      '/api/v1/namespaces/watched/configmaps',
      {},
      (phase, obj: V1ConfigMap) => seen.push(`${phase} ${obj.metadata?.name}`),
      (err) => (watchError = err),
    );
    try {
      await core.createNamespacedConfigMap({ namespace: 'watched', body: { metadata: { name: 'w' }, data: { n: '1' } } });
      await core.patchNamespacedConfigMap(
        { namespace: 'watched', name: 'w', body: { data: { n: '2' } } },
        setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
      );
      await core.deleteNamespacedConfigMap({ namespace: 'watched', name: 'w' });
      await eventually('three watch events', async () => (seen.length >= 3 || watchError ? true : undefined), 30_000);
      assert.equal(watchError, undefined);
      assert.deepEqual(seen, ['ADDED w', 'MODIFIED w', 'DELETED w']);
    } finally {
      controller.abort();
    }
  });

  it('authenticates other users by client certificate and authorizes them with RBAC', async () => {
    const user = 'system:serviceaccount:regmirror-system:regmirror-operator';
    const kubeconfig = await env.kubeconfigFor(user, ['system:serviceaccounts', 'system:serviceaccounts:regmirror-system']);
    const whoami = await env.kubectl(['auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username} {.status.userInfo.groups}'], { kubeconfig });
    assert.equal(whoami.code, 0, whoami.stderr);
    assert.match(whoami.stdout, /^system:serviceaccount:regmirror-system:regmirror-operator .*system:serviceaccounts:regmirror-system/);

    const denied = await env.kubectl(['get', 'configmaps', '-n', 'default'], { kubeconfig });
    assert.notEqual(denied.code, 0);
    assert.match(denied.stderr, /forbidden/);

    // A Role with its own rules: aggregated ClusterRoles such as `view` are empty until the
    // controller manager's clusterrole-aggregation controller fills them.
    const rbac = env.kubeConfig().makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({
      namespace: 'default',
      body: { metadata: { name: 'configmap-reader' }, rules: [{ apiGroups: [''], resources: ['configmaps'], verbs: ['get', 'list'] }] },
    });
    await rbac.createNamespacedRoleBinding({
      namespace: 'default',
      body: {
        metadata: { name: 'operator-reads-configmaps' },
        roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'configmap-reader' },
        subjects: [{ kind: 'User', apiGroup: 'rbac.authorization.k8s.io', name: user }],
      },
    });
    const allowed = await eventually('the RoleBinding to take effect', async () => {
      const result = await env.kubectl(['get', 'configmaps', '-n', 'default', '-o', 'name'], { kubeconfig });
      return result.code === 0 ? result : undefined;
    }, 10_000);
    assert.equal(allowed.code, 0);
    const stillDenied = await env.kubectl(['get', 'secrets', '-n', 'default'], { kubeconfig });
    assert.match(stillDenied.stderr, /forbidden/);
    assert.equal(await env.kubeconfigFor(user, ['system:serviceaccounts:regmirror-system', 'system:serviceaccounts']), kubeconfig);
  });

  it('issues ServiceAccount tokens that the server accepts', async () => {
    await env.kubectl(['create', 'namespace', 'tokens']);
    const created = await env.kubectl(['create', 'serviceaccount', 'robot', '-n', 'tokens']);
    assert.equal(created.code, 0, created.stderr);
    const token = await env.kubectl(['create', 'token', 'robot', '-n', 'tokens']);
    assert.equal(token.code, 0, token.stderr);
    const ca = Buffer.from(env.kubeConfig().getCurrentCluster()?.caData ?? '', 'base64');
    const review = await new Promise<string>((resolve, reject) => {
      const req = request(
        `${env.server}/apis/authentication.k8s.io/v1/selfsubjectreviews`,
        { method: 'POST', ca, headers: { authorization: `Bearer ${token.stdout.trim()}`, 'content-type': 'application/json' }, timeout: 10_000 },
        (res) => {
          let body = '';
          res.setEncoding('utf8').on('data', (chunk: string) => (body += chunk));
          res.on('end', () => resolve(body));
        },
      );
      req.on('error', reject);
      req.end(JSON.stringify({ apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview' }));
    });
    assert.equal((JSON.parse(review) as { status: { userInfo: { username: string } } }).status.userInfo.username, 'system:serviceaccount:tokens:robot');
  });

  it('writes the audit log its auditPolicy asks for, which auditEvents reads', async () => {
    // The policy selects by name, which a create does not have yet when the policy is looked at: gets are logged.
    for (const name of ['audited', 'not-audited']) {
      const created = await env.kubectl(['create', 'configmap', name, '-n', 'default', '--from-literal=colour=teal']);
      assert.equal(created.code, 0, created.stderr);
      const got = await env.kubectl(['get', 'configmap', name, '-n', 'default', '-o', 'json']);
      assert.equal(got.code, 0, got.stderr);
    }
    const get = await eventually('the get in the audit log', async () =>
      (await env.auditEvents()).find((e) => e.verb === 'get' && e.objectRef?.name === 'audited' && e.stage === 'ResponseComplete'));
    assert.equal(get.user.username, 'regmirror-test-admin');
    assert.equal(get.responseStatus?.code, 200);
    assert.deepEqual((get.responseObject as { data?: unknown }).data, { colour: 'teal' });
    assert.ok(!(await env.auditEvents()).some((e) => e.objectRef?.name !== 'audited'), 'nothing the policy does not select');
  });

  it('keeps data and address across restartApiServer; open watches end and a relist-then-watch resumes', async () => {
    const kc = env.kubeConfig();
    const core = kc.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'restart' } } });
    const before = await core.createNamespacedConfigMap({ namespace: 'restart', body: { metadata: { name: 'before' }, data: { kept: 'yes' } } });
    let watchEnded = false;
    const first = await new Watch(kc).watch('/api/v1/namespaces/restart/configmaps', { resourceVersion: before.metadata?.resourceVersion }, () => {}, () => (watchEnded = true));
    const server = env.server;
    try {
      await env.restartApiServer();
      assert.equal(env.server, server);
      await eventually('the watch to end with the old kube-apiserver', async () => (watchEnded ? true : undefined), 30_000);
    } finally {
      first.abort();
    }

    // Resuming from the old resourceVersion may be answered 410 Expired (the new kube-apiserver's
    // watch cache starts at the current revision), so a client relists and watches from the list.
    const relisted = await core.listNamespacedConfigMap({ namespace: 'restart' });
    assert.equal(relisted.items.find((cm) => cm.metadata?.name === 'before')?.data?.kept, 'yes');
    const seen: string[] = [];
    const resumed = await new Watch(kc).watch(
      '/api/v1/namespaces/restart/configmaps',
      { resourceVersion: relisted.metadata?.resourceVersion },
      (phase, obj: V1ConfigMap) => seen.push(`${phase} ${obj.metadata?.name}`),
      () => {},
    );
    try {
      await core.createNamespacedConfigMap({ namespace: 'restart', body: { metadata: { name: 'after' } } });
      await eventually('the resumed watch to see the new ConfigMap', async () => (seen.length > 0 ? true : undefined), 30_000);
      assert.deepEqual(seen, ['ADDED after']);
    } finally {
      resumed.abort();
    }
  });
});

describe('kube test environment with a controller manager', { skip }, () => {
  let env: KubeEnv;
  before(async () => {
    env = await startKubeEnv({ controllerManager: true });
  });
  after(async () => env?.stop());

  it('garbage-collects an object after its owner is deleted', async () => {
    const core = env.kubeConfig().makeApiClient(CoreV1Api);
    const owner = await core.createNamespacedConfigMap({ namespace: 'default', body: { metadata: { name: 'owner' } } });
    const ownerReferences = [{ apiVersion: 'v1', kind: 'ConfigMap', name: 'owner', uid: owner.metadata?.uid ?? '' }];
    await core.createNamespacedSecret({ namespace: 'default', body: { metadata: { name: 'dependent', ownerReferences }, stringData: { k: 'v' } } });
    await core.deleteNamespacedConfigMap({ namespace: 'default', name: 'owner' });
    await eventually('the dependent Secret to be garbage-collected', async () => {
      try {
        await core.readNamespacedSecret({ namespace: 'default', name: 'dependent' });
        return undefined;
      } catch (err) {
        if (statusOf(err) === 404) return true;
        throw err;
      }
    });
  });

  it('runs workload controllers: a Deployment gets a ReplicaSet and status', async () => {
    const manifest = await readFile(path.join(FIXTURES, 'deployment.yaml'), 'utf8');
    const applied = await env.kubectl(['apply', '-f', '-'], { input: manifest });
    assert.equal(applied.code, 0, applied.stderr);
    const replicas = await eventually('the Deployment status to count its replicas', async () => {
      const got = await env.kubectl(['get', 'deployment', 'pause', '-n', 'default', '-o', 'jsonpath={.status.replicas}']);
      return got.code === 0 && got.stdout === '2' ? got.stdout : undefined;
    });
    assert.equal(replicas, '2');
    const replicaSets = await env.kubectl(['get', 'replicasets', '-n', 'default', '-l', 'app=pause', '-o', 'name']);
    assert.equal(replicaSets.stdout.trim().split('\n').length, 1, replicaSets.stdout);
    const pods = await env.kubectl(['get', 'pods', '-n', 'default', '-l', 'app=pause', '-o', 'jsonpath={.items[*].status.phase}']);
    assert.deepEqual(pods.stdout.split(' '), ['Pending', 'Pending'], 'no kubelet: pods stay Pending');
  });
});
