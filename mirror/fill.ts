// One upstream fetch of one blob, shared by every client that asks for it while it runs.
// The bytes go to a temporary file as they arrive and are hashed on the way; each client reads
// that file behind the writer, so nobody waits for the whole blob. The last byte is held back
// until the digest checks out: a client can never receive a complete response of bad content,
// its connection is cut instead. Verified content is renamed into the store.
import { createHash, type Hash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import type { Digest } from './reference.ts';

const READ_CHUNK = 1 << 20;
/** The newest bytes written stay in memory too: readers keeping up with the writer take them from here, not the file. */
const MEMORY_WINDOW = 8 << 20;

export class DigestMismatchError extends Error {
  constructor(expected: string, actual: string) {
    super(`upstream sent content with digest ${actual}, expected ${expected}: discarded`);
    this.name = 'DigestMismatchError';
  }
}

export class SizeMismatchError extends Error {
  constructor(expected: number, actual: number) {
    super(`upstream sent ${actual} bytes, announced ${expected}: discarded`);
    this.name = 'SizeMismatchError';
  }
}

export interface FillSource {
  /** Announced length, when the upstream sent Content-Length. */
  size: number | undefined;
  body: AsyncIterable<Uint8Array>;
}

export class BlobFill extends EventEmitter {
  readonly digest: Digest;
  readonly temporaryPath: string;
  size: number | undefined;
  written = 0;
  /** Set when every byte is written and verified; readers may then read to the end. */
  verified = false;
  failure: Error | undefined;
  private readonly hash: Hash;
  private handle: FileHandle | undefined;
  private readers = 0;
  private finished = false;
  /** The last MEMORY_WINDOW bytes or so, as written, oldest first. */
  private recent: { start: number; bytes: Uint8Array }[] = [];
  private recentBytes = 0;

  constructor(digest: Digest, temporaryPath: string) {
    super();
    this.setMaxListeners(0);
    this.digest = digest;
    this.temporaryPath = temporaryPath;
    this.hash = createHash(digest.algorithm);
  }

  /**
   * Copies the source into the temporary file, verifying as it goes. Resolves once the content is
   * verified and `commit` (the rename into the store) has run; rejects, after removing the
   * temporary file, on any failure. Readers see the outcome through events.
   */
  async run(source: FillSource, commit: (temporaryPath: string) => Promise<void>): Promise<void> {
    this.size = source.size;
    try {
      this.handle = await open(this.temporaryPath, 'w+');
      for await (const chunk of source.body) {
        if (this.size !== undefined && this.written + chunk.byteLength > this.size) throw new SizeMismatchError(this.size, this.written + chunk.byteLength);
        this.hash.update(chunk);
        await this.handle.write(chunk, 0, chunk.byteLength, this.written);
        this.remember(chunk);
        this.written += chunk.byteLength;
        this.emit('progress');
      }
      if (this.size !== undefined && this.written !== this.size) throw new SizeMismatchError(this.size, this.written);
      const actual = this.hash.digest('hex');
      if (actual !== this.digest.hex) throw new DigestMismatchError(this.digest.text, `${this.digest.algorithm}:${actual}`);
      await this.handle.datasync();
      await commit(this.temporaryPath);
      this.size = this.written;
      this.verified = true;
      this.emit('progress');
    } catch (error) {
      this.failure = error instanceof Error ? error : new Error(String(error));
      this.emit('progress');
      await unlink(this.temporaryPath).catch(() => undefined);
      throw this.failure;
    } finally {
      this.finished = true;
      await this.closeIfIdle();
    }
  }

  /** Bytes a reader may take: everything once verified, else all but the last byte. */
  private available(): number {
    if (this.verified) return this.written;
    return Math.max(0, Math.min(this.written, (this.size ?? this.written) - 1));
  }

  /** A stream of bytes [start, end] (inclusive) that follows the writer. */
  createReader(start = 0, end?: number): Readable {
    this.readers++;
    let position = start;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.readers--;
      void this.closeIfIdle();
    };
    const fill = this;
    const stream = new Readable({
      highWaterMark: READ_CHUNK,
      async read() {
        try {
          for (;;) {
            const last = end ?? (fill.verified ? fill.written - 1 : Infinity);
            if (position > last) {
              this.push(null);
              release();
              return;
            }
            if (fill.failure) throw fill.failure;
            const available = fill.available();
            if (position < available) {
              const length = Math.min(available - position, READ_CHUNK, last - position + 1);
              const inMemory = fill.fromMemory(position, length);
              if (inMemory) {
                position += inMemory.length;
                this.push(inMemory);
                return;
              }
            }
            if (position < available && fill.handle) {
              const length = Math.min(available - position, READ_CHUNK, last - position + 1);
              const buffer = Buffer.allocUnsafe(length);
              const { bytesRead } = await fill.handle.read(buffer, 0, length, position);
              position += bytesRead;
              this.push(bytesRead === length ? buffer : buffer.subarray(0, bytesRead));
              return;
            }
            await new Promise<void>((resolve) => fill.once('progress', resolve));
          }
        } catch (error) {
          release();
          this.destroy(error as Error);
        }
      },
      destroy(error, callback) {
        release();
        callback(error);
      },
    });
    return stream;
  }

  /** Keeps a written chunk (at offset `written`) in the window, dropping the oldest beyond it. */
  private remember(chunk: Uint8Array): void {
    this.recent.push({ start: this.written, bytes: chunk });
    this.recentBytes += chunk.byteLength;
    while (this.recent.length > 1 && this.recentBytes - this.recent[0]!.bytes.byteLength >= MEMORY_WINDOW) {
      this.recentBytes -= this.recent.shift()!.bytes.byteLength;
    }
  }

  /** Up to `length` bytes at `position` without copying, when the window still holds them. */
  private fromMemory(position: number, length: number): Buffer | undefined {
    for (let i = this.recent.length - 1; i >= 0; i--) {
      const entry = this.recent[i]!;
      if (position < entry.start) continue;
      const offset = position - entry.start;
      if (offset >= entry.bytes.byteLength) return undefined;
      return Buffer.from(entry.bytes.buffer, entry.bytes.byteOffset + offset, Math.min(length, entry.bytes.byteLength - offset));
    }
    return undefined;
  }

  private async closeIfIdle(): Promise<void> {
    if (this.finished && this.readers === 0) {
      this.recent = [];
      this.recentBytes = 0;
    }
    if (this.finished && this.readers === 0 && this.handle) {
      const handle = this.handle;
      this.handle = undefined;
      await handle.close().catch(() => undefined);
    }
  }
}
