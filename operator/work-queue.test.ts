import { test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { WorkQueue } from './work-queue.ts';

test('a key added many times while waiting is processed once', async () => {
  const queue = new WorkQueue();
  for (let i = 0; i < 5; i++) queue.add('ns/a');
  queue.add('ns/b');
  assert.equal(queue.depth, 2);
  assert.equal(await queue.get(), 'ns/a');
  assert.equal(await queue.get(), 'ns/b');
  assert.equal(queue.depth, 0);
});

test('a key added while it is being processed runs again after, never twice at once', async () => {
  const queue = new WorkQueue();
  queue.add('ns/a');
  const key = await queue.get();
  queue.add('ns/a');
  assert.equal(queue.depth, 0, 'not handed out while processing');
  let second: string | undefined;
  void queue.get().then((k) => { second = k; });
  await sleep(5);
  assert.equal(second, undefined);
  queue.done(key!);
  await sleep(5);
  assert.equal(second, 'ns/a');
});

test('failures back off exponentially up to a cap and forget resets them', () => {
  const queue = new WorkQueue({ baseDelayMs: 100, maxDelayMs: 1000 });
  assert.deepEqual([1, 2, 3, 4, 5].map(() => queue.addRateLimited('ns/a')), [100, 200, 400, 800, 1000]);
  queue.forget('ns/a');
  assert.equal(queue.addRateLimited('ns/a'), 100);
  queue.shutDown();
});

test('a delayed add arrives after its delay, and the earlier of two delays wins', async () => {
  const queue = new WorkQueue();
  queue.addAfter('ns/a', 500);
  queue.addAfter('ns/a', 20);
  const started = Date.now();
  assert.equal(await queue.get(), 'ns/a');
  assert.ok(Date.now() - started < 400);
  queue.shutDown();
});

test('shutting down releases waiting workers', async () => {
  const queue = new WorkQueue();
  const waiting = queue.get();
  queue.shutDown();
  assert.equal(await waiting, undefined);
});

test('queue depth is reported as keys come and go', async () => {
  const depths: number[] = [];
  const queue = new WorkQueue({ onDepth: (d) => depths.push(d) });
  queue.add('a');
  queue.add('b');
  await queue.get();
  assert.deepEqual(depths, [1, 2, 1]);
});
