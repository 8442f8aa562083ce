// The 1 MiB buffers every blob byte passes through: a fill copies what the upstream sends into
// them, and the sender reads stored files into them. They are taken and given back, never left to
// the garbage collector: allocating a fresh buffer per chunk made V8 run full collections all
// through a transfer (about 40% of the mirror's CPU on a cold 200 MB blob, bench/profiling.md).
// Buffers nobody has taken for a few seconds are freed at once (their memory detached, not left
// for a later collection), so a mirror between pulls does not hold them.
export const BUFFER_SIZE = 1 << 20;

export interface BufferPoolOptions {
  /** Idle buffers kept for later use; more than this are freed as they come back. */
  idleLimit: number;
  /** Idle buffers are freed once none was taken for this long. */
  releaseAfterMs: number;
}

export class BufferPool {
  private readonly idle: Buffer[] = [];
  private readonly options: BufferPoolOptions;
  private lastTaken = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(options: BufferPoolOptions) {
    this.options = options;
  }

  /** Buffers waiting in the pool. */
  get idleCount(): number {
    return this.idle.length;
  }

  /** A 1 MiB buffer with arbitrary contents. */
  take(): Buffer {
    this.lastTaken = performance.now();
    // allocUnsafeSlow: a buffer of its own, not a slice of Node's shared pool, so it can be freed alone
    return this.idle.pop() ?? Buffer.allocUnsafeSlow(BUFFER_SIZE);
  }

  /** Hands a buffer from `take` back; nothing may use it afterwards. */
  give(buffer: Buffer): void {
    if (this.idle.length >= this.options.idleLimit) {
      free(buffer);
      return;
    }
    this.idle.push(buffer);
    this.scheduleRelease(this.options.releaseAfterMs);
  }

  /** Frees every idle buffer now. */
  release(): void {
    for (const buffer of this.idle.splice(0)) free(buffer);
  }

  private scheduleRelease(delayMs: number): void {
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const quietFor = performance.now() - this.lastTaken;
      if (quietFor >= this.options.releaseAfterMs) this.release();
      else if (this.idle.length > 0) this.scheduleRelease(this.options.releaseAfterMs - quietFor);
    }, delayMs);
    // an idle pool never keeps the process alive
    this.timer.unref();
  }
}

/** Detaching the buffer's memory returns it to the system now, instead of at some later collection. */
function free(buffer: Buffer): void {
  // allocUnsafeSlow gives each buffer an ArrayBuffer of its own (never a SharedArrayBuffer)
  (buffer.buffer as ArrayBuffer).transfer(0);
}

/**
 * Enough idle buffers for 8 clients sending with two buffers each (blob-sender.ts); freed after 5 s
 * without a transfer. Keeping none made a warm 8-client transfer take 1653 instead of 664 ms.
 */
const pool = new BufferPool({ idleLimit: 16, releaseAfterMs: 5_000 });

export function takeBuffer(): Buffer {
  return pool.take();
}

export function giveBuffer(buffer: Buffer): void {
  pool.give(buffer);
}
