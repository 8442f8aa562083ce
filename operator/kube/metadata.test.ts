// Metadata-only lists and watches, against a local HTTP server standing in for the API server: what
// they ask for (the Accept header, next to the KubeConfig's own authentication) and what they keep.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { KubeApi, type KubeObject } from './api.ts';
import { METADATA_LIST_ACCEPT, METADATA_WATCH_ACCEPT, MetadataWatch, routingMetadata } from './metadata.ts';

const owner = { apiVersion: 'regmirror.dev/v1alpha1', kind: 'RegistryMirror', name: 'hub', uid: 'u-1', controller: true };
const fullSecret = {
  apiVersion: 'v1',
  kind: 'Secret',
  metadata: {
    name: 'regmirror-hub',
    namespace: 'registry-cache',
    uid: 's-1',
    resourceVersion: '42',
    labels: { 'app.kubernetes.io/managed-by': 'regmirror-operator' },
    annotations: { 'kubectl.kubernetes.io/last-applied-configuration': '{"data":{"password":"c2VjcmV0"}}' },
    managedFields: [{ manager: 'kubectl', operation: 'Apply' }],
    ownerReferences: [{ ...owner, blockOwnerDeletion: true }],
  },
  type: 'Opaque',
  data: { password: 'c2VjcmV0' },
};

/** A server that records each request's headers and answers with `respond`. */
async function fakeApiServer(respond: (url: URL, res: import('node:http').ServerResponse) => void) {
  const requests: { url: URL; headers: IncomingHttpHeaders }[] = [];
  const server = createServer((req, res) => {
    const url = new URL(req.url!, 'http://localhost');
    requests.push({ url, headers: req.headers });
    respond(url, res);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'test', server: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'test', token: 'the-token' }],
    contexts: [{ name: 'test', cluster: 'test', user: 'test' }],
    currentContext: 'test',
  });
  return { requests, kubeConfig, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

test('routingMetadata keeps who an object is, its version and owners, and nothing that may carry its data', () => {
  assert.deepEqual(routingMetadata(fullSecret), {
    apiVersion: 'v1',
    kind: 'Secret',
    metadata: { name: 'regmirror-hub', namespace: 'registry-cache', uid: 's-1', resourceVersion: '42', ownerReferences: [owner] },
  });
  const deleting = routingMetadata({ metadata: { name: 'a', deletionTimestamp: '2025-01-01T00:00:00Z' } });
  assert.equal(deleting.metadata!.deletionTimestamp, '2025-01-01T00:00:00Z');
  assert.ok(!JSON.stringify(routingMetadata(fullSecret)).includes('c2VjcmV0'));
});

test('MetadataWatch asks the server for PartialObjectMetadata, keeps the KubeConfig\'s authentication, and hands on routingMetadata of each object', async () => {
  const events = [
    { type: 'ADDED', object: { ...fullSecret, apiVersion: 'meta.k8s.io/v1', kind: 'PartialObjectMetadata' } },
    { type: 'BOOKMARK', object: { kind: 'PartialObjectMetadata', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion: '43' } } },
    { type: 'ERROR', object: { kind: 'Status', apiVersion: 'v1', status: 'Failure', code: 410, reason: 'Expired' } },
  ];
  const fake = await fakeApiServer((_url, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(events.map((e) => JSON.stringify(e)).join('\n') + '\n');
  });
  try {
    const received: [string, KubeObject, unknown][] = [];
    const ended = new Promise<unknown>((resolve) => {
      void new MetadataWatch(fake.kubeConfig).watch('/api/v1/secrets', { resourceVersion: '41' }, (phase, object, event) => received.push([phase, object, event]), resolve);
    });
    assert.equal(await ended, null);
    const [request] = fake.requests;
    assert.equal(request!.url.pathname, '/api/v1/secrets');
    assert.equal(request!.url.searchParams.get('watch'), 'true');
    assert.equal(request!.url.searchParams.get('resourceVersion'), '41');
    assert.equal(request!.headers.accept, METADATA_WATCH_ACCEPT);
    assert.equal(request!.headers.authorization, 'Bearer the-token');

    assert.deepEqual(received.map(([phase]) => phase), ['ADDED', 'BOOKMARK', 'ERROR']);
    const [, added, addedEvent] = received[0]!;
    assert.deepEqual(added, { ...routingMetadata(fullSecret), apiVersion: 'meta.k8s.io/v1', kind: 'PartialObjectMetadata' });
    assert.deepEqual(addedEvent, { type: 'ADDED', object: added });
    assert.equal(received[1]![1].metadata!.resourceVersion, '43');
    assert.deepEqual(received[2]![1], events[2]!.object, 'a Status is passed on as it came (the informer relists on 410)');
  } finally {
    await fake.close();
  }
});

test('KubeApi.list asks for a PartialObjectMetadataList with metadataOnly, and for whole objects without; an empty one\'s `items: null` is []', async () => {
  const fake = await fakeApiServer((_url, res) => {
    res.writeHead(200, { 'content-type': 'application/json' });
    // What kube-apiserver answers for an empty namespace.
    res.end(JSON.stringify({ kind: 'PartialObjectMetadataList', apiVersion: 'meta.k8s.io/v1', metadata: { resourceVersion: '7' }, items: null }));
  });
  try {
    const api = new KubeApi(fake.kubeConfig);
    assert.deepEqual((await api.list('v1', 'Secret', 'registry-cache', undefined, { metadataOnly: true })).items, []);
    await api.list('v1', 'Secret', 'registry-cache');
    assert.deepEqual(fake.requests.map((r) => [r.url.pathname, r.headers.accept, r.headers.authorization]), [
      ['/api/v1/namespaces/registry-cache/secrets', METADATA_LIST_ACCEPT, 'Bearer the-token'],
      ['/api/v1/namespaces/registry-cache/secrets', 'application/json', 'Bearer the-token'],
    ]);
  } finally {
    await fake.close();
  }
});
