// Writes a blob's bytes on an HTTP response, from a stored file or from a fill still arriving, with
// no per-chunk allocation: file reads go into pooled 1 MiB buffers (buffer-pool.ts), fill bytes are
// sent as views of the fill's own buffers, and each piece is given back once the socket has taken
// it (the write callback). A stream would allocate a buffer per read and leave it to the garbage
// collector; measured, this loop serves a stored 200 MB blob about twice as fast with less peak
// memory (bench/profiling.md). Node has no sendfile or mmap; both, tried through a prototype addon,
// were no faster here within the memory budget (sendfile slower, mmap only with whole blobs mapped).
import type { ServerResponse } from 'node:http';
import type { FileHandle } from 'node:fs/promises';
import { BUFFER_SIZE, giveBuffer, takeBuffer } from './buffer-pool.ts';

/**
 * Pieces handed to the socket and not yet taken by it, per response: enough to keep it busy while
 * the next read runs. Measured against 4: as fast or faster (warm 200 MB, 8 clients, 2593 vs 2336
 * MB/s), with half the buffers lent out per client. This count alone holds the loop back: waiting
 * for the response's 'drain' as well (true after any write over 16 KiB) made each read wait until
 * the socket had taken everything, so reading and sending took turns; 1 client of a stored 200 MB
 * blob went from 1201 to 1529 MB/s without it (bench/profiling.md).
 */
export const IN_FLIGHT = 2;

/**
 * How long a response may go with bytes waiting for the socket and none taken (no write callback)
 * before it is cut, as nginx's send_timeout. A client that stops reading would otherwise hold an
 * open file, an eviction pin and IN_FLIGHT pooled buffers for as long as its connection lives.
 * Waiting for bytes that have not arrived yet (a cold fill from a slow upstream) does not count.
 */
export const SEND_TIMEOUT_MS = 60_000;

export interface SendOptions {
  /** SEND_TIMEOUT_MS unless given (tests shorten it). */
  timeoutMs?: number;
  /** Told, with the bytes the socket had taken, when the response was cut for taking none for that long. */
  onTimeout?(sent: number): void;
}

/** Bytes lent by a source; `release` gives them back once they are sent (or can no longer be). */
export interface Piece {
  bytes: Buffer;
  release(): void;
}

/** Not there yet: `wait` settles when more bytes may be. */
export interface Wait {
  wait: Promise<void>;
}

export interface ByteSource {
  /**
   * Up to `max` bytes at `position`: a piece (or the promise of one, when a file has to be read),
   * a Wait when they have not arrived yet, or 'end' when the content ends before `position`.
   * Throws (or rejects) when the source failed: the response is then cut, never ended short.
   */
  read(position: number, max: number): Piece | Promise<Piece> | Wait | 'end';
}

/** Up to `max` bytes of a file at `position`, read into a pooled buffer. */
export async function readFilePiece(file: FileHandle, position: number, max: number): Promise<Piece> {
  const buffer = takeBuffer();
  try {
    const { bytesRead } = await file.read(buffer, 0, Math.min(max, BUFFER_SIZE), position);
    if (bytesRead === 0) throw new Error(`file ended at byte ${position}, before the content did`);
    return { bytes: bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead), release: () => giveBuffer(buffer) };
  } catch (error) {
    giveBuffer(buffer);
    throw error;
  }
}

/** A stored file as a source: every byte is there. */
export function fileSource(file: FileHandle): ByteSource {
  return { read: (position, max) => readFilePiece(file, position, max) };
}

/**
 * Writes bytes [start, end] of the source to the response and ends it; `end` may be Infinity when
 * the length is not known (the source says when it ends). `begin` sends the headers: it is called
 * once the first bytes are at hand (or the content turns out empty), so a source that fails before
 * that rejects here and the caller can still answer with an error. Resolves with the bytes the
 * socket accepted. A client that goes away ends the loop early; a source failing after the headers
 * destroys the response, so the client sees a cut connection, never a short success; so does a
 * client that takes no byte for the send timeout while some wait for it (SEND_TIMEOUT_MS).
 */
export async function sendRange(response: ServerResponse, source: ByteSource, start: number, end: number, begin: () => void, options: SendOptions = {}): Promise<number> {
  let position = start;
  let inFlight = 0;
  let sent = 0;
  let ended = false;
  let wake: (() => void) | undefined;
  const signal = () => {
    const resume = wake;
    wake = undefined;
    resume?.();
  };
  // One timer per response, refreshed as the socket takes bytes rather than one set per piece. It
  // runs from the last write callback, or from the moment bytes began to wait when none were; when
  // it fires with nothing waiting, the next write starts it again.
  const timeoutMs = options.timeoutMs ?? SEND_TIMEOUT_MS;
  let timer: NodeJS.Timeout | undefined;
  const stalled = () => {
    // nothing waits for the client: the source is the slow one, or every byte, the end too, is taken
    if ((inFlight === 0 && !ended) || response.writableFinished || response.destroyed) return;
    options.onTimeout?.(sent);
    // 'close' follows: the loop or the wait after end() stops, and the pending write callbacks
    // give their pieces back; the caller then closes the file and unpins the blob
    response.destroy();
  };
  const bytesWaiting = () => {
    if (timer) timer.refresh();
    else timer = setTimeout(stalled, timeoutMs).unref();
  };
  let begun = false;
  const beginOnce = () => {
    if (begun) return;
    begun = true;
    begin();
  };
  // the write callbacks wake the loop as the socket takes pieces; 'close' when the client goes away
  response.on('close', signal);
  try {
    while (position <= end && !response.destroyed) {
      if (inFlight >= IN_FLIGHT) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const next = source.read(position, Math.min(BUFFER_SIZE, end - position + 1));
      if (next === 'end') break;
      if ('wait' in next) {
        // more bytes, or the client going away ('close' signals too)
        await new Promise<void>((resolve) => {
          wake = resolve;
          void next.wait.then(signal);
        });
        continue;
      }
      const piece = await next;
      if (response.destroyed) {
        piece.release();
        break;
      }
      beginOnce();
      const length = piece.bytes.length;
      position += length;
      if (inFlight++ === 0) bytesWaiting();
      response.write(piece.bytes, (error) => {
        inFlight--;
        timer!.refresh();
        if (!error) sent += length;
        // On an error the socket is gone and no longer holds the bytes either.
        piece.release();
        signal();
      });
    }
    beginOnce();
    if (!response.destroyed) {
      // what is still in flight, and the end itself, fall under the same deadline
      ended = true;
      if (inFlight === 0) bytesWaiting();
      response.end();
    }
  } catch (error) {
    if (!begun) throw error;
    response.destroy(error as Error);
  } finally {
    response.off('close', signal);
  }
  if (!response.destroyed && !response.writableFinished) await new Promise((resolve) => response.once('close', resolve));
  clearTimeout(timer);
  return sent;
}
