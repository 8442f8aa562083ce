// BlobFill on its own: every reader gets exactly the upstream's bytes, whether it keeps up with the
// writer (served from the in-memory window) or joins late and reads behind it from the file.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { after, test } from 'node:test';
import { BlobFill, DigestMismatchError } from './fill.ts';
import { parseDigest } from './reference.ts';

const dirs: string[] = [];
after(async () => Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true }))));

async function temporaryPath(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'regmirror-fill-'));
  dirs.push(dir);
  return path.join(dir, 'blob');
}

/** `size` bytes in 64 KiB chunks (as undici delivers them), pausing now and then like a network. */
function source(content: Buffer, onChunk?: (written: number) => Promise<void>): AsyncIterable<Uint8Array> {
  return (async function* () {
    for (let offset = 0; offset < content.length; offset += 65_536) {
      yield content.subarray(offset, offset + 65_536);
      await onChunk?.(offset);
    }
  })();
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

function contentOf(size: number): { bytes: Buffer; digest: string } {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) bytes.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
}

test('readers that keep up, readers that join after the memory window moved on, and ranges all get the exact bytes', { timeout: 60_000 }, async () => {
  const { bytes, digest } = contentOf(24 * 1024 * 1024);
  const fill = new BlobFill(parseDigest(digest), await temporaryPath());
  const readers: Promise<Buffer>[] = [collect(fill.createReader())];
  let late: Promise<Buffer> | undefined;
  let lateRange: Promise<Buffer> | undefined;
  const run = fill.run({ size: bytes.length, body: source(bytes, async (offset) => {
    // 16 MiB in, the window no longer holds the start: this reader reads it from the file, then catches up
    if (offset === 16 * 1024 * 1024) {
      late = collect(fill.createReader());
      lateRange = collect(fill.createReader(1_000_000, 20_000_000));
    }
    if (offset % (1024 * 1024) === 0) await new Promise((resolve) => setImmediate(resolve));
  }) }, async () => undefined);
  readers.push(collect(fill.createReader(5, 5)));
  await run;
  const [whole, oneByte] = await Promise.all(readers);
  assert.ok(whole!.equals(bytes));
  assert.ok(oneByte!.equals(bytes.subarray(5, 6)));
  assert.ok((await late!).equals(bytes));
  assert.ok((await lateRange!).equals(bytes.subarray(1_000_000, 20_000_001)));
});

test('a reader of content that does not match its digest never receives the last byte', { timeout: 60_000 }, async () => {
  const { bytes } = contentOf(3 * 1024 * 1024);
  const wrong = `sha256:${'0'.repeat(64)}`;
  const fill = new BlobFill(parseDigest(wrong), await temporaryPath());
  const received: Buffer[] = [];
  const reader = fill.createReader();
  reader.on('data', (chunk: Buffer) => received.push(chunk));
  const ended = new Promise<Error | undefined>((resolve) => {
    reader.on('error', resolve);
    reader.on('end', () => resolve(undefined));
  });
  await assert.rejects(fill.run({ size: bytes.length, body: source(bytes) }, async () => undefined), DigestMismatchError);
  const error = await ended;
  assert.ok(error instanceof DigestMismatchError, 'the reader fails instead of ending');
  assert.ok(Buffer.concat(received).length < bytes.length);
});
