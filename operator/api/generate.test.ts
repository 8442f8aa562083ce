import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { Value } from '@sinclair/typebox/value';
import { CustomResourceDefinition } from 'kubernetes-models/apiextensions.k8s.io/v1';
import { GENERATED_FILES, REPO_ROOT } from './generate.ts';
import { registryMirrorCrd } from './crd.ts';
import { RegistryMirrorSpecSchema } from './registry-mirror.ts';

test('the committed CRD and RBAC files are what operator/api/generate.ts writes (run it after changing the API)', () => {
  for (const [path, render] of Object.entries(GENERATED_FILES)) {
    assert.equal(readFileSync(`${REPO_ROOT}${path}`, 'utf8'), render(), `${path} is stale: run node operator/api/generate.ts`);
  }
});

test('the CRD is a valid CustomResourceDefinition with a structural schema', () => {
  new CustomResourceDefinition(registryMirrorCrd() as never).validate();
  const text = JSON.stringify(registryMirrorCrd());
  for (const forbidden of ['"anyOf"', '"const"', '"additionalProperties":false', '"patternProperties"', '"$id"']) {
    assert.ok(!text.includes(forbidden), `structural schemas have no ${forbidden}`);
  }
});

test('the CRD has a status subresource, a short name and the Endpoint, Ready, Nodes and Age columns', () => {
  const crd = registryMirrorCrd() as { spec: { names: { shortNames: string[] }; versions: { subresources: object; additionalPrinterColumns: { name: string; priority?: number }[] }[] } };
  const version = crd.spec.versions[0]!;
  assert.deepEqual(version.subresources, { status: {} });
  assert.deepEqual(crd.spec.names.shortNames, ['rmir']);
  assert.deepEqual(version.additionalPrinterColumns.filter((c) => !c.priority).map((c) => c.name), ['Endpoint', 'Ready', 'Nodes', 'Age']);
});

test('the spec schema fills defaults and rejects malformed registry names, quantities and durations', () => {
  const spec = Value.Default(RegistryMirrorSpecSchema, { upstreams: [{ registry: 'docker.io' }] });
  assert.deepEqual(spec, {
    upstreams: [{ registry: 'docker.io' }],
    storage: { size: '10Gi', accessMode: 'ReadWriteOnce' },
    replicas: 1,
    nodeConfig: { enabled: true, runtimes: ['containerd'] },
  });
  assert.ok(Value.Check(RegistryMirrorSpecSchema, spec));
  const bad = (patch: object) => Value.Check(RegistryMirrorSpecSchema, { ...spec, ...patch });
  assert.ok(!bad({ upstreams: [{ registry: 'Docker.IO' }] }));
  assert.ok(!bad({ upstreams: [{ registry: 'https://docker.io' }] }));
  assert.ok(!bad({ upstreams: [{ registry: 'docker.io', tagTTL: '5 minutes' }] }));
  assert.ok(!bad({ storage: { size: '50GB', accessMode: 'ReadWriteOnce' } }));
  assert.ok(!bad({ nodeConfig: { enabled: true, runtimes: ['podman'] } }));
  assert.ok(Value.Check(RegistryMirrorSpecSchema, { ...spec, upstreams: [{ registry: 'registry.example.com:5000', tagTTL: '1m30s' }] }));
});
