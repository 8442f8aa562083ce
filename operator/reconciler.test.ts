// The reconcile logic against an in-memory stand-in for the API server. It models only what the
// reconciler relies on (apply creates or replaces, status apply, a ClusterIP for Services);
// operator-kube.test.ts runs the same flows against a real kube-apiserver.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createLogger } from '../common/logger.ts';
import { API_VERSION, KIND, type RegistryMirror } from './api/registry-mirror.ts';
import { desiredRelocatedCleanupDaemonSet, MIRROR_UID_ANNOTATION, MODE_ANNOTATION, modeOf } from './desired/daemon-set.ts';
import { CHECKSUM_ANNOTATION, FINALIZER, names } from './desired/inputs.ts';
import { EventRecorder } from './events.ts';
import { ApiError, LIST_PAGE_SIZE, type KubeApi, type KubeObject } from './kube/api.ts';
import { DROPPED_PLACEMENTS_ANNOTATION } from './placement.ts';
import { Reconciler } from './reconciler.ts';
import { inputsFixture, mirrorFixture } from './test-fixtures.ts';
import { makeCertificate } from '../test/harness/tls.ts';

type Obj = KubeObject & { spec?: any; status?: any; data?: Record<string, string>; type?: string; reason?: string };

class FakeApiServer {
  readonly objects = new Map<string, Obj>();
  /** The user's Secrets by "namespace/name", apart from the objects the reconciler makes. */
  readonly secrets = new Map<string, Obj>();
  /** The user's ConfigMaps by "namespace/name" (upstream CA bundles), apart from the one the reconciler makes. */
  readonly configMaps = new Map<string, Obj & { binaryData?: Record<string, string> }>();
  /** Reads of these "namespace/name" Secrets fail with this error, as KubeApi.find throws all but 404. */
  readonly secretErrors = new Map<string, Error>();
  /** The cluster's Nodes, for list; listing them fails with nodesError when it is set. */
  nodes: Obj[] = [];
  nodesError: Error | undefined;
  private uid = 0;
  private key = (apiVersion: string, kind: string, namespace: string, name: string) => `${apiVersion}/${kind}/${namespace}/${name}`;

  async find<T>(apiVersion: string, kind: string, namespace: string, name: string): Promise<T | undefined> {
    const userSecret = kind === 'Secret' ? `${namespace}/${name}` : undefined;
    if (userSecret && this.secretErrors.has(userSecret)) throw this.secretErrors.get(userSecret);
    const user = kind === 'Secret' ? this.secrets : kind === 'ConfigMap' ? this.configMaps : undefined;
    const object = this.objects.get(this.key(apiVersion, kind, namespace, name)) ?? user?.get(`${namespace}/${name}`);
    return structuredClone(object) as T | undefined;
  }

  async apply<T>(object: Obj & { apiVersion: string; kind: string; metadata: { name: string; namespace: string } }, subresource?: 'status'): Promise<T> {
    const key = this.key(object.apiVersion, object.kind, object.metadata.namespace, object.metadata.name);
    const existing = this.objects.get(key);
    if (subresource === 'status') {
      if (!existing) throw Object.assign(new Error('not found'), { status: 404 });
      existing.status = structuredClone(object.status);
      return structuredClone(existing) as T;
    }
    if (object.kind === KIND) {
      if (!existing) throw new Error('the fake applies RegistryMirror metadata only');
      existing.metadata!.finalizers = object.metadata.finalizers ?? [];
      // the field manager's one annotation: applied without it, it goes
      const { [DROPPED_PLACEMENTS_ANNOTATION]: _, ...others } = existing.metadata!.annotations ?? {};
      const dropped = object.metadata.annotations?.[DROPPED_PLACEMENTS_ANNOTATION];
      existing.metadata!.annotations = { ...others, ...(dropped ? { [DROPPED_PLACEMENTS_ANNOTATION]: dropped } : {}) };
      if (existing.metadata!.deletionTimestamp && existing.metadata!.finalizers.length === 0) this.objects.delete(key);
      return structuredClone(existing) as T;
    }
    const next: Obj = structuredClone(object);
    next.metadata!.uid = existing?.metadata?.uid ?? `uid-${++this.uid}`;
    if (object.kind === 'Service') next.spec.clusterIP = existing?.spec?.clusterIP ?? '10.96.0.42';
    const specChanged = JSON.stringify(existing?.spec) !== JSON.stringify(next.spec);
    next.metadata!.generation = (existing?.metadata?.generation ?? 0) + (specChanged || !existing ? 1 : 0);
    next.status = existing?.status ?? {};
    if (object.kind === 'PersistentVolumeClaim') next.status = existing?.status ?? { phase: 'Pending' };
    this.objects.set(key, next);
    return structuredClone(next) as T;
  }

  /** JSON patches of a RegistryMirror's finalizers (the reconciler patches nothing else this way). */
  async jsonPatch<T>(apiVersion: string, kind: string, namespace: string, name: string, operations: { op: string; path: string; value?: unknown }[]): Promise<T> {
    const key = this.key(apiVersion, kind, namespace, name);
    const existing = this.objects.get(key);
    if (!existing) throw new ApiError(404, 'NotFound', 'not found');
    const finalizers = [...(existing.metadata!.finalizers ?? [])];
    for (const operation of operations) {
      const index = Number(operation.path.replace('/metadata/finalizers/', ''));
      if (operation.op === 'test' && finalizers[index] !== operation.value) throw new ApiError(422, 'Invalid', 'test failed');
      if (operation.op === 'remove') finalizers.splice(index, 1);
    }
    existing.metadata!.finalizers = finalizers;
    if (existing.metadata!.deletionTimestamp && finalizers.length === 0) this.objects.delete(key);
    return structuredClone(existing) as T;
  }

  async delete(apiVersion: string, kind: string, namespace: string, name: string): Promise<void> {
    this.objects.delete(this.key(apiVersion, kind, namespace, name));
  }

  async create<T>(object: Obj & { metadata: { namespace: string; generateName?: string } }): Promise<T> {
    const name = object.metadata.name ?? `${object.metadata.generateName}${++this.uid}`;
    const stored = { ...structuredClone(object), metadata: { ...object.metadata, name } };
    this.objects.set(this.key(object.apiVersion!, object.kind!, object.metadata.namespace, name), stored);
    return structuredClone(stored) as T;
  }

  async mergePatch<T>(apiVersion: string, kind: string, namespace: string, name: string, patch: object): Promise<T> {
    const key = this.key(apiVersion, kind, namespace, name);
    Object.assign(this.objects.get(key)!, patch);
    return structuredClone(this.objects.get(key)) as T;
  }

  /** Nodes only, by a label selector of key=value pairs, in pages as the API server gives them; `pages` counts the pages asked for. */
  async *listPages<T>(apiVersion: string, kind: string, _namespace?: string, labelSelector?: string, pageSize = LIST_PAGE_SIZE): AsyncGenerator<T[]> {
    if (kind !== 'Node') throw new Error('the fake lists Nodes only');
    if (this.nodesError) throw this.nodesError;
    const wanted = (labelSelector ?? '').split(',').filter(Boolean).map((pair) => pair.split('='));
    const found = this.nodes.filter((n) => wanted.every(([k, v]) => n.metadata?.labels?.[k!] === v));
    for (let start = 0; start === 0 || start < found.length; start += pageSize) {
      this.pages++;
      yield structuredClone(found.slice(start, start + pageSize)) as T[];
    }
  }

  pages = 0;

  all(kind: string): Obj[] {
    return [...this.objects.values()].filter((o) => o.kind === kind);
  }
}

function setup(spec: Parameters<typeof mirrorFixture>[0] = {}, options: { timeoutMs?: number; now?: () => Date } = {}) {
  const server = new FakeApiServer();
  const cr = mirrorFixture(spec);
  server.objects.set(`${API_VERSION}/${KIND}/${cr.metadata.namespace}/${cr.metadata.name}`, cr as Obj);
  const { secrets, configMaps } = server;
  const api = server as unknown as KubeApi;
  const logger = createLogger('test', 'silent');
  const reconciler = new Reconciler({
    api,
    cache: {
      mirror: (ns, name) => server.objects.get(`${API_VERSION}/${KIND}/${ns}/${name}`) as RegistryMirror | undefined,
      mirrors: () => server.all(KIND) as unknown as RegistryMirror[],
      nodeAgentMode: (m) => {
        const daemonSet = server.objects.get(`apps/v1/DaemonSet/${m.metadata.namespace}/${names(m).daemonSet}`);
        return daemonSet ? modeOf(daemonSet) : undefined;
      },
    },
    events: new EventRecorder(api, logger, 'test'),
    logger,
    mirrorImage: 'registry.example/regmirror:test',
    nodeCleanupTimeoutMs: options.timeoutMs ?? 60_000,
    cleanupNamespace: 'regmirror-system',
    now: options.now,
  });
  const mirror = () => server.objects.get(`${API_VERSION}/${KIND}/registry-cache/hub`) as RegistryMirror | undefined;
  const ready = () => mirror()?.status?.conditions?.find((c) => c.type === 'Ready');
  return { server, secrets, configMaps, reconciler, mirror, ready };
}

test('a first reconcile creates every owned kind, adds the finalizer and reports the endpoint', async () => {
  const { server, reconciler, mirror, ready } = setup();
  assert.deepEqual(await reconciler.reconcile('registry-cache/hub'), {});
  assert.deepEqual(['ConfigMap', 'Secret', 'PersistentVolumeClaim', 'Service', 'Deployment', 'DaemonSet'].map((k) => server.all(k).length), [1, 1, 1, 1, 1, 1]);
  assert.deepEqual(mirror()!.metadata.finalizers, [FINALIZER]);
  assert.equal(mirror()!.status!.endpoint, 'http://10.96.0.42:5000');
  assert.equal(ready()!.reason, 'VolumePending');
  assert.deepEqual(server.all('Event').map((e) => e.reason), ['VolumePending']);
});

test('reconciling again with nothing changed writes nothing new', async () => {
  const { server, reconciler } = setup();
  await reconciler.reconcile('registry-cache/hub');
  const before = JSON.stringify([...server.objects.entries()]);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(JSON.stringify([...server.objects.entries()]), before);
});

test('a missing credentials Secret stops the rollout with SecretNotFound until it exists', async () => {
  const spec = { upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }], auth: { allowAnonymousWithCredentials: true } };
  const { server, secrets, reconciler, ready } = setup(spec);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'SecretNotFound');
  assert.equal(server.all('Deployment').length, 0);
  assert.equal(server.all('Event').find((e) => e.reason === 'SecretNotFound')?.type, 'Warning');
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  secrets.set('registry-cache/hub-credentials', { type: 'kubernetes.io/basic-auth', data: { username: b64('alice'), password: b64('pw') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'VolumePending');
  assert.equal(server.all('Deployment').length, 1);
});

test('a referenced Secret is read from the server when reconciling; one the operator may not read fails the reconcile, to be retried, instead of saying SecretNotFound', async () => {
  const spec = { upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }], auth: { allowAnonymousWithCredentials: true } };
  const { server, secrets, reconciler, ready } = setup(spec);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  secrets.set('registry-cache/hub-credentials', { type: 'kubernetes.io/basic-auth', data: { username: b64('alice'), password: b64('pw') } });
  server.secretErrors.set('registry-cache/hub-credentials', new ApiError(403, 'Forbidden', 'GET /api/v1/namespaces/registry-cache/secrets/hub-credentials: 403 forbidden'));
  await assert.rejects(reconciler.reconcile('registry-cache/hub'), /403 forbidden/);
  assert.equal(ready(), undefined, 'no condition claims the Secret is missing');
  assert.equal(server.all('Event').length, 0);
  server.secretErrors.clear();
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'VolumePending');
  const owned = server.all('Secret')[0]!;
  assert.equal(Buffer.from(owned.data!['upstream-0-password']!, 'base64').toString(), 'pw');
  // Rotated on the server: the next reconcile reads the new password, with no cache in between.
  secrets.get('registry-cache/hub-credentials')!.data!.password = b64('rotated');
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(Buffer.from(server.all('Secret')[0]!.data!['upstream-0-password']!, 'base64').toString(), 'rotated');
});

test('credentials of the wrong JSON type are InvalidCredentials: no Event, status or object carries the value, and what runs is kept', async () => {
  const spec = { upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }], auth: { allowAnonymousWithCredentials: true } };
  const { server, secrets, reconciler, ready } = setup(spec);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const docker = (password: unknown) => ({ type: 'kubernetes.io/dockerconfigjson', data: { '.dockerconfigjson': b64(JSON.stringify({ auths: { 'docker.io': { username: 'alice', password } } })) } });
  secrets.set('registry-cache/hub-credentials', docker('pw'));
  await reconciler.reconcile('registry-cache/hub');
  const deployment = JSON.stringify(server.all('Deployment'));
  secrets.set('registry-cache/hub-credentials', docker(55512345));
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'InvalidCredentials');
  assert.match(ready()!.message, /Secret hub-credentials: auths\["docker\.io"\]\.password in "\.dockerconfigjson" is a number, not a string/);
  assert.equal(JSON.stringify(server.all('Deployment')), deployment, 'nothing running is changed');
  assert.ok(!JSON.stringify([...server.objects.values()]).includes('55512345'), 'in no Event, status or object');
});

test('an error of the language\'s own from building objects (which may quote Secret data) reaches no Event or log with its message', async () => {
  const { server, reconciler } = setup();
  const api = server as unknown as { apply: (o: unknown) => Promise<unknown> };
  const apply = api.apply.bind(server);
  api.apply = async (object) => {
    if ((object as { kind?: string }).kind === 'ConfigMap') throw new TypeError('Received type number (55512345)');
    return apply(object);
  };
  await assert.rejects(reconciler.reconcile('registry-cache/hub'), (error: Error) => !error.message.includes('55512345') && /TypeError; its message is withheld/.test(error.message));
  const events = server.all('Event');
  assert.ok(events.some((e) => e.reason === 'ApplyFailed'));
  assert.ok(!JSON.stringify(events).includes('55512345'));
});

test('an htpasswd Secret with a line the mirror refuses (htpasswd -c writes $apr1$) is InvalidCredentials naming the Secret, key and line, and the mirror is not rolled onto it', async () => {
  const spec = { auth: { htpasswdSecretRef: { name: 'users' }, allowAnonymousWithCredentials: false } };
  const { server, secrets, reconciler, ready } = setup(spec);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  secrets.set('registry-cache/users', { data: { htpasswd: b64('bob:$2y$05$abcdefghijklmnopqrstuv\n') } });
  await reconciler.reconcile('registry-cache/hub');
  const running = JSON.stringify([server.all('Deployment'), server.all('Secret')]);
  secrets.set('registry-cache/users', { data: { htpasswd: b64('# users\nbob:$2y$05$abcdefghijklmnopqrstuv\nalice:$apr1$Secr3tSalt$Q0bI5Ljq8T0vXGhCjV4y01\n') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'InvalidCredentials');
  assert.match(ready()!.message, /^Secret users \(spec\.auth\), key "htpasswd": line 3 is not user:bcrypt-hash/);
  assert.equal(JSON.stringify([server.all('Deployment'), server.all('Secret')]), running, 'nothing running is changed');
  assert.ok(!JSON.stringify([...server.objects.values()]).includes('Secr3tSalt'), 'the line is quoted nowhere');
});

test('a prefetch image on no configured upstream (which the mirror refuses at start) is InvalidSpec, naming the entry, and nothing is rolled out until it is fixed', async () => {
  const spec = { upstreams: [{ registry: 'docker.io' }], prefetch: ['nginx:1.27', 'quay.io/prometheus/node-exporter:v1.8.0'] };
  const { server, reconciler, ready } = setup(spec);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'InvalidSpec');
  assert.match(ready()!.message, /spec\.prefetch\[1\] "quay\.io\/prometheus\/node-exporter:v1\.8\.0" is on quay\.io, which is not one of spec\.upstreams \(docker\.io\)/);
  assert.equal(server.all('ConfigMap').length, 0, 'no config the mirror would refuse');
  assert.equal(server.all('Deployment').length, 0);
  assert.equal(server.all('Event').find((e) => e.reason === 'InvalidSpec')?.type, 'Warning');
  // named on an upstream (the short name is on the default, docker.io): rolled out
  const cr = server.all(KIND)[0]!;
  cr.spec.upstreams.push({ registry: 'quay.io' });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(server.all('ConfigMap').length, 1);
  assert.notEqual(ready()!.reason, 'InvalidSpec');
});

test('with auth on, node credentials are made once and kept across reconciles', async () => {
  const spec = { auth: { htpasswdSecretRef: { name: 'users' }, allowAnonymousWithCredentials: false } };
  const { server, secrets, reconciler } = setup(spec);
  secrets.set('registry-cache/users', { data: { htpasswd: Buffer.from('bob:$2y$05$abc\n').toString('base64') } });
  await reconciler.reconcile('registry-cache/hub');
  const first = structuredClone(server.all('Secret')[0]!.data);
  const checksum = server.all('Deployment')[0]!.spec.template.metadata.annotations;
  await reconciler.reconcile('registry-cache/hub');
  assert.deepEqual(server.all('Secret')[0]!.data, first);
  assert.deepEqual(server.all('Deployment')[0]!.spec.template.metadata.annotations, checksum, 'no roll for nothing');
  const htpasswd = Buffer.from(first!.htpasswd!, 'base64').toString();
  assert.match(htpasswd, /^bob:\$2y\$05\$abc\nregmirror-node:\$2[aby]\$10\$/);
});

test('the checksum key is made once per RegistryMirror and kept in its owned Secret only: checksums stay put across reconciles, and differ between mirrors of the same spec', async () => {
  const spec = { upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }], auth: { allowAnonymousWithCredentials: true } };
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const run = async () => {
    const fixture = setup(spec);
    fixture.secrets.set('registry-cache/hub-credentials', { type: 'kubernetes.io/basic-auth', data: { username: b64('alice'), password: b64('Summer2024!') } });
    await fixture.reconciler.reconcile('registry-cache/hub');
    const key = () => {
      const stored = fixture.server.all('Secret')[0]!.data!['checksum-key'];
      assert.ok(stored, 'the owned Secret holds a checksum key');
      return Buffer.from(stored, 'base64').toString();
    };
    const checksum = () => fixture.server.all('Deployment')[0]!.spec.template.metadata.annotations[CHECKSUM_ANNOTATION] as string;
    return { ...fixture, key, checksum };
  };
  const one = await run();
  const [key, checksum] = [one.key(), one.checksum()];
  assert.match(key, /^[A-Za-z0-9_-]{43}$/, '32 random bytes');
  await one.reconciler.reconcile('registry-cache/hub');
  assert.equal(one.key(), key, 'kept across reconciles');
  assert.equal(one.checksum(), checksum, 'no roll for nothing');
  for (const kind of ['ConfigMap', 'Deployment', 'DaemonSet', 'Event', KIND]) {
    assert.ok(!JSON.stringify(one.server.all(kind)).includes(key), `the key is not in any ${kind}`);
  }
  // The same spec and password in a mirror of its own: another key, so another checksum.
  const two = await run();
  assert.notEqual(two.key(), key);
  assert.notEqual(two.checksum(), checksum);
});

test('deletion switches the node agent to remove mode and holds the finalizer until every node confirms', async () => {
  const { server, reconciler, mirror } = setup();
  await reconciler.reconcile('registry-cache/hub');
  mirror()!.metadata.deletionTimestamp = new Date().toISOString();
  const result = await reconciler.reconcile('registry-cache/hub');
  assert.ok(result.requeueAfterMs! > 0 && result.requeueAfterMs! <= 5_000);
  const daemonSet = server.all('DaemonSet')[0]!;
  assert.equal(daemonSet.metadata!.annotations![MODE_ANNOTATION], 'remove');
  assert.deepEqual(mirror()!.metadata.finalizers, [FINALIZER]);
  assert.equal(mirror()!.status!.conditions!.find((c) => c.type === 'Ready')!.reason, 'NodeCleanup');
  // The agents report ready in remove mode (what kubelet would do).
  daemonSet.status = { observedGeneration: daemonSet.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined, 'finalizer removed: the object goes');
  assert.ok(server.all('Event').some((e) => e.reason === 'NodesCleaned'));
});

test('a deletion removes the address the nodes were given, not the one a spec.tls waiting for its Secret asks for', async () => {
  const { server, reconciler, mirror } = setup();
  await reconciler.reconcile('registry-cache/hub');
  const mirrorArg = () => {
    const args: string[] = server.all('DaemonSet')[0]!.spec.template.spec.containers[0].args;
    return args[args.indexOf('--mirror') + 1];
  };
  assert.equal(mirrorArg(), 'http://10.96.0.42:5000');
  mirror()!.spec.tls = { secretName: 'missing-cert' };
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror()!.status!.conditions!.find((c) => c.type === 'Ready')!.reason, 'SecretNotFound');
  assert.equal(mirror()!.status!.endpoint, 'http://10.96.0.42:5000', 'what the Service serves');
  mirror()!.metadata.deletionTimestamp = new Date().toISOString();
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(server.all('DaemonSet')[0]!.metadata!.annotations![MODE_ANNOTATION], 'remove');
  assert.equal(mirrorArg(), 'http://10.96.0.42:5000');
});

test('deletion stops waiting for nodes after the cleanup timeout, with a Warning', async () => {
  let now = new Date();
  const { server, reconciler, mirror } = setup({}, { timeoutMs: 30_000, now: () => now });
  await reconciler.reconcile('registry-cache/hub');
  mirror()!.metadata.deletionTimestamp = now.toISOString();
  await reconciler.reconcile('registry-cache/hub');
  assert.ok(mirror());
  now = new Date(now.getTime() + 31_000);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined);
  assert.equal(server.all('Event').find((e) => e.reason === 'NodeCleanupTimedOut')?.type, 'Warning');
});

/** Two nodes configured, then the RegistryMirror deleted after its node agent DaemonSet (a foreground cascade, a namespace deletion). */
async function deletedAfterItsAgents(spec: Parameters<typeof mirrorFixture>[0] = {}, userSecrets: Record<string, Obj> = {}) {
  const fixture = setup(spec);
  const { server, reconciler, mirror } = fixture;
  for (const [name, secret] of Object.entries(userSecrets)) fixture.secrets.set(`registry-cache/${name}`, secret);
  await reconciler.reconcile('registry-cache/hub');
  const agent = server.all('DaemonSet')[0]!;
  agent.status = { observedGeneration: agent.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  await reconciler.reconcile('registry-cache/hub');
  assert.deepEqual(mirror()!.status!.nodes, { desired: 2, configured: 2 });
  mirror()!.metadata.deletionTimestamp = new Date().toISOString();
  server.objects.delete('apps/v1/DaemonSet/registry-cache/regmirror-hub-node');
  return fixture;
}

test('a node agent DaemonSet deleted before the nodes were clean (a foreground deletion) is replaced by a cleanup DaemonSet without an owner, deleted once every node confirms', async () => {
  const { server, reconciler, mirror } = await deletedAfterItsAgents();
  // The garbage collector takes the Service first too (the owner waits for its dependents).
  server.objects.delete('v1/Service/registry-cache/regmirror-hub');
  const result = await reconciler.reconcile('registry-cache/hub');
  assert.ok(result.requeueAfterMs! > 0);
  const cleanup = server.all('DaemonSet')[0]!;
  assert.equal(cleanup.metadata!.name, 'regmirror-hub-node-cleanup');
  assert.equal(cleanup.metadata!.ownerReferences, undefined, 'nothing for the garbage collector to follow');
  assert.equal(cleanup.metadata!.annotations![MODE_ANNOTATION], 'remove');
  const args: string[] = cleanup.spec.template.spec.containers[0].args;
  assert.equal(args[args.indexOf('--mirror') + 1], 'http://10.96.0.42:5000', 'the address the nodes were given, from the status');
  assert.deepEqual(mirror()!.metadata.finalizers, [FINALIZER]);
  cleanup.status = { observedGeneration: cleanup.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined);
  assert.equal(server.all('DaemonSet').length, 0, 'the cleanup DaemonSet is deleted');
  assert.ok(server.all('Event').some((e) => e.reason === 'NodesCleaned'));
});

test('spec.image chooses the mirror\'s image only: the node agent, root on every node it selects, runs the operator\'s image, applying, removing and cleaning up', async () => {
  const own = 'registry.example/regmirror:test';
  const chosen = 'attacker.example/anything:latest';
  const image = (object: Obj) => object.spec.template.spec.containers[0].image as string;
  const spec = {
    image: chosen,
    upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }],
    auth: { allowAnonymousWithCredentials: true },
  };
  const credentials = { type: 'kubernetes.io/basic-auth', data: { username: Buffer.from('alice').toString('base64'), password: Buffer.from('pw').toString('base64') } };
  const { server, secrets, reconciler, mirror } = setup(spec);
  secrets.set('registry-cache/hub-credentials', credentials);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(image(server.all('Deployment')[0]!), chosen, 'the mirror runs the image its spec names');
  assert.equal(image(server.all('DaemonSet')[0]!), own);
  // Deleted after its credentials Secret: the remove-mode agent is built without the spec's Secrets.
  secrets.delete('registry-cache/hub-credentials');
  mirror()!.metadata.deletionTimestamp = new Date().toISOString();
  await reconciler.reconcile('registry-cache/hub');
  const removing = server.all('DaemonSet')[0]!;
  assert.equal(removing.metadata!.annotations![MODE_ANNOTATION], 'remove');
  assert.equal(image(removing), own);

  const deleted = await deletedAfterItsAgents({ image: chosen });
  await deleted.reconciler.reconcile('registry-cache/hub');
  const cleanup = deleted.server.all('DaemonSet')[0]!;
  assert.equal(cleanup.metadata!.name, 'regmirror-hub-node-cleanup');
  assert.equal(image(cleanup), own);
});

/** The API server's answer to a create in a namespace being deleted (NamespaceLifecycle admission). */
const terminating = (name: string) => new ApiError(403, 'Forbidden',
  `daemonsets.apps "${name}" is forbidden: unable to create new content in namespace registry-cache because it is being terminated`);

/** Moves a deletion back past the wait a cleanup in the operator's namespace gives the agent pods of the namespace going. */
function settleRelocatedCleanup(mirror: RegistryMirror) {
  mirror.metadata.deletionTimestamp = new Date(Date.now() - 40_000).toISOString();
}

/** Refuses DaemonSet applies in `namespace` with `error`. */
function refuseDaemonSets(server: FakeApiServer, namespace: string, error: (name: string) => Error) {
  const apply = server.apply.bind(server);
  server.apply = async (object, subresource) => {
    if (object.kind === 'DaemonSet' && object.metadata.namespace === namespace) throw error(object.metadata.name);
    return apply(object, subresource);
  };
}

test('a RegistryMirror whose namespace is being deleted has its nodes cleaned by a cleanup DaemonSet in the operator\'s namespace, deleted once every node confirms', async () => {
  const b64 = (text: string) => Buffer.from(text).toString('base64');
  // auth and TLS: the agents had the nodes' credentials and the CA from this namespace's Secrets
  const { server, reconciler, mirror } = await deletedAfterItsAgents({
    auth: { htpasswdSecretRef: { name: 'mirror-users' }, allowAnonymousWithCredentials: false },
    tls: { secretName: 'hub-tls' },
  }, {
    'mirror-users': { data: { htpasswd: b64('bob:$2y$05$abc\n') } },
    'hub-tls': { type: 'kubernetes.io/tls', data: { 'tls.crt': b64('cert'), 'tls.key': b64('key'), 'ca.crt': b64('ca') } },
  });
  refuseDaemonSets(server, 'registry-cache', terminating);
  const result = await reconciler.reconcile('registry-cache/hub');
  assert.ok(result.requeueAfterMs! > 0 && result.requeueAfterMs! <= 5_000, 'polled: the operator watches no DaemonSet there');
  const [cleanup, ...others] = server.all('DaemonSet');
  assert.equal(others.length, 0);
  assert.equal(cleanup!.metadata!.namespace, 'regmirror-system');
  assert.match(cleanup!.metadata!.name!, /^regmirror-node-cleanup-[0-9a-f]{16}$/);
  assert.equal(cleanup!.metadata!.labels!['regmirror.dev/mirror-namespace'], 'registry-cache');
  assert.equal(cleanup!.metadata!.labels!['regmirror.dev/mirror-name'], 'hub');
  const args: string[] = cleanup!.spec.template.spec.containers[0].args;
  assert.equal(args[args.indexOf('--mode') + 1], 'remove');
  assert.equal(args[args.indexOf('--mirror') + 1], 'https://10.96.0.42:5000', 'the address the nodes were given');
  assert.ok(!JSON.stringify(cleanup).includes('secretKeyRef') && !JSON.stringify(cleanup).includes('secretName'), 'nothing from the mirror namespace\'s Secrets');
  assert.deepEqual(mirror()!.metadata.finalizers, [FINALIZER], 'held until the nodes are clean');
  // Found again on the next reconcile, not made twice.
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(server.all('DaemonSet').length, 1);
  assert.ok(mirror());
  const stored = server.all('DaemonSet')[0]!;
  stored.status = { observedGeneration: stored.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  await reconciler.reconcile('registry-cache/hub');
  assert.ok(mirror(), 'every node confirmed, but the agent pods of the namespace going may still be running their grace period');
  settleRelocatedCleanup(mirror()!);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined);
  assert.equal(server.all('DaemonSet').length, 0, 'the cleanup DaemonSet is deleted from the operator\'s namespace');
  assert.ok(server.all('Event').some((e) => e.reason === 'NodesCleaned'));
  assert.ok(!server.all('Event').some((e) => e.type === 'Warning'));
});

test('where even the operator\'s namespace refuses the cleanup DaemonSet, a Warning says the nodes were not cleaned, why and what to do, and the finalizer goes', async () => {
  const { server, reconciler, mirror } = await deletedAfterItsAgents();
  refuseDaemonSets(server, 'registry-cache', terminating);
  refuseDaemonSets(server, 'regmirror-system', (name) => new ApiError(403, 'Forbidden',
    `daemonsets.apps "${name}" is forbidden: User "system:serviceaccount:regmirror-system:regmirror-operator" cannot patch resource "daemonsets" in API group "apps" in the namespace "regmirror-system"`));
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined);
  const event = server.all('Event').find((e) => e.reason === 'NodeCleanupSkipped');
  assert.equal(event?.type, 'Warning');
  assert.match(String(event?.message), /^nodes not cleaned: .*namespace registry-cache refused a cleanup DaemonSet \(.*being terminated\), and so did the operator's namespace regmirror-system: .*cannot patch resource "daemonsets".*\. 2 node\(s\) may still point their runtimes at http:\/\/10\.96\.0\.42:5000 .*"Manual node cleanup" in the README/);
});

test('a cleanup DaemonSet refused in the mirror\'s namespace for another reason (an admission webhook) runs in the operator\'s namespace too', async () => {
  const { server, reconciler } = await deletedAfterItsAgents();
  refuseDaemonSets(server, 'registry-cache', (name) => new ApiError(403, 'Forbidden', `admission webhook "policy.example" denied the request: ${name}`));
  await reconciler.reconcile('registry-cache/hub');
  const [cleanup] = server.all('DaemonSet');
  assert.equal(cleanup?.metadata!.namespace, 'regmirror-system');
  assert.match(String(server.all('Event').find((e) => e.reason === 'NodeCleanup')?.message), /refused a cleanup DaemonSet \(.*policy\.example.*\); DaemonSet regmirror-node-cleanup-[0-9a-f]{16} in namespace regmirror-system/);
  assert.ok(!server.all('Event').some((e) => e.type === 'Warning'));
});

test('a namespaced install whose RoleBinding went with the namespace (every read and write there forbidden) still cleans the nodes from the operator\'s namespace, with the address from the status', async () => {
  const { server, reconciler, mirror } = await deletedAfterItsAgents({ upstreams: [{ registry: 'docker.io', credentialsSecretRef: { name: 'hub-credentials' } }] }, {
    'hub-credentials': { type: 'kubernetes.io/basic-auth', data: { username: Buffer.from('alice').toString('base64'), password: Buffer.from('pw').toString('base64') } },
  });
  const forbidden = (what: string) => new ApiError(403, 'Forbidden', `${what} is forbidden: User "system:serviceaccount:regmirror-system:regmirror-operator" cannot get resource in the namespace "registry-cache"`);
  const find = server.find.bind(server);
  server.find = async <T,>(apiVersion: string, kind: string, namespace: string, name: string): Promise<T | undefined> => {
    if (namespace === 'registry-cache' && kind !== KIND) throw forbidden(`${kind} ${name}`);
    return find<T>(apiVersion, kind, namespace, name);
  };
  refuseDaemonSets(server, 'registry-cache', (name) => forbidden(`daemonsets.apps "${name}"`));
  await reconciler.reconcile('registry-cache/hub');
  const [cleanup, ...others] = server.all('DaemonSet').filter((d) => d.metadata!.namespace === 'regmirror-system');
  assert.equal(others.length, 0);
  const args: string[] = cleanup!.spec.template.spec.containers[0].args;
  assert.equal(args[args.indexOf('--mirror') + 1], 'http://10.96.0.42:5000', 'the address the nodes were given, from the status');
  assert.deepEqual(mirror()!.metadata.finalizers, [FINALIZER], 'held until the nodes are clean');
  cleanup!.status = { observedGeneration: cleanup!.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  settleRelocatedCleanup(mirror()!);
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined);
  assert.ok(!server.all('Event').some((e) => e.type === 'Warning'));
});

test('a cleanup DaemonSet left by an earlier RegistryMirror of the same name is deleted, not taken for this one\'s: its node agent is switched to remove mode as usual', async () => {
  const { server, reconciler, mirror } = setup();
  await reconciler.reconcile('registry-cache/hub');
  const leftover = desiredRelocatedCleanupDaemonSet(inputsFixture({ serviceIP: '10.96.0.7' }, {}), 'regmirror-system');
  leftover.metadata.annotations[MIRROR_UID_ANNOTATION] = 'uid-of-an-earlier-hub';
  await server.apply(leftover as never);
  const stored = server.all('DaemonSet').find((d) => d.metadata!.namespace === 'regmirror-system')!;
  stored.status = { observedGeneration: stored.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  settleRelocatedCleanup(mirror()!);
  await reconciler.reconcile('registry-cache/hub');
  assert.ok(mirror(), 'not released on the strength of someone else\'s cleanup');
  assert.deepEqual(server.all('DaemonSet').map((d) => `${d.metadata!.namespace}/${d.metadata!.name} ${d.metadata!.annotations![MODE_ANNOTATION]}`), ['registry-cache/regmirror-hub-node remove']);
  assert.ok(!server.all('Event').some((e) => e.reason === 'NodesCleaned'));
});

test('a RegistryMirror that never configured a node is let go at once, with no cleanup DaemonSet', async () => {
  const { server, reconciler, mirror } = setup({ nodeConfig: { enabled: false, runtimes: ['containerd'] } });
  await reconciler.reconcile('registry-cache/hub');
  mirror()!.metadata.deletionTimestamp = new Date().toISOString();
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(mirror(), undefined);
  assert.equal(server.all('DaemonSet').length, 0);
  assert.ok(!server.all('Event').some((e) => e.type === 'Warning'));
});

test('turning node configuration off keeps an existing agent in remove mode and creates none otherwise', async () => {
  const off = { nodeConfig: { enabled: false, runtimes: ['containerd' as const] } };
  const fresh = setup(off);
  await fresh.reconciler.reconcile('registry-cache/hub');
  assert.equal(fresh.server.all('DaemonSet').length, 0);
  assert.equal(fresh.ready()!.reason, 'VolumePending');

  const { server, reconciler, mirror } = setup();
  await reconciler.reconcile('registry-cache/hub');
  mirror()!.spec.nodeConfig.enabled = false;
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(server.all('DaemonSet')[0]!.metadata!.annotations![MODE_ANNOTATION], 'remove');
});

test('a refused apply fails the reconcile (for a retry) and says why in a Warning Event', async () => {
  const { server, reconciler } = setup();
  const apply = server.apply.bind(server);
  server.apply = async (object, subresource) => {
    if (object.kind === 'Deployment') throw new Error('Deployment.apps "regmirror-hub" is invalid: admission webhook said no');
    return apply(object, subresource);
  };
  await assert.rejects(reconciler.reconcile('registry-cache/hub'), /admission webhook said no/);
  const event = server.all('Event').find((e) => e.reason === 'ApplyFailed');
  assert.equal(event?.type, 'Warning');
  assert.match(String(event?.message), /admission webhook said no/);
  // a transient failure (not a refusal) says nothing in Ready: the retry may well succeed
  assert.equal(server.all(KIND)[0]!.status?.conditions, undefined);
});

test('a refused apply turns Ready False with reason ApplyFailed and the server\'s message, so the status stops speaking for a spec that was not applied', async () => {
  const { server, reconciler } = setup();
  await reconciler.reconcile('registry-cache/hub');
  const apply = server.apply.bind(server);
  server.apply = async (object, subresource) => {
    if (object.kind === 'DaemonSet') throw new ApiError(422, 'Invalid', 'DaemonSet.apps "regmirror-hub-node" is invalid: spec.template.spec.nodeSelector: Invalid value: "yes please"');
    return apply(object, subresource);
  };
  await assert.rejects(reconciler.reconcile('registry-cache/hub'), /nodeSelector/);
  const ready = server.all(KIND)[0]!.status.conditions.find((c: { type: string }) => c.type === 'Ready');
  assert.equal(ready.status, 'False');
  assert.equal(ready.reason, 'ApplyFailed');
  assert.match(ready.message, /spec\.template\.spec\.nodeSelector: Invalid value/);
});

test('a refused claim resize does not hold back the other objects: the Deployment gets the new image, and Ready names storage.size', async () => {
  const { server, reconciler, mirror, ready } = setup({ storage: { size: '5Gi', accessMode: 'ReadWriteOnce' } });
  await reconciler.reconcile('registry-cache/hub');
  const apply = server.apply.bind(server);
  server.apply = async (object, subresource) => {
    const requested = (object.spec?.resources as { requests?: { storage?: string } } | undefined)?.requests?.storage;
    if (object.kind === 'PersistentVolumeClaim' && requested !== '5Gi') {
      throw new ApiError(403, 'Forbidden', 'persistentvolumeclaims "regmirror-hub" is forbidden: only dynamically provisioned pvc can be resized and the storageclass that provisions the pvc must support resize');
    }
    return apply(object, subresource);
  };
  const cr = mirror()!;
  cr.spec = { ...cr.spec, storage: { size: '8Gi', accessMode: 'ReadWriteOnce' }, image: 'registry.example/regmirror:v2' };
  cr.metadata.generation = 2;
  await assert.rejects(reconciler.reconcile('registry-cache/hub'), /must support resize/);
  assert.equal(server.all('Deployment')[0]!.spec.template.spec.containers[0].image, 'registry.example/regmirror:v2');
  assert.equal(server.all('DaemonSet')[0]!.spec.template.spec.containers[0].image, 'registry.example/regmirror:test', 'the node agent keeps the operator\'s image');
  assert.equal(ready()!.reason, 'ApplyFailed');
  assert.match(ready()!.message, /PersistentVolumeClaim regmirror-hub not applied: .*must support resize.*spec\.storage\.size 8Gi asks more than the claim's 5Gi/);

  // Set back, the spec applies again.
  cr.spec = { ...cr.spec, storage: { size: '5Gi', accessMode: 'ReadWriteOnce' } };
  cr.metadata.generation = 3;
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'VolumePending');
});

test('a storage.size below what the claim already asks keeps the claim, with a Warning naming storage.size', async () => {
  const { server, reconciler, mirror } = setup({ storage: { size: '8Gi', accessMode: 'ReadWriteOnce' } });
  await reconciler.reconcile('registry-cache/hub');
  const cr = mirror()!;
  cr.spec = { ...cr.spec, storage: { size: '5Gi', accessMode: 'ReadWriteOnce' } };
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(server.all('PersistentVolumeClaim')[0]!.spec.resources.requests.storage, '8Gi');
  const event = server.all('Event').find((e) => e.reason === 'StorageNotShrunk');
  assert.equal(event?.type, 'Warning');
  assert.match(String(event?.message), /spec\.storage\.size 5Gi is smaller than the cache volume's claim, 8Gi; a PersistentVolumeClaim cannot shrink/);
});

test('with spec.tls the nodes are given the CA from the TLS Secret: its ca.crt, else the self-signed certificate', async () => {
  const { server, secrets, reconciler } = setup({ tls: { secretName: 'mirror-tls' } });
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  const caKey = () => {
    const pod = server.all('DaemonSet')[0]!.spec.template.spec;
    const args: string[] = pod.containers[0].args;
    assert.equal(args[args.indexOf('--mirror-ca') + 1], '/run/secrets/regmirror-ca/ca.crt');
    return pod.volumes.find((v: { name: string }) => v.name === 'mirror-ca').secret.items[0].key;
  };
  secrets.set('registry-cache/mirror-tls', { type: 'kubernetes.io/tls', data: { 'tls.crt': b64('cert'), 'tls.key': b64('key'), 'ca.crt': b64('ca') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(caKey(), 'ca.crt');
  secrets.set('registry-cache/mirror-tls', { type: 'kubernetes.io/tls', data: { 'tls.crt': b64('cert'), 'tls.key': b64('key') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(caKey(), 'tls.crt');
});

test('an upstream CA Secret: missing is SecretNotFound, without its key or a PEM certificate InvalidCredentials, and nothing is rolled out onto it; found, it is mounted and a rotated CA rolls the mirror', async () => {
  const spec = { upstreams: [{ registry: 'harbor.internal', caSecretRef: { name: 'harbor-ca' } }] };
  const { server, secrets, reconciler, ready } = setup(spec);
  const [first, second] = await Promise.all([makeCertificate({ commonName: 'harbor CA' }), makeCertificate({ commonName: 'harbor CA 2' })]);
  const b64 = (s: string) => Buffer.from(s).toString('base64');
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'SecretNotFound');
  assert.equal(ready()!.message, 'Secret harbor-ca (CA for harbor.internal, spec.upstreams[0].caSecretRef) not found in namespace registry-cache');
  assert.equal(server.all('Event').find((e) => e.reason === 'SecretNotFound')?.type, 'Warning');
  assert.equal(server.all('Deployment').length, 0);

  secrets.set('registry-cache/harbor-ca', { data: { 'tls.crt': b64(first.certPem) } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'InvalidCredentials');
  assert.equal(ready()!.message, 'Secret harbor-ca (CA for harbor.internal, spec.upstreams[0].caSecretRef) has no key "ca.crt"');
  secrets.set('registry-cache/harbor-ca', { data: { 'ca.crt': b64('not a certificate') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.message, 'Secret harbor-ca (CA for harbor.internal, spec.upstreams[0].caSecretRef), key "ca.crt", holds no PEM certificate (-----BEGIN CERTIFICATE-----)');
  assert.equal(server.all('Deployment').length, 0, 'no mirror that would refuse its caFile at start');

  secrets.set('registry-cache/harbor-ca', { data: { 'ca.crt': b64(first.certPem) } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'VolumePending');
  const deployment = () => server.all('Deployment')[0]!;
  const pod = deployment().spec.template.spec;
  assert.deepEqual(pod.volumes.find((v: { name: string }) => v.name === 'upstream-ca').projected.sources, [{ secret: { name: 'harbor-ca', items: [{ key: 'ca.crt', path: 'upstream-0-ca.crt' }] } }]);
  assert.ok(!JSON.stringify(server.all('ConfigMap')).includes(first.certPem.split('\n')[1]!), 'the bundle is not copied into the ConfigMap');
  const checksum = () => deployment().spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
  const before = checksum();
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(checksum(), before, 'the same CA rolls nothing');
  secrets.set('registry-cache/harbor-ca', { data: { 'ca.crt': b64(second.certPem) } });
  await reconciler.reconcile('registry-cache/hub');
  assert.notEqual(checksum(), before, 'a rotated CA rolls the mirror');
});

test('an upstream CA ConfigMap: missing is ConfigMapNotFound, without its key or a PEM certificate InvalidConfigMap naming spec.upstreams[i].caConfigMapRef, and nothing running is changed; in data or binaryData it is mounted, and a rotated CA rolls the mirror', async () => {
  const spec = { upstreams: [{ registry: 'docker.io' }, { registry: 'harbor.internal', caConfigMapRef: { name: 'trust-bundle', key: 'bundle.pem' } }] };
  const { server, configMaps, reconciler, ready } = setup(spec);
  const [first, second] = await Promise.all([makeCertificate({ commonName: 'harbor CA' }), makeCertificate({ commonName: 'harbor CA 2' })]);
  const what = 'ConfigMap trust-bundle (CA for harbor.internal, spec.upstreams[1].caConfigMapRef)';
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'ConfigMapNotFound');
  assert.equal(ready()!.message, `${what} not found in namespace registry-cache`);
  assert.equal(server.all('Event').find((e) => e.reason === 'ConfigMapNotFound')?.type, 'Warning');
  assert.equal(server.all('Deployment').length, 0, 'no mirror without its CA');

  configMaps.set('registry-cache/trust-bundle', { data: { 'ca.crt': first.certPem } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'InvalidConfigMap');
  assert.equal(ready()!.message, `${what} has no key "bundle.pem"`);
  configMaps.set('registry-cache/trust-bundle', { data: { 'bundle.pem': 'not a certificate' } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.message, `${what}, key "bundle.pem", holds no PEM certificate (-----BEGIN CERTIFICATE-----)`);
  assert.equal(server.all('Deployment').length, 0, 'no mirror that would refuse its caFile at start');

  configMaps.set('registry-cache/trust-bundle', { data: { 'bundle.pem': first.certPem } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'VolumePending');
  const deployment = () => server.all('Deployment')[0]!;
  const pod = () => deployment().spec.template.spec;
  assert.deepEqual(pod().volumes.find((v: { name: string }) => v.name === 'upstream-ca').projected.sources, [{ configMap: { name: 'trust-bundle', items: [{ key: 'bundle.pem', path: 'upstream-1-ca.crt' }] } }]);
  assert.ok(!JSON.stringify(server.all('ConfigMap')).includes(first.certPem.split('\n')[1]!), 'the bundle is not copied into the owned ConfigMap');
  const checksum = () => deployment().spec.template.metadata.annotations[CHECKSUM_ANNOTATION];
  const before = checksum();
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(checksum(), before, 'the same CA rolls nothing');
  // binaryData, base64 (where kubectl create configmap --from-file puts a file that is not UTF-8): a PEM bundle there is read as well
  configMaps.set('registry-cache/trust-bundle', { binaryData: { 'bundle.pem': Buffer.from(first.certPem).toString('base64') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'VolumePending', 'binaryData is read too');
  assert.equal(checksum(), before, 'the same bytes, the same digest');
  configMaps.set('registry-cache/trust-bundle', { data: { 'bundle.pem': second.certPem } });
  await reconciler.reconcile('registry-cache/hub');
  const rotated = checksum();
  assert.notEqual(rotated, before, 'a rotated CA rolls the mirror');

  // refused while running: the mirror keeps the CA it has, and is not rolled
  const running = JSON.stringify(deployment());
  configMaps.set('registry-cache/trust-bundle', { binaryData: { 'bundle.pem': Buffer.from([0x30, 0x82, 0x01, 0x0a]).toString('base64') } });
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'InvalidConfigMap');
  assert.match(ready()!.message, /spec\.upstreams\[1\]\.caConfigMapRef\), key "bundle\.pem", holds no PEM certificate/);
  configMaps.delete('registry-cache/trust-bundle');
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(ready()!.reason, 'ConfigMapNotFound');
  assert.equal(JSON.stringify(deployment()), running, 'what runs is kept');
});

test('a second RegistryMirror for the same nodes and files serves but configures no nodes, says why, and takes over once the first is gone', async () => {
  const { server, reconciler, ready } = setup();
  const hub = server.all(KIND)[0]!;
  hub.metadata!.creationTimestamp = '2026-01-01T00:00:00Z';
  const other = mirrorFixture({}, 'other') as Obj;
  other.metadata!.creationTimestamp = '2026-01-02T00:00:00Z';
  server.objects.set(`${API_VERSION}/${KIND}/registry-cache/other`, other);
  await reconciler.reconcile('registry-cache/hub');
  await reconciler.reconcile('registry-cache/other');
  assert.deepEqual(server.all('DaemonSet').map((d) => d.metadata!.name), ['regmirror-hub-node']);
  assert.equal(server.all('Deployment').length, 2, 'the second mirror still serves');
  const otherReady = () => (server.objects.get(`${API_VERSION}/${KIND}/registry-cache/other`) as RegistryMirror).status!.conditions!.find((c) => c.type === 'Ready')!;
  assert.equal(otherReady().reason, 'NodeConfigConflict');
  assert.match(otherReady().message, /RegistryMirror registry-cache\/hub .* containerd's hosts\.toml for docker\.io, ghcr\.io/);
  assert.equal(server.all('Event').find((e) => e.reason === 'NodeConfigConflict')?.type, 'Warning');
  assert.notEqual(ready()!.reason, 'NodeConfigConflict', 'the first is not affected');

  server.objects.delete(`${API_VERSION}/${KIND}/registry-cache/hub`);
  await reconciler.reconcile('registry-cache/other');
  assert.ok(server.all('DaemonSet').some((d) => d.metadata!.name === 'regmirror-other-node'));
  assert.notEqual(otherReady().reason, 'NodeConfigConflict');
});

test('a runtime dropped from nodeConfig.runtimes is taken off the nodes (--remove-runtimes, its mounts kept) until every node runs that, then let go', async () => {
  const { server, reconciler, mirror } = setup({ nodeConfig: { enabled: true, runtimes: ['containerd', 'docker'] } });
  await reconciler.reconcile('registry-cache/hub');
  const daemonSet = () => server.all('DaemonSet')[0]!;
  const args = (): string[] => daemonSet().spec.template.spec.containers[0].args;
  const hostPaths = (): string[] => daemonSet().spec.template.spec.volumes.filter((v: { hostPath?: unknown }) => v.hostPath).map((v: { hostPath: { path: string } }) => v.hostPath.path);
  const allReady = () => {
    const ds = daemonSet();
    ds.status = { observedGeneration: ds.metadata!.generation, desiredNumberScheduled: 2, updatedNumberScheduled: 2, numberReady: 2 };
  };
  allReady();

  mirror()!.spec.nodeConfig.runtimes = ['containerd'];
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(args()[args().indexOf('--runtimes') + 1], 'containerd');
  assert.equal(args()[args().indexOf('--remove-runtimes') + 1], 'docker');
  assert.ok(hostPaths().includes('/etc/docker'), 'the agent can still reach daemon.json');
  assert.equal(daemonSet().spec.template.spec.hostPID, true, 'and signal dockerd');

  await reconciler.reconcile('registry-cache/hub');
  assert.ok(args().includes('--remove-runtimes'), 'kept while the new template has not run on every node');

  allReady();
  await reconciler.reconcile('registry-cache/hub');
  assert.ok(!args().includes('--remove-runtimes'), 'every node took it away: dropped');
  assert.ok(!hostPaths().includes('/etc/docker'));
  assert.equal(daemonSet().spec.template.spec.hostPID, false);
});

const GPU = { key: 'gpu', operator: 'Exists' as const, effect: 'NoSchedule' as const };
const gpuNode = (name: string, pool = 'a', taints: object[] = [{ key: 'gpu', value: 'a100', effect: 'NoSchedule' }]): Obj =>
  ({ apiVersion: 'v1', kind: 'Node', metadata: { name, labels: { pool } }, spec: { taints } });
/** A mirror whose agents ran on pool a with the gpu toleration, and the spec then without it. */
async function toleranceNarrowed(nodes: Obj[], nodesError?: Error) {
  const context = setup({ nodeConfig: { enabled: true, runtimes: ['containerd'], nodeSelector: { pool: 'a' }, tolerations: [GPU] } });
  context.server.nodes = nodes;
  await context.reconciler.reconcile('registry-cache/hub');
  context.server.nodesError = nodesError;
  context.mirror()!.spec.nodeConfig.tolerations = [];
  await context.reconciler.reconcile('registry-cache/hub');
  const droppedNodes = () => context.server.objects.get('apps/v1/DaemonSet/registry-cache/regmirror-hub-node-dropped');
  const terms = () => droppedNodes()?.spec.template.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms;
  const record = () => context.mirror()!.metadata.annotations?.[DROPPED_PLACEMENTS_ANNOTATION];
  return { ...context, droppedNodes, terms, record };
}
const named = (...values: string[]) => values.map((value) => ({ matchFields: [{ key: 'metadata.name', operator: 'In', values: [value] }] }));

test('a toleration dropped from nodeConfig: the nodes its taint now keeps the agents off are recorded and cleaned by name; one the agents select again (taint gone, toleration back) is left to them', async () => {
  const { server, reconciler, mirror, droppedNodes, terms, record } = await toleranceNarrowed([gpuNode('gpu-2'), gpuNode('gpu-1'), gpuNode('plain', 'a', []), gpuNode('other-pool', 'b')]);
  assert.deepEqual(terms(), named('gpu-1', 'gpu-2'));
  assert.deepEqual(droppedNodes()!.spec.template.spec.tolerations, [GPU]);
  assert.deepEqual(JSON.parse(record()!).nodes, ['gpu-1', 'gpu-2']);
  const cleanup = server.all('Event').find((e) => e.reason === 'NodeCleanup');
  assert.match((cleanup as { message?: string }).message!, /no longer tolerates a taint of 2 node\(s\) the agents configured \(gpu-1, gpu-2\)/);
  assert.ok(!server.all('Event').some((e) => e.reason === 'NodeCleanupIncomplete'));

  server.nodes[1]!.spec.taints = [];
  await reconciler.reconcile('registry-cache/hub');
  assert.deepEqual(terms(), named('gpu-2'), 'a node whose taint went has its agent again');
  assert.deepEqual(JSON.parse(record()!).nodes, ['gpu-1', 'gpu-2'], 'the record keeps what was found when the tolerations changed');

  mirror()!.spec.nodeConfig.tolerations = [{ key: 'gpu', operator: 'Equal', value: 'a100' }];
  await reconciler.reconcile('registry-cache/hub');
  assert.equal(droppedNodes(), undefined, 'the toleration back: the agents configure those nodes');
  assert.equal(record(), undefined);
  assert.ok(!server.all('Event').some((e) => e.reason === 'NodesCleaned' || e.reason === 'NodeCleanupTimedOut'));
});

test('a toleration dropped that no node\'s taint needed leaves nothing to clean, and no Warning', async () => {
  const { server, droppedNodes, record } = await toleranceNarrowed([gpuNode('plain', 'a', []), gpuNode('other-pool', 'b')]);
  assert.equal(droppedNodes(), undefined);
  assert.equal(record(), undefined);
  assert.ok(!server.all('Event').some((e) => e.reason === 'NodeCleanupIncomplete' || e.reason === 'NodeCleanup'));
});

test('an operator that may not list Nodes says which toleration went and which permission it lacks, and moves the agents all the same', async () => {
  const { server, droppedNodes } = await toleranceNarrowed([gpuNode('gpu-1')], new ApiError(403, 'Forbidden', 'GET /api/v1/nodes: 403 nodes is forbidden'));
  assert.equal(droppedNodes(), undefined);
  const warning = server.all('Event').find((e) => e.reason === 'NodeCleanupIncomplete') as { type?: string; message?: string } | undefined;
  assert.equal(warning?.type, 'Warning');
  assert.match(warning!.message!, /no longer tolerates gpu:NoSchedule: .*may not list nodes .*\(its RBAC lacks get and list on nodes, cluster-wide/);
  assert.equal(server.all('DaemonSet').find((d) => d.metadata!.name === 'regmirror-hub-node')!.spec.template.spec.tolerations, undefined);
});

test('past MAX_DROPPED_NODE_NAMES nodes, the first are cleaned and a Warning counts the rest', async () => {
  const nodes = Array.from({ length: 503 }, (_, i) => gpuNode(`gpu-${String(i).padStart(3, '0')}`));
  const { server, terms } = await toleranceNarrowed(nodes);
  assert.deepEqual(terms(), named(...nodes.slice(0, 500).map((n) => n.metadata!.name!)));
  const warning = server.all('Event').find((e) => e.reason === 'NodeCleanupIncomplete') as { message?: string } | undefined;
  assert.match(warning!.message!, /a taint of 3 more node\(s\) the agents configured than the 500 a cleanup names/);
  assert.ok(server.pages >= 2, `the Nodes were read in pages of ${LIST_PAGE_SIZE}: ${server.pages}`);
});
