// The loop that writes a blob's bytes on a response: it keeps the next piece ready while the socket
// is still taking the previous one, never holds more than IN_FLIGHT pieces for one client however
// slow that client is, and gives every piece back.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { waitFor } from '../test/harness/process.ts';
import { IN_FLIGHT, sendRange, type ByteSource } from './blob-sender.ts';
import { BUFFER_SIZE } from './buffer-pool.ts';

/** The loop asks a source for at most one pooled buffer's worth at a time. */
const PIECE = BUFFER_SIZE;
const SIZE = 48 * PIECE;

/** The byte at `position` of the test content: a pattern a shifted or dropped piece would break. */
const byteAt = (position: number) => (position * 7 + (position >> 20)) & 0xff;

/** A source of SIZE pattern bytes in PIECE pieces that counts what it lends and gets back. */
function countingSource() {
  const counts = { read: 0, released: 0 };
  const source: ByteSource = {
    read(position, max) {
      if (position >= SIZE) return 'end';
      const bytes = Buffer.alloc(Math.min(max, PIECE, SIZE - position));
      for (let i = 0; i < bytes.length; i++) bytes[i] = byteAt(position + i);
      counts.read++;
      return { bytes, release: () => counts.released++ };
    },
  };
  return { source, counts };
}

/** Waits until `value()` has not changed for `quietMs` (the harness's poller bounds it), and returns it. */
async function settled(value: () => number, quietMs = 400): Promise<number> {
  let last = value();
  let quietSince = Date.now();
  await waitFor(() => {
    const now = value();
    if (now !== last) [last, quietSince] = [now, Date.now()];
    return Date.now() - quietSince >= quietMs;
  }, { intervalMs: 25, what: 'the send loop to stop reading' });
  return last;
}

test('a client that stops reading holds IN_FLIGHT pieces, the next one already read; once it reads on it gets every byte', async () => {
  const { source, counts } = countingSource();
  let sent: Promise<number> | undefined;
  const server = http.createServer((_request, response) => {
    sent = sendRange(response, source, 0, SIZE - 1, () => response.writeHead(200, { 'content-length': SIZE }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  try {
    const client = net.connect(port, '127.0.0.1');
    await once(client, 'connect');
    client.pause();
    client.write(`GET /blob HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n`);

    // The kernel's buffers fill, then the loop stops: with IN_FLIGHT pieces lent to the socket,
    // the last of them read while the one before was still being sent.
    const read = await settled(() => counts.read);
    assert.ok(read < SIZE / PIECE, `the loop stopped before the end (${read} pieces read)`);
    assert.equal(read - counts.released, IN_FLIGHT, `pieces held for a client that does not read: ${read - counts.released}`);

    const chunks: Buffer[] = [];
    client.on('data', (chunk: Buffer) => chunks.push(chunk));
    client.resume();
    await once(client, 'end');
    const answer = Buffer.concat(chunks);
    const body = answer.subarray(answer.indexOf('\r\n\r\n') + 4);
    assert.match(answer.subarray(0, 12).toString(), /^HTTP\/1\.1 200/);
    assert.equal(body.length, SIZE);
    for (let position = 0; position < SIZE; position += 4093) assert.equal(body[position], byteAt(position), `byte ${position}`);
    assert.equal(await sent, SIZE);
    assert.equal(counts.released, counts.read, 'every piece given back');
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('a client that takes no bytes for the send timeout is cut, in the loop or after end(), and every piece is given back; a client waiting on a source slower than that is not', async () => {
  const TIMEOUT = 300;
  const stalled = countingSource();
  // one piece larger than any socket buffer: the loop is past end() while the client has not taken it
  const WHOLE = 16 * PIECE;
  const whole = { read: 0, released: 0 };
  const endSource: ByteSource = {
    read(position) {
      if (position >= WHOLE) return 'end';
      whole.read++;
      return { bytes: Buffer.alloc(WHOLE - position, 1), release: () => whole.released++ };
    },
  };
  // a cold fill from an upstream slower than the timeout: nothing waits for the client meanwhile
  const SLOW = 4 * 65_536;
  let arrived = 0;
  const slowSource: ByteSource = {
    read(position, max) {
      if (position >= SLOW) return 'end';
      if (position >= arrived) return {
        wait: new Promise<void>((resolve) =>
          setTimeout(() => {
            arrived += 65_536;
            resolve();
          }, 2 * TIMEOUT),
        ),
      };
      return { bytes: Buffer.alloc(Math.min(max, arrived - position), 2), release: () => undefined };
    },
  };
  const sources: Record<string, { source: ByteSource; size: number }> = {
    '/stalled': { source: stalled.source, size: SIZE },
    '/end': { source: endSource, size: WHOLE },
    '/slow': { source: slowSource, size: SLOW },
  };
  const outcomes = new Map<string, { sent?: number; cuts: number }>();
  const server = http.createServer((request, response) => {
    const { source, size } = sources[request.url!]!;
    const outcome: { sent?: number; cuts: number } = { cuts: 0 };
    outcomes.set(request.url!, outcome);
    void sendRange(response, source, 0, size - 1, () => response.writeHead(200, { 'content-length': size }), { timeoutMs: TIMEOUT, onTimeout: () => outcome.cuts++ }).then((sent) => (outcome.sent = sent));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  const clients: net.Socket[] = [];
  try {
    for (const path of ['/stalled', '/end']) {
      const client = net.connect(port, '127.0.0.1');
      clients.push(client);
      await once(client, 'connect');
      client.pause();
      client.write(`GET ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n`);
    }
    const slowBody = new Promise<number>((resolve, reject) => {
      let received = 0;
      http.get(`http://127.0.0.1:${port}/slow`, (res) => {
        res.on('data', (chunk: Buffer) => (received += chunk.length));
        res.on('end', () => resolve(received));
        res.on('error', reject);
      }).on('error', reject);
    });

    await waitFor(() => ['/stalled', '/end', '/slow'].every((path) => outcomes.get(path)?.sent !== undefined), { timeoutMs: 10_000, what: 'every response to be done' });
    for (const [path, counts, size] of [['/stalled', stalled.counts, SIZE], ['/end', whole, WHOLE]] as const) {
      const outcome = outcomes.get(path)!;
      assert.equal(outcome.cuts, 1, `${path}: cut once`);
      assert.ok(outcome.sent! < size, `${path}: ${outcome.sent} of ${size} bytes taken`);
      assert.equal(counts.released, counts.read, `${path}: every piece given back`);
    }
    assert.equal(outcomes.get('/slow')!.cuts, 0, 'the client of the slow source was not cut');
    assert.equal(outcomes.get('/slow')!.sent, SLOW);
    assert.equal(await slowBody, SLOW);
  } finally {
    for (const client of clients) client.destroy();
    server.closeAllConnections();
    server.close();
  }
});
