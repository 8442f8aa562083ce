import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { hey } from './load.ts';
import { startNginx } from './nginx.ts';
import { freePort, httpRequest, makeTempDir } from './process.ts';

test('nginx serves the files of a temp dir byte for byte, and hey measures it', async () => {
  const root = await makeTempDir('www');
  const bytes = createHash('sha512').update('x').digest();
  await mkdir(path.join(root, 'blobs'));
  await writeFile(path.join(root, 'blobs', 'one'), bytes);
  const nginx = await startNginx({ root, workers: 1 });
  try {
    const res = await httpRequest(`${nginx.url}/blobs/one`);
    assert.equal(res.status, 200);
    assert.deepEqual(res.body, bytes);
    assert.equal((await httpRequest(`${nginx.url}/blobs/none`)).status, 404);

    const load = await hey(`${nginx.url}/blobs/one`, { requests: 200, concurrency: 4 });
    assert.deepEqual(load.statusCodes, { '200': 200 });
    assert.equal(load.requests, 200);
    assert.equal(load.errors, 0);
    assert.equal(load.totalBytes, 200 * bytes.length);
    assert.ok(load.requestsPerSecond > 0 && load.latencyMs.p99 >= load.latencyMs.p50);
  } finally {
    await nginx.stop();
  }
});

test('hey counts requests that get no response as errors', async () => {
  const load = await hey(`http://127.0.0.1:${await freePort()}/`, { requests: 10, concurrency: 2, timeoutSec: 2 });
  assert.equal(load.errors, 10);
  assert.deepEqual(load.statusCodes, {});
});
