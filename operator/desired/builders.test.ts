import { createHash } from 'node:crypto';
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parse } from 'yaml';
import { ConfigMap, PersistentVolumeClaim, Secret, Service } from 'kubernetes-models/v1';
import { DaemonSet, Deployment } from 'kubernetes-models/apps/v1';
import { Value } from '@sinclair/typebox/value';
import { MirrorConfigFileSchema, resolveConfig } from '../../mirror/config.ts';
import { parseAgentConfig } from '../../node-agent/config.ts';
import { desiredConfigMap, CONFIG_KEY } from './config-map.ts';
import { desiredSecret } from './secret.ts';
import { desiredPersistentVolumeClaim } from './persistent-volume-claim.ts';
import { desiredDeployment } from './deployment.ts';
import { desiredService } from './service.ts';
import { desiredCleanupDaemonSet, desiredDaemonSet, desiredRelocatedCleanupDaemonSet, MIRROR_UID_ANNOTATION, relocatedCleanupName } from './daemon-set.ts';
import { CHECKSUM_ANNOTATION, PATHS, keyedChecksum, referencedNames, upstreamCaRef } from './inputs.ts';
import { inputsFixture, mirrorFixture } from '../test-fixtures.ts';

const credentialed = {
  upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' }, tagTTL: '1m' }, { registry: 'ghcr.io' }],
  auth: { htpasswdSecretRef: { name: 'mirror-users' }, allowAnonymousWithCredentials: false },
};
const credentials = new Map([['docker.io', { username: 'alice', password: 's3cret-pass' }]]);
const nodeCredentials = { username: 'regmirror-node', password: 'node-pass-123', htpasswdLine: 'regmirror-node:$2b$10$abcdefghijklmnopqrstuv' };

/** Validates against the Kubernetes OpenAPI schema (kubernetes-models) and returns the typed object. */
function valid<M extends { validate(): void }>(Model: new (data: never) => M, data: object): M {
  const model = new Model(data as never);
  model.validate();
  return model;
}

function assertOwned(object: { metadata?: { ownerReferences?: unknown[]; namespace?: string } }) {
  assert.equal(object.metadata?.namespace, 'registry-cache');
  assert.deepEqual(object.metadata?.ownerReferences, [{
    apiVersion: 'regmirror.dev/v1alpha1', kind: 'RegistryMirror', name: 'hub',
    uid: '6c1f3a52-0d4e-4a8e-9a55-1b2c3d4e5f60', controller: true, blockOwnerDeletion: true,
  }]);
}

test('the ConfigMap holds a mirror config file that the mirror itself accepts', () => {
  const inputs = inputsFixture({ upstreamCredentials: credentials, htpasswd: 'bob:$2y$05$x\n', nodeCredentials }, {
    ...credentialed, storage: { size: '50Gi', maxSize: '45Gi', ttl: '168h', accessMode: 'ReadWriteOnce' }, prefetch: ['docker.io/library/nginx:1.27'],
  });
  const configMap = valid(ConfigMap, desiredConfigMap(inputs));
  assertOwned(configMap);
  const text = configMap.data![CONFIG_KEY]!;
  const config = parse(text);
  assert.equal(config.listen, ':5000');
  assert.deepEqual(config.storage, { path: PATHS.storage, maxSize: '45Gi', ttl: '168h' });
  assert.deepEqual(config.upstreams[0], {
    registry: 'docker.io', url: 'https://registry-1.docker.io', tagTTL: '1m',
    credentials: { usernameFile: `${PATHS.secretsDir}/upstream-0-username`, passwordFile: `${PATHS.secretsDir}/upstream-0-password` },
  });
  assert.deepEqual(config.upstreams[1], { registry: 'ghcr.io', url: 'https://ghcr.io' });
  assert.equal(config.default, 'docker.io');
  assert.deepEqual(config.auth, { htpasswd: `${PATHS.secretsDir}/htpasswd` });
  assert.deepEqual(config.prefetch, ['docker.io/library/nginx:1.27']);
  assert.ok(!text.includes('s3cret-pass') && !text.includes('node-pass-123'), 'no password in the ConfigMap');
  assert.ok(!text.includes('alice'), 'no upstream username in the ConfigMap either');
  // The mirror's own schema takes the file (its password files exist only in the pod).
  assert.deepEqual([...Value.Errors(MirrorConfigFileSchema, config)], []);
  const plain = parse(desiredConfigMap(inputsFixture()).data[CONFIG_KEY]);
  assert.equal(resolveConfig(plain, 'configmap').upstreams.length, 2);
});

test('without storage.maxSize the mirror still evicts before the volume fills: at 85% of its size', () => {
  const config = (storage: { size: string; maxSize?: string }) =>
    parse(desiredConfigMap(inputsFixture({}, { ...credentialed, storage: { ...storage, accessMode: 'ReadWriteOnce' } })).data[CONFIG_KEY]);
  assert.equal(config({ size: '50Gi' }).storage.maxSize, '43520Mi');
  assert.equal(resolveConfig(config({ size: '50Gi' }), 'configmap').storage.maxSizeBytes, 43520 * 2 ** 20);
  assert.equal(config({ size: '10G' }).storage.maxSize, '8106Mi');
  assert.equal(config({ size: '50Gi', maxSize: '49Gi' }).storage.maxSize, '49Gi', 'a maxSize given is kept');
});

test('the Secret normalises upstream credentials and adds the nodes\' htpasswd entry', () => {
  const inputs = inputsFixture({ upstreamCredentials: credentials, htpasswd: 'bob:$2y$05$x\n\n', nodeCredentials }, credentialed);
  const secret = valid(Secret, desiredSecret(inputs));
  assertOwned(secret);
  const data = Object.fromEntries(Object.entries(secret.data!).map(([k, v]) => [k, Buffer.from(v, 'base64').toString()]));
  assert.deepEqual(data, {
    'upstream-0-username': 'alice',
    'upstream-0-password': 's3cret-pass',
    'node-username': 'regmirror-node',
    'node-password': 'node-pass-123',
    htpasswd: 'bob:$2y$05$x\nregmirror-node:$2b$10$abcdefghijklmnopqrstuv\n',
    'checksum-key': inputs.checksumKey,
  });
  assert.equal(secret.type, 'Opaque');
});

test('without credentials or auth the Secret holds only the checksum key', () => {
  const secret = valid(Secret, desiredSecret(inputsFixture()));
  assert.deepEqual(secret.data, { 'checksum-key': Buffer.from(inputsFixture().checksumKey).toString('base64') });
});

test('the PersistentVolumeClaim asks for the spec\'s size, class and access mode', () => {
  const pvc = valid(PersistentVolumeClaim, desiredPersistentVolumeClaim(inputsFixture({}, {
    storage: { size: '50Gi', storageClassName: 'standard', accessMode: 'ReadWriteOnce' },
  })));
  assertOwned(pvc);
  assert.equal(pvc.metadata?.name, 'regmirror-hub');
  assert.deepEqual(pvc.spec?.accessModes, ['ReadWriteOnce']);
  assert.equal(pvc.spec?.resources?.requests?.storage, '50Gi');
  assert.equal(pvc.spec?.storageClassName, 'standard');
  const defaulted = desiredPersistentVolumeClaim(inputsFixture());
  assert.equal(defaulted.spec.resources && (defaulted.spec.resources as { requests: { storage: string } }).requests.storage, '10Gi');
  assert.ok(!('storageClassName' in defaulted.spec), 'no class: the cluster default applies');
});

test('new node credentials roll the node agents: their pod template carries a hash of them, never the password', () => {
  const template = (credentials?: typeof nodeCredentials) =>
    valid(DaemonSet, desiredDaemonSet(inputsFixture({ nodeCredentials: credentials, htpasswd: '' }, credentialed))).spec!.template;
  const before = template(nodeCredentials).metadata!.annotations!['regmirror.dev/credentials-checksum'];
  const after = template({ ...nodeCredentials, password: 'regenerated-pass' }).metadata!.annotations!['regmirror.dev/credentials-checksum'];
  assert.match(before!, /^[0-9a-f]{64}$/);
  assert.notEqual(after, before);
  assert.ok(!JSON.stringify(template(nodeCredentials)).includes('node-pass-123'), 'the password itself is only referenced, from the Secret');
  assert.equal(template(undefined).metadata!.annotations!['regmirror.dev/credentials-checksum'], undefined, 'no auth, no credentials');
});

test('the cleanup DaemonSet runs the node agent in remove mode with a selector of its own and no owner', () => {
  const cleanup = valid(DaemonSet, desiredCleanupDaemonSet(inputsFixture({ nodeAgentMode: 'apply' })));
  const agent = desiredDaemonSet(inputsFixture({ nodeAgentMode: 'remove' }));
  assert.equal(cleanup.metadata?.name, 'regmirror-hub-node-cleanup');
  assert.equal(cleanup.metadata?.ownerReferences, undefined);
  assert.deepEqual(cleanup.spec?.selector.matchLabels, { 'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/instance': 'hub', 'app.kubernetes.io/component': 'node-cleanup' });
  assert.equal(cleanup.spec?.template.metadata?.labels?.['app.kubernetes.io/component'], 'node-cleanup');
  assert.deepEqual(cleanup.spec?.template.spec, agent.spec.template.spec, 'the same agent, pods and mounts as the remove-mode DaemonSet');
  const args = cleanup.spec!.template.spec!.containers[0]!.args!;
  assert.equal(args[args.indexOf('--mode') + 1], 'remove');
  // the same owner as the agent that applied: removal takes what that agent wrote under any mirror URL
  const relocatedArgs = desiredRelocatedCleanupDaemonSet(inputsFixture(), 'regmirror-system').spec.template.spec.containers[0]!.args;
  for (const a of [args, relocatedArgs]) assert.equal(a[a.indexOf('--owner') + 1], 'registry-cache/hub');
  // found by name alone, it says which RegistryMirror it is for: a later one of the same name is another
  const relocated = desiredRelocatedCleanupDaemonSet(inputsFixture(), 'regmirror-system');
  for (const daemonSet of [cleanup, relocated]) assert.equal(daemonSet.metadata?.annotations?.[MIRROR_UID_ANNOTATION], inputsFixture().mirror.metadata.uid);
});

test('a cleanup DaemonSet in the operator\'s namespace (the mirror\'s being deleted) has a name per namespace/name within 63 characters, labels saying whose it is, and no owner', () => {
  const inputs = (namespace: string, name: string) => {
    const base = inputsFixture();
    return { ...base, mirror: { ...mirrorFixture({}, name), metadata: { ...base.mirror.metadata, namespace, name } } };
  };
  const cleanup = valid(DaemonSet, desiredRelocatedCleanupDaemonSet(inputs('registry-cache', 'hub'), 'regmirror-system'));
  assert.equal(cleanup.metadata?.namespace, 'regmirror-system');
  assert.equal(cleanup.metadata?.ownerReferences, undefined, 'an owner reference cannot point into another namespace');
  assert.match(cleanup.metadata!.name!, /^regmirror-node-cleanup-[0-9a-f]{16}$/);
  const whose = { 'regmirror.dev/mirror-namespace': 'registry-cache', 'regmirror.dev/mirror-name': 'hub' };
  assert.deepEqual(cleanup.spec?.selector.matchLabels, { 'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/component': 'node-cleanup', ...whose });
  const selected: Record<string, string> = cleanup.spec!.selector.matchLabels!;
  for (const labels of [cleanup.metadata!.labels!, cleanup.spec!.template.metadata!.labels!]) {
    for (const [key, value] of Object.entries(selected)) assert.equal(labels[key], value, key);
  }
  // Pods of a same-named mirror's own cleanup DaemonSet in this namespace are not selected, nor the other way round.
  const own = desiredCleanupDaemonSet(inputs('regmirror-system', 'hub'));
  const selects = (selector: Record<string, string>, labels: Record<string, string>) => Object.entries(selector).every(([k, v]) => labels[k] === v);
  assert.ok(!selects(own.spec.selector.matchLabels, cleanup.spec!.template.metadata!.labels!));
  assert.ok(!selects(cleanup.spec!.selector.matchLabels!, own.spec.template.metadata.labels));

  // The longest names there are: a 63-character namespace, a 40-character RegistryMirror.
  const longest = valid(DaemonSet, desiredRelocatedCleanupDaemonSet(inputs('n'.repeat(63), 'm'.repeat(40)), 'regmirror-system'));
  assert.ok(longest.metadata!.name!.length <= 63);
  for (const value of Object.values(longest.metadata!.labels!) as string[]) assert.ok(value.length <= 63 && /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/i.test(value), value);
  const names = [['a', 'b-c'], ['a-b', 'c'], ['b-c', 'a'], ['team-a', 'hub'], ['team-b', 'hub']].map(([ns, name]) => relocatedCleanupName(inputs(ns!, name!).mirror));
  assert.equal(new Set(names).size, names.length, 'one name per namespace/name');
  assert.equal(relocatedCleanupName(inputs('team-a', 'hub').mirror), relocatedCleanupName(inputs('team-a', 'hub').mirror), 'found again by name');
});

test('a cleanup DaemonSet in the operator\'s namespace references no Secret of the mirror\'s: no node credentials, no CA volume, no --mirror-ca; the agent, runtimes and host mounts are the same', () => {
  const secured = inputsFixture({ nodeCredentials, htpasswd: '', tlsCaKey: 'ca.crt', cleanupRuntimes: ['docker'] }, { ...credentialed, tls: { secretName: 'mirror-tls' } });
  const own = valid(DaemonSet, desiredCleanupDaemonSet(secured));
  const relocated = valid(DaemonSet, desiredRelocatedCleanupDaemonSet(secured, 'regmirror-system'));
  assert.ok(JSON.stringify(own).includes('secretKeyRef') && JSON.stringify(own).includes('mirror-tls'), 'the fixture does reference them in the mirror\'s namespace');
  const pod = relocated.spec!.template.spec!;
  const container = pod.containers[0]!;
  assert.ok(!JSON.stringify(relocated).includes('secretKeyRef'), 'no env from a Secret');
  assert.deepEqual(pod.volumes!.filter((v) => v.secret || v.projected), [], 'no Secret volume');
  assert.equal(container.volumeMounts!.find((m) => m.name === 'mirror-ca'), undefined);
  assert.equal(relocated.spec!.template.metadata!.annotations!['regmirror.dev/credentials-checksum'], undefined);
  const args = container.args!;
  assert.ok(!args.includes('--mirror-ca'));
  const ownPod = own.spec!.template.spec!;
  const ownArgs = ownPod.containers[0]!.args!;
  assert.deepEqual(args, ownArgs.filter((a, i) => a !== '--mirror-ca' && ownArgs[i - 1] !== '--mirror-ca'), 'the same flags otherwise');
  assert.deepEqual(pod.volumes, ownPod.volumes!.filter((v) => v.name !== 'mirror-ca'), 'the same host mounts');
  assert.equal(pod.hostPID, ownPod.hostPID);
  assert.equal(container.image, ownPod.containers[0]!.image);
  const config = parseAgentConfig(args.slice(1), {});
  assert.equal(config.mode, 'remove');
  assert.equal(config.mirror, 'https://10.96.0.42:5000', 'an https mirror is removed by its address, without its CA');
  assert.deepEqual([...config.runtimes].sort(), ['containerd', 'docker'], 'a runtime still being taken off (cleanupRuntimes) too');
});

test('a claim never asks for less than it already does: a smaller storage.size keeps its size, a larger one grows it', () => {
  const size = (specSize: string, claimSize?: string) =>
    (desiredPersistentVolumeClaim(inputsFixture({ claimSize }, { storage: { size: specSize, accessMode: 'ReadWriteOnce' } })).spec.resources as { requests: { storage: string } }).requests.storage;
  assert.equal(size('5Gi', '8Gi'), '8Gi', 'a PersistentVolumeClaim cannot shrink');
  assert.equal(size('8Gi', '5Gi'), '8Gi');
  assert.equal(size('5Gi', '5368709120'), '5Gi', 'the same size in other words is the spec\'s');
  assert.equal(size('5Gi'), '5Gi', 'no claim yet');
});

test('the Deployment runs the mirror non-root on a read-only root with probes, resources and mounts', () => {
  const deployment = valid(Deployment, desiredDeployment(inputsFixture({ upstreamCredentials: credentials, nodeCredentials, htpasswd: '' }, credentialed)));
  assertOwned(deployment);
  const pod = deployment.spec!.template.spec!;
  const container = pod.containers[0]!;
  assert.deepEqual([...container.command!, ...container.args!], ['regmirror', 'mirror', '--config', '/etc/regmirror/config.yaml', '--shutdown-delay', '5s', '--shutdown-grace', '25s']);
  // the pod's grace period outlasts the delay and the grace, so the mirror is never killed mid-drain
  assert.equal(pod.terminationGracePeriodSeconds, 35);
  assert.equal(container.image, 'ghcr.io/regmirror/regmirror:0.1.0');
  assert.equal(container.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(container.livenessProbe?.httpGet?.path, '/healthz');
  assert.equal(container.readinessProbe?.httpGet?.port, 'registry');
  assert.equal(container.ports?.[0]?.containerPort, 5000);
  assert.equal(pod.securityContext?.runAsNonRoot, true);
  assert.equal(container.securityContext?.readOnlyRootFilesystem, true);
  assert.equal(container.securityContext?.allowPrivilegeEscalation, false);
  assert.deepEqual(container.securityContext?.capabilities?.drop, ['ALL']);
  assert.equal(container.resources?.requests?.memory, '128Mi');
  assert.equal(container.resources?.limits?.memory, '1Gi');
  assert.deepEqual(container.volumeMounts?.map((m) => m.mountPath).sort(), ['/etc/regmirror', '/run/secrets/regmirror', '/tmp', '/var/lib/regmirror']);
  assert.equal(deployment.spec?.strategy?.type, 'Recreate');
  assert.equal(pod.automountServiceAccountToken, false);
  assert.deepEqual(deployment.spec?.selector.matchLabels, {
    'app.kubernetes.io/name': 'regmirror', 'app.kubernetes.io/instance': 'hub', 'app.kubernetes.io/component': 'mirror',
  });
  for (const [k, v] of Object.entries(deployment.spec!.selector.matchLabels!)) assert.equal(deployment.spec!.template.metadata?.labels?.[k], v);
});

test('a memory request above the default limit raises the limit with it; a limit the user gives stays as given', () => {
  const memory = (resources: object) => desiredDeployment(inputsFixture({}, { resources } as never)).spec.template.spec.containers[0]!.resources;
  assert.deepEqual(memory({ requests: { memory: '2Gi' } }), { requests: { cpu: '100m', memory: '2Gi' }, limits: { memory: '2Gi' } });
  assert.deepEqual(memory({ requests: { memory: '512Mi' } }).limits, { memory: '1Gi' });
  assert.deepEqual(memory({ requests: { memory: '2Gi' }, limits: { memory: '4Gi', cpu: '2' } }).limits, { memory: '4Gi', cpu: '2' });
});

test('the Deployment\'s checksum changes with the config, the credentials and the certificate, and only then', () => {
  const checksum = (inputs: ReturnType<typeof inputsFixture>) =>
    desiredDeployment(inputs).spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
  const base = checksum(inputsFixture({ upstreamCredentials: credentials }, credentialed));
  assert.equal(checksum(inputsFixture({ upstreamCredentials: credentials }, credentialed)), base, 'stable for the same inputs');
  assert.notEqual(checksum(inputsFixture({ upstreamCredentials: new Map([['docker.io', { username: 'alice', password: 'rotated' }]]) }, credentialed)), base);
  assert.notEqual(checksum(inputsFixture({ upstreamCredentials: credentials }, { ...credentialed, storage: { size: '10Gi', ttl: '1h', accessMode: 'ReadWriteOnce' } })), base);
  assert.notEqual(checksum(inputsFixture({ upstreamCredentials: credentials, tlsDigest: 'abc' }, credentialed)), base);
});

test('the pod templates\' checksums are keyed: not the plain SHA-256 of their inputs, so a password cannot be guessed from them without the key', () => {
  // The reported case: upstream credentials, allowAnonymousWithCredentials, no htpasswd, no TLS:
  // everything the checksum covers is known to a reader of the Deployment except the password.
  const anonymous = { upstreams: credentialed.upstreams, auth: { allowAnonymousWithCredentials: true } };
  const withPassword = (password: string, checksumKey?: string) => inputsFixture({
    upstreamCredentials: new Map([['docker.io', { username: 'alice', password }]]), ...(checksumKey ? { checksumKey } : {}),
  }, anonymous);
  const inputs = withPassword('Summer2024!');
  const annotation = desiredDeployment(inputs).spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
  assert.match(annotation, /^[0-9a-f]{64}$/);
  // An offline dictionary attack over the unkeyed formula finds nothing, whether or not the
  // attacker guesses that the Secret's data holds the key (which they cannot read).
  const plain = (candidate: ReturnType<typeof inputsFixture>, withoutKey: boolean) => {
    const { 'checksum-key': _key, ...rest } = desiredSecret(candidate).data;
    return createHash('sha256')
      .update(JSON.stringify(desiredConfigMap(candidate).data))
      .update(JSON.stringify(withoutKey ? rest : desiredSecret(candidate).data))
      .update('')
      .digest('hex');
  };
  for (const word of ['Winter2023!', 'Summer2024!', 'hunter2']) {
    for (const withoutKey of [true, false]) assert.notEqual(plain(withPassword(word), withoutKey), annotation, `guessed ${word}`);
  }
  // The same key and inputs give the same checksum (no roll for nothing); another key, another one.
  assert.equal(desiredDeployment(withPassword('Summer2024!')).spec.template.metadata.annotations[CHECKSUM_ANNOTATION], annotation);
  const otherMirror = desiredDeployment(withPassword('Summer2024!', 'another-mirrors-key-0123456789abcdefghijklmn'));
  assert.notEqual(otherMirror.spec.template.metadata.annotations[CHECKSUM_ANNOTATION], annotation);
  // The key itself is in the owned Secret only: not in the ConfigMap, the Deployment or the DaemonSet.
  for (const object of [desiredConfigMap(inputs), desiredDeployment(inputs), desiredDaemonSet(inputs)]) {
    assert.ok(!JSON.stringify(object).includes(inputs.checksumKey), `${object.kind} holds the key`);
  }
});

test('the node agents\' credentials checksum is keyed too: stable under one key, different under another, never the plain SHA-256', () => {
  const annotation = (checksumKey?: string) =>
    desiredDaemonSet(inputsFixture({ nodeCredentials, htpasswd: '', ...(checksumKey ? { checksumKey } : {}) }, credentialed))
      .spec.template.metadata.annotations['regmirror.dev/credentials-checksum']!;
  const plain = createHash('sha256').update(JSON.stringify([nodeCredentials.username, nodeCredentials.password])).digest('hex');
  assert.match(annotation(), /^[0-9a-f]{64}$/);
  assert.notEqual(annotation(), plain);
  assert.equal(annotation(), annotation(), 'stable for the same key and credentials');
  assert.notEqual(annotation('another-mirrors-key-0123456789abcdefghijklmn'), annotation());
});

test('with TLS the mirror serves HTTPS: certificate mounted, probes and endpoint use https', () => {
  const inputs = inputsFixture({}, { tls: { secretName: 'mirror-tls' } });
  const deployment = valid(Deployment, desiredDeployment(inputs));
  const container = deployment.spec!.template.spec!.containers[0]!;
  assert.equal(container.readinessProbe?.httpGet?.scheme, 'HTTPS');
  assert.ok(container.volumeMounts?.some((m) => m.mountPath === PATHS.tlsDir));
  const config = parse(desiredConfigMap(inputs).data[CONFIG_KEY]);
  assert.deepEqual(config.tls, { cert: `${PATHS.tlsDir}/tls.crt`, key: `${PATHS.tlsDir}/tls.key` });
  const daemonSet = desiredDaemonSet(inputs);
  assert.ok(daemonSet.spec.template.spec.containers[0]!.args.includes('https://10.96.0.42:5000'));
});

test('an upstream CA Secret is mounted read-only where the config\'s caFile points (the bundle itself in no ConfigMap), and a new CA rolls the mirror; without one the checksum is what it was', () => {
  const spec = {
    upstreams: [
      { registry: 'docker.io' },
      { registry: 'harbor.internal', url: 'https://harbor.internal', caSecretRef: { name: 'harbor-ca' } },
      { registry: 'nexus.internal:8443', caSecretRef: { name: 'trust-bundle', key: 'bundle.pem' } },
    ],
  };
  const cas = (harbor: string) => new Map([['harbor.internal', harbor], ['nexus.internal:8443', 'digest-of-nexus-bundle']]);
  const inputs = inputsFixture({ upstreamCas: cas('digest-of-harbor-ca') }, spec);
  const deployment = valid(Deployment, desiredDeployment(inputs));
  const pod = deployment.spec!.template.spec!;
  const volume = pod.volumes!.find((v) => v.name === 'upstream-ca')!;
  assert.deepEqual(JSON.parse(JSON.stringify(volume.projected)), {
    defaultMode: 0o444,
    sources: [
      { secret: { name: 'harbor-ca', items: [{ key: 'ca.crt', path: 'upstream-1-ca.crt' }] } },
      { secret: { name: 'trust-bundle', items: [{ key: 'bundle.pem', path: 'upstream-2-ca.crt' }] } },
    ],
  });
  assert.deepEqual(JSON.parse(JSON.stringify(pod.containers[0]!.volumeMounts!.find((m) => m.name === 'upstream-ca'))), { name: 'upstream-ca', mountPath: PATHS.upstreamCaDir, readOnly: true });

  const text = desiredConfigMap(inputs).data[CONFIG_KEY];
  const config = parse(text);
  assert.equal(config.upstreams[0].caFile, undefined);
  assert.equal(config.upstreams[1].caFile, `${PATHS.upstreamCaDir}/upstream-1-ca.crt`);
  assert.equal(config.upstreams[2].caFile, `${PATHS.upstreamCaDir}/upstream-2-ca.crt`);
  assert.ok(!text.includes('harbor-ca') && !text.includes('BEGIN CERTIFICATE'), 'a path, not the Secret or its content');
  assert.ok(Value.Check(MirrorConfigFileSchema, config), 'a key the mirror reads');

  const checksum = (i: ReturnType<typeof inputsFixture>) => desiredDeployment(i).spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
  assert.equal(checksum(inputsFixture({ upstreamCas: cas('digest-of-harbor-ca') }, spec)), checksum(inputs), 'stable for the same CAs');
  assert.notEqual(checksum(inputsFixture({ upstreamCas: cas('digest-of-rotated-ca') }, spec)), checksum(inputs), 'a rotated CA rolls the mirror');
  // a mirror without upstream CAs keeps its checksum across the operator upgrade that brought them: no roll for nothing
  const plain = inputsFixture({ upstreamCredentials: credentials }, credentialed);
  assert.equal(checksum(plain), keyedChecksum(plain.checksumKey, JSON.stringify(desiredConfigMap(plain).data), JSON.stringify(desiredSecret(plain).data), ''));
  assert.equal(desiredDeployment(plain).spec.template.spec.volumes.some((v) => v.name === 'upstream-ca'), false);
});

test('an upstream CA ConfigMap is mounted read-only, its key only, where the config\'s caFile points, beside a Secret\'s in the same volume; a new CA rolls the mirror', () => {
  const spec = {
    upstreams: [
      { registry: 'harbor.internal', caSecretRef: { name: 'harbor-ca' } },
      { registry: 'nexus.internal:8443', url: 'https://nexus.internal:8443', caConfigMapRef: { name: 'trust-bundle', key: 'bundle.pem' } },
      { registry: 'artifactory.internal', caConfigMapRef: { name: 'corp-root-ca' } },
      { registry: 'docker.io' },
    ],
  };
  const cas = (nexus: string) => new Map([['harbor.internal', 'digest-of-harbor-ca'], ['nexus.internal:8443', nexus], ['artifactory.internal', 'digest-of-corp-root']]);
  const inputs = inputsFixture({ upstreamCas: cas('digest-of-nexus-bundle') }, spec);
  const pod = valid(Deployment, desiredDeployment(inputs)).spec!.template.spec!;
  assert.deepEqual(JSON.parse(JSON.stringify(pod.volumes!.find((v) => v.name === 'upstream-ca')!.projected)), {
    defaultMode: 0o444,
    sources: [
      { secret: { name: 'harbor-ca', items: [{ key: 'ca.crt', path: 'upstream-0-ca.crt' }] } },
      { configMap: { name: 'trust-bundle', items: [{ key: 'bundle.pem', path: 'upstream-1-ca.crt' }] } },
      { configMap: { name: 'corp-root-ca', items: [{ key: 'ca.crt', path: 'upstream-2-ca.crt' }] } },
    ],
  });
  assert.deepEqual(JSON.parse(JSON.stringify(pod.containers[0]!.volumeMounts!.find((m) => m.name === 'upstream-ca'))), { name: 'upstream-ca', mountPath: PATHS.upstreamCaDir, readOnly: true });

  const text = desiredConfigMap(inputs).data[CONFIG_KEY];
  const config = parse(text);
  const dir = PATHS.upstreamCaDir;
  assert.deepEqual(config.upstreams.map((u: { caFile?: string }) => u.caFile), [`${dir}/upstream-0-ca.crt`, `${dir}/upstream-1-ca.crt`, `${dir}/upstream-2-ca.crt`, undefined]);
  assert.ok(!text.includes('trust-bundle') && !text.includes('BEGIN CERTIFICATE'), 'a path, not the ConfigMap or its content');
  assert.ok(Value.Check(MirrorConfigFileSchema, config), 'a key the mirror reads');

  const checksum = (i: ReturnType<typeof inputsFixture>) => desiredDeployment(i).spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
  assert.equal(checksum(inputsFixture({ upstreamCas: cas('digest-of-nexus-bundle') }, spec)), checksum(inputs), 'stable for the same CAs');
  assert.notEqual(checksum(inputsFixture({ upstreamCas: cas('digest-of-rotated-bundle') }, spec)), checksum(inputs), 'a rotated CA in the ConfigMap rolls the mirror');
});

test('an upstream\'s CA source, and the Secrets and ConfigMaps a spec names (whose changes the operator follows)', () => {
  assert.deepEqual(upstreamCaRef({ registry: 'a.internal', caConfigMapRef: { name: 'bundle' } }), { kind: 'ConfigMap', field: 'caConfigMapRef', name: 'bundle', key: 'ca.crt' });
  assert.deepEqual(upstreamCaRef({ registry: 'a.internal', caSecretRef: { name: 'ca', key: 'root.pem' } }), { kind: 'Secret', field: 'caSecretRef', name: 'ca', key: 'root.pem' });
  assert.equal(upstreamCaRef({ registry: 'docker.io' }), undefined);
  const { spec } = mirrorFixture({
    upstreams: [
      { registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } },
      { registry: 'harbor.internal', caSecretRef: { name: 'harbor-ca' } },
      { registry: 'nexus.internal', caConfigMapRef: { name: 'trust-bundle' } },
    ],
    auth: { htpasswdSecretRef: { name: 'mirror-users' }, allowAnonymousWithCredentials: false },
    tls: { secretName: 'mirror-tls' },
  });
  assert.deepEqual([...referencedNames(spec, 'Secret')].sort(), ['harbor-ca', 'hub-credentials', 'mirror-tls', 'mirror-users']);
  assert.deepEqual([...referencedNames(spec, 'ConfigMap')], ['trust-bundle']);
});

test('the Service exposes port 5000 on a ClusterIP for the mirror pods', () => {
  const service = valid(Service, desiredService(inputsFixture()));
  assertOwned(service);
  assert.equal(service.spec?.type, 'ClusterIP');
  assert.deepEqual(service.spec?.ports, [{ name: 'http', port: 5000, targetPort: 'registry', protocol: 'TCP' }]);
  assert.equal(service.spec?.selector?.['app.kubernetes.io/component'], 'mirror');
});

test('the DaemonSet runs the node agent with the contract\'s flags and the runtimes\' host directories', () => {
  const daemonSet = valid(DaemonSet, desiredDaemonSet(inputsFixture({}, {
    nodeConfig: { enabled: true, runtimes: ['containerd', 'docker', 'crio'], nodeSelector: { 'kubernetes.io/os': 'linux' }, tolerations: [{ operator: 'Exists' }] },
  })));
  assertOwned(daemonSet);
  const pod = daemonSet.spec!.template.spec!;
  const container = pod.containers[0]!;
  assert.deepEqual(container.command, ['regmirror']);
  assert.deepEqual(container.args!.slice(0, 15), [
    'node-agent', '--mirror', 'http://10.96.0.42:5000', '--registries', 'docker.io,ghcr.io', '--default-registry', 'docker.io',
    '--owner', 'registry-cache/hub', '--mode', 'apply', '--runtimes', 'containerd,docker,crio', '--ready-listen', '0.0.0.0:9101',
  ]);
  // The node agent's own flag parser takes these arguments, and they point it at the mounts.
  const config = parseAgentConfig(container.args!.slice(1), {});
  assert.equal(config.mirror, 'http://10.96.0.42:5000');
  assert.equal(config.owner, 'registry-cache/hub', 'the agent knows its files by the RegistryMirror, whatever its URL');
  assert.deepEqual(config.registries, ['docker.io', 'ghcr.io']);
  assert.equal(config.mode, 'apply');
  const mounted = (file: string) => container.volumeMounts!.some((m) => file === m.mountPath || file.startsWith(`${m.mountPath}/`));
  for (const file of [config.containerdHostsDir, config.containerdConfig, config.dockerDaemonJson, config.dockerPidFile, config.dockerSocket, config.crioDir, config.dockerCertsDir, config.crioCertsDir]) {
    assert.ok(mounted(file), `${file} is on a host mount`);
  }
  assert.deepEqual(pod.volumes?.filter((v) => v.hostPath).map((v) => v.hostPath!.path), [
    '/etc/containerd', '/etc/containerd/certs.d', '/etc/docker', '/var/run', '/etc/containers/registries.conf.d', '/etc/containers/certs.d',
  ]);
  assert.equal(config.mirrorCa, undefined, 'plain HTTP: no CA');
  assert.equal(container.volumeMounts!.find((m) => m.mountPath === '/host/etc/containerd')?.readOnly, true, 'config.toml is only read');
  assert.equal(container.volumeMounts!.find((m) => m.mountPath === '/host/etc/containerd/certs.d')?.readOnly, undefined);
  assert.equal(container.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(container.readinessProbe?.httpGet?.port, 'ready');
  assert.equal(pod.hostPID, true, 'docker needs SIGHUP from the host PID namespace');
  assert.deepEqual(pod.nodeSelector, { 'kubernetes.io/os': 'linux' });
  assert.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
  assert.equal(container.securityContext?.readOnlyRootFilesystem, true);
});

test('with TLS the node agent gets the CA from the TLS Secret (ca.crt, else the certificate), never the key, and passes it on', () => {
  for (const key of ['ca.crt', 'tls.crt'] as const) {
    const daemonSet = valid(DaemonSet, desiredDaemonSet(inputsFixture({ tlsCaKey: key }, { tls: { secretName: 'mirror-tls' } })));
    const pod = daemonSet.spec!.template.spec!;
    const container = pod.containers[0]!;
    const config = parseAgentConfig(container.args!.slice(1), {});
    assert.equal(config.mirror, 'https://10.96.0.42:5000');
    assert.equal(config.mirrorCa, '/run/secrets/regmirror-ca/ca.crt');
    const volume = pod.volumes!.find((v) => v.name === 'mirror-ca')!;
    assert.deepEqual(volume.secret, { secretName: 'mirror-tls', items: [{ key, path: 'ca.crt' }], defaultMode: 0o444, optional: true });
    assert.deepEqual(container.volumeMounts!.find((m) => m.name === 'mirror-ca'), { name: 'mirror-ca', mountPath: '/run/secrets/regmirror-ca', readOnly: true });
  }
});

test('switching the node agent to remove mode changes its pod template so every node rolls', () => {
  const apply = desiredDaemonSet(inputsFixture());
  const remove = desiredDaemonSet(inputsFixture({ nodeAgentMode: 'remove' }));
  const args = remove.spec.template.spec.containers[0]!.args;
  assert.equal(parseAgentConfig(args.slice(1), {}).mode, 'remove');
  assert.notDeepEqual(apply.spec.template, remove.spec.template);
  assert.equal(apply.spec.template.spec.hostPID, false, 'containerd alone needs no host PID namespace');
  // crio, like dockerd, re-reads its registry configuration on the SIGHUP the agent sends it
  const crio = desiredDaemonSet(inputsFixture({}, { nodeConfig: { enabled: true, runtimes: ['crio'] } })).spec.template.spec;
  assert.equal(crio.hostPID, true);
  assert.ok(crio.containers[0]!.securityContext.capabilities.add.includes('KILL'));
  assert.deepEqual(apply.spec.template.spec.volumes.map((v) => v.name), ['tmp', 'containerd-config', 'containerd-hosts']);
});

test('with auth on, the node agent gets the nodes\' pull credentials from the owned Secret', () => {
  const daemonSet = valid(DaemonSet, desiredDaemonSet(inputsFixture({ nodeCredentials }, credentialed)));
  const env = daemonSet.spec!.template.spec!.containers[0]!.env!;
  assert.deepEqual(env.find((e) => e.name === 'REGMIRROR_MIRROR_PASSWORD')?.valueFrom?.secretKeyRef, { name: 'regmirror-hub', key: 'node-password' });
  assert.ok(!JSON.stringify(daemonSet).includes('node-pass-123'), 'the password itself is not in the DaemonSet');
});
