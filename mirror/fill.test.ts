// BlobFill on its own: every reader gets exactly the upstream's bytes, whether it keeps up with the
// writer (served from the in-memory window) or joins late and reads behind it from the file.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, test } from 'node:test';
import type { ByteSource } from './blob-sender.ts';
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
function source(content: Buffer, onChunk?: (written: number) => Promise<void>): Readable {
  return Readable.from((async function* () {
    for (let offset = 0; offset < content.length; offset += 65_536) {
      yield content.subarray(offset, offset + 65_536);
      await onChunk?.(offset);
    }
  })(), { objectMode: false });
}

/** Reads bytes [start, end] of the fill as the sender does; `received` sees every piece as it comes. */
async function collect(fill: BlobFill, start = 0, end = Infinity, received: Buffer[] = []): Promise<Buffer> {
  const reader = fill.openReader();
  try {
    for (let position = start; position <= end; ) {
      const next = reader.read(position, Math.min(1 << 20, end - position + 1));
      if (next === 'end') break;
      if ('wait' in next) {
        await next.wait;
        continue;
      }
      const piece = await next;
      received.push(Buffer.from(piece.bytes));
      position += piece.bytes.length;
      piece.release();
    }
  } finally {
    reader.close();
  }
  return Buffer.concat(received);
}

function contentOf(size: number): { bytes: Buffer; digest: string } {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i += 4) bytes.writeUInt32LE(Math.imul(i, 2654435761) >>> 0, i);
  return { bytes, digest: `sha256:${createHash('sha256').update(bytes).digest('hex')}` };
}

test('readers that keep up, readers that join after the memory window moved on, and ranges all get the exact bytes', { timeout: 60_000 }, async () => {
  const { bytes, digest } = contentOf(24 * 1024 * 1024);
  const fill = new BlobFill(parseDigest(digest), await temporaryPath());
  const readers: Promise<Buffer>[] = [collect(fill)];
  let late: Promise<Buffer> | undefined;
  let lateRange: Promise<Buffer> | undefined;
  const run = fill.run({ size: bytes.length, body: source(bytes, async (offset) => {
    // 16 MiB in, the window no longer holds the start: this reader reads it from the file, then catches up
    if (offset === 16 * 1024 * 1024) {
      late = collect(fill);
      lateRange = collect(fill, 1_000_000, 20_000_000);
    }
    if (offset % (1024 * 1024) === 0) await new Promise((resolve) => setImmediate(resolve));
  }) }, async () => undefined);
  readers.push(collect(fill, 5, 5));
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
  const ended = collect(fill, 0, Infinity, received).then(() => undefined, (error: unknown) => error);
  await assert.rejects(fill.run({ size: bytes.length, body: source(bytes) }, async () => undefined), DigestMismatchError);
  const error = await ended;
  assert.ok(error instanceof DigestMismatchError, 'the reader fails instead of ending');
  assert.ok(Buffer.concat(received).length < bytes.length);
});

test('written bytes stay in memory only while an open reader is behind them', { timeout: 60_000 }, async () => {
  const MiB = 1024 * 1024;
  const { bytes, digest } = contentOf(12 * MiB);
  const fill = new BlobFill(parseDigest(digest), await temporaryPath());
  const held: { behind: number; caughtUp: number } = { behind: 0, caughtUp: 0 };
  let behind: (ByteSource & { close(): void }) | undefined;
  let reading: Promise<Buffer> | undefined;
  /** Lets the disk catch up with what arrived, so what is left in memory is the fill's choice. */
  const settle = async () => {
    while (fill.written < fill.received - (fill.received % MiB)) await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
  };
  const run = fill.run({ size: bytes.length, body: source(bytes, async (offset) => {
    if (offset === 0) {
      // opened, reads nothing yet: it still needs every byte from 0
      behind = fill.openReader();
      reading = collect(fill);
    }
    if (offset === 6 * MiB) {
      await settle();
      held.behind = fill.bytesInMemory;
      behind!.close();
    }
    if (offset === 10 * MiB) {
      await settle();
      held.caughtUp = fill.bytesInMemory;
    }
    if (offset % MiB === 0) await new Promise((resolve) => setImmediate(resolve));
  }) }, async () => undefined);
  await run;
  assert.ok((await reading!).equals(bytes));
  // the window (4 MiB written) plus the slab filling, for the reader still at byte 0
  assert.ok(held.behind >= 4 * MiB, `held ${held.behind} bytes for a reader at byte 0`);
  // with every reader past the written slabs, only the slab still filling is left
  assert.ok(held.caughtUp <= MiB, `held ${held.caughtUp} bytes with every reader caught up`);
});

test('a fill that fails before it reads its body (no temporary file, the step before failing) destroys the body, which closes the upstream connection, and its readers are told', { timeout: 60_000 }, async () => {
  const { bytes, digest } = contentOf(3 * 1024 * 1024);
  const cases: { why: string; path: string; prepare?: () => Promise<void>; error: RegExp }[] = [
    { why: 'the temporary file cannot be opened', path: path.join(await temporaryPath(), 'no-such-directory', 'blob'), error: /ENOENT/ },
    { why: 'the step before the fill fails', path: await temporaryPath(), prepare: async () => { throw new Error('no room'); }, error: /no room/ },
  ];
  for (const { why, path: temporary, prepare, error } of cases) {
    const fill = new BlobFill(parseDigest(digest), temporary);
    const body = source(bytes);
    const reading = collect(fill);
    await assert.rejects(fill.run({ size: bytes.length, body }, async () => undefined, prepare), error, why);
    assert.equal(body.destroyed, true, `${why}: the body is destroyed`);
    await assert.rejects(reading, error, `${why}: the reader fails`);
  }
});
