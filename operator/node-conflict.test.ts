import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RegistryMirror, RegistryMirrorSpec } from './api/registry-mirror.ts';
import { nodeConfigHolder, selectorsOverlap, sharedNodeFiles } from './node-conflict.ts';
import { mirrorFixture } from './test-fixtures.ts';

function mirror(name: string, created: string, spec: Partial<RegistryMirrorSpec> = {}): RegistryMirror {
  const m = mirrorFixture(spec, name);
  m.metadata.creationTimestamp = created;
  return m;
}
const nodeConfig = (extra: Partial<RegistryMirrorSpec['nodeConfig']>) => ({ nodeConfig: { enabled: true, runtimes: ['containerd'], ...extra } as RegistryMirrorSpec['nodeConfig'] });

test('node selectors overlap unless a label both require has different values', () => {
  assert.equal(selectorsOverlap(undefined, { pool: 'a' }), true, 'no selector picks every node');
  assert.equal(selectorsOverlap({ pool: 'a' }, { zone: 'x' }), true, 'a node may carry both labels');
  assert.equal(selectorsOverlap({ pool: 'a' }, { pool: 'a', zone: 'x' }), true);
  assert.equal(selectorsOverlap({ pool: 'a' }, { pool: 'b' }), false);
});

test('the files two mirrors would share: containerd per registry, Docker for Docker Hub, CRI-O always', () => {
  const hub = mirror('hub', '2026-01-01T00:00:00Z', { upstreams: [{ registry: 'docker.io' }], ...nodeConfig({ runtimes: ['containerd', 'docker', 'crio'] }) });
  const ghcr = mirror('ghcr', '2026-01-02T00:00:00Z', { upstreams: [{ registry: 'ghcr.io' }], ...nodeConfig({ runtimes: ['containerd', 'docker'] }) });
  assert.equal(sharedNodeFiles(hub, ghcr), undefined, 'different registries on containerd, no Docker Hub on the other');
  const ghcrCrio = mirror('ghcr', '2026-01-02T00:00:00Z', { upstreams: [{ registry: 'ghcr.io' }], ...nodeConfig({ runtimes: ['crio'] }) });
  assert.equal(sharedNodeFiles(hub, ghcrCrio), "CRI-O's registries.conf drop-in", 'one drop-in per node whatever the registries');
  const hub2 = mirror('hub2', '2026-01-02T00:00:00Z', { upstreams: [{ registry: 'docker.io' }, { registry: 'quay.io' }], ...nodeConfig({ runtimes: ['containerd', 'docker'] }) });
  assert.equal(sharedNodeFiles(hub2, hub), "containerd's hosts.toml for docker.io, Docker's daemon.json");
});

test('the earliest mirror holds the nodes; a later one that would share a file on them does not configure nodes', () => {
  const first = mirror('first', '2026-01-01T00:00:00Z');
  const second = mirror('second', '2026-01-02T00:00:00Z');
  assert.equal(nodeConfigHolder(first, [first, second]), undefined);
  assert.equal(nodeConfigHolder(second, [first, second])?.holder.metadata.name, 'first');
  assert.match(nodeConfigHolder(second, [first, second])!.files, /containerd's hosts\.toml for docker\.io, ghcr\.io/);

  const elsewhere = mirror('elsewhere', '2026-01-03T00:00:00Z', nodeConfig({ nodeSelector: { pool: 'b' } }));
  const firstInA = mirror('first', '2026-01-01T00:00:00Z', nodeConfig({ nodeSelector: { pool: 'a' } }));
  assert.equal(nodeConfigHolder(elsewhere, [firstInA, elsewhere]), undefined, 'disjoint node pools');

  const off = mirror('second', '2026-01-02T00:00:00Z', { nodeConfig: { enabled: false, runtimes: ['containerd'] } });
  assert.equal(nodeConfigHolder(off, [first, off]), undefined, 'no node configuration, nothing to share');
  assert.equal(nodeConfigHolder(second, [off, mirror('third', '2026-01-03T00:00:00Z')]), undefined, 'a holder without node configuration holds nothing');

  const leaving = mirror('first', '2026-01-01T00:00:00Z');
  leaving.metadata.deletionTimestamp = '2026-02-01T00:00:00Z';
  assert.equal(nodeConfigHolder(second, [leaving, second]), undefined, 'a mirror being deleted gives its nodes up once its node cleanup let go');
  leaving.metadata.finalizers = ['regmirror.dev/node-cleanup'];
  assert.equal(nodeConfigHolder(second, [leaving, second])?.holder.metadata.name, 'first',
    'but holds them while its agents still take their configuration away: both would work on the same files at once');

  const sameTime = mirror('b', '2026-01-01T00:00:00Z');
  assert.equal(nodeConfigHolder(sameTime, [mirror('a', '2026-01-01T00:00:00Z'), sameTime])?.holder.metadata.name, 'a', 'ties go by name');
});
