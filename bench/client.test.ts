import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { download, downloadInParallel, firstByte, parseCurlTimings } from './client.ts';

test('curl timings are read in milliseconds', () => {
  assert.deepEqual(parseCurlTimings('200 1048576 0.012500 0.250000'), { status: 200, bytes: 1048576, headersMs: 12.5, totalMs: 250 });
  assert.throws(() => parseCurlTimings(''), /no timings/);
});

/** A server that waits firstByteMs before its first body byte, then sends `size` bytes. */
async function slowStartServer(size: number, firstByteMs: number) {
  let requests = 0;
  const server = http.createServer((_request, response) => {
    requests++;
    response.writeHead(200, { 'content-length': String(size) });
    response.flushHeaders();
    setTimeout(() => response.end(Buffer.alloc(size, 7)), firstByteMs);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/blob`, close: () => server.close(), requests: () => requests };
}

test('first byte means the first byte of content: a server that sends its headers early gains nothing', async () => {
  const server = await slowStartServer(3_000_000, 300);
  try {
    const result = await firstByte(server.url, { expectBytes: 3_000_000 });
    assert.equal(result.bytes, 3_000_000);
    assert.ok(result.headersMs < 250, `headers ${result.headersMs}`);
    assert.ok(result.firstByteMs >= 290 && result.firstByteMs < 2_000, `first byte ${result.firstByteMs}`);
    assert.ok(result.totalMs >= result.firstByteMs);
    await assert.rejects(firstByte(server.url, { expectBytes: 5 }), /gave 3000000 bytes, expected 5/);
    // curl's time_starttransfer is the first byte of the response: the headers here
    const curl = await download(server.url, { expectBytes: 3_000_000 });
    assert.ok(curl.headersMs < 250 && curl.totalMs >= 290, `curl headers ${curl.headersMs}, total ${curl.totalMs}`);
    await assert.rejects(download(server.url, { expectBytes: 5 }), /gave 3000000 bytes, expected 5/);
  } finally {
    server.close();
  }
});

test('parallel downloads are separate clients started together, and the rate is all their bytes over the wall time', async () => {
  const server = await slowStartServer(1_000_000, 200);
  try {
    const result = await downloadInParallel(server.url, 4, { expectBytes: 1_000_000 });
    assert.equal(server.requests(), 4);
    assert.equal(result.downloads.length, 4);
    // all four waited 200 ms at the same time: together well under 4 x 200 ms
    assert.ok(result.wallMs >= 200 && result.wallMs < 700, `wall ${result.wallMs}`);
    assert.ok(Math.abs(result.bytesPerSecond - 4_000_000 / (result.wallMs / 1000)) < 1);
  } finally {
    server.close();
  }
});
