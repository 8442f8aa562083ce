import { test } from 'node:test';
import assert from 'node:assert/strict';
import { anyOf, droppedTolerations, leftBehind, readDroppedPlacements, selectsAllOf, withPlacement, DROPPED_PLACEMENTS_ANNOTATION, type Placement } from './placement.ts';

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

test('tolerations the new list has no match for are named (taints cannot be selected, so they are warned about)', () => {
  const gpu = { key: 'gpu', operator: 'Exists' as const, effect: 'NoSchedule' as const };
  assert.deepEqual(droppedTolerations(at({}, [gpu]), at({}, [])), [gpu]);
  assert.deepEqual(droppedTolerations(at({}, [gpu]), at({}, [{ operator: 'Exists' }])), []);
  assert.deepEqual(droppedTolerations(at({}, [{ key: 'gpu', operator: 'Equal', value: 'x', effect: 'NoSchedule' }]), at({}, [gpu])), []);
});

test('the record on the RegistryMirror is read back, and anything else in its place is no record', () => {
  const record = { since: '2025-01-01T00:00:00.000Z', placements: [at({ pool: 'old' })] };
  assert.deepEqual(readDroppedPlacements({ [DROPPED_PLACEMENTS_ANNOTATION]: JSON.stringify(record) }), record);
  for (const text of ['', 'not json', 'null', '{"since":1}', '{"since":"x","placements":[]}']) {
    assert.equal(readDroppedPlacements({ [DROPPED_PLACEMENTS_ANNOTATION]: text }), undefined, text);
  }
});
