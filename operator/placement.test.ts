import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  anyOf, byName, droppedTolerations, leftBehind, leftByTaint, nodeOf, readDroppedPlacements, selectsAllOf, stillLeft, tolerates, withNodes, withPlacement,
  DROPPED_PLACEMENTS_ANNOTATION, MAX_DROPPED_NODE_NAMES, type NodeFacts, type Placement, type Taint,
} from './placement.ts';

const at = (nodeSelector: Record<string, string>, tolerations: Placement['tolerations'] = []): Placement => ({ nodeSelector, tolerations });

test('a narrower selector leaves behind the nodes the old one selects and the new one does not (a node without the label included)', () => {
  assert.equal(selectsAllOf(at({ pool: 'new' }), at({ pool: 'old' })), false);
  assert.deepEqual(leftBehind([at({ pool: 'old' })], at({ pool: 'new' })), [
    { matchExpressions: [{ key: 'pool', operator: 'In', values: ['old'] }, { key: 'pool', operator: 'NotIn', values: ['new'] }] },
  ]);
  // every node before, two labels now: a node missing either is left behind (terms are ORed)
  assert.deepEqual(leftBehind([at({})], at({ pool: 'a', zone: 'z1' })), [
    { matchExpressions: [{ key: 'pool', operator: 'NotIn', values: ['a'] }] },
    { matchExpressions: [{ key: 'zone', operator: 'NotIn', values: ['z1'] }] },
  ]);
  // a label the old selector already required is no way out
  assert.deepEqual(leftBehind([at({ pool: 'a' })], at({ pool: 'a', zone: 'z1' })), [
    { matchExpressions: [{ key: 'pool', operator: 'In', values: ['a'] }, { key: 'zone', operator: 'NotIn', values: ['z1'] }] },
  ]);
});

test('a selector that selects every old node again leaves none behind', () => {
  assert.ok(selectsAllOf(at({ pool: 'a' }), at({ pool: 'a', zone: 'z1' })));
  assert.ok(selectsAllOf(at({}), at({ pool: 'a' })));
  assert.deepEqual(leftBehind([at({ pool: 'a' }), at({ pool: 'b' })], at({})), []);
});

test('several earlier placements: each is cleaned where the current one does not reach, and a removal covers them all', () => {
  const placements = withPlacement(withPlacement([at({ pool: 'a' })], at({ pool: 'b' })), at({ pool: 'a' }));
  assert.equal(placements.length, 2);
  assert.deepEqual(leftBehind(placements, at({ pool: 'c' })).length, 2);
  assert.deepEqual(anyOf([...placements, at({ pool: 'c' })]), [
    { matchExpressions: [{ key: 'pool', operator: 'In', values: ['a'] }] },
    { matchExpressions: [{ key: 'pool', operator: 'In', values: ['b'] }] },
    { matchExpressions: [{ key: 'pool', operator: 'In', values: ['c'] }] },
  ]);
  assert.equal(anyOf([at({ pool: 'a' }), at({})]), undefined, 'one of them selects every node');
});

test('tolerations the new list has no match for are named (only then are the Nodes read)', () => {
  const gpu = { key: 'gpu', operator: 'Exists' as const, effect: 'NoSchedule' as const };
  assert.deepEqual(droppedTolerations(at({}, [gpu]), at({}, [])), [gpu]);
  assert.deepEqual(droppedTolerations(at({}, [gpu]), at({}, [{ operator: 'Exists' }])), []);
  assert.deepEqual(droppedTolerations(at({}, [{ key: 'gpu', operator: 'Equal', value: 'x', effect: 'NoSchedule' }]), at({}, [gpu])), []);
});

test('a toleration tolerates a taint by Kubernetes\' rules: Equal compares values, Exists any value, an empty key every key, an empty effect every effect', () => {
  const taint: Taint = { key: 'gpu', value: 'a100', effect: 'NoSchedule' };
  assert.ok(tolerates({ key: 'gpu', operator: 'Equal', value: 'a100', effect: 'NoSchedule' }, taint));
  assert.ok(tolerates({ key: 'gpu', value: 'a100' }, taint), 'operator defaults to Equal; no effect matches every effect');
  assert.equal(tolerates({ key: 'gpu', operator: 'Equal', value: 'h100' }, taint), false);
  assert.equal(tolerates({ key: 'gpu', operator: 'Equal' }, taint), false, 'Equal without a value matches an empty value only');
  assert.ok(tolerates({ key: 'gpu', operator: 'Equal' }, { key: 'gpu', effect: 'NoSchedule' }));
  assert.ok(tolerates({ key: 'gpu', operator: 'Exists' }, taint));
  assert.equal(tolerates({ key: 'gpu', operator: 'Exists', effect: 'NoExecute' }, taint), false, 'another effect');
  assert.equal(tolerates({ key: 'tpu', operator: 'Exists' }, taint), false, 'another key');
  assert.ok(tolerates({ operator: 'Exists' }, taint), 'an empty key with Exists tolerates every taint');
  assert.ok(tolerates({ operator: 'Exists', effect: 'NoSchedule' }, taint));
  assert.equal(tolerates({ operator: 'Exists', effect: 'NoExecute' }, taint), false);
});

const node = (name: string, labels: Record<string, string>, ...taints: Taint[]): NodeFacts => ({ name, labels, taints });
const gpuTaint: Taint = { key: 'gpu', value: 'a100', effect: 'NoSchedule' };

test('a narrowed toleration list leaves behind, by name, exactly the nodes with both selectors\' labels that a taint the old tolerations tolerated and the new do not keeps the agents off', () => {
  const nodes = [
    node('gpu-2', { pool: 'a' }, gpuTaint),
    node('gpu-1', { pool: 'a' }, gpuTaint, { key: 'other', effect: 'PreferNoSchedule' }),
    node('plain', { pool: 'a' }),
    node('preferred', { pool: 'a' }, { ...gpuTaint, effect: 'PreferNoSchedule' }),
    node('gpu-elsewhere', { pool: 'b' }, gpuTaint),
    node('evicted', { pool: 'a' }, gpuTaint, { key: 'dedicated', value: 'db', effect: 'NoExecute' }),
    node('cordoned-gpu', { pool: 'a' }, gpuTaint, { key: 'node.kubernetes.io/unschedulable', effect: 'NoSchedule' }),
    node('not-ready-gpu', { pool: 'a' }, gpuTaint, { key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }),
    node('not-ready', { pool: 'a' }, { key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }, { key: 'node.kubernetes.io/not-ready', effect: 'NoExecute' }),
  ];
  const before = at({ pool: 'a' }, [{ key: 'gpu', operator: 'Exists', effect: 'NoSchedule' }]);
  assert.deepEqual(leftByTaint(before, at({ pool: 'a' }), nodes), ['cordoned-gpu', 'gpu-1', 'gpu-2', 'not-ready-gpu'],
    'not the untainted node, a PreferNoSchedule one, the other pool\'s, one a NoExecute taint the old did not tolerate kept its agent off, or one kept off only by what neither tolerates');
  assert.deepEqual(leftByTaint(before, at({ pool: 'a' }, [{ key: 'gpu', operator: 'Equal', value: 'a100' }]), nodes), [], 'still tolerated');
  assert.deepEqual(leftByTaint(before, at({ pool: 'a' }, [{ key: 'gpu', operator: 'Equal', value: 'h100' }]), nodes), ['cordoned-gpu', 'gpu-1', 'gpu-2', 'not-ready-gpu'], 'another value');
  assert.deepEqual(leftByTaint(before, at({ pool: 'a' }, [{ key: 'gpu', operator: 'Exists', effect: 'NoExecute' }]), nodes), ['cordoned-gpu', 'gpu-1', 'gpu-2', 'not-ready-gpu'], 'another effect');
  // a narrower selector too: the nodes it leaves out are leftBehind's (by label), not named
  assert.deepEqual(leftByTaint(at({}, [{ operator: 'Exists' }]), at({ pool: 'a' }), nodes), ['cordoned-gpu', 'evicted', 'gpu-1', 'gpu-2', 'not-ready', 'not-ready-gpu']);
  assert.deepEqual(nodeOf({ metadata: { name: 'n6', labels: { pool: 'a' } }, spec: { taints: [gpuTaint] } }), node('n6', { pool: 'a' }, gpuTaint));
  assert.deepEqual(nodeOf({ metadata: { name: 'n7' } }), node('n7', {}));
});

test('a named node the current placement takes back (its taint gone, the toleration back) is no longer left; one gone or off the current selector stays', () => {
  const placements = [at({ pool: 'a' }, [{ key: 'gpu', operator: 'Exists' }])];
  const current = at({ pool: 'a' });
  const listed = [node('gpu-1', { pool: 'a' }, gpuTaint), node('untainted', { pool: 'a' }), node('not-ready', { pool: 'a' }, gpuTaint, { key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' })];
  assert.deepEqual(stillLeft(['gpu-1', 'untainted', 'not-ready', 'gone'], placements, current, listed), ['gpu-1', 'not-ready', 'gone']);
  assert.deepEqual(stillLeft(['gpu-1', 'not-ready'], placements, at({ pool: 'a' }, [{ operator: 'Exists', effect: 'NoSchedule' }]), listed), [], 'tolerated again');
  assert.deepEqual(stillLeft(['gpu-1'], placements, at({ pool: 'b' }), listed), ['gpu-1'], 'the current selector leaves it out');
});

test('nodes are recorded once each and at most MAX_DROPPED_NODE_NAMES, each selected by a term of its own (the API server takes one value for a field requirement)', () => {
  assert.deepEqual(withNodes(['a', 'b'], ['b', 'c']), { nodes: ['a', 'b', 'c'], over: 0 });
  const many = Array.from({ length: MAX_DROPPED_NODE_NAMES + 7 }, (_, i) => `node-${i}`);
  const { nodes, over } = withNodes(['first'], many);
  assert.equal(nodes.length, MAX_DROPPED_NODE_NAMES);
  assert.equal(nodes[0], 'first', 'the recorded ones are kept');
  assert.equal(over, 8);
  assert.deepEqual(byName([]), []);
  assert.deepEqual(byName(['n1', 'n2']), [
    { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['n1'] }] },
    { matchFields: [{ key: 'metadata.name', operator: 'In', values: ['n2'] }] },
  ]);
});

test('the record on the RegistryMirror is read back, and anything else in its place is no record', () => {
  const record = { since: '2025-01-01T00:00:00.000Z', placements: [at({ pool: 'old' })] };
  assert.deepEqual(readDroppedPlacements({ [DROPPED_PLACEMENTS_ANNOTATION]: JSON.stringify(record) }), record);
  const named = { ...record, nodes: ['gpu-1', 'gpu-2'] };
  assert.deepEqual(readDroppedPlacements({ [DROPPED_PLACEMENTS_ANNOTATION]: JSON.stringify(named) }), named);
  assert.deepEqual(readDroppedPlacements({ [DROPPED_PLACEMENTS_ANNOTATION]: JSON.stringify({ ...record, nodes: 'gpu-1' }) }), record, 'names that are no list are none');
  for (const text of ['', 'not json', 'null', '{"since":1}', '{"since":"x","placements":[]}']) {
    assert.equal(readDroppedPlacements({ [DROPPED_PLACEMENTS_ANNOTATION]: text }), undefined, text);
  }
});
