// The 1 MiB buffers every blob byte passes through: a fill copies what the upstream sends into
// them, and the sender reads stored files into them. They are taken and given back, never left to
// the garbage collector: allocating a fresh buffer per chunk made V8 run full collections all
// through a transfer (about 40% of the mirror's CPU on a cold 200 MB blob, bench/profiling.md).
export const BUFFER_SIZE = 1 << 20;

/** Idle buffers kept for later use; more than this are dropped (the pool only bounds idle memory). */
const IDLE_LIMIT = 16;

const idle: Buffer[] = [];

/** A 1 MiB buffer with arbitrary contents. */
export function takeBuffer(): Buffer {
  // allocUnsafeSlow: a buffer of its own, not a slice of Node's shared pool
  return idle.pop() ?? Buffer.allocUnsafeSlow(BUFFER_SIZE);
}

/** Hands a buffer from takeBuffer back; nothing may use it afterwards. */
export function giveBuffer(buffer: Buffer): void {
  if (idle.length < IDLE_LIMIT) idle.push(buffer);
}
