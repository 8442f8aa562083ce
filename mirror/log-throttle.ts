// Repeated log lines held back: when an upstream is down, every client request fails the same way,
// and clients that retry at once (a node's kubelet, CI runners in a loop) made the mirror write
// one warning per request: 49,000 lines in 45 s in a soak test. The first of a kind is logged at
// once; the same again within the window is counted, and the next one logged after it says how
// many were held back.

/** How long the same line is held back after it was logged. */
export const LOG_WINDOW_MS = 10_000;
/** Kinds of line remembered at most (the oldest go first): reasons can name digests. */
const MAX_KINDS = 256;

export class LogThrottle {
  private readonly kinds = new Map<string, { loggedAt: number; held: number }>();
  private readonly now: () => number;

  constructor(now: () => number = Date.now) {
    this.now = now;
  }

  /**
   * Whether a line of this kind is to be logged now: undefined when it is held back, else how many
   * like it were held back since the last one logged (0 for the first).
   */
  take(kind: string): number | undefined {
    const now = this.now();
    const seen = this.kinds.get(kind);
    if (seen && now - seen.loggedAt < LOG_WINDOW_MS) {
      seen.held++;
      return undefined;
    }
    const held = seen?.held ?? 0;
    this.kinds.delete(kind);
    this.kinds.set(kind, { loggedAt: now, held: 0 });
    if (this.kinds.size > MAX_KINDS) this.kinds.delete(this.kinds.keys().next().value!);
    return held;
  }
}
