// One upstream fetch of one blob, shared by every client that asks for it while it runs.
// What the upstream sends is copied into pooled 1 MiB buffers ("slabs"), hashed on the way, and
// written to a temporary file slab by slab; clients are sent views of the slabs as soon as the
// bytes arrive, and a client that falls behind the slabs still in memory reads the file. The last
// byte is held back until the digest checks out and the file is durable and renamed into the
// store: a client can never receive a complete response of bad content (its connection is cut
// instead), and a client that has the whole blob can count on the store having it.
import { createHash, type Hash } from 'node:crypto';
import { open, unlink, type FileHandle } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { BUFFER_SIZE, giveBuffer, takeBuffer } from './buffer-pool.ts';
import { readFilePiece, type ByteSource, type Piece, type Wait } from './blob-sender.ts';
import type { Digest } from './reference.ts';

/**
 * Written slabs kept in memory for readers a little behind the newest bytes, at most: a written
 * slab goes back to the pool as soon as every open reader is past it, and readers further behind
 * read the file. 4 MiB rather than 8: a containerd pull fills its layers at once, and at 8 MiB per
 * fill (twice, with MAX_UNWRITTEN) those fills set the mirror's peak memory (168 -> 152 MB over
 * the benchmark, cold 8 clients ~10% slower; bench/profiling.md).
 */
const MEMORY_WINDOW = 4 * BUFFER_SIZE;
/** Bytes received but not yet on disk before the fill stops reading the upstream for a while. */
const MAX_UNWRITTEN = 4 * BUFFER_SIZE;
/**
 * A datasync is started in the background every time this much more is on disk, so the one at the
 * end, which the last byte waits for, has little left to flush (a 200 MB file took 105-140 ms).
 */
const SYNC_EVERY = 32 * BUFFER_SIZE;

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

/**
 * The store could not take the bytes: its temporary file could not be created, written or synced
 * (a full or read-only volume, a failing disk, no descriptors left). The mirror's trouble, not the
 * upstream's; `code` is the system's (ENOSPC, EROFS, EIO, ...).
 */
export class StoreWriteError extends Error {
  readonly code: string;

  constructor(cause: NodeJS.ErrnoException) {
    super(`the mirror's store could not be written (${cause.code ?? cause.message})`, { cause });
    this.name = 'StoreWriteError';
    this.code = cause.code ?? 'EIO';
  }
}

function storeFailure(error: NodeJS.ErrnoException): never {
  throw new StoreWriteError(error);
}

export interface FillSource {
  /** Announced length, when the upstream sent Content-Length. */
  size: number | undefined;
  /**
   * The upstream's body, iterated once. Not by 'data' events: cheaper per chunk, but with less
   * garbage V8 collected young objects half as often, and the socket's 64 KiB buffers piled up
   * until full collections ran for them (peak memory +15 MB; bench/profiling.md).
   */
  body: Readable;
  /** Told the length of each chunk as it arrives (the bytes-fetched metric). */
  onBytes?: (bytes: number) => void;
}

/** A pooled buffer holding bytes [start, start + length) of the blob; back to the pool when nobody refers to it. */
interface Slab {
  buffer: Buffer;
  start: number;
  length: number;
  /** The fill's own reference (while the slab is resident) plus one per piece lent to a reader. */
  refs: number;
}

export class BlobFill {
  readonly digest: Digest;
  readonly temporaryPath: string;
  size: number | undefined;
  /** Bytes received from the upstream (and hashed). */
  received = 0;
  /** Bytes on disk, from the start. */
  written = 0;
  /** Set when every byte is verified, durable and in the store; readers may then read to the end. */
  verified = false;
  failure: Error | undefined;
  private readonly hash: Hash;
  private handle: FileHandle | undefined;
  /** Where each open reader reads next: it still needs every byte from there on. */
  private readonly readers = new Set<{ next: number }>();
  private finished = false;
  /** Slabs in memory, oldest first: written ones (the window), then those waiting for the disk, then the one filling. */
  private slabs: Slab[] = [];
  /** The disk writes, in order; settles when every slab queued so far is written. */
  private writing: Promise<void> = Promise.resolve();
  /** End of the bytes queued for the disk so far. */
  private queued = 0;
  private writeFailure: Error | undefined;
  /** Set when the fill failed: writes still queued are skipped. */
  private aborted = false;
  private syncing: Promise<void> | undefined;
  private syncedUpTo = 0;
  /** Settles at the next change readers care about (bytes, verification, failure). */
  private progressed!: Promise<void>;
  private announce!: () => void;
  private announcing = false;

  /** Opens the temporary file for writing (the store's openTemporary makes its directory again when it is gone). */
  private readonly openFile: (path: string) => Promise<FileHandle>;

  constructor(digest: Digest, temporaryPath: string, openFile: (path: string) => Promise<FileHandle> = (path) => open(path, 'w+')) {
    this.digest = digest;
    this.temporaryPath = temporaryPath;
    this.openFile = openFile;
    this.hash = createHash(digest.algorithm);
    this.renewProgress();
  }

  /**
   * Copies the source into the temporary file, verifying as it goes. Resolves once the content is
   * verified and `commit` (the rename into the store) has run; rejects, after removing the
   * temporary file, on any failure. Readers see the outcome through their sources. `prepare`, when
   * given, runs first, with the body not read yet (the cache sets room aside under storage.maxSize
   * there): its failure fails the fill as any other does. The body is the fill's from this call on.
   */
  async run(source: FillSource, commit: (temporaryPath: string) => Promise<void>, prepare?: () => Promise<void>): Promise<void> {
    // set at once: clients that join while `prepare` waits are told the length
    this.size = source.size;
    try {
      await prepare?.();
      this.handle = await this.openFile(this.temporaryPath).catch(storeFailure);
      await this.receive(source);
      if (this.size !== undefined && this.received !== this.size) throw new SizeMismatchError(this.size, this.received);
      const last = this.slabs.at(-1);
      if (last) this.queueWrite(last);
      await this.writing;
      if (this.writeFailure) throw this.writeFailure;
      const actual = this.hash.digest('hex');
      if (actual !== this.digest.hex) throw new DigestMismatchError(this.digest.text, `${this.digest.algorithm}:${actual}`);
      await this.syncing;
      if (this.writeFailure) throw this.writeFailure;
      await this.handle.datasync().catch(storeFailure);
      // the rename into the store is the store's too; anything else failing there is passed on as it is
      await commit(this.temporaryPath).catch((error: NodeJS.ErrnoException) => {
        throw error.syscall ? new StoreWriteError(error) : error;
      });
      this.size = this.received;
      this.verified = true;
      this.progress();
      this.finished = true;
      await this.closeIfIdle();
    } catch (error) {
      // A body nobody reads (the temporary file could not be opened: a read-only volume, no tmp
      // directory, out of descriptors) holds its upstream connection for as long as the process
      // lives, and the upstream's pool has 64 of them: destroyed, which closes that connection.
      // Nothing to do when receive() already has, or the body ended. Destroyed unread, undici's
      // body emits an abort error: with no listener that 'error' event would end the process (a
      // small blob on a read-only volume did).
      if (!source.body.destroyed) source.body.on('error', () => undefined).destroy();
      const failure = error instanceof Error ? error : new Error(String(error));
      this.aborted = true;
      await this.writing;
      await this.syncing?.catch(() => undefined);
      // Emptied before it is unlinked: a reader still attached keeps the file open, and with it
      // every block written, until its client has seen the failure. On a full volume the cache
      // makes room right after this (measuring what is free): those blocks must be free by then,
      // or it evicts them over again. A reader reading the file meanwhile is cut, as it would be.
      await this.handle?.truncate(0).catch(() => undefined);
      await unlink(this.temporaryPath).catch(() => undefined);
      this.finished = true;
      await this.closeIfIdle();
      // Published last, once nothing is left to clean up: a reader cut by it and the caller that
      // counts it (in this same turn) both find the fill settled, its temporary file gone.
      this.failure = failure;
      this.progress();
      throw failure;
    }
  }

  /**
   * Takes the body chunk by chunk until it ends, reading on only once no more than MAX_UNWRITTEN
   * bytes wait for the disk. Rejects on the first failure (the body's, a size or write failure);
   * leaving the loop by a throw destroys the body, which closes the upstream connection.
   */
  private async receive(source: FillSource): Promise<void> {
    for await (const chunk of source.body as AsyncIterable<Buffer>) {
      this.take(chunk);
      source.onBytes?.(chunk.byteLength);
      if (this.received - this.written > MAX_UNWRITTEN) await this.writing;
    }
  }

  /** One chunk of the body: checked against the announced size, hashed, copied into slabs, on its way to disk. */
  private take(chunk: Buffer): void {
    if (this.size !== undefined && this.received + chunk.byteLength > this.size) throw new SizeMismatchError(this.size, this.received + chunk.byteLength);
    this.hash.update(chunk);
    this.append(chunk);
    // The first bytes go to disk at once: readers start only once the store takes bytes, so a
    // full volume is answered with an error, not with a response cut after its headers.
    if (this.queued === 0) this.queueWrite(this.slabs.at(-1)!);
    this.progress();
    if (this.writeFailure) throw this.writeFailure;
  }

  /** Bytes of the blob the fill holds in memory (slabs it keeps, not counting pieces readers are still sending). */
  get bytesInMemory(): number {
    return this.slabs.reduce((sum, slab) => sum + slab.length, 0);
  }

  /** A source for one reader; `close` it when done (the fill keeps its file and slabs until every reader has). */
  openReader(): ByteSource & { close(): void } {
    const reader = { next: 0 };
    this.readers.add(reader);
    let closed = false;
    return {
      read: (position, max) => {
        reader.next = position;
        const result = this.read(position, max);
        // A piece lent just now holds its slab; what this reader has passed may go.
        this.trimWindow();
        return result;
      },
      close: () => {
        if (closed) return;
        closed = true;
        this.readers.delete(reader);
        this.trimWindow();
        void this.closeIfIdle();
      },
    };
  }

  /** Bytes a reader may take: everything once verified, else all but the last byte, once the first write is on disk. */
  private available(): number {
    if (this.verified) return this.received;
    if (this.written === 0) return 0;
    return Math.max(0, Math.min(this.received, (this.size ?? this.received) - 1));
  }

  private read(position: number, max: number): Piece | Promise<Piece> | Wait | 'end' {
    if (this.failure) throw this.failure;
    const available = this.available();
    if (position >= available) return this.verified ? 'end' : { wait: this.progressed };
    const length = Math.min(max, available - position);
    const slab = this.slabAt(position);
    if (slab) {
      slab.refs++;
      const offset = position - slab.start;
      return { bytes: slab.buffer.subarray(offset, Math.min(slab.length, offset + length)), release: () => this.unref(slab) };
    }
    // Behind every slab still in memory, so on disk already.
    if (!this.handle) throw new Error('blob fill closed while a reader was still reading');
    return readFilePiece(this.handle, position, length);
  }

  private slabAt(position: number): Slab | undefined {
    for (let i = this.slabs.length - 1; i >= 0; i--) {
      const slab = this.slabs[i]!;
      if (position >= slab.start) return position < slab.start + slab.length ? slab : undefined;
    }
    return undefined;
  }

  /** Copies a chunk into slabs, queueing each slab that fills up for the disk. */
  private append(chunk: Uint8Array): void {
    let offset = 0;
    while (offset < chunk.byteLength) {
      let slab = this.slabs.at(-1);
      if (!slab || slab.length === BUFFER_SIZE) {
        slab = { buffer: takeBuffer(), start: this.received, length: 0, refs: 1 };
        this.slabs.push(slab);
      }
      const n = Math.min(chunk.byteLength - offset, BUFFER_SIZE - slab.length);
      slab.buffer.set(chunk.subarray(offset, offset + n), slab.length);
      slab.length += n;
      offset += n;
      this.received += n;
      if (slab.length === BUFFER_SIZE) this.queueWrite(slab);
    }
  }

  /** Writes the slab's bytes not queued yet, after those queued before; then trims the window and starts a datasync now and then. */
  private queueWrite(slab: Slab): void {
    const handle = this.handle!;
    const from = Math.max(this.queued, slab.start);
    const to = slab.start + slab.length;
    if (to <= from) return;
    this.queued = to;
    this.writing = this.writing.then(async () => {
      if (this.writeFailure || this.aborted) return;
      try {
        for (let at = from; at < to; ) {
          const { bytesWritten } = await handle.write(slab.buffer, at - slab.start, to - at, at);
          at += bytesWritten;
        }
      } catch (error) {
        // the run loop sees it at its next chunk and fails the fill
        this.writeFailure = new StoreWriteError(error as NodeJS.ErrnoException);
        return;
      }
      this.written = to;
      this.progress();
      this.trimWindow();
      if (!this.syncing && this.written - this.syncedUpTo >= SYNC_EVERY) {
        const upTo = this.written;
        this.syncing = handle.datasync().then(
          () => {
            this.syncedUpTo = upTo;
            this.syncing = undefined;
          },
          (error: NodeJS.ErrnoException) => {
            this.writeFailure ??= new StoreWriteError(error);
            this.syncing = undefined;
          },
        );
      }
    });
  }

  /**
   * Lets go of written slabs that no open reader needs any more, and of those beyond the window
   * whoever needs them (they read the file); a reader still sending one keeps it until it is sent.
   */
  private trimWindow(): void {
    let resident = this.written - (this.slabs[0]?.start ?? this.written);
    while (this.slabs.length > 1) {
      const slab = this.slabs[0]!;
      const end = slab.start + slab.length;
      if (end > this.written) break;
      // Oldest first: a reader that needs this slab needs every later one too.
      if (resident - slab.length < MEMORY_WINDOW && this.neededBefore(end)) break;
      this.slabs.shift();
      resident -= slab.length;
      this.unref(slab);
    }
  }

  /** Whether an open reader has yet to read some byte before `end`. */
  private neededBefore(end: number): boolean {
    for (const reader of this.readers) if (reader.next < end) return true;
    return false;
  }

  private unref(slab: Slab): void {
    if (--slab.refs === 0) giveBuffer(slab.buffer);
  }

  private renewProgress(): void {
    this.progressed = new Promise<void>((resolve) => (this.announce = resolve));
  }

  /**
   * Wakes waiting readers once the chunks that arrived in this turn of the event loop are in: a
   * reader then sends them as one write rather than one per 64 KiB chunk.
   */
  private progress(): void {
    if (this.announcing) return;
    this.announcing = true;
    setImmediate(() => {
      this.announcing = false;
      const announce = this.announce;
      this.renewProgress();
      announce();
    });
  }

  private async closeIfIdle(): Promise<void> {
    if (!this.finished || this.readers.size > 0) return;
    for (const slab of this.slabs.splice(0)) this.unref(slab);
    if (this.handle) {
      const handle = this.handle;
      this.handle = undefined;
      await handle.close().catch(() => undefined);
    }
  }
}
