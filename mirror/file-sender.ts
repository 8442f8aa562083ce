// Sends a byte range of a stored file on an HTTP response with a small set of reused 1 MiB
// buffers: read into a free buffer, hand it to the socket, take it back once the kernel has the
// bytes. A stream would allocate a new buffer per read and leave them to the garbage collector;
// measured on a stored 200 MB blob this loop serves about twice as fast with less peak memory
// (bench/profiling.md). Node has no sendfile, so this is the cheapest copy it can do.
import type { ServerResponse } from 'node:http';
import type { FileHandle } from 'node:fs/promises';

const BUFFER_SIZE = 1 << 20;
/** In flight per response: enough to keep the socket busy while the next read runs. */
const BUFFERS_PER_RESPONSE = 4;
/** Idle buffers kept for later responses; more than this are left to the garbage collector. */
const POOL_LIMIT = 32;

const pool: Buffer[] = [];

function take(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafe(BUFFER_SIZE);
}

function give(buffer: Buffer): void {
  if (pool.length < POOL_LIMIT) pool.push(buffer);
}

/**
 * Writes bytes [start, end] of the file to the response (headers already sent) and ends it.
 * Resolves with the bytes the socket accepted; a client that goes away ends the loop early, and a
 * read error destroys the response so the client sees a cut, never a short success.
 */
export async function sendFileRange(response: ServerResponse, file: FileHandle, start: number, end: number): Promise<number> {
  let position = start;
  let inFlight = 0;
  let sent = 0;
  let wake: (() => void) | undefined;
  const signal = () => {
    const resume = wake;
    wake = undefined;
    resume?.();
  };
  response.on('drain', signal).on('close', signal);
  try {
    while (position <= end && !response.destroyed) {
      if (inFlight >= BUFFERS_PER_RESPONSE || response.writableNeedDrain) {
        await new Promise<void>((resolve) => (wake = resolve));
        continue;
      }
      const buffer = take();
      const length = Math.min(BUFFER_SIZE, end - position + 1);
      let bytesRead: number;
      try {
        ({ bytesRead } = await file.read(buffer, 0, length, position));
      } catch (error) {
        give(buffer);
        throw error;
      }
      if (bytesRead === 0) {
        give(buffer);
        throw new Error(`stored file ended at ${position}, before ${end + 1}`);
      }
      position += bytesRead;
      inFlight++;
      response.write(bytesRead === buffer.length ? buffer : buffer.subarray(0, bytesRead), (error) => {
        inFlight--;
        if (!error) sent += bytesRead;
        // On an error the socket is gone and no longer holds the bytes either.
        give(buffer);
        signal();
      });
    }
    if (!response.destroyed) response.end();
  } catch (error) {
    response.destroy(error as Error);
  } finally {
    response.off('drain', signal).off('close', signal);
  }
  if (!response.destroyed && !response.writableFinished) await new Promise((resolve) => response.once('close', resolve));
  return sent;
}
