// The pool of 1 MiB buffers: reused while transfers run, freed (memory detached at once) when the
// pool is over its limit or nobody has taken a buffer for a while.
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { test } from 'node:test';
import { BUFFER_SIZE, BufferPool } from './buffer-pool.ts';

test('a buffer given back is the next one taken; past the idle limit a given-back buffer is freed at once', () => {
  const pool = new BufferPool({ idleLimit: 2, releaseAfterMs: 60_000 });
  const [a, b, c] = [pool.take(), pool.take(), pool.take()];
  assert.equal(a.length, BUFFER_SIZE);
  pool.give(a);
  pool.give(b);
  pool.give(c);
  assert.equal(pool.idleCount, 2);
  assert.equal(c.byteLength, 0, 'the third buffer is over the limit: its memory is detached');
  assert.equal(b.byteLength, BUFFER_SIZE);
  assert.equal(pool.take(), b);
  assert.equal(pool.take(), a);
  pool.release();
});

test('idle buffers are freed once none was taken for the release period, and kept while transfers go on', async () => {
  const pool = new BufferPool({ idleLimit: 4, releaseAfterMs: 80 });
  const busy = [pool.take(), pool.take()];
  for (const buffer of busy) pool.give(buffer);
  // a transfer keeps taking and giving back for longer than the release period
  for (let i = 0; i < 8; i++) {
    await sleep(25);
    pool.give(pool.take());
  }
  assert.equal(pool.idleCount, 2, 'still in use: kept');
  assert.ok(busy.every((buffer) => buffer.byteLength === BUFFER_SIZE));
  await sleep(250);
  assert.equal(pool.idleCount, 0, 'quiet for longer than the release period: freed');
  assert.ok(busy.every((buffer) => buffer.byteLength === 0), 'freed means detached, not left to a collection');
  assert.equal(pool.take().length, BUFFER_SIZE, 'a later transfer gets a new buffer');
});
