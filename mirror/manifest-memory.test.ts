// The in-memory manifest budget: what was read recently stays, what was not read goes first.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ManifestMemory } from './manifest-memory.ts';

const manifest = (size: number) => ({ bytes: Buffer.alloc(size), mediaType: 'application/vnd.oci.image.manifest.v1+json' });
const held = (memory: ManifestMemory, digests: string[]) => digests.filter((digest) => memory.has(digest));

test('over budget, the manifests not read for longest are dropped first, and a read one survives', () => {
  const memory = new ManifestMemory(300);
  for (const digest of ['a', 'b', 'c']) memory.add(digest, manifest(100));
  assert.ok(memory.get('a'));
  memory.add('d', manifest(100));
  assert.deepEqual(held(memory, ['a', 'b', 'c', 'd']), ['a', 'c', 'd'], 'b was the oldest not read since it came in');
  memory.add('e', manifest(100));
  assert.deepEqual(held(memory, ['a', 'b', 'c', 'd', 'e']), ['a', 'd', 'e'], 'then c; a was read, so it stays');
  memory.add('f', manifest(100));
  assert.deepEqual(held(memory, ['a', 'd', 'e', 'f']), ['a', 'e', 'f'], 'then d: behind it a had been passed over once already');
  assert.equal(memory.bytes, 300);
});

test('the budget holds however much is read; a manifest larger than the budget is not kept and displaces nothing', () => {
  const memory = new ManifestMemory(250);
  for (const digest of ['a', 'b']) memory.add(digest, manifest(100));
  memory.get('a');
  memory.get('b');
  memory.add('c', manifest(100));
  assert.deepEqual(held(memory, ['a', 'b', 'c']), ['a', 'b'], 'both read: the new, unread one goes');
  assert.equal(memory.bytes, 200);
  memory.add('big', manifest(400));
  assert.deepEqual(held(memory, ['a', 'b', 'big']), ['a', 'b']);
  assert.equal(memory.bytes, 200);
  memory.delete('a');
  memory.delete('not-there');
  assert.equal(memory.bytes, 100);
  assert.equal(memory.get('a'), undefined);
});
