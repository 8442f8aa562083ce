import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RegistryMirror, RegistryMirrorSpec } from './api/registry-mirror.ts';
import { nodeConfigHolder, selectorsOverlap, sharedNodeFiles, type NodeAgentModeOf } from './node-conflict.ts';
import { mirrorFixture } from './test-fixtures.ts';

function mirror(name: string, created: string, spec: Partial<RegistryMirrorSpec> = {}): RegistryMirror {
  const m = mirrorFixture(spec, name);
  m.metadata.creationTimestamp = created;
  return m;
}
/** No mirror has a node agent DaemonSet yet. */
const noAgents: NodeAgentModeOf = () => undefined;
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
  assert.equal(nodeConfigHolder(first, [first, second], noAgents), undefined);
  assert.equal(nodeConfigHolder(second, [first, second], noAgents)?.holder.metadata.name, 'first');
  assert.match(nodeConfigHolder(second, [first, second], noAgents)!.files, /containerd's hosts\.toml for docker\.io, ghcr\.io/);

  const elsewhere = mirror('elsewhere', '2026-01-03T00:00:00Z', nodeConfig({ nodeSelector: { pool: 'b' } }));
  const firstInA = mirror('first', '2026-01-01T00:00:00Z', nodeConfig({ nodeSelector: { pool: 'a' } }));
  assert.equal(nodeConfigHolder(elsewhere, [firstInA, elsewhere], noAgents), undefined, 'disjoint node pools');

  const off = mirror('second', '2026-01-02T00:00:00Z', { nodeConfig: { enabled: false, runtimes: ['containerd'] } });
  assert.equal(nodeConfigHolder(off, [first, off], noAgents), undefined, 'no node configuration, nothing to share');
  assert.equal(nodeConfigHolder(second, [off, mirror('third', '2026-01-03T00:00:00Z')], noAgents), undefined, 'a holder without node configuration holds nothing');

  const leaving = mirror('first', '2026-01-01T00:00:00Z');
  leaving.metadata.deletionTimestamp = '2026-02-01T00:00:00Z';
  assert.equal(nodeConfigHolder(second, [leaving, second], noAgents), undefined, 'a mirror being deleted gives its nodes up once its node cleanup let go');
  leaving.metadata.finalizers = ['regmirror.dev/node-cleanup'];
  assert.equal(nodeConfigHolder(second, [leaving, second], noAgents)?.holder.metadata.name, 'first',
    'but holds them while its agents still take their configuration away: both would work on the same files at once');

  const sameTime = mirror('b', '2026-01-01T00:00:00Z');
  assert.equal(nodeConfigHolder(sameTime, [mirror('a', '2026-01-01T00:00:00Z'), sameTime], noAgents)?.holder.metadata.name, 'a', 'ties go by name');
});

test('a mirror its own spec stopped before it applied anything holds no nodes, unless an agent of its still configures them; one whose agents are on the nodes keeps them from an earlier one fixed later', () => {
  const stopped = mirror('a-stopped', '2026-01-01T00:00:00Z');
  stopped.status = { conditions: [{ type: 'Ready', status: 'False', reason: 'InvalidSpec', message: 'spec.prefetch ...', lastTransitionTime: '2026-01-01T00:00:01Z' }] };
  const later = mirror('b-later', '2026-01-01T00:00:00Z');
  assert.equal(nodeConfigHolder(later, [stopped, later], noAgents), undefined, 'InvalidSpec and no agent: nothing on the nodes to keep');
  for (const reason of ['SecretNotFound', 'InvalidCredentials', 'ConfigMapNotFound', 'InvalidConfigMap']) {
    stopped.status.conditions![0]!.reason = reason;
    assert.equal(nodeConfigHolder(later, [stopped, later], noAgents), undefined, reason);
  }
  const agents = (applying: RegistryMirror[]): NodeAgentModeOf => (m) => (applying.includes(m) ? 'apply' : undefined);
  assert.equal(nodeConfigHolder(later, [stopped, later], agents([stopped]))?.holder.metadata.name, 'a-stopped', 'its agents from before the problem still configure the nodes');
  stopped.status.conditions![0]!.reason = 'ApplyFailed';
  assert.equal(nodeConfigHolder(later, [stopped, later], noAgents)?.holder.metadata.name, 'a-stopped', 'a refusal of some object does not stop the rest');
  assert.equal(nodeConfigHolder(later, [mirror('a-new', '2026-01-01T00:00:00Z'), later], noAgents)?.holder.metadata.name, 'a-new', 'not reconciled yet: it may be creating its agents right now');

  // the stopped one is fixed while the later one configures the nodes: the later one keeps them
  const fixed = mirror('a-stopped', '2026-01-01T00:00:00Z');
  const conflict = nodeConfigHolder(fixed, [fixed, later], agents([later]));
  assert.equal(conflict?.holder.metadata.name, 'b-later');
  assert.equal(conflict?.why, 'its agents are on them');
  assert.equal(nodeConfigHolder(later, [fixed, later], agents([later])), undefined);
});

test('a mirror kept off its nodes by an earlier one holds nothing: a third that shares files only with it configures its nodes (no chain of refusals)', () => {
  const hub = mirror('hub', '2026-01-01T00:00:00Z', { upstreams: [{ registry: 'docker.io' }] });
  const all = mirror('all-registries', '2026-01-02T00:00:00Z', { upstreams: [{ registry: 'docker.io' }, { registry: 'quay.io' }] });
  const quay = mirror('quay', '2026-01-03T00:00:00Z', { upstreams: [{ registry: 'quay.io' }], ...nodeConfig({ nodeSelector: { pool: 'a' } }) });
  const every = [hub, all, quay];
  assert.equal(nodeConfigHolder(all, every, noAgents)?.holder.metadata.name, 'hub', 'docker.io is the first one\'s');
  assert.equal(nodeConfigHolder(quay, every, noAgents), undefined, 'nobody configures quay.io on these nodes');
  // once the first goes, the second takes its nodes and the third, created later, gives them up
  assert.equal(nodeConfigHolder(quay, [all, quay], noAgents)?.holder.metadata.name, 'all-registries');
  // a blocked mirror whose agents still configure the nodes (from before the conflict) keeps holding them
  const agents: NodeAgentModeOf = (m) => (m === all ? 'apply' : undefined);
  assert.equal(nodeConfigHolder(quay, every, agents)?.holder.metadata.name, 'all-registries');
});

test('thousands of mirrors in a chain (each sharing a registry with the one before) are decided without running out of stack: every other one holds its nodes', () => {
  const count = 3000;
  const chain = Array.from({ length: count }, (_, i) =>
    mirror(`m${i}`, new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString(), { upstreams: [{ registry: `r${i}.io` }, { registry: `r${i + 1}.io` }] }));
  assert.equal(nodeConfigHolder(chain[0]!, chain, noAgents), undefined);
  assert.equal(nodeConfigHolder(chain[1]!, chain, noAgents)?.holder.metadata.name, 'm0');
  assert.equal(nodeConfigHolder(chain[2]!, chain, noAgents), undefined, 'm1 is kept off, so m2 shares files with no holder');
  assert.equal(nodeConfigHolder(chain[count - 1]!, chain, noAgents)?.holder.metadata.name, `m${count - 2}`);
});
