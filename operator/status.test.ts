import { test } from 'node:test';
import assert from 'node:assert/strict';
import { desiredStatus, nodesDone, setCondition, type Observed } from './status.ts';
import { mirrorFixture } from './test-fixtures.ts';

const now = new Date('2026-11-28T00:00:00Z');
const available = { generation: 1, observedGeneration: 1, replicas: 1, updatedReplicas: 1, availableReplicas: 1 };
const nodesReady = { generation: 2, observedGeneration: 2, desiredNumberScheduled: 3, updatedNumberScheduled: 3, numberReady: 3 };
const base: Observed = {
  endpoint: 'http://10.96.0.42:5000', pvcPhase: 'Bound', deployment: available, wantedReplicas: 1,
  daemonSet: nodesReady, nodeAgentMode: 'apply', nodeConfigEnabled: true, deleting: false,
};
const reason = (observed: Partial<Observed>) =>
  desiredStatus(mirrorFixture(), { ...base, ...observed }, now).conditions!.find((c) => c.type === 'Ready')!.reason;

test('Ready is True with reason Available when the mirror serves and every node uses it', () => {
  const status = desiredStatus(mirrorFixture(), base, now);
  assert.deepEqual(status.conditions, [{
    type: 'Ready', status: 'True', reason: 'Available', message: 'the mirror is serving and every node uses it',
    observedGeneration: 1, lastTransitionTime: '2026-11-28T00:00:00Z',
  }]);
  assert.equal(status.endpoint, 'http://10.96.0.42:5000');
  assert.deepEqual(status.nodes, { desired: 3, configured: 3 });
  assert.equal(status.observedGeneration, 1);
});

test('the first thing that keeps the mirror from being ready is the reason', () => {
  assert.equal(reason({ problem: { reason: 'SecretNotFound', message: 'x' } }), 'SecretNotFound');
  assert.equal(reason({ deployment: undefined, pvcPhase: 'Pending' }), 'VolumePending');
  assert.equal(reason({ deployment: { ...available, availableReplicas: 0 } }), 'Progressing');
  assert.equal(reason({ deployment: { ...available, generation: 2 } }), 'Progressing', 'a Deployment that has not seen its new spec');
  assert.equal(reason({ daemonSet: { ...nodesReady, numberReady: 2 } }), 'NodesPending');
  assert.equal(reason({ daemonSet: { ...nodesReady, generation: 3 } }), 'NodesPending', 'a DaemonSet that has not seen its new template');
  assert.equal(reason({ daemonSet: undefined, nodeConfigEnabled: false }), 'Available');
  assert.equal(reason({ deleting: true, nodeAgentMode: 'remove' }), 'NodeCleanup');
  assert.equal(reason({ problem: { reason: 'ApplyFailed', message: 'x' } }), 'ApplyFailed');
  // nothing to wait for with no pods wanted, but nothing serves either
  assert.equal(reason({ wantedReplicas: 0, deployment: { ...available, replicas: 0, updatedReplicas: 0, availableReplicas: 0 } }), 'ScaledToZero');
});

test('lastTransitionTime moves only when the condition\'s status changes', () => {
  const first = setCondition(undefined, { type: 'Ready', status: 'False', reason: 'Progressing', message: '' }, now);
  const later = new Date('2026-11-28T01:00:00Z');
  const sameStatus = setCondition(first, { type: 'Ready', status: 'False', reason: 'NodesPending', message: '' }, later);
  assert.equal(sameStatus[0]!.lastTransitionTime, '2026-11-28T00:00:00Z');
  const flipped = setCondition(sameStatus, { type: 'Ready', status: 'True', reason: 'Available', message: '' }, later);
  assert.equal(flipped[0]!.lastTransitionTime, '2026-11-28T01:00:00Z');
});

test('in remove mode the nodes still configured count down as agents confirm removal', () => {
  const status = desiredStatus(mirrorFixture(), { ...base, deleting: true, nodeAgentMode: 'remove', daemonSet: { ...nodesReady, numberReady: 1, updatedNumberScheduled: 1 } }, now);
  assert.deepEqual(status.nodes, { desired: 3, configured: 2 });
  assert.deepEqual(nodesDone(undefined), { desired: 0, done: 0, complete: false });
});

test('nodes configured stay counted when the node agent DaemonSet goes (its agents leave them configured), unless nodeConfig is off', () => {
  const before = { ...mirrorFixture(), status: { nodes: { desired: 3, configured: 3 } } };
  assert.deepEqual(desiredStatus(before, { ...base, daemonSet: undefined }, now).nodes, { desired: 3, configured: 3 });
  assert.deepEqual(desiredStatus(before, { ...base, daemonSet: undefined, nodeConfigEnabled: false }, now).nodes, { desired: 0, configured: 0 });
});
