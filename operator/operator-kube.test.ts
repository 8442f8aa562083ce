// The operator against a real kube-apiserver (test/kube/env.ts): it runs as its own process under
// its own ServiceAccount's RBAC (operator/rbac.yaml), as it would in a cluster. There is no kubelet:
// where a test needs pods to be "ready" it writes the workload's /status itself, and says so
// (playKubelet*).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { kubeEnvAvailability, startKubeEnv, type KubeEnv } from '../test/kube/env.ts';
import { freePort, makeTempDir } from '../test/harness/process.ts';
import { makeCertificate } from '../test/harness/tls.ts';
import { KubeApi, type KubeObject } from './kube/api.ts';
import { API_VERSION, KIND } from './api/registry-mirror.ts';
import { CHECKSUM_ANNOTATION, FINALIZER } from './desired/inputs.ts';
import { MIRROR_NAME_LABEL, MIRROR_NAMESPACE_LABEL, MODE_ANNOTATION, relocatedCleanupName } from './desired/daemon-set.ts';
import type { RegistryMirror } from './api/registry-mirror.ts';
import { MIRROR_RULES, MIRRORS_ROLE, NODE_RULES, OPERATOR_RULES } from './rbac.ts';

const ROOT = fileURLToPath(new URL('../', import.meta.url));
const CRD_FILE = path.join(ROOT, 'crds/registrymirrors.regmirror.dev.yaml');
const RBAC_FILE = path.join(ROOT, 'operator/rbac.yaml');
const OPERATOR_NAMESPACE = 'regmirror-system';
const SERVICE_ACCOUNT = 'system:serviceaccount:regmirror-system:regmirror-operator';
const NS = 'registry-cache';
const WAIT_MS = 30_000;
const CLEANUP_TIMEOUT = '6s';
/** A Secret no RegistryMirror names, there before the operator first lists Secrets. */
const UNRELATED_SECRET = 'unrelated-bulk';
/** A ConfigMap no RegistryMirror names. */
const UNRELATED_CONFIG_MAP = 'unrelated-config';
/**
 * The API server's own record of how the operator reads Secrets and ConfigMaps: its lists with
 * what they answered, its gets and watches without bodies, nothing else.
 */
const SECRETS_AUDIT_POLICY = {
  omitStages: ['RequestReceived'],
  rules: [
    { level: 'RequestResponse', users: [SERVICE_ACCOUNT], verbs: ['list'], resources: [{ group: '', resources: ['secrets', 'configmaps'] }] },
    { level: 'Metadata', users: [SERVICE_ACCOUNT], verbs: ['get', 'watch'], resources: [{ group: '', resources: ['secrets', 'configmaps'] }] },
    { level: 'Metadata', users: [SERVICE_ACCOUNT], verbs: ['list'], resources: [{ group: '', resources: ['nodes'] }] },
    { level: 'None' },
  ],
};

const availability = kubeEnvAvailability();
const skip: string | false = availability.ok ? false : availability.reason;
if (!availability.ok) {
  process.stderr.write(`\n*** operator API-server tests SKIPPED: ${availability.reason} ***\n\n`);
  // CI must run them: there a missing API server is a failure, not a skip.
  if (process.env.CI === 'true') it('the Kubernetes API test environment is available in CI', () => assert.fail(availability.reason));
}

type Obj = KubeObject & { spec?: any; status?: any; data?: Record<string, string>; type?: string };

async function eventually<T>(what: string, probe: () => Promise<T | undefined | false>, timeoutMs = WAIT_MS): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      const value = await probe();
      if (value !== undefined && value !== false) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs / 1000}s waiting for ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`);
    await sleep(200);
  }
}

interface OperatorProcess {
  identity: string;
  metricsUrl: string;
  logs: () => string;
  stop(): Promise<number | null>;
  exited: Promise<number | null>;
}

async function startOperator(kubeconfig: string, identity: string, logDir: string, extraArgs: string[] = []): Promise<OperatorProcess> {
  const port = await freePort();
  const logFile = path.join(logDir, `${identity}.log`);
  const out = createWriteStream(logFile);
  let text = '';
  const child: ChildProcess = spawn(process.execPath, [
    path.join(ROOT, 'bin/regmirror.ts'), 'operator',
    '--kubeconfig', kubeconfig,
    '--leader-election-namespace', OPERATOR_NAMESPACE,
    // where a cleanup DaemonSet runs when a mirror's namespace is being deleted (in a pod: POD_NAMESPACE)
    '--cleanup-namespace', OPERATOR_NAMESPACE,
    '--identity', identity,
    '--metrics-address', `127.0.0.1:${port}`,
    '--mirror-image', 'registry.example/regmirror:test',
    '--node-cleanup-timeout', CLEANUP_TIMEOUT,
    '--log-level', 'debug',
    // Long enough that a slow API server restart does not cost the leader its lease.
    '--lease-duration', '60s', '--renew-deadline', '45s',
    ...extraArgs,
  ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KUBECONFIG: '', KUBERNETES_SERVICE_HOST: '' } });
  for (const stream of [child.stdout!, child.stderr!]) {
    stream.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      out.write(chunk);
    });
  }
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const operator: OperatorProcess = {
    identity,
    metricsUrl: `http://127.0.0.1:${port}/metrics`,
    logs: () => text,
    exited,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const code = await Promise.race([exited, sleep(15_000).then(() => 'timeout' as const)]);
      if (code === 'timeout') {
        child.kill('SIGKILL');
        return exited;
      }
      return code;
    },
  };
  running.add(operator);
  void exited.then(() => running.delete(operator));
  return operator;
}

const running = new Set<OperatorProcess>();

/** The name of a mirror's cleanup DaemonSet in the operator's namespace. */
const relocatedName = (namespace: string, name: string) => relocatedCleanupName({ metadata: { namespace, name } } as RegistryMirror);

/** The test plays kubelet for every pod of a DaemonSet: `nodes` pods of its current template are ready. */
async function playKubeletDaemonSetReady(admin: KubeApi, namespace: string, name: string, nodes: number): Promise<void> {
  const daemonSet = (await admin.find<Obj>('apps/v1', 'DaemonSet', namespace, name))!;
  await admin.request('PATCH', `/apis/apps/v1/namespaces/${namespace}/daemonsets/${name}/status`, {
    body: {
      status: {
        observedGeneration: daemonSet.metadata!.generation,
        desiredNumberScheduled: nodes, currentNumberScheduled: nodes, updatedNumberScheduled: nodes,
        numberReady: nodes, numberAvailable: nodes, numberMisscheduled: 0,
      },
    },
    contentType: 'application/merge-patch+json',
  });
}

async function metric(operator: OperatorProcess, name: string): Promise<number | undefined> {
  const response = await fetch(operator.metricsUrl);
  const text = await response.text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `) || l.startsWith(`${name}{`));
  return line ? Number(line.split(' ').at(-1)) : undefined;
}

describe('operator against a real kube-apiserver', { skip }, () => {
  let env: KubeEnv;
  let admin: KubeApi;
  let operatorKubeconfig: string;
  let logDir: string;
  let operator: OperatorProcess;

  const kubectl = async (args: string[], input?: string) => {
    const result = await env.kubectl(args, input === undefined ? {} : { input });
    return result;
  };
  const mustKubectl = async (args: string[], input?: string) => {
    const result = await kubectl(args, input);
    assert.equal(result.code, 0, `kubectl ${args.join(' ')}: ${result.stderr}`);
    return result.stdout;
  };
  const mirror = (name: string) => admin.find<Obj>(API_VERSION, KIND, NS, name);
  const owned = (apiVersion: string, kind: string, name: string) => admin.find<Obj>(apiVersion, kind, NS, name);
  const ready = async (name: string) => (await mirror(name))?.status?.conditions?.find((c: { type: string }) => c.type === 'Ready');
  /** A node pool of its own: two mirrors of one registry on the same nodes would conflict (node-conflict.ts). */
  const ownNodes = (pool: string) => ({ nodeConfig: { enabled: true, runtimes: ['containerd'], nodeSelector: { 'regmirror.test/pool': pool } } });
  const applyMirror = (name: string, spec: object) =>
    mustKubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace: NS }, spec }));
  const eventsFor = async (name: string) => {
    const list = await admin.list<Obj & { reason?: string; type?: string; message?: string; involvedObject?: { name: string; kind: string } }>('v1', 'Event', NS);
    return list.items.filter((e) => e.involvedObject?.kind === KIND && e.involvedObject.name === name);
  };

  /** The test plays kubelet and the volume provisioner: the claim is bound, the mirror pods are up. */
  const playKubeletMirrorRunning = async (name: string) => {
    await admin.request('PATCH', `/api/v1/namespaces/${NS}/persistentvolumeclaims/regmirror-${name}/status`, {
      body: { status: { phase: 'Bound', accessModes: ['ReadWriteOnce'], capacity: { storage: '10Gi' } } },
      contentType: 'application/merge-patch+json',
    });
    const deployment = (await owned('apps/v1', 'Deployment', `regmirror-${name}`))!;
    await admin.request('PATCH', `/apis/apps/v1/namespaces/${NS}/deployments/regmirror-${name}/status`, {
      body: { status: { observedGeneration: deployment.metadata!.generation, replicas: 1, updatedReplicas: 1, readyReplicas: 1, availableReplicas: 1 } },
      contentType: 'application/merge-patch+json',
    });
  };
  /** The test plays kubelet for the node agent: `nodes` agent pods of the current template are ready. */
  const playKubeletNodeAgentsReady = (name: string, nodes: number) => playKubeletDaemonSetReady(admin, NS, `regmirror-${name}-node`, nodes);

  before(async () => {
    // REGMIRROR_KUBE_KEEP=1 keeps the operators' logs, as test/kube/env.ts keeps the control plane's.
    logDir = process.env.REGMIRROR_KUBE_KEEP === '1' ? mkdtempSync(path.join(tmpdir(), 'regmirror-operator-logs-')) : await makeTempDir('operator-kube');
    env = await startKubeEnv({ auditPolicy: SECRETS_AUDIT_POLICY });
    admin = new KubeApi(env.kubeConfig(), 'regmirror-test');
    await mustKubectl(['create', 'namespace', OPERATOR_NAMESPACE]);
    await mustKubectl(['create', 'namespace', NS]);
    await mustKubectl(['create', 'secret', 'generic', UNRELATED_SECRET, '-n', NS, '--from-literal=payload=unrelated-payload-v1']);
    await mustKubectl(['create', 'configmap', UNRELATED_CONFIG_MAP, '-n', NS, '--from-literal=payload=unrelated-config-v1']);
    await mustKubectl(['apply', '-f', CRD_FILE]);
    await mustKubectl(['wait', '--for=condition=Established', '--timeout=60s', 'crd/registrymirrors.regmirror.dev']);
    await mustKubectl(['apply', '-f', RBAC_FILE]);
    operatorKubeconfig = await env.kubeconfigFor(SERVICE_ACCOUNT, ['system:serviceaccounts', `system:serviceaccounts:${OPERATOR_NAMESPACE}`, 'system:authenticated']);
    operator = await startOperator(operatorKubeconfig, 'operator-a', logDir);
  });

  after(async () => {
    for (const op of running) await op.stop();
    if (process.env.REGMIRROR_KUBE_KEEP === '1') process.stderr.write(`operator logs kept in ${logDir}\n`);
    await env?.stop();
  });

  it('installs the CRD: short name and printer columns work in kubectl', async () => {
    const out = await mustKubectl(['get', 'rmir', '-n', NS]);
    assert.match(out + (await kubectl(['get', 'rmir', '-n', NS])).stderr, /No resources found|ENDPOINT/);
  });

  it('the server rejects invalid specs with messages that say what to fix', async () => {
    const cases: [object, RegExp][] = [
      [{ upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub' } }] }, /upstream credentials need spec\.auth\.htpasswdSecretRef/],
      [{ upstreams: [{ registry: 'Docker.IO' }] }, /spec\.upstreams\[0\]\.registry/],
      [{ upstreams: [{ registry: 'docker.io' }], storage: { size: '50GB' } }, /spec\.storage\.size/],
      [{ upstreams: [{ registry: 'docker.io' }], storage: { size: '10Gi', maxSize: '20Gi' } }, /maxSize must not exceed size/],
      [{ upstreams: [{ registry: 'docker.io', tagTTL: '5 minutes' }] }, /tagTTL/],
      [{ upstreams: [{ registry: 'docker.io' }, { registry: 'docker.io' }] }, /Duplicate value/],
      [{ upstreams: [{ registry: 'docker.io' }], replicas: 2 }, /ReadWriteMany/],
      // values the mirror itself would refuse to start with (it would crash-loop)
      [{ upstreams: [{ registry: 'docker.io' }], storage: { size: '10Gi', ttl: '0s' } }, /ttl must be longer than 0s/],
      [{ upstreams: [{ registry: 'docker.io' }], storage: { size: '10Gi', maxSize: '0' } }, /maxSize must be at least 1Mi/],
      [{ upstreams: [{ registry: 'docker.io' }], storage: { size: '1Mi' } }, /size must be at least 2Mi/],
      [{ upstreams: [{ registry: 'docker.io', url: 'https://user:secret@registry.example.com' }] }, /spec\.upstreams\[0\]\.url/],
      [{ upstreams: [{ registry: 'registry.internal', url: 'http://registry.internal', caSecretRef: { name: 'internal-ca' } }] }, /spec\.upstreams\[0\]\.caSecretRef: Invalid value: .*caSecretRef is for an https:\/\/ upstream/],
      [{ upstreams: [{ registry: 'docker.io' }, { registry: 'registry.internal', url: 'http://registry.internal', caConfigMapRef: { name: 'internal-ca' } }] }, /spec\.upstreams\[1\]\.caConfigMapRef: Invalid value: .*caConfigMapRef is for an https:\/\/ upstream/],
      [{ upstreams: [{ registry: 'harbor.internal', caSecretRef: { name: 'harbor-ca' }, caConfigMapRef: { name: 'trust-bundle' } }] }, /spec\.upstreams\[0\]\.caConfigMapRef: Invalid value: .*caSecretRef and caConfigMapRef both name this upstream's CA: set only one/],
      // values the DaemonSet would be refused for, after the mirror's other objects had changed
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { nodeSelector: { pool: 'yes please' } } }, /spec\.nodeConfig\.nodeSelector\.pool/],
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { nodeSelector: { 'not a key': 'x' } } }, /label keys are/],
      // tolerations as Kubernetes checks them
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { tolerations: [{ operator: 'Exists', value: 'x' }] } }, /value must be empty when operator is Exists/],
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { tolerations: [{ key: 'a', operator: 'Equal', value: 'b', tolerationSeconds: 30 }] } }, /effect must be NoExecute when tolerationSeconds is set/],
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { tolerations: [{ operator: 'Equal', value: 'b' }] } }, /operator must be Exists when key is empty/],
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { tolerations: [{ value: 'b' }] } }, /operator must be Exists when key is empty/],
      [{ upstreams: [{ registry: 'docker.io' }], nodeConfig: { tolerations: [{ key: 'not a key', operator: 'Exists' }] } }, /spec\.nodeConfig\.tolerations\[0\]\.key/],
    ];
    for (const [spec, message] of cases) {
      const result = await kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'invalid', namespace: NS }, spec }));
      assert.notEqual(result.code, 0, `accepted: ${JSON.stringify(spec)}`);
      assert.match(result.stderr, message);
    }
    const tolerations = [{ operator: 'Exists' }, { key: 'dedicated', value: 'mirror', effect: 'NoSchedule' }, { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 30 }];
    const tolerant = await kubectl(['apply', '--dry-run=server', '-f', '-'], JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'tolerant', namespace: NS }, spec: { upstreams: [{ registry: 'docker.io' }], nodeConfig: { tolerations } } }));
    assert.equal(tolerant.code, 0, `tolerations Kubernetes takes are taken: ${tolerant.stderr}`);
    const long = await kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'a'.repeat(41), namespace: NS }, spec: { upstreams: [{ registry: 'docker.io' }] } }));
    assert.notEqual(long.code, 0);
    assert.match(long.stderr, /at most 40 characters/);
    for (const name of ['hub.v2', '2hub']) {
      const named = await kubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace: NS }, spec: { upstreams: [{ registry: 'docker.io' }] } }));
      assert.notEqual(named.code, 0, `accepted the name ${name}`);
      assert.match(named.stderr, /metadata\.name must be a DNS-1035 label.*its Service, regmirror-<name>/);
    }
  });

  it('a RegistryMirror produces every owned object with an owner reference, the endpoint and a finalizer', async () => {
    await applyMirror('hub', { upstreams: [{ registry: 'docker.io', tagTTL: '1m' }, { registry: 'ghcr.io' }], storage: { size: '5Gi' }, ...ownNodes('hub') });
    const cr = (await mirror('hub'))!;
    const kinds: [string, string, string][] = [
      ['v1', 'ConfigMap', 'regmirror-hub'], ['v1', 'Secret', 'regmirror-hub'], ['v1', 'PersistentVolumeClaim', 'regmirror-hub'],
      ['v1', 'Service', 'regmirror-hub'], ['apps/v1', 'Deployment', 'regmirror-hub'], ['apps/v1', 'DaemonSet', 'regmirror-hub-node'],
    ];
    for (const [apiVersion, kind, name] of kinds) {
      const object = await eventually(`${kind} ${name}`, () => owned(apiVersion, kind, name));
      assert.deepEqual(object.metadata?.ownerReferences, [
        { apiVersion: API_VERSION, kind: KIND, name: 'hub', uid: cr.metadata!.uid, controller: true, blockOwnerDeletion: true },
      ], kind);
      const managers = (object.metadata?.managedFields as { manager: string; operation: string }[]).map((m) => `${m.manager}/${m.operation}`);
      assert.ok(managers.includes('regmirror-operator/Apply'), `${kind} applied by the operator's field manager: ${managers}`);
    }
    const service = (await owned('v1', 'Service', 'regmirror-hub'))!;
    const endpoint = `http://${service.spec.clusterIP}:5000`;
    const status = await eventually('status.endpoint', async () => (await mirror('hub'))?.status?.endpoint === endpoint && (await mirror('hub'))!.status);
    assert.equal(status.observedGeneration, 1);
    assert.deepEqual((await mirror('hub'))!.metadata!.finalizers, [FINALIZER]);
    const condition = await eventually('Ready condition', () => ready('hub'));
    assert.equal(condition.status, 'False');
    assert.equal(condition.reason, 'VolumePending', 'no provisioner binds the claim here');
    const daemonSet = (await owned('apps/v1', 'DaemonSet', 'regmirror-hub-node'))!;
    const args: string[] = daemonSet.spec.template.spec.containers[0].args;
    assert.deepEqual(args.slice(0, 5), ['node-agent', '--mirror', endpoint, '--registries', 'docker.io,ghcr.io']);
    assert.equal(args[args.indexOf('--mode') + 1], 'apply');
    const config = parse((await owned('v1', 'ConfigMap', 'regmirror-hub'))!.data!['config.yaml']!);
    assert.equal(config.upstreams[0].tagTTL, '1m');
    const pvc = (await owned('v1', 'PersistentVolumeClaim', 'regmirror-hub'))!;
    assert.equal(pvc.spec.resources.requests.storage, '5Gi');
    const table = await mustKubectl(['get', 'rmir', 'hub', '-n', NS]);
    assert.match(table, /NAME\s+ENDPOINT\s+READY\s+NODES\s+AGE/);
    assert.ok(table.includes(endpoint));
  });

  it('becomes Ready once the volume is bound, the mirror available and every node configured', async () => {
    await playKubeletMirrorRunning('hub');
    await eventually('NodesPending', async () => (await ready('hub'))?.reason === 'NodesPending');
    await playKubeletNodeAgentsReady('hub', 3);
    const condition = await eventually('Ready=True', async () => (await ready('hub'))?.status === 'True' && ready('hub'));
    assert.equal(condition.reason, 'Available');
    assert.deepEqual((await mirror('hub'))!.status.nodes, { desired: 3, configured: 3 });
    const events = await eventsFor('hub');
    assert.ok(events.some((e) => e.reason === 'Available'), 'an Event says it became available');
  });

  it('a spec change rewrites the config and rolls the Deployment', async () => {
    const before = (await owned('apps/v1', 'Deployment', 'regmirror-hub'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
    await applyMirror('hub', { upstreams: [{ registry: 'docker.io', tagTTL: '5m' }, { registry: 'ghcr.io' }], storage: { size: '5Gi', ttl: '72h' }, ...ownNodes('hub') });
    await eventually('config with ttl 72h', async () => parse((await owned('v1', 'ConfigMap', 'regmirror-hub'))!.data!['config.yaml']!).storage.ttl === '72h');
    const after = await eventually('a new checksum', async () => {
      const value = (await owned('apps/v1', 'Deployment', 'regmirror-hub'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
      return value !== before && value;
    });
    assert.notEqual(after, before);
    await eventually('observedGeneration 2', async () => (await mirror('hub'))?.status?.observedGeneration === 2);
  });

  it('an owned object deleted by hand comes back', async () => {
    const old = (await owned('apps/v1', 'Deployment', 'regmirror-hub'))!;
    await mustKubectl(['delete', 'deployment', 'regmirror-hub', '-n', NS, '--wait=false']);
    const back = await eventually('the Deployment back', async () => {
      const d = await owned('apps/v1', 'Deployment', 'regmirror-hub');
      return d && d.metadata!.uid !== old.metadata!.uid && d;
    });
    assert.equal(back.metadata!.ownerReferences![0]!.name, 'hub');
    await mustKubectl(['delete', 'configmap', 'regmirror-hub', '-n', NS]);
    await eventually('the ConfigMap back', () => owned('v1', 'ConfigMap', 'regmirror-hub'));
  });

  it('a missing credentials Secret gives a condition and an Event, and recovers when it is created', async () => {
    await applyMirror('private', {
      upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }],
      auth: { allowAnonymousWithCredentials: true },
      ...ownNodes('private'),
    });
    const condition = await eventually('SecretNotFound', async () => (await ready('private'))?.reason === 'SecretNotFound' && ready('private'));
    assert.match(condition.message, /hub-credentials/);
    await eventually('a SecretNotFound Event', async () => (await eventsFor('private')).find((e) => e.reason === 'SecretNotFound' && e.type === 'Warning'));
    assert.equal(await owned('apps/v1', 'Deployment', 'regmirror-private'), undefined, 'no mirror without its credentials');

    await mustKubectl(['create', 'secret', 'generic', 'hub-credentials', '-n', NS, '--type=kubernetes.io/basic-auth', '--from-literal=username=alice', '--from-literal=password=p4ssw0rd-hub']);
    await eventually('recovered', async () => (await ready('private'))?.reason === 'VolumePending');
    const secret = (await owned('v1', 'Secret', 'regmirror-private'))!;
    assert.equal(Buffer.from(secret.data!['upstream-0-password']!, 'base64').toString(), 'p4ssw0rd-hub');
    const configMap = (await owned('v1', 'ConfigMap', 'regmirror-private'))!;
    assert.ok(!JSON.stringify(configMap).includes('p4ssw0rd-hub'), 'no password in the ConfigMap');
    assert.ok(!operator.logs().includes('p4ssw0rd-hub'), 'no password in the logs');
    for (const event of await eventsFor('private')) assert.ok(!JSON.stringify(event).includes('p4ssw0rd-hub'), 'no password in Events');
    // The checksum over that password is keyed, with a key that is in the owned Secret and nowhere else.
    const key = Buffer.from(secret.data!['checksum-key'] ?? '', 'base64').toString();
    assert.match(key, /^[A-Za-z0-9_-]{43}$/);
    const deployment = (await owned('apps/v1', 'Deployment', 'regmirror-private'))!;
    const { 'checksum-key': _key, ...secretData } = secret.data!;
    const unkeyed = createHash('sha256').update(JSON.stringify(configMap.data)).update(JSON.stringify(secretData)).digest('hex');
    assert.notEqual(deployment.spec.template.metadata.annotations[CHECKSUM_ANNOTATION], unkeyed);
    assert.ok(![JSON.stringify(configMap), JSON.stringify(deployment), operator.logs()].some((text) => text.includes(key)), 'the key is in the owned Secret only');
    for (const event of await eventsFor('private')) assert.ok(!JSON.stringify(event).includes(key), 'no key in Events');

    // A rotated password rolls the mirror.
    const before = (await owned('apps/v1', 'Deployment', 'regmirror-private'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
    await mustKubectl(['apply', '-f', '-'], JSON.stringify({
      apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/basic-auth', metadata: { name: 'hub-credentials', namespace: NS },
      stringData: { username: 'alice', password: 'rotated-pass' },
    }));
    await eventually('rolled on rotation', async () =>
      (await owned('apps/v1', 'Deployment', 'regmirror-private'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION] !== before);
  });

  it('a Secret of the wrong type gives InvalidCredentials', async () => {
    await mustKubectl(['create', 'secret', 'generic', 'opaque-credentials', '-n', NS, '--from-literal=username=bob', '--from-literal=password=opaque-pass']);
    await applyMirror('opaque', {
      upstreams: [{ registry: 'ghcr.io', credentialsSecretRef: { name: 'opaque-credentials' } }],
      auth: { allowAnonymousWithCredentials: true },
    });
    const condition = await eventually('InvalidCredentials', async () => (await ready('opaque'))?.reason === 'InvalidCredentials' && ready('opaque'));
    assert.match(condition.message, /kubernetes\.io\/basic-auth or kubernetes\.io\/dockerconfigjson/);
    assert.ok(!condition.message.includes('opaque-pass'));
  });

  /**
   * An upstream's CA in a Secret or ConfigMap: missing, the mirror is stopped with `notFound` and a
   * Warning; created (`create`, after the mirror: a watch event brings it back), its one key is
   * mounted read-only where the config's caFile points; a rotated CA (`write`) rolls the mirror; a
   * bundle without a certificate is `invalid`, and the mirror is not rolled onto it.
   */
  const followsUpstreamCa = async (name: string, upstreams: object[], ca: {
    index: number; key: string; what: string; notFound: string; invalid: string; source: object;
    create: (certFile: string) => Promise<unknown>; write: (text: string) => Promise<unknown>;
  }) => {
    await applyMirror(name, { upstreams, ...ownNodes(name) });
    const condition = await eventually(ca.notFound, async () => (await ready(name))?.reason === ca.notFound && ready(name));
    assert.equal(condition.message, `${ca.what} not found in namespace ${NS}`);
    await eventually(`a ${ca.notFound} Event`, async () => (await eventsFor(name)).find((e) => e.reason === ca.notFound && e.type === 'Warning'));
    assert.equal(await owned('apps/v1', 'Deployment', `regmirror-${name}`), undefined, 'no mirror without its CA');

    const [first, second] = await Promise.all([makeCertificate({ commonName: `${name} CA` }), makeCertificate({ commonName: `${name} CA rotated` })]);
    await ca.create(first.certFile);
    await eventually('recovered', async () => (await ready(name))?.reason === 'VolumePending');
    const deployment = async () => (await owned('apps/v1', 'Deployment', `regmirror-${name}`))!;
    const pod = (await deployment()).spec.template.spec;
    assert.deepEqual(pod.volumes.find((v: { name: string }) => v.name === 'upstream-ca'), { name: 'upstream-ca', projected: { defaultMode: 0o444, sources: [ca.source] } });
    assert.deepEqual(pod.containers[0].volumeMounts.find((m: { name: string }) => m.name === 'upstream-ca'), { name: 'upstream-ca', mountPath: '/run/secrets/regmirror-upstream-ca', readOnly: true });
    const configMap = (await owned('v1', 'ConfigMap', `regmirror-${name}`))!;
    const caFiles = upstreams.map((_, i) => (i === ca.index ? `/run/secrets/regmirror-upstream-ca/upstream-${i}-ca.crt` : undefined));
    assert.deepEqual(parse(configMap.data!['config.yaml']!).upstreams.map((u: { caFile?: string }) => u.caFile), caFiles);
    assert.ok(!JSON.stringify(configMap).includes('BEGIN CERTIFICATE'), 'a path in the owned ConfigMap, not the bundle');

    const checksum = async () => (await deployment()).spec.template.metadata.annotations[CHECKSUM_ANNOTATION] as string;
    const before = await checksum();
    await ca.write(second.certPem);
    await eventually('rolled on a rotated CA', async () => (await checksum()) !== before);
    const rotated = await checksum();

    await ca.write('not a certificate');
    const invalid = await eventually(ca.invalid, async () => (await ready(name))?.reason === ca.invalid && ready(name));
    assert.equal(invalid.message, `${ca.what}, key "${ca.key}", holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
    assert.equal(await checksum(), rotated, 'the mirror is not rolled onto a bundle it would refuse');
    await ca.write(second.certPem);
    await eventually('fixed', async () => (await ready(name))?.reason === 'VolumePending');
  };

  it('an upstream CA Secret: missing gives SecretNotFound; created, it is mounted read-only at the config\'s caFile; a rotated CA rolls the mirror; one without a certificate is InvalidCredentials', async () => {
    await followsUpstreamCa('internal', [{ registry: 'harbor.internal', caSecretRef: { name: 'harbor-ca' } }], {
      index: 0, key: 'ca.crt', what: 'Secret harbor-ca (CA for harbor.internal, spec.upstreams[0].caSecretRef)', notFound: 'SecretNotFound', invalid: 'InvalidCredentials',
      source: { secret: { name: 'harbor-ca', items: [{ key: 'ca.crt', path: 'upstream-0-ca.crt' }] } },
      create: (certFile) => mustKubectl(['create', 'secret', 'generic', 'harbor-ca', '-n', NS, `--from-file=ca.crt=${certFile}`]),
      write: (text) => mustKubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Secret', metadata: { name: 'harbor-ca', namespace: NS }, stringData: { 'ca.crt': text } })),
    });
  });

  it('an upstream CA ConfigMap: missing gives ConfigMapNotFound; created, it is mounted read-only at the config\'s caFile; a rotated CA rolls the mirror; one without a certificate is InvalidConfigMap; ConfigMaps are watched once, by their metadata', async () => {
    await followsUpstreamCa('bundled', [{ registry: 'docker.io' }, { registry: 'nexus.internal', caConfigMapRef: { name: 'trust-bundle', key: 'bundle.pem' } }], {
      index: 1, key: 'bundle.pem', what: 'ConfigMap trust-bundle (CA for nexus.internal, spec.upstreams[1].caConfigMapRef)', notFound: 'ConfigMapNotFound', invalid: 'InvalidConfigMap',
      source: { configMap: { name: 'trust-bundle', items: [{ key: 'bundle.pem', path: 'upstream-1-ca.crt' }] } },
      create: (certFile) => mustKubectl(['create', 'configmap', 'trust-bundle', '-n', NS, `--from-file=bundle.pem=${certFile}`]),
      write: (text) => mustKubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'trust-bundle', namespace: NS }, data: { 'bundle.pem': text } })),
    });

    // ConfigMaps are followed as Secrets are: one watch of their metadata (the mirrors' own
    // ConfigMaps come through it too, by owner reference), the named one read by name.
    await mustKubectl(['patch', 'configmap', UNRELATED_CONFIG_MAP, '-n', NS, '--type=merge', '-p', JSON.stringify({ data: { payload: 'unrelated-config-v2' } })]);
    await sleep(1_000);
    const requests = (await env.auditEvents()).filter((e) => e.user.username === SERVICE_ACCOUNT && e.objectRef?.resource === 'configmaps');
    const lists = requests.filter((e) => e.verb === 'list');
    assert.ok(lists.length > 0, 'the operator listed ConfigMaps');
    for (const list of lists) {
      assert.equal(list.responseObject?.kind, 'PartialObjectMetadataList', `list ${list.requestURI} answered with ${list.responseObject?.kind}`);
      assert.ok(!list.requestURI.includes('labelSelector'), `no second list of its own ConfigMaps: ${list.requestURI}`);
      for (const item of list.responseObject?.items ?? []) assert.equal(item.data, undefined, 'no data in a listed item');
    }
    const watches = requests.filter((e) => e.verb === 'watch');
    assert.ok(watches.length > 0 && watches.every((e) => !e.requestURI.includes('labelSelector')), 'one watch of ConfigMaps, by metadata');
    const read = new Set(requests.filter((e) => e.verb === 'get').map((e) => e.objectRef?.name));
    assert.ok(read.has('trust-bundle'), `it reads the named ConfigMap by name: ${[...read]}`);
    assert.ok(!read.has(UNRELATED_CONFIG_MAP), 'it never reads the unrelated ConfigMap');
  });

  it('watches Secrets by their metadata only: it lists and watches no Secret\'s data, reads by name only the Secrets RegistryMirrors name or it owns, and still follows both', async () => {
    // A watch is logged when its response starts (and again when it ends); lists and gets when complete.
    const secretRequests = async () => (await env.auditEvents())
      .filter((e) => e.user.username === SERVICE_ACCOUNT && e.objectRef?.resource === 'secrets');
    // Its lists (it listed at start, when the unrelated Secret was already there) come back as metadata.
    const lists = (await secretRequests()).filter((e) => e.verb === 'list');
    assert.ok(lists.length > 0, 'the operator listed Secrets');
    for (const list of lists) {
      assert.equal(list.responseObject?.kind, 'PartialObjectMetadataList', `list ${list.requestURI} answered with ${list.responseObject?.kind}`);
      assert.ok(list.responseObject?.items?.some((item) => (item.metadata as { name?: string }).name === UNRELATED_SECRET), 'the unrelated Secret is listed');
      for (const item of list.responseObject?.items ?? []) assert.equal(item.data, undefined, 'no data in a listed item');
    }
    assert.ok(!JSON.stringify(lists).includes(Buffer.from('unrelated-payload-v1').toString('base64')), 'the unrelated Secret\'s data never sent to the operator in a list');

    // An owned Secret edited by hand is put back: its watch event still names its owner.
    const ownedPassword = async () => Buffer.from((await owned('v1', 'Secret', 'regmirror-private'))!.data!['upstream-0-password']!, 'base64').toString();
    assert.equal(await ownedPassword(), 'rotated-pass');
    await mustKubectl(['patch', 'secret', 'regmirror-private', '-n', NS, '--type=merge', '-p', JSON.stringify({ data: { 'upstream-0-password': Buffer.from('tampered').toString('base64') } })]);
    await eventually('the owned Secret put back', async () => (await ownedPassword()) === 'rotated-pass');
    // A referenced Secret's new data is read by name: the rotation reaches the owned Secret.
    await mustKubectl(['apply', '-f', '-'], JSON.stringify({
      apiVersion: 'v1', kind: 'Secret', type: 'kubernetes.io/basic-auth', metadata: { name: 'hub-credentials', namespace: NS },
      stringData: { username: 'alice', password: 'rotated-again' },
    }));
    await eventually('the second rotation in the owned Secret', async () => (await ownedPassword()) === 'rotated-again');
    // The unrelated Secret changes (an event the operator sees, as metadata) and is never read.
    await mustKubectl(['patch', 'secret', UNRELATED_SECRET, '-n', NS, '--type=merge', '-p', JSON.stringify({ stringData: { payload: 'unrelated-payload-v2' } })]);
    await sleep(1_000);
    const requests = await secretRequests();
    assert.ok(requests.some((e) => e.verb === 'watch' && e.objectRef?.namespace === undefined), 'the operator watches Secrets in all namespaces');
    const read = new Set(requests.filter((e) => e.verb === 'get').map((e) => e.objectRef?.name));
    assert.ok(read.has('hub-credentials') && read.has('regmirror-private'), `it reads the referenced and the owned Secret by name: ${[...read]}`);
    assert.ok(!read.has(UNRELATED_SECRET), 'it never reads the unrelated Secret');
  });

  it('an object the API server refuses turns Ready False with ApplyFailed and the server\'s reason; a larger memory request alone raises the limit', async () => {
    await applyMirror('sized', { upstreams: [{ registry: 'docker.io' }], resources: { requests: { memory: '2Gi' } }, ...ownNodes('sized') });
    const deployment = await eventually('Deployment', () => owned('apps/v1', 'Deployment', 'regmirror-sized'));
    assert.deepEqual(deployment.spec.template.spec.containers[0].resources.limits, { memory: '2Gi' });

    await applyMirror('sized', { upstreams: [{ registry: 'docker.io' }], resources: { requests: { memory: '2Gi' }, limits: { memory: '1Gi' } }, ...ownNodes('sized') });
    const condition = await eventually('ApplyFailed', async () => (await ready('sized'))?.reason === 'ApplyFailed' && ready('sized'));
    assert.equal(condition.status, 'False');
    assert.match(condition.message, /must be less than or equal to memory limit/);
    assert.equal(condition.observedGeneration, 2);
  });

  it('a storage.size the StorageClass cannot grow to is ApplyFailed naming storage.size, holds nothing else back, and can be set back', async () => {
    await mustKubectl(['apply', '-f', '-'], JSON.stringify({
      apiVersion: 'storage.k8s.io/v1', kind: 'StorageClass', metadata: { name: 'fixed' }, provisioner: 'example.com/fixed', allowVolumeExpansion: false,
    }));
    const spec = (size: string, image?: string) => ({
      upstreams: [{ registry: 'quay.io' }], storage: { size, storageClassName: 'fixed' }, ...(image ? { image } : {}), ...ownNodes('fixed'),
    });
    await applyMirror('fixed', spec('5Gi'));
    await eventually('its Deployment', () => owned('apps/v1', 'Deployment', 'regmirror-fixed'));
    await playKubeletMirrorRunning('fixed');
    await applyMirror('fixed', spec('8Gi', 'registry.example/regmirror:v2'));
    const condition = await eventually('ApplyFailed', async () => (await ready('fixed'))?.reason === 'ApplyFailed' && ready('fixed'));
    assert.match(condition.message, /PersistentVolumeClaim regmirror-fixed not applied: .*spec\.storage\.size 8Gi asks more than the claim's 5Gi/s);
    await eventually('the new image in the Deployment all the same', async () =>
      (await owned('apps/v1', 'Deployment', 'regmirror-fixed'))!.spec.template.spec.containers[0].image === 'registry.example/regmirror:v2');
    // The node agent runs as root on the nodes: it keeps the operator's own image whatever spec.image says.
    assert.equal((await owned('apps/v1', 'DaemonSet', 'regmirror-fixed-node'))!.spec.template.spec.containers[0].image, 'registry.example/regmirror:test');

    await applyMirror('fixed', spec('5Gi', 'registry.example/regmirror:v2'));
    await eventually('ApplyFailed cleared', async () => (await ready('fixed'))?.reason !== 'ApplyFailed' && (await ready('fixed'))?.observedGeneration === 3);
    assert.equal((await owned('v1', 'PersistentVolumeClaim', 'regmirror-fixed'))!.spec.resources.requests.storage, '5Gi');
  });

  it('a second RegistryMirror for nodes and files another already configures gets NodeConfigConflict and no DaemonSet, and takes over when the first lets go', async () => {
    const quay = { upstreams: [{ registry: 'quay.io' }] };
    await applyMirror('quay-a', { ...quay, ...ownNodes('quay') });
    await eventually('quay-a DaemonSet', () => owned('apps/v1', 'DaemonSet', 'regmirror-quay-a-node'));
    await applyMirror('quay-b', { ...quay, ...ownNodes('quay') });
    const condition = await eventually('NodeConfigConflict', async () => (await ready('quay-b'))?.reason === 'NodeConfigConflict' && ready('quay-b'));
    // which reason it names depends on whether the operator's cache saw quay-a's DaemonSet yet
    assert.match(condition.message, new RegExp(`RegistryMirror ${NS}/quay-a \\((created earlier|its agents are on them)\\).*containerd's hosts\\.toml for quay\\.io`));
    assert.ok(await owned('apps/v1', 'Deployment', 'regmirror-quay-b'), 'the second mirror still serves');
    assert.equal(await owned('apps/v1', 'DaemonSet', 'regmirror-quay-b-node'), undefined);
    assert.ok((await eventsFor('quay-b')).some((e) => e.reason === 'NodeConfigConflict' && e.type === 'Warning'));

    // The first turns its node configuration off: the second is looked at again and takes the nodes.
    await applyMirror('quay-a', { ...quay, nodeConfig: { enabled: false, runtimes: ['containerd'], nodeSelector: { 'regmirror.test/pool': 'quay' } } });
    await eventually('quay-b DaemonSet', () => owned('apps/v1', 'DaemonSet', 'regmirror-quay-b-node'));
    await eventually('quay-b no longer in conflict', async () => (await ready('quay-b'))?.reason !== 'NodeConfigConflict');
  });

  it('a RegistryMirror being deleted keeps its nodes until its agents have taken their configuration away; only then does the one waiting take them', async () => {
    const k8s = { upstreams: [{ registry: 'registry.k8s.io' }], ...ownNodes('handover') };
    await applyMirror('leaving', k8s);
    await eventually('its DaemonSet', () => owned('apps/v1', 'DaemonSet', 'regmirror-leaving-node'));
    await playKubeletNodeAgentsReady('leaving', 2);
    await applyMirror('waiting', k8s);
    await eventually('NodeConfigConflict', async () => (await ready('waiting'))?.reason === 'NodeConfigConflict');
    await mustKubectl(['delete', 'rmir', 'leaving', '-n', NS, '--wait=false']);
    await eventually('its agents in remove mode', async () =>
      (await owned('apps/v1', 'DaemonSet', 'regmirror-leaving-node'))?.metadata?.annotations?.[MODE_ANNOTATION] === 'remove');
    await sleep(2_000);
    assert.equal(await owned('apps/v1', 'DaemonSet', 'regmirror-waiting-node'), undefined, 'no second agent on those nodes while the first removes');
    assert.equal((await ready('waiting'))?.reason, 'NodeConfigConflict');
    await playKubeletNodeAgentsReady('leaving', 2);
    await eventually('the first gone', async () => (await mirror('leaving')) === undefined);
    await eventually('the second takes the nodes', () => owned('apps/v1', 'DaemonSet', 'regmirror-waiting-node'));
  });

  it('a RegistryMirror its own spec stops before it applies anything (InvalidSpec) holds no nodes: one created right after it configures them, and keeps them once the first is fixed', async () => {
    const gcr = { upstreams: [{ registry: 'gcr.io' }], ...ownNodes('stopped') };
    // a prefetch image on none of its upstreams: InvalidSpec, nothing applied; the two are created in one go
    await mustKubectl(['apply', '-f', '-'], [
      JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'a-stopped', namespace: NS }, spec: { ...gcr, prefetch: ['quay.io/org/app:1'] } }),
      JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'b-serving', namespace: NS }, spec: gcr }),
    ].join('\n'));
    await eventually('a-stopped InvalidSpec', async () => (await ready('a-stopped'))?.reason === 'InvalidSpec');
    await eventually('b-serving configures its nodes', () => owned('apps/v1', 'DaemonSet', 'regmirror-b-serving-node'));
    await eventually('b-serving not in conflict', async () => ((await ready('b-serving'))?.reason ?? 'NodeConfigConflict') !== 'NodeConfigConflict');
    assert.equal(await owned('apps/v1', 'DaemonSet', 'regmirror-a-stopped-node'), undefined);

    // fixed, the earlier one does not take the nodes from the one whose agents are on them
    await applyMirror('a-stopped', gcr);
    const condition = await eventually('a-stopped in conflict', async () => (await ready('a-stopped'))?.reason === 'NodeConfigConflict' && ready('a-stopped'));
    assert.match(condition.message, new RegExp(`RegistryMirror ${NS}/b-serving \\(its agents are on them\\)`));
    assert.equal(await owned('apps/v1', 'DaemonSet', 'regmirror-a-stopped-node'), undefined);
    assert.equal((await owned('apps/v1', 'DaemonSet', 'regmirror-b-serving-node'))?.metadata?.annotations?.[MODE_ANNOTATION], 'apply');
  });

  it('with auth on, the mirror checks htpasswd with the nodes\' own entry added, kept stable across reconciles', async () => {
    await mustKubectl(['create', 'secret', 'generic', 'mirror-users', '-n', NS, '--from-literal=htpasswd=bob:$2y$05$0123456789012345678901uGbpYAK2ZqLvbEFxa7xW1hMyoXvsT3q']);
    await applyMirror('locked', {
      upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }],
      auth: { htpasswdSecretRef: { name: 'mirror-users' } },
      ...ownNodes('locked'),
    });
    // The DaemonSet is the last object a reconcile applies, and the status comes after it.
    await eventually('the first reconcile done', async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-locked-node')) && ready('locked'));
    const secret = (await owned('v1', 'Secret', 'regmirror-locked'))!;
    assert.ok(secret.data?.['node-password'], 'the owned Secret holds the nodes\' password');
    const htpasswd = Buffer.from(secret.data!.htpasswd!, 'base64').toString();
    assert.match(htpasswd, /^bob:\$2y\$05\$.*\nregmirror-node:\$2[aby]\$10\$/s);
    const config = parse((await owned('v1', 'ConfigMap', 'regmirror-locked'))!.data!['config.yaml']!);
    assert.deepEqual(config.auth, { htpasswd: '/run/secrets/regmirror/htpasswd' });
    const daemonSet = (await owned('apps/v1', 'DaemonSet', 'regmirror-locked-node'))!;
    const env: { name: string; valueFrom?: { secretKeyRef?: { name: string; key: string } } }[] = daemonSet.spec.template.spec.containers[0].env;
    assert.deepEqual(env.find((e) => e.name === 'REGMIRROR_MIRROR_PASSWORD')?.valueFrom?.secretKeyRef, { name: 'regmirror-locked', key: 'node-password' });
    // Another reconcile (a label change triggers one) makes no new password and no new checksum.
    const checksum = (await owned('apps/v1', 'Deployment', 'regmirror-locked'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
    await mustKubectl(['label', 'rmir', 'locked', '-n', NS, 'touched=yes']);
    await sleep(2_000);
    assert.equal((await owned('v1', 'Secret', 'regmirror-locked'))!.data!['node-password'], secret.data!['node-password']);
    assert.equal((await owned('v1', 'Secret', 'regmirror-locked'))!.data!['checksum-key'], secret.data!['checksum-key']);
    assert.equal((await owned('apps/v1', 'Deployment', 'regmirror-locked'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION], checksum);
    assert.ok(!operator.logs().includes(Buffer.from(secret.data!['node-password']!, 'base64').toString()), 'the node password is never logged');
  });

  it('a node password made again (its Secret deleted) rolls the node agents as well as the mirror', async () => {
    const checksum = async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-locked-node'))!.spec.template.metadata.annotations['regmirror.dev/credentials-checksum'];
    const before = await checksum();
    const mirrorChecksum = async () => (await owned('apps/v1', 'Deployment', 'regmirror-locked'))!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
    const mirrorBefore = await mirrorChecksum();
    const secret = (await owned('v1', 'Secret', 'regmirror-locked'))!;
    await mustKubectl(['delete', 'secret', 'regmirror-locked', '-n', NS]);
    const again = await eventually('the Secret made again', async () => {
      const s = await owned('v1', 'Secret', 'regmirror-locked');
      return s && s.metadata!.uid !== secret.metadata!.uid && s;
    });
    assert.notEqual(again.data!['node-password'], secret.data!['node-password']);
    await eventually('a new checksum on the mirror\'s pod template', async () => (await mirrorChecksum()) !== mirrorBefore);
    await eventually('a new checksum on the agents\' pod template', async () => (await checksum()) !== before);
    assert.match(await checksum(), /^[0-9a-f]{64}$/);
  });

  it('deleting a RegistryMirror takes the configuration off the nodes first, then lets the objects go', async () => {
    await mustKubectl(['delete', 'rmir', 'hub', '-n', NS, '--wait=false']);
    const daemonSet = await eventually('the node agent in remove mode', async () => {
      const ds = await owned('apps/v1', 'DaemonSet', 'regmirror-hub-node');
      return ds?.metadata?.annotations?.[MODE_ANNOTATION] === 'remove' && ds;
    });
    const args: string[] = daemonSet.spec.template.spec.containers[0].args;
    assert.equal(args[args.indexOf('--mode') + 1], 'remove');
    await eventually('NodeCleanup', async () => (await ready('hub'))?.reason === 'NodeCleanup');
    assert.ok(await mirror('hub'), 'held by the finalizer while nodes still use the mirror');
    await playKubeletNodeAgentsReady('hub', 3);
    await eventually('the RegistryMirror gone', async () => (await mirror('hub')) === undefined);
  });

  it('deletion is bounded: nodes that never confirm do not hold the RegistryMirror forever', async () => {
    await applyMirror('stuck', { upstreams: [{ registry: 'quay.io' }], ...ownNodes('stuck') });
    await eventually('its DaemonSet', () => owned('apps/v1', 'DaemonSet', 'regmirror-stuck-node'));
    await playKubeletNodeAgentsReady('stuck', 2);
    const started = Date.now();
    await mustKubectl(['delete', 'rmir', 'stuck', '-n', NS, '--wait=false']);
    await eventually('the RegistryMirror gone after the cleanup timeout', async () => (await mirror('stuck')) === undefined, 30_000);
    assert.ok(Date.now() - started >= 5_000, 'it waited for the nodes first');
    // The Event outlives the object; look it up by name.
    const events = (await admin.list<Obj & { reason?: string; involvedObject?: { name: string } }>('v1', 'Event', NS)).items;
    assert.ok(events.some((e) => e.involvedObject?.name === 'stuck' && e.reason === 'NodeCleanupTimedOut'));
  });

  it('nodes a narrowed nodeSelector no longer selects are cleaned by a DaemonSet of their own, and a deletion meanwhile cleans them too', async () => {
    const POOL = 'regmirror.test/pool';
    const gpu = { key: 'gpu', operator: 'Exists', effect: 'NoSchedule' };
    const placed = (pool: string, tolerations: object[] = []) => ({ upstreams: [{ registry: 'gcr.io' }], nodeConfig: { enabled: true, runtimes: ['containerd'], nodeSelector: { [POOL]: pool }, tolerations } });
    const dropped = () => owned('apps/v1', 'DaemonSet', 'regmirror-narrow-node-dropped');
    const terms = (ds: Obj) => ds.spec.template.spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms;
    await applyMirror('narrow', placed('old', [gpu]));
    await eventually('its DaemonSet', () => owned('apps/v1', 'DaemonSet', 'regmirror-narrow-node'));
    await playKubeletMirrorRunning('narrow');
    await playKubeletNodeAgentsReady('narrow', 2);
    await eventually('Available', async () => (await ready('narrow'))?.reason === 'Available');
    const endpoint = (await mirror('narrow'))!.status.endpoint;

    await applyMirror('narrow', placed('new'));
    const cleanup = await eventually('a DaemonSet for the nodes left behind', dropped);
    assert.equal(cleanup.metadata!.annotations![MODE_ANNOTATION], 'remove');
    assert.deepEqual(terms(cleanup), [{ matchExpressions: [{ key: POOL, operator: 'In', values: ['old'] }, { key: POOL, operator: 'NotIn', values: ['new'] }] }]);
    assert.equal(cleanup.spec.template.spec.nodeSelector, undefined);
    assert.deepEqual(cleanup.spec.template.spec.tolerations, [gpu], 'it reaches the nodes the old tolerations reached');
    const args: string[] = cleanup.spec.template.spec.containers[0].args;
    assert.equal(args[args.indexOf('--mirror') + 1], endpoint);
    assert.equal(cleanup.metadata!.ownerReferences?.[0]?.name, 'narrow');
    assert.deepEqual((await owned('apps/v1', 'DaemonSet', 'regmirror-narrow-node'))!.spec.template.spec.nodeSelector, { [POOL]: 'new' });
    await playKubeletNodeAgentsReady('narrow', 2);
    const pending = await eventually('NodesPending naming the cleanup', async () => (await ready('narrow'))?.reason === 'NodesPending' && ready('narrow'));
    assert.match(pending.message, /0 of 0 nodes nodeConfig no longer selects cleaned \(DaemonSet regmirror-narrow-node-dropped/);
    const events = await eventsFor('narrow');
    assert.ok(!events.some((e) => e.reason === 'NodeCleanupIncomplete'), 'a dropped toleration no Node\'s taint needed leaves no node behind');
    await playKubeletDaemonSetReady(admin, NS, 'regmirror-narrow-node-dropped', 1);
    await eventually('the cleanup deleted once its nodes confirmed', async () => (await dropped()) === undefined);
    assert.ok((await eventsFor('narrow')).some((e) => e.reason === 'NodesCleaned' && /nodeConfig no longer selects/.test(e.message!)));
    await eventually('Available again', async () => (await ready('narrow'))?.reason === 'Available');
    assert.equal((await mirror('narrow'))!.metadata!.annotations?.['regmirror.dev/dropped-placements'], undefined);

    // narrowed again, and deleted before those nodes confirmed: the removal covers both placements
    await applyMirror('narrow', placed('newer'));
    await eventually('a cleanup for the nodes left this time', dropped);
    await mustKubectl(['delete', 'rmir', 'narrow', '-n', NS, '--wait=false']);
    const removal = await eventually('the node agent removing from both placements\' nodes', async () => {
      const ds = await owned('apps/v1', 'DaemonSet', 'regmirror-narrow-node');
      return ds?.metadata?.annotations?.[MODE_ANNOTATION] === 'remove' && terms(ds) && ds;
    });
    assert.deepEqual(terms(removal), [
      { matchExpressions: [{ key: POOL, operator: 'In', values: ['new'] }] },
      { matchExpressions: [{ key: POOL, operator: 'In', values: ['newer'] }] },
    ]);
    await eventually('the cleanup of the nodes left behind handed over', async () => (await dropped()) === undefined);
    await playKubeletNodeAgentsReady('narrow', 3);
    await eventually('the RegistryMirror gone', async () => (await mirror('narrow')) === undefined);
    const after = (await admin.list<Obj & { reason?: string; involvedObject?: { name: string } }>('v1', 'Event', NS)).items;
    assert.ok(after.some((e) => e.involvedObject?.name === 'narrow' && e.reason === 'NodesCleaned' && /from 3 node/.test((e as { message?: string }).message ?? '')));
  });

  it('nodes a narrowed nodeConfig.tolerations leaves behind (a taint now keeps the agents off) are named by a DaemonSet of their own and cleaned, and a deletion meanwhile cleans them too', async () => {
    const POOL = 'regmirror.test/pool';
    const gpu = { key: 'regmirror.test/gpu', operator: 'Exists', effect: 'NoSchedule' };
    const gpuTaint = { key: 'regmirror.test/gpu', value: 'a100', effect: 'NoSchedule' };
    const nodes: [string, string, object[]][] = [
      ['taint-gpu-2', 'taint', [gpuTaint]],
      ['taint-gpu-1', 'taint', [gpuTaint, { key: 'regmirror.test/busy', effect: 'PreferNoSchedule' }]],
      ['taint-plain', 'taint', []],
      ['taint-elsewhere', 'other', [gpuTaint]],
      ['taint-never', 'taint', [gpuTaint, { key: 'regmirror.test/dedicated', value: 'db', effect: 'NoExecute' }]],
    ];
    for (const [name, pool, taints] of nodes) {
      await mustKubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { [POOL]: pool } }, spec: { taints } }));
    }
    const placed = (tolerations: object[]) => ({ upstreams: [{ registry: 'public.ecr.aws' }], nodeConfig: { enabled: true, runtimes: ['containerd'], nodeSelector: { [POOL]: 'taint' }, tolerations } });
    const dropped = () => owned('apps/v1', 'DaemonSet', 'regmirror-tainted-node-dropped');
    const terms = (ds: Obj) => ds.spec.template.spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms;
    const byName = ['taint-gpu-1', 'taint-gpu-2'].map((name) => ({ matchFields: [{ key: 'metadata.name', operator: 'In', values: [name] }] }));
    const agentsOnGpu = async () => {
      await applyMirror('tainted', placed([gpu]));
      await eventually('agents that tolerate the taint', async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-tainted-node'))?.spec.template.spec.tolerations?.length === 1);
      await playKubeletMirrorRunning('tainted');
      await playKubeletNodeAgentsReady('tainted', 3);
      await eventually('Available', async () => (await ready('tainted'))?.reason === 'Available');
    };
    try {
      await agentsOnGpu();
      await applyMirror('tainted', placed([]));
      const cleanup = await eventually('a DaemonSet for the tainted nodes left behind', dropped);
      assert.equal(cleanup.metadata!.annotations![MODE_ANNOTATION], 'remove');
      assert.deepEqual(terms(cleanup), byName, 'exactly the nodes the old tolerations reached and the new do not, by name');
      assert.deepEqual(cleanup.spec.template.spec.tolerations, [gpu], 'it reaches them with the old tolerations');
      assert.equal((await owned('apps/v1', 'DaemonSet', 'regmirror-tainted-node'))!.spec.template.spec.tolerations, undefined);
      const record = JSON.parse((await mirror('tainted'))!.metadata!.annotations!['regmirror.dev/dropped-placements']!);
      assert.deepEqual(record.nodes, ['taint-gpu-1', 'taint-gpu-2'], 'the names are recorded, for an operator restarted meanwhile');
      // Nodes are large (each lists its images) and may be thousands: read a page at a time
      const nodeLists = (await env.auditEvents()).filter((e) => e.user.username === SERVICE_ACCOUNT && e.objectRef?.resource === 'nodes' && e.verb === 'list');
      assert.ok(nodeLists.length > 0 && nodeLists.every((e) => /[?&]limit=500(&|$)/.test(e.requestURI)), nodeLists.map((e) => e.requestURI).join(' '));
      const pages: string[][] = [];
      for await (const page of admin.listPages<Obj>('v1', 'Node', undefined, `${POOL}=taint`, 2)) pages.push(page.map((n) => n.metadata!.name!));
      assert.deepEqual(pages.flat().sort(), ['taint-gpu-1', 'taint-gpu-2', 'taint-never', 'taint-plain'], 'every page, by the continue token');
      assert.deepEqual(pages.map((p) => p.length), [2, 2]);
      const events = await eventsFor('tainted');
      assert.ok(events.some((e) => e.reason === 'NodeCleanup' && /nodeConfig\.tolerations no longer tolerates a taint of 2 node\(s\).*taint-gpu-1, taint-gpu-2/.test(e.message!)));
      assert.ok(!events.some((e) => e.reason === 'NodeCleanupIncomplete'), 'nothing is left uncleaned');
      await playKubeletNodeAgentsReady('tainted', 1);
      await playKubeletDaemonSetReady(admin, NS, 'regmirror-tainted-node-dropped', 2);
      await eventually('the cleanup deleted once its nodes confirmed', async () => (await dropped()) === undefined);
      assert.ok((await eventsFor('tainted')).some((e) => e.reason === 'NodesCleaned' && /from 2 node\(s\) nodeConfig no longer selects/.test(e.message!)));
      assert.equal((await mirror('tainted'))!.metadata!.annotations?.['regmirror.dev/dropped-placements'], undefined);

      // the toleration back, dropped again, and the RegistryMirror deleted before those nodes confirmed
      await agentsOnGpu();
      await applyMirror('tainted', placed([]));
      assert.deepEqual(terms(await eventually('a cleanup for the tainted nodes again', dropped)), byName);
      await mustKubectl(['delete', 'rmir', 'tainted', '-n', NS, '--wait=false']);
      const removal = await eventually('the node agent removing from the tainted nodes too', async () => {
        const ds = await owned('apps/v1', 'DaemonSet', 'regmirror-tainted-node');
        return ds?.metadata?.annotations?.[MODE_ANNOTATION] === 'remove' && ds;
      });
      assert.deepEqual(terms(removal), [{ matchExpressions: [{ key: POOL, operator: 'In', values: ['taint'] }] }]);
      assert.deepEqual(removal.spec.template.spec.tolerations, [gpu], 'with the toleration that reaches them');
      await eventually('the cleanup of the nodes left behind handed over', async () => (await dropped()) === undefined);
      await playKubeletNodeAgentsReady('tainted', 3);
      await eventually('the RegistryMirror gone', async () => (await mirror('tainted')) === undefined);
    } finally {
      await kubectl(['delete', 'node', ...nodes.map(([name]) => name), '--ignore-not-found']);
    }
  });

  it('spec.tls whose Secret is missing changes neither status.endpoint nor what runs, and a deletion then removes the address the nodes were given', async () => {
    const spec = { upstreams: [{ registry: 'registry.k8s.io' }], ...ownNodes('scheme') };
    await applyMirror('scheme', spec);
    await eventually('its DaemonSet', () => owned('apps/v1', 'DaemonSet', 'regmirror-scheme-node'));
    await playKubeletMirrorRunning('scheme');
    await playKubeletNodeAgentsReady('scheme', 2);
    await eventually('Available', async () => (await ready('scheme'))?.reason === 'Available');
    const given = `http://${(await owned('v1', 'Service', 'regmirror-scheme'))!.spec.clusterIP}:5000`;
    assert.equal((await mirror('scheme'))!.status.endpoint, given);

    await applyMirror('scheme', { ...spec, tls: { secretName: 'scheme-cert' } });
    await eventually('SecretNotFound', async () => (await ready('scheme'))?.reason === 'SecretNotFound');
    assert.equal((await mirror('scheme'))!.status.endpoint, given, 'the mirror still serves http');
    const agentArgs = async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-scheme-node'))!.spec.template.spec.containers[0].args as string[];
    assert.equal((await agentArgs())[(await agentArgs()).indexOf('--mirror') + 1], given);

    await mustKubectl(['delete', 'rmir', 'scheme', '-n', NS, '--wait=false']);
    await eventually('the node agent in remove mode', async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-scheme-node'))?.metadata?.annotations?.[MODE_ANNOTATION] === 'remove');
    const args = await agentArgs();
    assert.equal(args[args.indexOf('--mirror') + 1], given, 'the removal names the address the nodes were given');
    await playKubeletNodeAgentsReady('scheme', 2);
    await eventually('the RegistryMirror gone', async () => (await mirror('scheme')) === undefined);
  });

  it('a RegistryMirror created from a manifest that lists the finalizer itself (an export created again) is still let go on deletion', async () => {
    await mustKubectl(['create', '-f', '-'], JSON.stringify({
      apiVersion: API_VERSION, kind: KIND,
      metadata: { name: 'restored', namespace: NS, finalizers: [FINALIZER] },
      spec: { upstreams: [{ registry: 'quay.io' }], nodeConfig: { enabled: false, runtimes: ['containerd'] } },
    }));
    await eventually('its first reconcile', () => ready('restored'));
    await mustKubectl(['delete', 'rmir', 'restored', '-n', NS, '--wait=false']);
    await eventually('the RegistryMirror gone', async () => (await mirror('restored')) === undefined, 15_000);
  });

  it('the operator runs under its own RBAC identity, which cannot do more than it needs', async () => {
    for (const [verb, resource, allowed] of [
      ['patch', 'deployments.apps', 'yes'], ['watch', 'secrets', 'yes'], ['patch', 'registrymirrors.regmirror.dev/status', 'yes'],
      ['delete', 'secrets', 'no'], ['list', 'nodes', 'yes'], ['patch', 'nodes', 'no'], ['watch', 'nodes', 'no'], ['create', 'pods', 'no'], ['delete', 'registrymirrors.regmirror.dev', 'no'],
    ] as const) {
      const result = await kubectl(['auth', 'can-i', verb, resource, '-n', NS, '--kubeconfig', operatorKubeconfig]);
      assert.equal(result.stdout.trim(), allowed, `${verb} ${resource}`);
    }
    // RBAC's own refusal, not an admission's 403 (a claim its StorageClass cannot grow)
    assert.ok(!/forbidden: User .* cannot /.test(operator.logs()), 'no request of the operator was forbidden');
  });

  it('an operator that may not list Nodes (the RBAC of an earlier version) says, when nodeConfig.tolerations narrows, that nodes with such a taint are not cleaned and what it lacks', async () => {
    const clusterRole = (rules: object[]) => JSON.stringify({ apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: 'regmirror-operator' }, rules });
    const gpu = { key: 'regmirror.test/gpu', operator: 'Exists', effect: 'NoSchedule' };
    const placed = (tolerations: object[]) => ({ upstreams: [{ registry: 'public.ecr.aws' }], ...ownNodes('untaint'), nodeConfig: { ...ownNodes('untaint').nodeConfig, tolerations } });
    await mustKubectl(['apply', '-f', '-'], clusterRole(OPERATOR_RULES.filter((rule) => !NODE_RULES.includes(rule))));
    try {
      await eventually('listing Nodes forbidden', async () => (await kubectl(['auth', 'can-i', 'list', 'nodes', '--kubeconfig', operatorKubeconfig])).stdout.trim() === 'no');
      await applyMirror('untaint', placed([gpu]));
      await eventually('agents that tolerate the taint', async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-untaint-node'))?.spec.template.spec.tolerations?.length === 1);
      await applyMirror('untaint', placed([]));
      const warning = await eventually('a Warning', async () => (await eventsFor('untaint')).find((e) => e.reason === 'NodeCleanupIncomplete'));
      assert.equal(warning.type, 'Warning');
      assert.match(warning.message!, /no longer tolerates regmirror\.test\/gpu:NoSchedule/);
      assert.match(warning.message!, /may not list nodes .*get and list on nodes, cluster-wide/);
      await eventually('the agents moved all the same', async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-untaint-node'))?.spec.template.spec.tolerations === undefined);
      assert.equal(await owned('apps/v1', 'DaemonSet', 'regmirror-untaint-node-dropped'), undefined);
    } finally {
      await mustKubectl(['apply', '-f', RBAC_FILE]);
    }
    await mustKubectl(['delete', 'rmir', 'untaint', '-n', NS, '--wait=false']);
    await eventually('the node agent in remove mode', async () => (await owned('apps/v1', 'DaemonSet', 'regmirror-untaint-node'))?.metadata?.annotations?.[MODE_ANNOTATION] === 'remove');
    await playKubeletNodeAgentsReady('untaint', 1);
    await eventually('the RegistryMirror gone', async () => (await mirror('untaint')) === undefined);
  });

  it('a RegistryMirror whose namespace is being deleted, its node agent DaemonSet gone first, has its nodes cleaned from the operator\'s namespace, then goes', async () => {
    await mustKubectl(['create', 'namespace', 'doomed']);
    await mustKubectl(['apply', '-f', '-'], JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'doomed', namespace: 'doomed' }, spec: { upstreams: [{ registry: 'quay.io' }], ...ownNodes('doomed') } }));
    await eventually('its DaemonSet', () => admin.find<Obj>('apps/v1', 'DaemonSet', 'doomed', 'regmirror-doomed-node'));
    await playKubeletDaemonSetReady(admin, 'doomed', 'regmirror-doomed-node', 2);
    const status = await eventually('2 nodes configured', async () => {
      const s = (await admin.find<Obj>(API_VERSION, KIND, 'doomed', 'doomed'))?.status;
      return s?.nodes?.configured === 2 && s;
    });
    // What the namespace controller does (it does not run here): the namespace turns Terminating,
    // which takes no new objects, and everything in it is deleted, the DaemonSet at once.
    await mustKubectl(['delete', 'namespace', 'doomed', '--wait=false']);
    await mustKubectl(['delete', 'daemonset', 'regmirror-doomed-node', '-n', 'doomed']);
    await mustKubectl(['delete', 'rmir', 'doomed', '-n', 'doomed', '--wait=false']);
    const name = relocatedName('doomed', 'doomed');
    const cleanup = await eventually('the cleanup DaemonSet in the operator\'s namespace', () => admin.find<Obj>('apps/v1', 'DaemonSet', OPERATOR_NAMESPACE, name));
    assert.equal(cleanup.metadata?.ownerReferences, undefined);
    assert.equal(cleanup.metadata?.labels?.[MIRROR_NAMESPACE_LABEL], 'doomed');
    assert.equal(cleanup.metadata?.labels?.[MIRROR_NAME_LABEL], 'doomed');
    const args: string[] = cleanup.spec.template.spec.containers[0].args;
    assert.equal(args[args.indexOf('--mode') + 1], 'remove');
    assert.equal(args[args.indexOf('--mirror') + 1], status.endpoint, 'the address the nodes were given');
    await sleep(2_000);
    assert.ok(await admin.find<Obj>(API_VERSION, KIND, 'doomed', 'doomed'), 'held until the nodes are clean');
    await playKubeletDaemonSetReady(admin, OPERATOR_NAMESPACE, name, 2);
    await eventually('the RegistryMirror gone', async () => (await admin.find<Obj>(API_VERSION, KIND, 'doomed', 'doomed')) === undefined, 15_000);
    assert.equal(await admin.find<Obj>('apps/v1', 'DaemonSet', OPERATOR_NAMESPACE, name), undefined, 'the cleanup DaemonSet deleted');
    const logs = operator.logs().split('\n');
    assert.ok(!logs.some((line) => line.includes('nodes not cleaned')), 'no warning that the nodes were not cleaned');
    assert.ok(logs.some((line) => line.includes(`DaemonSet ${name} in namespace ${OPERATOR_NAMESPACE} takes the configuration off them`)), 'the log says where the cleanup runs');
    // A namespace being deleted refuses new Events too: the NodeCleanup and NodesCleaned ones are only tried.
    const events = (await admin.list<Obj & { reason?: string }>('v1', 'Event', 'doomed')).items;
    assert.ok(!events.some((e) => ['NodeCleanup', 'NodesCleaned'].includes(e.reason!)), 'no Event written in the namespace being deleted');
    assert.ok(logs.some((line) => line.includes('could not record event') && line.includes('NodesCleaned') && line.includes('being terminated')));
  });

  it('restarting the operator converges on what changed while it was down', async () => {
    assert.equal(await operator.stop(), 0, 'a clean exit on SIGTERM');
    await applyMirror('private', {
      upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' }, tagTTL: '2m' }],
      auth: { allowAnonymousWithCredentials: true },
      ...ownNodes('private'),
    });
    await mustKubectl(['delete', 'service', 'regmirror-private', '-n', NS]);
    operator = await startOperator(operatorKubeconfig, 'operator-a2', logDir);
    await eventually('the Service back', () => owned('v1', 'Service', 'regmirror-private'));
    await eventually('the new tagTTL', async () => parse((await owned('v1', 'ConfigMap', 'regmirror-private'))!.data!['config.yaml']!).upstreams[0].tagTTL === '2m');
    const service = (await owned('v1', 'Service', 'regmirror-private'))!;
    await eventually('the node agent pointed at the new ClusterIP', async () =>
      (await owned('apps/v1', 'DaemonSet', 'regmirror-private-node'))!.spec.template.spec.containers[0].args.includes(`http://${service.spec.clusterIP}:5000`));
  });

  it('watches survive an API server restart without losing events', async () => {
    const mirrorLists = () => metric(operator, 'regmirror_operator_list_total{resource="regmirror.dev/v1alpha1/RegistryMirror"}');
    const listsBefore = (await mirrorLists())!;
    await env.restartApiServer();
    await applyMirror('private', {
      upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' }, tagTTL: '3m' }],
      auth: { allowAnonymousWithCredentials: true },
      ...ownNodes('private'),
    });
    await eventually('the change after the restart reconciled', async () =>
      parse((await owned('v1', 'ConfigMap', 'regmirror-private'))!.data!['config.yaml']!).upstreams[0].tagTTL === '3m', 60_000);
    await mustKubectl(['delete', 'deployment', 'regmirror-private', '-n', NS]);
    await eventually('the deleted Deployment back', () => owned('apps/v1', 'Deployment', 'regmirror-private'), 60_000);
    // The new server's watch cache starts at the current revision, so resuming from the old
    // resourceVersion is answered 410 Gone; the informer lists again instead of losing events.
    assert.ok((await mirrorLists())! > listsBefore, `relisted after 410 Gone (lists: ${listsBefore} -> ${await mirrorLists()})`);
    assert.ok(!operator.logs().includes('leadership lost'), 'the same controller carried on: the relist came from 410 Gone, not a new start');
  });

  it('two operators: one leader reconciles, the other takes over when it stops', async () => {
    await eventually('operator-a2 leads', async () => (await metric(operator, 'regmirror_operator_leader')) === 1);
    const standby = await startOperator(operatorKubeconfig, 'operator-b', logDir);
    await eventually('operator-b serves metrics', async () => (await metric(standby, 'regmirror_operator_leader')) !== undefined);
    await sleep(3_000);
    assert.equal(await metric(standby, 'regmirror_operator_leader'), 0, 'the standby does not lead');
    assert.equal(await metric(standby, 'regmirror_operator_reconcile_total{result="success"}'), undefined, 'the standby reconciled nothing');
    const lease = (await admin.get<Obj>('coordination.k8s.io/v1', 'Lease', OPERATOR_NAMESPACE, 'regmirror-operator'))!;
    assert.equal(lease.spec.holderIdentity, 'operator-a2');

    await operator.stop();
    await eventually('operator-b leads', async () => (await metric(standby, 'regmirror_operator_leader')) === 1, 30_000);
    await applyMirror('private', {
      upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' }, tagTTL: '4m' }],
      auth: { allowAnonymousWithCredentials: true },
      ...ownNodes('private'),
    });
    await eventually('the new leader reconciles', async () =>
      parse((await owned('v1', 'ConfigMap', 'regmirror-private'))!.data!['config.yaml']!).upstreams[0].tagTTL === '4m');
    assert.ok((await metric(standby, 'regmirror_operator_reconcile_total{result="success"}'))! > 0);
    operator = standby;
  });

  it('reports reconciles, errors, durations and queue depth as Prometheus metrics', async () => {
    const text = await (await fetch(operator.metricsUrl)).text();
    for (const name of ['regmirror_operator_reconcile_total', 'regmirror_operator_reconcile_errors_total', 'regmirror_operator_reconcile_duration_seconds_bucket', 'regmirror_operator_workqueue_depth']) {
      assert.ok(text.includes(name), name);
    }
  });
});


describe('operator watching some namespaces, with the controller manager: real rollouts, DaemonSet status, garbage collection and namespace deletion', { skip }, () => {
  /** A second watched namespace, deleted for real by the last test (NS stays for the others). */
  const NS_DOOMED = 'team-doomed';
  let env: KubeEnv;
  let admin: KubeApi;
  let operator: OperatorProcess;
  let logDir: string;
  let kubeconfig: string;
  // Long enough for a cleanup to be confirmed (the one in the operator's namespace waits 35 s
  // for the agent pods of the namespace going), not timed out.
  const operatorArgs = ['--namespace', `${NS},${NS_DOOMED}`, '--node-cleanup-timeout', '60s'];

  const kubectlJson = async (args: string[]) => {
    const result = await env.kubectl([...args, '-o', 'json']);
    assert.equal(result.code, 0, result.stderr);
    return JSON.parse(result.stdout) as { items: Obj[] };
  };
  const ownedBy = (uid: string) => (o: Obj) => o.metadata?.ownerReferences?.some((r) => r.uid === uid);
  /**
   * A Node of its own and a RegistryMirror whose agents select it; its status once it counts the
   * node. No kubelet runs, so the test says when an agent pod is ready (playKubeletPodReady).
   */
  const mirrorOnOwnNode = async (namespace: string, name: string, pool: string) => {
    const node = await env.kubectl(['apply', '-f', '-'], { input: JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: `node-${pool}`, labels: { 'regmirror.test/pool': pool } } }) });
    assert.equal(node.code, 0, node.stderr);
    const applied = await env.kubectl(['apply', '-f', '-'], {
      input: JSON.stringify({
        apiVersion: API_VERSION, kind: KIND, metadata: { name, namespace },
        spec: { upstreams: [{ registry: 'docker.io' }], nodeConfig: { enabled: true, runtimes: ['containerd'], nodeSelector: { 'regmirror.test/pool': pool }, tolerations: [{ operator: 'Exists' }] } },
      }),
    });
    assert.equal(applied.code, 0, applied.stderr);
    return eventually('one node to configure', async () => {
      const s = (await admin.find<Obj>(API_VERSION, KIND, namespace, name))?.status;
      return s?.nodes?.desired === 1 && s;
    }, 60_000);
  };
  const playKubeletPodReady = (pod: Obj) => admin.request('PATCH', `/api/v1/namespaces/${pod.metadata!.namespace}/pods/${pod.metadata!.name}/status`, {
    body: { status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] } },
    contentType: 'application/merge-patch+json',
  });

  before(async () => {
    logDir = await makeTempDir('operator-gc');
    env = await startKubeEnv({ controllerManager: true });
    admin = new KubeApi(env.kubeConfig(), 'regmirror-test');
    for (const args of [
      ['create', 'namespace', OPERATOR_NAMESPACE], ['create', 'namespace', NS], ['apply', '-f', CRD_FILE],
      ['wait', '--for=condition=Established', '--timeout=60s', 'crd/registrymirrors.regmirror.dev'], ['apply', '-f', RBAC_FILE],
    ]) {
      const result = await env.kubectl(args);
      assert.equal(result.code, 0, result.stderr);
    }
    // The RBAC file's ClusterRole, bound in the watched namespaces only, and the rules over
    // RegistryMirrors themselves bound cluster-wide: how a namespaced install (the chart's
    // watchNamespaces) grants them; the file's Roles in the operator's namespace stay.
    const mirrorsRole = { apiVersion: 'rbac.authorization.k8s.io/v1', kind: 'ClusterRole', metadata: { name: MIRRORS_ROLE }, rules: MIRROR_RULES };
    for (const [args, input] of [
      [['delete', 'clusterrolebinding', 'regmirror-operator']],
      [['create', 'namespace', NS_DOOMED]],
      ...[NS, NS_DOOMED].map((ns) => [['create', 'rolebinding', 'regmirror-operator', '-n', ns, '--clusterrole=regmirror-operator', `--serviceaccount=${OPERATOR_NAMESPACE}:regmirror-operator`]]),
      [['apply', '-f', '-'], JSON.stringify(mirrorsRole)],
      [['create', 'clusterrolebinding', MIRRORS_ROLE, `--clusterrole=${MIRRORS_ROLE}`, `--serviceaccount=${OPERATOR_NAMESPACE}:regmirror-operator`]],
    ] as [string[], string?][]) {
      const result = await env.kubectl(args, input === undefined ? {} : { input });
      assert.equal(result.code, 0, result.stderr);
    }
    kubeconfig = await env.kubeconfigFor(SERVICE_ACCOUNT, ['system:serviceaccounts', `system:serviceaccounts:${OPERATOR_NAMESPACE}`]);
    operator = await startOperator(kubeconfig, 'operator-gc', logDir, operatorArgs);
  });

  after(async () => {
    await operator?.stop();
    await env?.stop();
  });

  it('rolls out mirror pods, rolls them again on a spec change, and the garbage collector takes every owned object after deletion', async () => {
    const apply = (ttl: string) => env.kubectl(['apply', '-f', '-'], {
      input: JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'gc', namespace: NS }, spec: { upstreams: [{ registry: 'docker.io' }], storage: { size: '1Gi', ttl } } }),
    });
    assert.equal((await apply('24h')).code, 0);
    const cr = await eventually('the RegistryMirror', () => admin.find<Obj>(API_VERSION, KIND, NS, 'gc'));
    const deployment = await eventually('the Deployment', () => admin.find<Obj>('apps/v1', 'Deployment', NS, 'regmirror-gc'));
    // The real ReplicaSet controller accepts the pod template and makes a pod (it stays Pending: no nodes).
    await eventually('a mirror pod', async () => (await kubectlJson(['get', 'pods', '-n', NS, '-l', 'app.kubernetes.io/instance=gc,app.kubernetes.io/component=mirror'])).items.length === 1);
    assert.equal(await apply('48h').then((r) => r.code), 0);
    await eventually('a second ReplicaSet for the new config', async () =>
      (await kubectlJson(['get', 'replicasets', '-n', NS])).items.filter(ownedBy(deployment.metadata!.uid!)).length === 2);
    // With no nodes the DaemonSet controller reports 0 of 0 scheduled: nothing is pending on nodes.
    await eventually('nodes 0/0 from the real DaemonSet status', async () => {
      const status = (await admin.find<Obj>(API_VERSION, KIND, NS, 'gc'))?.status;
      return status?.nodes?.desired === 0 && status.observedGeneration === 2;
    });

    const deleted = await env.kubectl(['delete', 'rmir', 'gc', '-n', NS, '--wait=true', '--timeout=60s']);
    assert.equal(deleted.code, 0, deleted.stderr);
    for (const [apiVersion, kind, name] of [
      ['v1', 'ConfigMap', 'regmirror-gc'], ['v1', 'Secret', 'regmirror-gc'], ['v1', 'PersistentVolumeClaim', 'regmirror-gc'],
      ['v1', 'Service', 'regmirror-gc'], ['apps/v1', 'Deployment', 'regmirror-gc'], ['apps/v1', 'DaemonSet', 'regmirror-gc-node'],
    ] as const) {
      await eventually(`${kind} collected`, async () => {
        const object = await admin.find<Obj>(apiVersion, kind, NS, name);
        // A claim protected by kubernetes.io/pvc-protection is gone once it has a deletionTimestamp and no user.
        return object === undefined || (kind === 'PersistentVolumeClaim' && !!object.metadata?.deletionTimestamp);
      }, 60_000);
    }
    assert.ok(cr.metadata?.uid);
    assert.ok(!/forbidden: User .* cannot /.test(operator.logs()), 'a namespace-scoped binding is all it needs');
  });

  it('a foreground deletion, whose garbage collector takes the node agent DaemonSet first, still takes the configuration off the nodes, with a cleanup DaemonSet', async () => {
    const status = await mirrorOnOwnNode(NS, 'fg', 'fg');
    const deleted = await env.kubectl(['delete', 'rmir', 'fg', '-n', NS, '--cascade=foreground', '--wait=false']);
    assert.equal(deleted.code, 0, deleted.stderr);
    await eventually('the node agent DaemonSet taken by the garbage collector', async () => (await admin.find<Obj>('apps/v1', 'DaemonSet', NS, 'regmirror-fg-node')) === undefined, 60_000);
    const cleanup = await eventually('the cleanup DaemonSet', () => admin.find<Obj>('apps/v1', 'DaemonSet', NS, 'regmirror-fg-node-cleanup'));
    assert.equal(cleanup.metadata?.ownerReferences, undefined);
    const args: string[] = cleanup.spec.template.spec.containers[0].args;
    assert.equal(args[args.indexOf('--mode') + 1], 'remove');
    assert.equal(args[args.indexOf('--mirror') + 1], status.endpoint, 'the address the nodes were given');
    assert.ok(await admin.find<Obj>(API_VERSION, KIND, NS, 'fg'), 'held until the nodes are clean');
    // The real DaemonSet controller rolls it out: an agent pod for the node, which the test makes ready.
    const pod = await eventually('a remove-mode agent pod', async () =>
      (await kubectlJson(['get', 'pods', '-n', NS, '-l', 'app.kubernetes.io/instance=fg,app.kubernetes.io/component=node-cleanup'])).items[0], 30_000);
    await playKubeletPodReady(pod);
    await eventually('the RegistryMirror gone', async () => (await admin.find<Obj>(API_VERSION, KIND, NS, 'fg')) === undefined, 60_000);
    assert.equal(await admin.find<Obj>('apps/v1', 'DaemonSet', NS, 'regmirror-fg-node-cleanup'), undefined, 'the cleanup DaemonSet deleted');
    const events = (await admin.list<Obj & { reason?: string; involvedObject?: { name: string } }>('v1', 'Event', NS)).items;
    assert.ok(events.some((e) => e.involvedObject?.name === 'fg' && e.reason === 'NodesCleaned'), 'an Event says the nodes were cleaned');
  });

  // The namespace controller deletes the operator's RoleBinding in NS_DOOMED with everything else,
  // likely before the finalizer is done: the cluster-wide rules over RegistryMirrors carry it.
  it('deleting a RegistryMirror\'s namespace for real: the node cleanup runs in the operator\'s namespace, then the RegistryMirror and the namespace go', async () => {
    const status = await mirrorOnOwnNode(NS_DOOMED, 'leaving', 'ns');

    const deleted = await env.kubectl(['delete', 'namespace', NS_DOOMED, '--wait=false']);
    assert.equal(deleted.code, 0, deleted.stderr);
    const name = relocatedName(NS_DOOMED, 'leaving');
    const cleanup = await eventually('the cleanup DaemonSet in the operator\'s namespace', () => admin.find<Obj>('apps/v1', 'DaemonSet', OPERATOR_NAMESPACE, name));
    const args: string[] = cleanup.spec.template.spec.containers[0].args;
    assert.equal(args[args.indexOf('--mode') + 1], 'remove');
    assert.equal(args[args.indexOf('--mirror') + 1], status.endpoint, 'the address the nodes were given');
    assert.ok(await admin.find<Obj>(API_VERSION, KIND, NS_DOOMED, 'leaving'), 'held until the nodes are clean');
    // The real DaemonSet controller rolls it out: an agent pod for the node, which the test makes ready.
    const pod = await eventually('a remove-mode agent pod in the operator\'s namespace', async () =>
      (await kubectlJson(['get', 'pods', '-n', OPERATOR_NAMESPACE, '-l', `${MIRROR_NAMESPACE_LABEL}=${NS_DOOMED},${MIRROR_NAME_LABEL}=leaving`])).items[0], 30_000);
    await playKubeletPodReady(pod);
    await eventually('the RegistryMirror gone', async () => (await admin.find<Obj>(API_VERSION, KIND, NS_DOOMED, 'leaving')) === undefined, 60_000);
    await eventually('the cleanup DaemonSet deleted', async () => (await admin.find<Obj>('apps/v1', 'DaemonSet', OPERATOR_NAMESPACE, name)) === undefined);
    await eventually('the namespace gone', async () => (await env.kubectl(['get', 'namespace', NS_DOOMED])).code !== 0, 120_000);
    // With exactly the chart's namespaced RBAC: once the RoleBinding in NS_DOOMED is gone, Events,
    // watches and any reconcile still running there are refused (and logged); the finalizer is not.
    assert.ok(!operator.logs().includes('nodes not cleaned'), 'no warning that the nodes were not cleaned');
  });

  it('an operator started again while a namespace it watches is gone (its RoleBinding with it) still syncs and reconciles the others', async () => {
    assert.equal(await operator.stop(), 0);
    operator = await startOperator(kubeconfig, 'operator-gc-2', logDir, operatorArgs);
    const applied = await env.kubectl(['apply', '-f', '-'], {
      input: JSON.stringify({ apiVersion: API_VERSION, kind: KIND, metadata: { name: 'after', namespace: NS }, spec: { upstreams: [{ registry: 'docker.io' }], nodeConfig: { enabled: false } } }),
    });
    assert.equal(applied.code, 0, applied.stderr);
    await eventually('the new RegistryMirror reconciled', () => admin.find<Obj>('v1', 'ConfigMap', NS, 'regmirror-after'), 60_000);
    assert.match(operator.logs(), /may not list this kind here; going on without it/, 'the refused namespace is named in the log');
  });
});
