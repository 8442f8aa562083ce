import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TagMemory } from './tag-memory.ts';

const record = (digest: string) => ({ digest, mediaType: 'application/vnd.oci.image.manifest.v1+json', checkedAt: 0 });
const ref = (tag: string) => ({ registry: 'docker.io', name: 'library/app', tag });

test('past its limit the records written longest ago leave memory; one written again counts as new', () => {
  const memory = new TagMemory(3);
  for (const tag of ['a', 'b', 'c']) memory.set(`k:${tag}`, ref(tag), record(`sha256:${tag}`));
  memory.set('k:a', ref('a'), record('sha256:a2'));
  memory.set('k:d', ref('d'), record('sha256:d'));
  assert.equal(memory.size, 3);
  assert.equal(memory.get('k:b'), undefined);
  assert.equal(memory.get('k:a')?.digest, 'sha256:a2');
  // a record dropped for room is no longer found by its manifest either
  assert.deepEqual(memory.takePointingAt('sha256:b'), []);
});

test('the records pointing at a manifest are taken out together, and only those', () => {
  const memory = new TagMemory();
  memory.set('k:v1', ref('v1'), record('sha256:x'));
  memory.set('k:latest', ref('latest'), record('sha256:x'));
  memory.set('k:v2', ref('v2'), record('sha256:y'));
  // a tag that moved no longer counts for its old manifest
  memory.set('k:old', ref('old'), record('sha256:x'));
  memory.set('k:old', ref('old'), record('sha256:y'));
  assert.deepEqual(memory.takePointingAt('sha256:x').map((r) => r.tag).sort(), ['latest', 'v1']);
  assert.equal(memory.get('k:v1'), undefined);
  assert.equal(memory.get('k:v2')?.digest, 'sha256:y');
  assert.equal(memory.size, 2);
});
